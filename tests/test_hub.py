"""Loading and sharing (``worldmodels.hub``): a smoke run is loaded read-only, exported to a
folder in Hugging Face Hub layout, and the folder loads back, in this process and in a fresh
one started from another directory; bad inputs are one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from cli_inproc import ROOT, call

from worldmodels import hub
from worldmodels.errors import UserError
from worldmodels.hub import export, load

EXPORTED = {
    "README.md", "agent.safetensors", "config.yaml", "contexts.safetensors", "env_spec.json",
    "export.json", "results.json", "world.safetensors",
}  # fmt: skip


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` (dot-files such as ``.lock`` included), with the
    sha256 of each file's bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text, text
    return text


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A smoke run of the diffusion world (its default actor-critic agent), trained here."""
    root = tmp_path_factory.mktemp("hub")
    rc, _, err = call(
        "train.py", "--env", "Breakout", "--world", "diffusion", "--preset", "test",
        "--name", "x", "--set", f"run.runs_dir={root / 'runs'}",
    )  # fmt: skip
    assert rc == 0, err
    return root / "runs" / "x"


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "x"
    assert export(run_dir, out) == out
    return out


def step_dream(m: hub.Loaded, dream, steps: int = 3) -> torch.Tensor:
    """Reset ``dream`` and step it ``steps`` times with ``m.agent``; the actions taken."""
    obs, _ = dream.reset()
    assert obs.shape == (dream.num_envs, *m.env_info.obs_shape) and obs.dtype == torch.uint8
    state = m.agent.initial_state(dream.num_envs, m.device)
    first = torch.ones(dream.num_envs, dtype=torch.bool)
    taken = []
    for _ in range(steps):
        actions, state = m.agent.act(obs, state, first)
        assert actions.shape == (dream.num_envs,) and actions.dtype == torch.int64
        obs, reward, term, trunc, info = dream.step(actions)
        assert reward.shape == (dream.num_envs,) and "final_obs" in info
        first = term | trunc
        taken.append(actions)
    return torch.stack(taken)


# ------------------------------------------------------------------ loading a run


def test_load_run_dir_gives_world_agent_spec_and_dream(run_dir):
    m = load(run_dir)
    assert m.kind == "run" and m.checkpoint == (run_dir / "checkpoints/latest").read_text().strip()
    assert m.config.world.name == "diffusion" and m.config.agent.name == "actor_critic"
    assert m.env_info.num_actions == 4 and m.env_info.obs_shape == (3, 64, 64)
    assert m.env_spec["game"] == "Breakout" and m.protocol["sticky_action_prob"] == 0.0
    assert not m.world.training and not m.agent.training
    dream = m.dream(num_envs=3, horizon=2)
    assert (dream.num_envs, dream.horizon) == (3, 2)
    step_dream(m, dream)
    env = m.make_env("test", 1)
    assert env.num_actions == 4


def test_loading_and_exporting_never_write_to_the_run(run_dir, tmp_path):
    before = tree_digest(run_dir)
    m = load(run_dir)
    m.replay()
    step_dream(m, m.dream())
    m.contexts(2)
    export(run_dir, tmp_path / "out")
    assert tree_digest(run_dir) == before


def test_a_checkpoint_without_optimizer_state_loads_and_one_with_it_ignores_it(run_dir, tmp_path):
    full = load(run_dir)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    latest = (copy / "checkpoints" / "latest").read_text().strip()
    (copy / "checkpoints" / latest / "state.pt").unlink()  # weights only: no optimizer, no RNG
    bare = load(copy)
    for a, b in ((full.world, bare.world), (full.agent, bare.agent)):
        sa, sb = a.state_dict(), b.state_dict()
        tensors = [k for k, v in sa.items() if isinstance(v, torch.Tensor)]
        assert tensors and all(torch.equal(sa[k], sb[k]) for k in tensors)
    first = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("ep"))
    assert load(run_dir, checkpoint=first[0]).checkpoint == first[0]
    assert load(run_dir, checkpoint=run_dir / "checkpoints" / first[0]).checkpoint == first[0]


def test_dream_on_given_contexts(run_dir):
    m = load(run_dir)
    ctx = m.contexts(3, seed=1)
    assert ctx.obs.shape == (3, m.world.context_len, 3, 64, 64)
    dream = m.dream(ctx, horizon=2)
    assert dream.num_envs == 3
    obs, _ = dream.reset()
    assert torch.equal(obs, ctx.obs[:, -1])  # row i starts on the last frame of context i
    step_dream(m, dream, steps=4)  # past the horizon: rows restart from their own contexts
    with pytest.raises(ValueError, match="num_envs=2 but 3 contexts"):
        m.dream(ctx, num_envs=2)
    with pytest.raises(ValueError, match="contexts.obs must be uint8"):
        m.dream(ctx._replace(obs=ctx.obs[:, 1:]))


