"""Bad input of every kind (values, names, files a run directory holds): each is one line on
stderr and exit status 2, never a traceback, and a fresh run that fails leaves no run directory.

The entry points run in this process (``cli_inproc``), so the whole table takes seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from cli_inproc import call

TINY = ["--env", "Breakout", "--preset", "test"]  # fmt: skip

PLUGINS = {  # module name -> source of a plugin that goes wrong while being imported
    "wm_bad_raises": "raise RuntimeError('boom at import')\n",
    "wm_bad_syntax": "def broken(:\n    pass\n",
    "wm_bad_exit": "import sys\nsys.exit(3)\n",
    "wm_bad_taken": (
        "from dataclasses import dataclass\n"
        "from worldmodels.registry import AGENTS\n"
        "@AGENTS.register('random')\n"
        "class Impostor:\n"
        "    @dataclass(frozen=True)\n"
        "    class Config:\n"
        "        pass\n"
    ),
    "wm_bad_imports": "import wm_no_such_dependency\n",
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run (random agent, no world): config, episodes, checkpoints, results."""
    root = tmp_path_factory.mktemp("finished")
    rc, out, err = call("train.py", "--name", "done", *TINY,
                        "--set", f"run.runs_dir={root / 'runs'}")  # fmt: skip
    assert rc == 0, err
    run = root / "runs" / "done"
    assert len(list((run / "episodes").glob("ep_*.npz"))) >= 2
    return run


def _copy(finished_run: Path, tmp: Path, name: str = "r") -> Path:
    return Path(shutil.copytree(finished_run, tmp / "runs" / name))


