"""Exact resume: a run killed after a checkpoint and resumed ends exactly as one never killed
(the same episode files, byte for byte, the same scores), no episode is stored twice, and the
step counter counts each real step once. Unit tests of the pieces first, then the real CLI."""

from __future__ import annotations

import dataclasses
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
import torch

from worldmodels.agents.random import RandomAgent
from worldmodels.collect import Collector
from worldmodels.envs.atari import make_atari_env
from worldmodels.envs.atari_config import AtariConfig
from worldmodels.interfaces import EnvInfo
from worldmodels.replay import Episode, ReplayStore

ROOT = Path(__file__).resolve().parent.parent
SHORT = dataclasses.replace(AtariConfig(), max_episode_frames=400)  # episodes of <= 100 steps


def _collector(store: ReplayStore, seed: int = 7) -> tuple[Collector, RandomAgent]:
    env = make_atari_env(SHORT, 2, "train")
    agent = RandomAgent(RandomAgent.Config(), EnvInfo(env.num_actions, env.obs_shape), seed=3)
    return Collector(env, store, epsilon=0.3, seed=seed), agent


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("ep_*.npz"))}


def test_collector_restore_replays_the_games_and_continues_exactly(tmp_path):
    # The reference: 600 steps without a stop.
    ref, agent = _collector(ReplayStore(tmp_path / "ref"))
    ref.collect(agent, 300)
    ref.collect(agent, 300)
    ref.env.close()

    # The same, with a checkpoint after 300 steps and a "kill" 200 steps later.
    d = tmp_path / "killed"
    first, agent = _collector(ReplayStore(d))
    first.collect(agent, 300)
    saved, saved_agent, count = first.state_dict(), agent.state_dict(), len(first.store)
    first.collect(agent, 200)  # these episodes are on disk when the process dies
    first.env.close()
    written_after = len(list(d.glob("ep_*.npz"))) - count
    assert written_after > 0

    store = ReplayStore(d)  # the resumed process
    assert store.hold_back(count) == written_after
    again, agent = _collector(store)
    agent.load_state_dict(saved_agent)
    assert again.restore(saved, agent) is None
    assert again.steps_in_progress == sum(len(a) for a in saved["actions"])
    again.collect(agent, 300)
    again.env.close()
    assert store.num_held == 0  # every episode the killed run wrote was met again
    assert _files(d) == _files(tmp_path / "ref")  # byte for byte, no duplicate


def test_restore_that_cannot_replay_says_why(tmp_path):
    c, agent = _collector(ReplayStore(tmp_path))
    c.collect(agent, 300)
    state = c.state_dict()
    c.env.close()
    other, agent = _collector(ReplayStore(tmp_path))
    problem = other.restore({**state, "seed": state["seed"] + 1}, agent)  # not the games it had
    other.env.close()
    assert problem is not None and "differ" in problem
    assert other.steps_in_progress == 0  # unstarted: the caller starts a fresh stream


def _episode(value: int, length: int = 3) -> Episode:
    obs = np.full((length + 1, 3, 4, 4), value, np.uint8)
    return Episode(obs, np.arange(length, dtype=np.int64), np.ones(length, np.float32), True, False)


def test_store_files_are_byte_reproducible_and_their_digests_recorded(tmp_path, monkeypatch):
    a, b = ReplayStore(tmp_path / "a"), ReplayStore(tmp_path / "b")
    for store in (a, b):
        store.add(_episode(1))
        store.add(_episode(2))
        later = time.time() + 3600  # np.savez would stamp each member with the time of writing
        monkeypatch.setattr(time, "time", lambda later=later: later)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert a.digests() == [hashlib.sha256(p.read_bytes()).hexdigest()
                           for p in sorted((tmp_path / "a").glob("ep_*.npz"))]  # fmt: skip
    assert ReplayStore(tmp_path / "a").digests() == a.digests()


