"""The wheel: one top-level package (``worldmodels``) with its configs and reference data, console
scripts, and a run and an evaluation from a directory outside the repository, using nothing but
the installed copy."""

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _pip(*args, cwd):
    res = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    _pip("wheel", "--no-deps", *isolation, "-q", "-w", str(out), str(ROOT), cwd=out)
    (path,) = out.glob("worldmodels-*.whl")
    return path


def test_the_wheel_holds_one_package_with_its_data_and_scripts(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"worldmodels"}  # no top-level agents/ or envs/ to clash with a user's own
    for needed in ("worldmodels/agents/actor_critic.py", "worldmodels/envs/atari.py",
                   "worldmodels/configs/preset/atari100k.yaml", "worldmodels/configs/env/machado.yaml",
                   "worldmodels/reference/atari100k_scores.json", "worldmodels/__main__.py"):  # fmt: skip
        assert needed in names, needed
    (eps,) = [n for n in names if n.endswith("entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(eps).decode()
    for line in ("worldmodels-train = worldmodels.commands.train:cli",
                 "worldmodels-evaluate = worldmodels.commands.evaluate:cli"):  # fmt: skip
        assert line in scripts


def test_installed_copy_trains_and_evaluates_outside_the_repository(wheel, tmp_path):
    site = tmp_path / "site"
    _pip("install", "--no-deps", "-q", "--target", str(site), str(wheel), cwd=tmp_path)
    work = tmp_path / "elsewhere"
    (work / "envs").mkdir(parents=True)  # a user project with its own envs/ and agents/ ...
    (work / "envs" / "__init__.py").write_text("raise ImportError('the user project envs')\n")
    (work / "agents").mkdir()
    (work / "agents" / "__init__.py").write_text("raise ImportError('the user project agents')\n")
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}

    def run(*args):
        res = subprocess.run([sys.executable, "-m", "worldmodels", *args], cwd=work, env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        return res

    where = subprocess.run(
        [sys.executable, "-c", "import worldmodels; print(worldmodels.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(site))  # the installed copy, not the checkout
    run("train", "--env", "Breakout", "--world", "diffusion", "--preset", "test", "--name", "w")
    rec = json.loads((work / "runs" / "w" / "results.json").read_text())
    assert rec["world"] == "diffusion" and rec["protocol"]["frame_skip"] == 4
    out = run("evaluate", "--agent", "random", "--env", "Breakout", "--episodes", "2").stdout
    assert "Breakout: mean return" in out
    res = subprocess.run([sys.executable, "-m", "worldmodels", "nope"], cwd=work, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and "unknown command 'nope' (valid: train, evaluate" in res.stderr
