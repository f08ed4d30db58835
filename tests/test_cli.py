"""End-to-end: the real entry points on tiny budgets, run as a user would (subprocesses)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tb_read import tags

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--preset", "test", "--set", "schedule.test_every=1", "--set", "eval.episodes=2"]  # fmt: skip

pytestmark = pytest.mark.slow


def run(script, *args, cwd, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if check and res.returncode != 0:
        raise AssertionError(f"{script} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def episode_digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.glob("ep_*.npz")}


def latest_checkpoint(run_dir: Path) -> str:
    """The name of the run's newest checkpoint ("" before the first)."""
    p = run_dir / "checkpoints" / "latest"
    return p.read_text().strip() if p.exists() else ""


def start_train(*args, cwd) -> subprocess.Popen:
    """``train.py ARGS`` in the background, output discarded."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=cwd, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def kill_when(proc: subprocess.Popen, run_dir: Path, reached, timeout: float) -> str:
    """SIGKILL ``proc`` as soon as ``reached(latest checkpoint name)`` (or after ``timeout`` s)
    and return that name; fails if the run ended by itself first."""
    deadline = time.time() + timeout
    while time.time() < deadline and not reached(latest_checkpoint(run_dir)):
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return latest_checkpoint(run_dir)


def test_train_smoke_writes_everything_it_promises(tmp_path):
    run("train.py", "--env", "Breakout", "--name", "a", "--seed", "1", *TINY, cwd=tmp_path)
    d = tmp_path / "runs" / "a"
    for name in ("config.yaml", "provenance.json", "results.json", "checkpoints/latest"):
        assert (d / name).exists(), name
    assert len(list((d / "episodes").glob("ep_*.npz"))) > 0
    results = json.loads((d / "results.json").read_text())
    assert results["game"] == "Breakout" and results["episodes"] == 2 and results["seed"] == 1
    assert results["env_spec"]["versions"]["ale_py"]
    assert results["protocol"]["sticky_action_prob"] == 0.0
    prov = json.loads((d / "provenance.json").read_text())["sessions"][0]
    assert prov["env_spec"]["mode"] == "train" and prov["versions"]["torch"]
    t = tags(d / "tb")
    for tag in ("collect/steps_per_s", "collect/frames_per_s", "replay/steps", "test/return_mean",
                "final/return_mean", "final/hns"):  # fmt: skip
        assert tag in t["scalars"], tag
    assert "final/episode" in t["images"]  # the test-episode video (an animated GIF)


def test_seeded_cpu_runs_repeat_exactly(tmp_path):
    for name in ("x", "y"):
        run("train.py", "--env", "Breakout", "--name", name, *TINY, cwd=tmp_path)
    x, y = (tmp_path / "runs" / n for n in ("x", "y"))
    ex, ey = sorted((x / "episodes").glob("ep_*.npz")), sorted((y / "episodes").glob("ep_*.npz"))
    assert len(ex) == len(ey) > 0
    for a, b in zip(ex, ey, strict=True):
        with np.load(a) as fa, np.load(b) as fb:
            for key in ("obs", "act", "rew"):
                assert np.array_equal(fa[key], fb[key]), (a.name, key)
    rx, ry = (json.loads((d / "results.json").read_text()) for d in (x, y))
    assert rx["returns"] == ry["returns"] and rx["lengths"] == ry["lengths"]


def test_sigkill_then_resume_loses_no_episode(tmp_path):
    args = ["--env", "Breakout", "--name", "k", *TINY, "--set", "schedule.epochs=60",
            "--set", "schedule.test_every=0", "--set", "schedule.num_envs=1"]  # fmt: skip
    d = tmp_path / "runs" / "k"
    latest = d / "checkpoints" / "latest"
    kill_when(start_train(*args, cwd=tmp_path), d, lambda name: name >= "epoch_000003", 120)
    killed_at = json.loads(
        (d / "checkpoints" / latest.read_text().strip() / "meta.json").read_text()
    )
    before = episode_digests(d / "episodes")
    assert before and not (d / "results.json").exists()

    res = run("train.py", "--resume", d, cwd=tmp_path)
    assert "resuming from epoch_" in res.stdout
    after = episode_digests(d / "episodes")
    assert all(after.get(name) == digest for name, digest in before.items())  # nothing lost
    assert sorted(after) == [f"ep_{i:06d}.npz" for i in range(len(after))]  # no gap
    assert len(after) > len(before)
    final = json.loads((d / "checkpoints" / latest.read_text().strip() / "meta.json").read_text())
    assert final["counters"]["epoch"] == 60 and final["counters"]["resumes"] == 1
    assert final["counters"]["env_steps"] > killed_at["counters"]["env_steps"]
    assert (d / "results.json").exists()


def test_evaluate_random_agent_and_a_trained_run(tmp_path):
    run("evaluate.py", "--agent", "random", "--env", "Breakout", "--episodes", "3",
        "--name", "ev", "--set", "run.progress=false", cwd=tmp_path)  # fmt: skip
    d = tmp_path / "runs" / "ev"
    res = json.loads((d / "results.json").read_text())
    assert len(res["returns"]) == 3 and res["mean"] == pytest.approx(np.mean(res["returns"]))
    assert res["reference"] == {"random": 1.7, "human": 30.5}
    assert (
        res["env_spec"]["mode"] == "test"
        and res["env_spec"]["life_loss_terminal_effective"] is False
    )
    t = tags(d / "tb")
    assert "evaluate/return_mean" in t["scalars"] and "evaluate/episode" in t["images"]

    run("train.py", "--env", "Pong", "--name", "tr", *TINY, cwd=tmp_path)
    out = run("evaluate.py", tmp_path / "runs" / "tr", "--episodes", "1", cwd=tmp_path)
    assert "Pong: mean return" in out.stdout
    assert len(list((tmp_path / "runs" / "tr").glob("results.*.json"))) == 1  # the old one is kept


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train.py", "--env", "Brekout"], "unknown Atari game 'Brekout'"),
        (["train.py", "--world", "nope"], "unknown world 'nope'"),
        (["train.py", "--set", "schedule.epochz=1"], "unknown config key 'schedule.epochz'"),
        (["train.py", "--bogus"], "unrecognized arguments: --bogus"),
        (["train.py", "--resume", "nowhere"], "nowhere is not a run directory"),
        (["evaluate.py", "--agent", "nope"], "unknown agent 'nope' (valid: actor_critic, "),
        (["evaluate.py", "norun"], "norun is not a run directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    res = run(*args, cwd=tmp_path, check=False)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr


def test_existing_run_and_corrupt_checkpoint_are_refused_without_damage(tmp_path):
    run("train.py", "--env", "Breakout", "--name", "c", *TINY, cwd=tmp_path)
    d = tmp_path / "runs" / "c"
    before = episode_digests(d / "episodes")
    res = run("train.py", "--env", "Breakout", "--name", "c", *TINY, cwd=tmp_path, check=False)
    assert res.returncode == 2 and "already exists" in res.stderr
    assert episode_digests(d / "episodes") == before

    ckpt = d / "checkpoints" / (d / "checkpoints" / "latest").read_text().strip()
    (ckpt / "weights.safetensors").write_bytes(b"\x00" * 10)
    res = run("evaluate.py", d, "--episodes", "1", cwd=tmp_path, check=False)
    assert res.returncode == 2 and "weights.safetensors is corrupt" in res.stderr
    res = run("train.py", "--resume", d, cwd=tmp_path, check=False)
    assert res.returncode == 2 and "corrupt" in res.stderr
    assert episode_digests(d / "episodes") == before


def test_help_lists_the_valid_choices(tmp_path):
    out = run("train.py", "--help", cwd=tmp_path).stdout
    for word in ("Breakout", "MsPacman", "atari100k", "machado", "smoke", "random", "--resume"):
        assert word in out