def test_replay_read_only_writes_nothing(tmp_path):
    import numpy as np

    from worldmodels.replay import Episode, ReplayStore

    episodes = tmp_path / "episodes"
    ep = Episode(np.zeros((3, 3, 8, 8), np.uint8), np.zeros(2, np.int64), np.ones(2, np.float32),
                 end=True, trunc=False)  # fmt: skip
    ReplayStore(episodes, log=lambda _: None).add(ep)
    (episodes / ".ep_000001.npz.abc.tmp").write_bytes(b"an interrupted write")
    before = tree_digest(episodes)
    store = ReplayStore.read_only(episodes)
    assert len(store) == 1 and store.directory is None and store.num_steps == 2
    assert tree_digest(episodes) == before  # the temp file is left where it was
    empty = ReplayStore.read_only(tmp_path / "none")
    assert len(empty) == 0 and not (tmp_path / "none").exists()


# ------------------------------------------------------------------ exporting


def test_export_folder_layout_manifest_and_model_card(run_dir, exported):
    assert {p.name for p in exported.iterdir()} == EXPORTED
    assert (exported / "config.yaml").read_bytes() == (run_dir / "config.yaml").read_bytes()
    assert (exported / "results.json").read_bytes() == (run_dir / "results.json").read_bytes()
    manifest = json.loads((exported / "export.json").read_text())
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((exported / name).read_bytes()).hexdigest() == digest
    assert manifest["dropped_extra_state"] == {"agent": ["_extra_state"]}
    card = (exported / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "worldmodels"
    assert {"reinforcement-learning", "world-models", "atari", "Breakout"} <= set(meta["tags"])
    assert meta["model-index"][0]["results"][0]["metrics"][0]["type"] == "mean_reward"
    assert "95% bootstrap CI" in body and "human-normalised score" in body
    assert "| sticky_action_prob | 0.0 |" in body
    assert "python train.py --env Breakout --world diffusion --preset test --name x" in body
    assert "- torch: " in body


def test_the_export_loads_with_the_same_weights_and_acts_alike(run_dir, exported):
    a, b = load(run_dir), load(exported)
    assert b.kind == "export" and b.checkpoint == a.checkpoint and b.env_steps == a.env_steps
    assert b.env_spec == a.env_spec and b.protocol == a.protocol
    for x, y in ((a.world, b.world), (a.agent, b.agent)):
        sx, sy = x.state_dict(), y.state_dict()
        assert all(torch.equal(v, sy[k]) for k, v in sx.items() if isinstance(v, torch.Tensor))
    ctx = a.contexts(2)
    assert torch.equal(step_dream(a, a.dream(ctx)), step_dream(b, b.dream(ctx)))
    step_dream(b, b.dream())  # on the contexts the export stores
    with pytest.raises(UserError, match="holds no replay"):
        b.replay()


def test_export_main_exit_codes(run_dir, tmp_path, capsys):
    assert hub.export_main([str(run_dir), str(tmp_path / "e")]) == 0
    assert "exported" in capsys.readouterr().out
    assert hub.export_main([str(run_dir), str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not an empty directory" in err


@pytest.mark.slow  # a training run of train.py per kind
@pytest.mark.parametrize("world", ["iris", "vae", None])
def test_every_kind_of_run_exports_and_loads(world, tmp_path):
    """IRIS (pixels through its tokenizer), VAE + CMA-ES (an agent that observes features) and a
    run without a world (the random agent: no weights at all)."""
    args = ["--world", world] if world else ["--env", "Pong"]
    rc, _, err = call("train.py", *args, "--preset", "test", "--name", "r",
                      "--set", f"run.runs_dir={tmp_path}")  # fmt: skip
    assert rc == 0, err
    out = export(tmp_path / "r", tmp_path / "e")
    names = {p.name for p in out.iterdir()}
    assert names == (
        EXPORTED if world else EXPORTED - {"world.safetensors", "contexts.safetensors"}
    )
    m = load(out)
    if world is None:
        assert m.world is None
        with pytest.raises(UserError, match="has no world"):
            m.dream()
        env = m.make_env("test", 1)
        obs, _ = env.reset(seed=0)
        actions, _ = m.agent.act(
            obs, m.agent.initial_state(1, m.device), torch.ones(1, dtype=torch.bool)
        )
        assert actions.shape == (1,)
        return
    dream = m.dream()
    assert dream.observes == m.agent.observes
    if m.agent.observes == "pixels":
        step_dream(m, dream)
    else:
        _step_features(m, dream)


def _step_features(m: hub.Loaded, dream) -> None:
    obs, _ = dream.reset()
    assert m.env_info.feature_dim and obs.shape == (dream.num_envs, m.env_info.feature_dim)
    state = m.agent.initial_state(dream.num_envs, m.device)
    first = torch.ones(dream.num_envs, dtype=torch.bool)
    for _ in range(3):
        actions, state = m.agent.act(obs, state, first)
        obs, _, term, trunc, _ = dream.step(actions)
        first = term | trunc


# ------------------------------------------------------------------ bad inputs


def test_bad_inputs_are_one_line_errors(run_dir, exported, tmp_path):
    with pytest.raises(UserError) as e:
        load(tmp_path / "missing")
    assert "does not exist" in one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as e:
        load(tmp_path / "empty")
    assert "neither a run directory" in one_line(e)
    with pytest.raises(UserError) as e:
        load(run_dir, checkpoint="epoch_999999")
    assert "no checkpoint epoch_999999" in one_line(e)
    with pytest.raises(UserError) as e:
        load(exported, checkpoint="epoch_000001")
    assert "one set of weights" in one_line(e)

    flipped = tmp_path / "flipped"
    shutil.copytree(exported, flipped)
    data = bytearray((flipped / "world.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (flipped / "world.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError) as e:
        load(flipped)
    assert "world.safetensors is corrupt: its sha256 differs" in one_line(e)
    garbage = tmp_path / "garbage"  # no checksum to catch it: the safetensors reader does
    shutil.copytree(exported, garbage)
    (garbage / "agent.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    manifest = json.loads((garbage / "export.json").read_text())
    del manifest["files"]["agent.safetensors"]
    (garbage / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError) as e:
        load(garbage)
    assert "agent.safetensors is corrupt" in one_line(e)

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    for out, what in ((busy, "is not an empty directory"), (run_dir / "exp", "inside the run")):
        with pytest.raises(UserError) as e:
            export(run_dir, out)
        assert what in one_line(e)
    assert (busy / "keep.txt").read_text() == "mine" and not (run_dir / "exp").exists()
    for src, what in ((tmp_path / "empty", "is not a run directory"), (exported, "exported")):
        with pytest.raises(UserError) as e:
            export(src, tmp_path / "new")
        assert what in one_line(e)


def test_a_runs_plugins_are_imported_only_when_trusted(run_dir, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (tmp_path / "wm_hub_test_plugin.py").write_text(
        "import os\nos.environ['WM_HUB_PLUGIN'] = '1'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("WM_HUB_PLUGIN", raising=False)
    tree = yaml.safe_load((copy / "config.yaml").read_text())
    tree["run"]["plugins"] = ["wm_hub_test_plugin"]
    (copy / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    with pytest.raises(UserError) as e:
        load(copy)
    line = one_line(e)
    assert "names plugin 'wm_hub_test_plugin', not imported yet" in line
    assert "trust_plugins=True" in line and "load_plugins" in line
    assert "WM_HUB_PLUGIN" not in os.environ
    assert load(copy, trust_plugins=True).kind == "run"
    assert os.environ["WM_HUB_PLUGIN"] == "1"


def test_push_to_hub_without_the_package_names_the_extra(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    with pytest.raises(UserError) as e:
        hub.push_to_hub(exported, "someone/x")
    assert "pip install 'worldmodels[hub]'" in one_line(e)
    with pytest.raises(UserError, match="not an exported folder"):
        hub.push_to_hub(exported.parent, "someone/x")


# ------------------------------------------------------------------ acceptance, as a user would


LOAD_AND_STEP = """
import json, sys, torch
from worldmodels.hub import load
m = load(sys.argv[1])
dream = m.dream()
obs, info = dream.reset()
state = m.agent.initial_state(dream.num_envs, m.device)
first = torch.ones(dream.num_envs, dtype=torch.bool)
for _ in range(5):
    actions, state = m.agent.act(obs, state, first)
    obs, reward, term, trunc, info = dream.step(actions)
    first = term | trunc
print(json.dumps({"kind": m.kind, "world": m.config.world.name, "obs": list(obs.shape),
                  "actions": actions.tolist(), "game": m.env_spec["game"]}))
"""


@pytest.mark.slow
def test_export_a_smoke_run_and_load_it_in_a_fresh_process_elsewhere(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def python(*args: str, cwd: Path) -> str:
        res = subprocess.run(
            [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    python(str(ROOT / "train.py"), "--env", "Breakout", "--world", "diffusion", "--preset",
           "test", "--name", "x", cwd=work)  # fmt: skip
    before = tree_digest(work / "runs" / "x")
    out = python("-c", "import sys; from worldmodels.hub import export_main; "
                 "sys.exit(export_main(sys.argv[1:]))", "runs/x", "exp", cwd=work)  # fmt: skip
    assert "exported runs/x to exp" in out
    assert tree_digest(work / "runs" / "x") == before
    assert {p.name for p in (work / "exp").iterdir()} == EXPORTED
    shutil.move(work / "exp", elsewhere / "model")  # a folder as downloaded: no run beside it
    shutil.rmtree(work)
    script = elsewhere / "use.py"
    script.write_text(textwrap.dedent(LOAD_AND_STEP))
    got = json.loads(python(str(script), "model", cwd=elsewhere).strip().splitlines()[-1])
    assert got["kind"] == "export" and got["world"] == "diffusion" and got["game"] == "Breakout"
    assert got["obs"] == [2, 3, 64, 64] and len(got["actions"]) == 2