def test_held_back_episodes_are_reused_when_met_again_and_moved_aside_when_not(tmp_path):
    store = ReplayStore(tmp_path)
    for v in range(4):
        store.add(_episode(v))
    before = _files(tmp_path)
    store = ReplayStore(tmp_path)
    assert store.hold_back(2) == 2 and len(store) == 2 and store.num_steps == 6
    assert store.add(_episode(2)) == 2  # the same episode: its file is reused, not rewritten
    assert len(store) == 3 and store.num_held == 1 and _files(tmp_path) == before

    lines = []
    store.log = lines.append
    assert store.add(_episode(9)) == 3  # differs from the held ep_000003: it is moved aside
    assert store.num_held == 0 and len(store) == 4
    assert (tmp_path / "superseded-1" / "ep_000003.npz").read_bytes() == before["ep_000003.npz"]
    assert len(lines) == 1 and "superseded-1" in lines[0]
    assert int(ReplayStore(tmp_path)[3].obs[0, 0, 0, 0]) == 9

    store = ReplayStore(tmp_path)
    store.hold_back(1)
    assert [int(e.obs[0, 0, 0, 0]) for e in store.release_held()] == [1, 2, 9]
    assert len(store) == 4


# --------------------------------------------------------------------------- the real CLI

TINY_WORLD = [
    "--env", "Breakout", "--world", "diffusion", "--preset", "test",
    "--set", "schedule.epochs=9",
    "--set", "schedule.checkpoint_every=3",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(*args, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=cwd,
                            env=ENV, text=True, **kw)  # fmt: skip


def _newest(run: Path) -> tuple[str, dict] | None:
    pointer = run / "checkpoints" / "latest"
    try:
        name = pointer.read_text().strip()
        return name, json.loads((run / "checkpoints" / name / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def _kill_after_a_checkpoint_with_episodes_beyond_it(proc, run: Path, timeout: float = 240):
    """SIGKILL ``proc`` once a checkpoint from epoch 3 on exists and an episode file was written
    after it (so the resume has episodes to meet again)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        newest = _newest(run)
        if newest and newest[0] >= "epoch_000003":
            on_disk = len(list((run / "episodes").glob("ep_*.npz")))
            if on_disk > newest[1]["counters"]["replay_episodes"]:
                break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def _steps_identity(run: Path) -> tuple[int, int]:
    """(the step counter of the newest checkpoint, steps in episode files + steps of the
    episodes it had in progress)."""
    name, meta = _newest(run)
    state = torch.load(run / "checkpoints" / name / "state.pt", weights_only=True)["state"]
    in_files = 0
    for p in (run / "episodes").glob("ep_*.npz"):
        with np.load(p) as z:
            in_files += len(z["act"])
    in_progress = sum(len(a) for a in state["collector"]["actions"])
    return meta["counters"]["env_steps"], in_files + in_progress


@pytest.mark.slow
def test_sigkill_then_resume_ends_exactly_like_an_uninterrupted_run(tmp_path):
    ref = _train("--name", "ref", *TINY_WORLD, cwd=tmp_path, stdout=subprocess.DEVNULL)
    run = tmp_path / "runs" / "k"
    killed = _train("--name", "k", *TINY_WORLD, cwd=tmp_path, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)  # fmt: skip
    _kill_after_a_checkpoint_with_episodes_beyond_it(killed, run)
    name, meta = _newest(run)
    written_after = (
        len(list((run / "episodes").glob("ep_*.npz"))) - meta["counters"]["replay_episodes"]
    )
    assert written_after > 0

    resumed = _train("--resume", run, cwd=tmp_path, stdout=subprocess.PIPE)
    # While it runs, a second process on the same run is refused, naming the first.
    deadline = time.time() + 60
    while not (run / ".lock").read_text().startswith(f"{resumed.pid} ") and time.time() < deadline:
        time.sleep(0.01)
    second = subprocess.run([sys.executable, str(ROOT / "train.py"), "--resume", str(run)],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1
    assert f"is in use by process {resumed.pid}" in second.stderr
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resuming from {name}" in out and f"({written_after} written after it" in out
    assert ref.wait(timeout=300) == 0

    mine, theirs = _files(run / "episodes"), _files(tmp_path / "runs" / "ref" / "episodes")
    digests = [hashlib.sha256(b).hexdigest() for b in mine.values()]
    assert len(set(digests)) == len(digests)  # no episode stored twice
    assert mine == theirs  # the very files of the run that was never killed
    counted, played = _steps_identity(run)
    assert counted == played  # every real step counted once
    assert _steps_identity(tmp_path / "runs" / "ref") == (counted, played)
    a, b = (json.loads((tmp_path / "runs" / n / "results.json").read_text()) for n in ("k", "ref"))
    assert a["returns"] == b["returns"] and a["env_steps"] == b["env_steps"]
