"""The examples in examples/ (the world of docs/worlds.md, the agent of docs/agents.md) pass
``check_world`` / ``check_agent`` in this process, and run with --world/--agent without any
framework edit, installed the way a user would (pip, entry point) or imported with --plugin; the
conformance tests then cover them."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from examples_inproc import load_example
from test_cli import ROOT, run
from test_conformance import ENV, _resolve

from worldmodels import contract
from worldmodels.checks import check_agent, check_world
from worldmodels.registry import AGENTS

EXAMPLE = ROOT / "examples" / "reinforce_agent"
WORLD_EXAMPLE = ROOT / "examples" / "latent_world"
IGNORED = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
TINY = [
    "--env", "Breakout", "--world", "vae", "--agent", "reinforce_linear", "--preset", "test",
    "--set", "world.vae_training.steps_per_epoch=4",
    "--set", "world.mdn_training.steps_per_epoch=4",
    "--set", "agent.training.steps_per_epoch=3",
    "--set", "agent.num_envs=4",
    "--set", "agent.horizon=5",
]  # fmt: skip


def _env(*pythonpath):
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(map(str, pythonpath)),
    }


def _latent_world(env_info=ENV):
    cls = load_example("latent_world").LatentWorld
    torch.manual_seed(0)
    return cls(cls.Config(), env_info)


def test_the_example_world_passes_check_world():
    check_world(_latent_world(), ENV, compile=True)


def test_the_example_agent_passes_check_agent_alone_and_in_the_example_world():
    cls = load_example("reinforce_agent").ReinforceLinearAgent
    world = _latent_world()
    env_info = dataclasses.replace(ENV, feature_dim=world.feature_dim)
    agent = cls(cls.Config(num_envs=4, horizon=5), env_info, seed=0)
    check_agent(agent, env_info)
    check_agent(agent, env_info, world=world.eval())


@pytest.mark.parametrize("agent_name", AGENTS.names())
def test_every_registered_agent_trains_in_the_example_world(agent_name):
    world = _latent_world().eval()
    env_info = dataclasses.replace(ENV, feature_dim=contract.feature_dim(world))
    cfg = _resolve(agent=agent_name)
    agent = AGENTS.get(agent_name)(cfg.agent.config, env_info, seed=0)
    why = contract.incompatibility(agent, world)
    if why is not None:
        pytest.skip(why)
    check_agent(agent, env_info, world=world)


WORLD_TINY = [
    "--env", "Breakout", "--world", "latent", "--agent", "reinforce_linear", "--preset", "test",
    "--set", "world.training.steps_per_epoch=4",
    "--set", "agent.training.steps_per_epoch=3",
    "--set", "agent.num_envs=4",
    "--set", "agent.horizon=5",
]  # fmt: skip


@pytest.mark.slow
def test_the_example_world_and_agent_train_together_as_plugins(tmp_path):
    env = _env(WORLD_EXAMPLE / "src", EXAMPLE / "src")
    res = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--plugin", "latent_world", "--plugin",
         "reinforce_agent", "--name", "w", *WORLD_TINY],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    results = json.loads((tmp_path / "runs" / "w" / "results.json").read_text())
    assert results["world"] == "latent" and results["agent"] == "reinforce_linear"


@pytest.mark.slow
def test_plugin_import_route(tmp_path):
    env = _env(EXAMPLE / "src")
    res = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--plugin", "reinforce_agent", "--name", "p", *TINY],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    d = tmp_path / "runs" / "p"
    assert json.loads((d / "results.json").read_text())["agent"] == "reinforce_linear"
    # the run recorded its plugin, but a run directory never imports code by itself: evaluating
    # it needs the plugin named again
    evaluate = [sys.executable, str(ROOT / "evaluate.py"), str(d), "--episodes", "1"]
    out = subprocess.run(evaluate, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "--plugin reinforce_agent" in out.stderr, out.stderr
    out = subprocess.run(
        [*evaluate, "--plugin", "reinforce_agent"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0 and "Breakout: mean return" in out.stdout, out.stderr


@pytest.mark.slow
def test_entry_point_route_and_conformance(tmp_path):
    site = tmp_path / "site"
    # a copy, so that the build leaves nothing in the repository (setuptools writes build/)
    for example in (EXAMPLE, WORLD_EXAMPLE):
        source = shutil.copytree(example, tmp_path / example.name, ignore=IGNORED)
        pip = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--target", str(site), str(source)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert pip.returncode == 0, pip.stderr
    env = _env(site)
    res = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--name", "e", *TINY],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "runs" / "e" / "results.json").exists()
    # registered agents are conformance-tested without anyone listing them
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "test_conformance.py"), "-k", "reinforce_linear or latent"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-2000:]
    assert (
        "PASSED tests/test_conformance.py::test_every_agent_passes_check_agent[reinforce_linear]"
        in tests.stdout
    )
    assert (
        "PASSED tests/test_conformance.py::"
        "test_every_agent_trains_in_every_compatible_world[reinforce_linear-vae]" in tests.stdout
    )
    assert "PASSED tests/test_conformance.py::test_every_world_passes_check_world[latent-nchw]" in (
        tests.stdout
    )
    assert (
        "PASSED tests/test_conformance.py::"
        "test_every_agent_trains_in_every_compatible_world[reinforce_linear-latent]" in tests.stdout
    )


@pytest.mark.slow
def test_unknown_plugin_is_a_one_line_error(tmp_path):
    res = run("train.py", "--plugin", "no_such_module", cwd=tmp_path, check=False)
    assert res.returncode == 2 and "cannot import plugin 'no_such_module'" in res.stderr
