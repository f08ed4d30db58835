"""The harnesses that time the published DIAMOND and IRIS code (``bench/published``) and the
side-by-side runner (``bench/vs_published.py``), without the published code itself (it is not
part of this repository): hydra-style configs resolve as hydra would, stand-ins appear only for
missing modules and refuse to be used, and wrong folders are one-line errors that write
nothing."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "bench" / "published"


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_iris_config_resolves_like_hydra(tmp_path):
    (tmp_path / "config" / "tokenizer").mkdir(parents=True)
    (tmp_path / "config" / "world_model").mkdir()
    (tmp_path / "config" / "actor_critic").mkdir()
    (tmp_path / "config" / "trainer.yaml").write_text(
        "defaults:\n  - tokenizer: default\n  - world_model: default\n"
        "common:\n  sequence_length: ${world_model.max_blocks}\n"
        "training:\n  learning_rate: 0.0001\n  actor_critic:\n"
        "    imagine_horizon: ${common.sequence_length}\n    burn_in: 20\n"
    )
    (tmp_path / "config" / "tokenizer" / "default.yaml").write_text(
        "vocab_size: 512\nencoder:\n  config:\n    ch: 64\n    ch_mult: [1, 2]\n"
        "decoder:\n  config: ${..encoder.config}\n"
    )
    (tmp_path / "config" / "world_model" / "default.yaml").write_text("max_blocks: 20\n")
    (tmp_path / "config" / "actor_critic" / "default.yaml").write_text("use_original_obs: False\n")
    cfg = _module(PUBLISHED / "iris.py").load_config(tmp_path)
    assert "defaults" not in cfg
    assert cfg["common"]["sequence_length"] == 20
    assert cfg["training"]["actor_critic"]["imagine_horizon"] == 20  # a reference to a reference
    assert cfg["tokenizer"]["decoder"]["config"] == {"ch": 64, "ch_mult": [1, 2]}  # relative
    assert cfg["actor_critic"] == {"use_original_obs": False}


def test_stand_ins_only_for_missing_modules_and_refuse_use():
    common = _module(PUBLISHED / "common.py")
    missing = "no_such_module_for_the_bench_test"
    try:
        done = common.stand_in("json", missing, classes={missing: ("Env",)})
        assert done == [missing]  # json is installed: left alone
        assert sys.modules["json"].__name__ == "json" and hasattr(sys.modules["json"], "dumps")
        stub = sys.modules[missing]
        assert isinstance(stub.Env, type)  # usable as a type hint or a base class
        with pytest.raises(RuntimeError, match="not part of the measurement"):
            stub.anything()
    finally:
        sys.modules.pop(missing, None)
    assert common.number("1e-4") == 1e-4 and common.number("${a.b}") == "${a.b}"
    assert common.number("adamw") == "adamw" and common.number(3) == 3


@pytest.mark.parametrize(
    "cmd",
    [
        [str(ROOT / "bench" / "vs_published.py"), "--iris-src", "{tmp}"],
        [str(ROOT / "bench" / "vs_published.py")],
        [str(ROOT / "bench" / "vs_published.py"), "--iris-src", "{tmp}", "--rounds", "0"],
        [str(ROOT / "bench" / "vs_published.py"), "--iris-src", "{tmp}", "--core", "4096"],
        [str(PUBLISHED / "diamond.py"), "--src", "{tmp}"],
        [str(PUBLISHED / "iris.py"), "--src", "{tmp}"],
    ],
)
def test_wrong_folders_are_one_line_errors(tmp_path, cmd):
    before = sorted(tmp_path.rglob("*"))
    cmd = [sys.executable] + [c.format(tmp=tmp_path) for c in cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "error:" in last and "Traceback" not in proc.stderr
    assert any(why in last for why in ("not a checkout", "--diamond-src", "at least 1", "cores"))
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
