"""The example agent in examples/ runs with --agent without any framework edit, installed the way
a user would (pip, entry point) or imported with --plugin; the conformance tests then cover it."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from test_cli import ROOT, run

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "reinforce_agent"
IGNORED = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
TINY = [
    "--env", "Breakout", "--world", "vae", "--agent", "reinforce_linear", "--preset", "smoke",
    "--set", "schedule.initial_collect_steps=60",
    "--set", "world.vae_training.steps_per_epoch=4",
    "--set", "world.mdn_training.steps_per_epoch=4",
    "--set", "agent.training.steps_per_epoch=3",
    "--set", "agent.num_envs=4",
    "--set", "agent.horizon=5",
    "--set", "eval.episodes=1",
    "--set", "run.progress=false",
]  # fmt: skip


def _env(pythonpath):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(pythonpath)}


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


def test_entry_point_route_and_conformance(tmp_path):
    site = tmp_path / "site"
    # a copy, so that the build leaves nothing in the repository (setuptools writes build/)
    source = shutil.copytree(EXAMPLE, tmp_path / "reinforce_agent", ignore=IGNORED)
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
         str(ROOT / "tests" / "test_conformance.py"), "-k", "reinforce_linear"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-2000:]
    assert (
        "PASSED tests/test_conformance.py::test_agent_acts_with_valid_actions[reinforce_linear]"
        in tests.stdout
    )
    assert "::test_every_agent_trains_in_every_world[reinforce_linear-vae]" in tests.stdout


def test_unknown_plugin_is_a_one_line_error(tmp_path):
    res = run("train.py", "--plugin", "no_such_module", cwd=tmp_path, check=False)
    assert res.returncode == 2 and "cannot import plugin 'no_such_module'" in res.stderr
