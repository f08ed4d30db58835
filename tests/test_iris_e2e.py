"""The IRIS world end to end: a tiny run killed mid-way (SIGKILL), resumed, and its TensorBoard
read back (losses, frames/s, reconstructions, real-vs-imagined video, test returns)."""

import json

import pytest
import torch
from tb_read import tags
from test_cli import episode_digests, kill_when, latest_checkpoint, run, start_train

pytestmark = pytest.mark.slow

TINY_IRIS = [
    "--world", "iris", "--preset", "test",
    "--set", "schedule.epochs=10",
    "--set", "schedule.video_every=5",
]  # fmt: skip


def test_iris_run_killed_resumed_and_logged(tmp_path):
    d = tmp_path / "runs" / "i"
    proc = start_train("--env", "Breakout", "--name", "i", *TINY_IRIS, cwd=tmp_path)
    kill_when(proc, d, lambda name: name >= "epoch_000003", 240)
    before = episode_digests(d / "episodes")

    assert "resuming from epoch_" in run("train.py", "--resume", d, cwd=tmp_path).stdout
    after = episode_digests(d / "episodes")
    assert all(after.get(name) == digest for name, digest in before.items())
    ckpt = d / "checkpoints" / latest_checkpoint(d)
    meta = json.loads((ckpt / "meta.json").read_text())
    state = torch.load(ckpt / "state.pt", weights_only=True)["state"]
    assert meta["counters"]["epoch"] == 10 and meta["counters"]["resumes"] == 1
    assert state["stages"]["tokenizer"]["updater"]["steps"] == 20  # 2 per epoch, none repeated
    t = tags(d / "tb")
    for tag in ("tokenizer/loss", "tokenizer/perplexity", "tokenizer/dead_codes",
                "transformer/loss", "transformer/steps_per_s", "agent/loss",
                "agent/imagination_frames_per_s", "collect/frames_per_s", "final/return_mean"):  # fmt: skip
        assert tag in t["scalars"], tag
    for tag in ("imagination/reconstructions", "imagination/real_vs_imagined", "final/episode"):
        assert tag in t["images"], tag
    assert json.loads((d / "results.json").read_text())["world"] == "iris"