def _latest(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_config(run: Path, edit) -> None:
    tree = yaml.safe_load((run / "config.yaml").read_text())
    edit(tree)
    (run / "config.yaml").write_text(yaml.safe_dump(tree))


def _config_text(run: Path, text: str) -> None:
    (run / "config.yaml").write_text(text)


def _set(tree, section, key, value):
    tree[section][key] = value


def _payload(run: Path) -> None:
    (run / "payload.py").write_text("open('MARKER', 'w').write('ran')\n")
    _edit_config(run, lambda t: _set(t, "run", "plugins", ["runs.r.payload"]))


# Each case: (id, script, args, the words its one line must hold, what to prepare in a copy of
# the finished run). Args may name "RUN" (that copy) and "TMP" (the test's directory).
FRESH = [
    ("unknown game", "train.py", ["--env", "Brekout"], "unknown Atari game 'Brekout'"),
    ("unknown world", "train.py", ["--world", "nope"], "unknown world 'nope'"),
    ("unknown agent", "train.py", ["--agent", "nope"], "unknown agent 'nope' (valid: "),
    ("unknown preset", "train.py", ["--preset", "huge"], "unknown preset 'huge' (valid: "),
    ("unknown protocol", "train.py", ["--protocol", "x"], "unknown env protocol 'x'"),
    ("unknown flag", "train.py", ["--bogus"], "unrecognized arguments: --bogus"),
    ("seed not a number", "train.py", ["--seed", "ten"], "invalid int value: 'ten'"),
    ("seed beyond int64", "train.py", ["--seed", "99999999999999999999"],
     "run.seed must be in [0, 2**63 - 1]"),
    ("negative seed", "train.py", ["--seed", "-1"], "run.seed must be >= 0, got -1"),
    ("device name", "train.py", ["--device", "gpu"], "run.device must be auto, cpu, cuda"),
    ("device index", "train.py", ["--device", "cuda:x"], "run.device must be auto, cpu, cuda"),
    ("name escapes runs/", "train.py", ["--name", "../../x"], "run.name must be a plain directory"),
    ("name with a slash", "train.py", ["--name", "a/b"], "run.name must be a plain directory"),
    ("name ..", "train.py", ["--name", ".."], "run.name must be a plain directory"),
    ("hidden name", "train.py", ["--name", ".x"], "run.name must be a plain directory"),
    ("negative epochs", "train.py", ["--set", "schedule.epochs=-1"],
     "schedule.epochs must be >= 0, got -1"),
    ("epsilon nan", "train.py", ["--set", "schedule.collect_epsilon=nan"],
     "schedule.collect_epsilon must be a finite number"),
    ("epsilon inf", "train.py", ["--set", "schedule.collect_epsilon=inf"],
     "schedule.collect_epsilon must be a finite number"),
    ("epsilon above 1", "train.py", ["--set", "schedule.collect_epsilon=1.5"],
     "schedule.collect_epsilon must be in [0.0, 1.0]"),
    ("keep no checkpoint", "train.py", ["--set", "schedule.keep_checkpoints=0"],
     "schedule.keep_checkpoints must be >= 1"),
    ("checkpoint every 0", "train.py", ["--set", "schedule.checkpoint_every=0"],
     "schedule.checkpoint_every must be >= 1"),
    ("no collection env", "train.py", ["--set", "schedule.num_envs=0"],
     "schedule.num_envs must be >= 1"),
    ("nonfinite limit 0", "train.py", ["--set", "schedule.max_nonfinite_in_a_row=0"],
     "schedule.max_nonfinite_in_a_row must be >= 1"),
    ("epochs not a number", "train.py", ["--set", "schedule.epochs=ten"],
     "schedule.epochs: expected an integer, got 'ten'"),
    ("no test episode", "train.py", ["--set", "eval.episodes=0"], "eval.episodes must be >= 1"),
    ("negative eval epsilon", "train.py", ["--set", "eval.epsilon=-0.5"],
     "eval.epsilon must be in [0.0, 1.0]"),
    ("negative threads", "train.py", ["--set", "run.threads=-1"], "run.threads must be >= 0"),
    ("runs_dir under a file", "train.py", ["--set", "run.runs_dir=TMP/blocker/runs"],
     "blocker is not a directory"),
    ("plugins through --set", "train.py", ["--set", "run.plugins=[os]"],
     "load plugins with --plugin MODULE"),
    ("frame skip 0", "train.py", ["--set", "env.frame_skip=0"], "env.frame_skip must be >= 1"),
    ("sticky above 1", "train.py", ["--set", "env.sticky_action_prob=2"],
     "env.sticky_action_prob must be in [0.0, 1.0]"),
    ("negative no-ops", "train.py", ["--set", "env.noop_max=-1"], "env.noop_max must be >= 0"),
    ("pool order", "train.py", ["--set", "env.pool_order=sideways"],
     "env.pool_order: 'sideways' is not one of"),
    ("zero denoising steps", "train.py",
     ["--world", "diffusion", "--set", "world.denoising_steps=0"],
     "world.denoising_steps must be >= 1, got 0"),
    ("infinite lr", "train.py",
     ["--world", "diffusion", "--set", "world.denoiser_training.lr=inf"],
     "world.denoiser_training.lr must be a finite number"),
    ("zero lr", "train.py",
     ["--world", "diffusion", "--set", "world.denoiser_training.lr=0"],
     "world.denoiser_training.lr must be a finite number > 0"),
    ("batch size 0", "train.py",
     ["--world", "diffusion", "--set", "world.denoiser_training.batch_size=0"],
     "world.denoiser_training.batch_size must be >= 1"),
    ("padding beyond the segment", "train.py",
     ["--world", "diffusion", "--set", "world.reward_end_training.pad_right=40"],
     "world.reward_end_training.pad_right must be in [0, 18]"),
    ("sigma_max below sigma_min", "train.py",
     ["--world", "diffusion", "--set", "world.sigma_max=0.001"],
     "world.sigma_max must be > sigma_min"),
    ("negative width", "train.py",
     ["--world", "vae", "--set", "world.vae.channels=[-8,16,16,16]"],
     "world.vae.channels[0] must be >= 0"),
    ("world key without a world", "train.py", ["--set", "world.x=1"], "no 'world' is chosen"),
    ("--set without =", "train.py", ["--set", "noequals"], "--set expects key.path=value"),
    ("missing plugin", "train.py", ["--plugin", "wm_no_such_module"],
     "cannot import plugin 'wm_no_such_module'"),
    ("plugin path", "train.py", ["--plugin", "../evil"],
     "--plugin must be a dotted Python module name"),
    ("plugin raises", "train.py", ["--plugin", "wm_bad_raises"],
     "plugin 'wm_bad_raises' failed: RuntimeError: boom at import"),
    ("plugin syntax error", "train.py", ["--plugin", "wm_bad_syntax"],
     "plugin 'wm_bad_syntax' failed: syntax error in"),
    ("plugin exits", "train.py", ["--plugin", "wm_bad_exit"], "it called sys.exit(3)"),
    ("plugin takes a name", "train.py", ["--plugin", "wm_bad_taken"],
     "agent name 'random' is already taken"),
    ("plugin imports nothing", "train.py", ["--plugin", "wm_bad_imports"],
     "No module named 'wm_no_such_dependency'"),
    ("evaluate needs a run", "evaluate.py", [], "give a run directory, or --agent NAME"),
    ("negative --num-envs", "evaluate.py", ["--agent", "random", "--num-envs", "-3"],
     "--num-envs must be at least 1, got -3"),
    ("zero --episodes", "evaluate.py", ["--agent", "random", "--episodes", "0"],
     "--episodes must be at least 1"),
    ("evaluate name escapes", "evaluate.py", ["--agent", "random", "--name", "../x"],
     "run.name must be a plain directory"),
    ("evaluate device", "evaluate.py", ["--agent", "random", "--device", "tpu"],
     "run.device must be auto, cpu, cuda"),
    ("checkpoint without a run", "evaluate.py", ["--agent", "random", "--checkpoint", "x"],
     "--checkpoint needs a run directory"),
    ("compare horizon 0", "evaluate.py", ["--compare", "a", "--horizon", "0"],
     "--horizon must be at least 1"),
    ("compare name escapes", "evaluate.py", ["--compare", "a", "--name", "../x"],
     "--name must be a plain directory"),
    ("bootstrap 0", "evaluate.py", ["--table", "x", "--bootstrap", "0"],
     "--bootstrap must be at least 1"),
]  # fmt: skip

FRESH += [
    ("unknown cuda_graphs", "train.py", ["--set", "run.cuda_graphs=sometimes"],
     "run.cuda_graphs: 'sometimes' is not one of 'auto', 'on', 'off'"),
    ("unknown dream_spares", "train.py", ["--set", "schedule.dream_spares=new"],
     "schedule.dream_spares: 'new' is not one of 'fresh', 'shared'"),
    ("unknown precision", "train.py", ["--set", "run.precision=fp16"],
     "run.precision: 'fp16' is not one of"),
]  # fmt: skip

if not torch.cuda.is_available():
    FRESH.append(("no CUDA here", "train.py", ["--device", "cuda"], "no CUDA device is available"))
    FRESH.append(("cuda graphs on a CPU", "train.py", ["--device", "cpu", "--set",
                  "run.cuda_graphs=on"], "run.cuda_graphs=on needs a CUDA device"))  # fmt: skip

FILES = [
    ("resume nowhere", "train.py", ["--resume", "TMP/nowhere"], "nowhere is not a run directory",
     None),
    ("resume with --env", "train.py", ["--resume", "RUN", "--env", "Pong"],
     "--resume continues a run with its own config.yaml", None),
    ("resume with --set", "train.py", ["--resume", "RUN", "--set", "schedule.epochs=9"],
     "--resume continues a run with its own config.yaml", None),
    ("world as a string", "train.py", ["--resume", "RUN"],
     "world: expected a mapping with a 'name' key",
     lambda r: _edit_config(r, lambda t: t.update(world="diffusion"))),
    ("agent without a name", "train.py", ["--resume", "RUN"],
     "agent: expected a mapping with a 'name' key",
     lambda r: _edit_config(r, lambda t: t.update(agent={"name": 5}))),
    ("section not a mapping", "train.py", ["--resume", "RUN"], "run: expected a mapping, got 3",
     lambda r: _edit_config(r, lambda t: t.update(run=3))),
    ("config is a list", "train.py", ["--resume", "RUN"], "must hold a mapping of keys to values",
     lambda r: _config_text(r, "- 1\n- 2\n")),
    ("config not YAML", "train.py", ["--resume", "RUN"], "invalid YAML in",
     lambda r: _config_text(r, "run: [unclosed\n")),
    ("bad value in config.yaml", "train.py", ["--resume", "RUN"],
     "schedule.epochs must be >= 0, got -1",
     lambda r: _edit_config(r, lambda t: _set(t, "schedule", "epochs", -1))),
    ("run plugin not named (train)", "train.py", ["--resume", "RUN"],
     "names plugin runs.r.payload: plugins run code", _payload),
    ("run plugin not named (evaluate)", "evaluate.py", ["RUN"],
     "names plugin runs.r.payload: plugins run code", _payload),
    ("flipped byte in weights (train)", "train.py", ["--resume", "RUN"],
     "weights.safetensors is corrupt: its sha256 differs",
     lambda r: _flip(_latest(r) / "weights.safetensors")),
    ("flipped byte in weights (evaluate)", "evaluate.py", ["RUN"],
     "weights.safetensors is corrupt: its sha256 differs",
     lambda r: _flip(_latest(r) / "weights.safetensors")),
    ("flipped byte in state", "train.py", ["--resume", "RUN"],
     "state.pt is corrupt: its sha256 differs", lambda r: _flip(_latest(r) / "state.pt", 0.9)),
    ("meta.json deleted", "train.py", ["--resume", "RUN"], "has no meta.json",
     lambda r: (_latest(r) / "meta.json").unlink()),
    ("last episode deleted", "train.py", ["--resume", "RUN"], "replay is missing 1 episode file",
     lambda r: sorted((r / "episodes").glob("ep_*.npz"))[-1].unlink()),
    ("episode file replaced", "train.py", ["--resume", "RUN"],
     "ep_000001.npz differs from the one checkpoint",
     lambda r: shutil.copy(r / "episodes" / "ep_000000.npz", r / "episodes" / "ep_000001.npz")),
    ("episode file garbage", "train.py", ["--resume", "RUN"], "corrupt replay episode file",
     lambda r: (r / "episodes" / "ep_000000.npz").write_bytes(b"garbage")),
    ("evaluate no such checkpoint", "evaluate.py", ["RUN", "--checkpoint", "TMP/nope"],
     "no checkpoint at", None),
    ("evaluate with --agent", "evaluate.py", ["RUN", "--agent", "random"],
     "a run directory brings its own env and agent", None),
    ("compare a run without a world", "evaluate.py", ["--compare", "RUN"],
     "has no world to compare", None),
]  # fmt: skip


def _check_one_line(rc: int, err: str, needle: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(("script", "args", "needle"), [c[1:] for c in FRESH],
                         ids=[c[0] for c in FRESH])  # fmt: skip
def test_bad_value_or_name_is_one_line_and_leaves_no_run_dir(
    tmp_path, monkeypatch, capsys, script, args, needle
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("a file where a directory would go")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name, source in PLUGINS.items():
        (plugins / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(plugins))
    args = [a.replace("TMP", str(tmp_path)) for a in args]
    rc, _, err = call(script, *args, capsys=capsys)
    _check_one_line(rc, err, needle)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(("script", "args", "needle", "prepare"), [c[1:] for c in FILES],
                         ids=[c[0] for c in FILES])  # fmt: skip
def test_bad_run_directory_is_one_line_and_changes_nothing(
    finished_run, tmp_path, monkeypatch, capsys, script, args, needle, prepare
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # where `runs.r.payload` would be importable
    run = _copy(finished_run, tmp_path)
    if prepare is not None:
        prepare(run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    args = [a.replace("RUN", str(run)).replace("TMP", str(tmp_path)) for a in args]
    rc, _, err = call(script, *args, capsys=capsys)
    _check_one_line(rc, err, needle)
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after.keys() == before.keys()  # nothing deleted, nothing added ...
    changed = [p.name for p in before if p.name != "provenance.json" and after[p] != before[p]]
    assert not changed  # ... nothing rewritten
    assert not (tmp_path / "MARKER").exists()  # a run directory's plugin never ran


def test_the_table_is_large_enough():
    assert len(FRESH) + len(FILES) >= 40
