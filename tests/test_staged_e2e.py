"""The staged schedule end to end (``--world vae``): TensorBoard read back, and SIGKILL inside a
stage and at a stage boundary, each followed by ``--resume``, neither losing nor repeating work."""

import json

import pytest
import torch
from tb_read import tags
from test_cli import episode_digests, kill_when, latest_checkpoint, run, start_train

pytestmark = pytest.mark.slow

TINY_VAE = [
    "--world", "vae", "--preset", "test",
    "--set", "schedule.initial_collect_steps=120",
    "--set", "world.vae_training.steps_per_epoch=40",
]  # fmt: skip


def test_vae_world_staged_run_logs_every_stage(tmp_path):
    run("train.py", "--env", "Breakout", "--name", "v", *TINY_VAE, cwd=tmp_path)
    d = tmp_path / "runs" / "v"
    t = tags(d / "tb")
    for tag in ("vae/loss", "vae/kl", "mdn_rnn/loss", "mdn_rnn/nll", "agent/fitness_mean",
                "collect/frames_per_s", "final/return_mean", "mdn_rnn/update_to_data",
                "mdn_rnn/reward_base_rate", "imagined_vs_real/reward_per_step_imagined",
                "imagined_vs_real/reward_per_step_real", "imagination/moving_psnr_copy_last",
                ):  # fmt: skip
        assert tag in t["scalars"], tag
    for tag in ("imagination/reconstructions", "imagination/real_vs_imagined", "final/episode"):
        assert tag in t["images"], tag
    results = json.loads((d / "results.json").read_text())
    assert results["world"] == "vae" and results["agent"] == "cmaes"


def _kill_at(args, d, name, cwd):
    latest = kill_when(start_train(*args, cwd=cwd), d, lambda n: n == name, 240)
    assert latest == name, f"expected to kill at {name}, latest is {latest}"


def test_sigkill_inside_a_stage_and_at_a_boundary_then_resume(tmp_path):
    # phases: 0 collect, 1 vae, 2 mdn_rnn, 3 agent, 4 test; checkpoints every 20 steps inside a
    # phase. The MDN-RNN phase is slowed (big batches) so that the run sits on its boundary
    # checkpoint long enough to be killed there.
    args = ["--env", "Breakout", "--name", "k", *TINY_VAE,
            "--set", "world.mdn_training.steps_per_epoch=60",
            "--set", "world.mdn_training.batch_size=64"]  # fmt: skip
    d = tmp_path / "runs" / "k"
    _kill_at(args, d, "phase01_000000020", tmp_path)  # inside the VAE stage
    episodes = episode_digests(d / "episodes")

    _kill_at(["--resume", d], d, "phase02_000000000", tmp_path)  # VAE -> MDN-RNN
    assert episode_digests(d / "episodes") == episodes  # collection was not repeated

    run("train.py", "--resume", d, cwd=tmp_path)
    ckpt = d / "checkpoints" / latest_checkpoint(d)
    state = torch.load(ckpt / "state.pt", weights_only=True)["state"]
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["counters"]["resumes"] == 2
    # each stage trained exactly its budget, once, across the two kills
    assert state["stages"]["vae"]["updater"]["steps"] == 40
    assert state["stages"]["mdn_rnn"]["updater"]["steps"] == 60
    assert (d / "results.json").exists()
