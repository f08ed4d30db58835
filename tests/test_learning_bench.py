"""bench/learning.py end to end at a tiny size: both phases run, and learning.json holds what it
promises (baselines beside every checkpoint's world, the random policy's returns from the world
run's own final test, CIs that contain their means)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

TINY = [
    "--agent-updates", "3", "--horizon", "4", "--contexts", "2", "--curve-every", "1",
    "--set", "schedule.initial_collect_steps=300", "--set", "schedule.initial_collect_max_steps=300",
    "--set", "schedule.env_steps_budget=300", "--set", "schedule.epochs=2",
    "--set", "world.denoiser_training.steps_per_epoch=2",
    "--set", "world.reward_end_training.steps_per_epoch=2",
    "--set", "eval.episodes=4", "--set", "eval.num_envs=2", "--set", "env.max_episode_frames=2000",
    "--set", "run.progress=false", "--set", "run.threads=1",
]  # fmt: skip


def _bench():
    spec = importlib.util.spec_from_file_location("learning_bench", ROOT / "bench" / "learning.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_learning_bench_writes_its_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "lb"
    bench = _bench()
    assert bench.main(["--size", "cpu", "--world", "diffusion", "--out", str(out), *TINY]) == 0
    rec = json.loads((out / "learning.json").read_text())
    assert rec["world"] == "diffusion" and rec["agent"] == "actor_critic" and rec["size"] == "cpu"
    q = rec["world_quality"]
    assert list(q["checkpoints"]) == ["epoch_0", "epoch_1", "epoch_2"] and q["final"] == "epoch_2"
    assert set(q["baselines"]) == {"copy-last", "mean-frame"}
    for row in [*q["checkpoints"].values(), *q["baselines"].values()]:
        assert len(row["psnr"]) == len(row["moving_psnr"]) == 4
    assert len(q["final_beats_copy_last_moving_psnr"]) == 4
    assert rec["budgets"]["stage_steps"] == {"denoiser": 4, "reward_end": 4}
    assert rec["agent_training"]["updates"] == 3 and not rec["agent_training"]["cut_by_deadline"]
    r = rec["real_returns"]
    world_run = json.loads((out / "world" / "results.json").read_text())
    assert r["random"]["returns"] == world_run["returns"] and world_run["agent"] == "random"
    for side in ("agent", "random"):
        lo, hi = r[side]["ci95"]
        assert r[side]["episodes"] == 4 and lo <= r[side]["mean"] <= hi
    lo, hi = r["agent_minus_random_ci95"]
    assert lo <= r["agent"]["mean"] - r["random"]["mean"] <= hi
    assert r["agent_beats_random"] == (lo > 0)
    assert np.isfinite(rec["seconds"]["total"])
    assert (out / "world" / "tb").is_dir()
    # a second run into the same directory is refused before any work
    with pytest.raises(Exception, match="exists"):
        bench.main(["--size", "cpu", "--world", "diffusion", "--out", str(out), *TINY])
