"""End to end with a world: ``train.py --world diffusion`` on a tiny budget, TensorBoard read back,
and SIGKILL + ``--resume`` continuing every counter and optimizer."""

import json

import pytest
import torch
from tb_read import tags
from test_cli import episode_digests, kill_when, latest_checkpoint, run, start_train

pytestmark = pytest.mark.slow

TINY_WORLD = [
    "--world", "diffusion", "--preset", "test",
    "--set", "schedule.test_every=1",
    "--set", "schedule.video_every=1",
]  # fmt: skip


def test_diffusion_world_run_logs_what_it_promises(tmp_path):
    run("train.py", "--env", "Breakout", "--name", "w", *TINY_WORLD, cwd=tmp_path)
    d = tmp_path / "runs" / "w"
    t = tags(d / "tb")
    for tag in (
        "denoiser/loss", "denoiser/grad_norm", "denoiser/lr", "denoiser/steps_per_s",
        "reward_end/loss", "reward_end/steps_per_s",
        "agent/loss", "agent/imagination_frames_per_s",
        "collect/frames_per_s", "test/return_mean", "final/return_mean",
        # learning made visible (docs/evaluation.md): rare-event rates, update-to-data ratios,
        # imagination beside the real game and beside copy-last
        "reward_end/reward_base_rate", "reward_end/end_base_rate", "denoiser/update_to_data",
        "imagined_vs_real/reward_per_step_imagined", "imagined_vs_real/reward_per_step_real",
        "imagined_vs_real/end_rate_imagined", "imagined_vs_real/agent_update_to_data",
        "imagination/psnr", "imagination/psnr_copy_last",
    ):  # fmt: skip
        assert tag in t["scalars"], tag
    assert "imagination/real_vs_imagined" in t["images"]
    assert {"run/text_summary", "config/text_summary"} <= set(t["tensors"])  # text panels
    results = json.loads((d / "results.json").read_text())
    assert results["world"] == "diffusion" and results["agent"] == "actor_critic"
    out = run("evaluate.py", d, "--episodes", "1", cwd=tmp_path)  # loads the world too
    assert "Breakout: mean return" in out.stdout


def _state(d):
    ckpt = d / "checkpoints" / latest_checkpoint(d)
    return torch.load(ckpt / "state.pt", weights_only=True)["state"], json.loads(
        (ckpt / "meta.json").read_text()
    )


def test_sigkill_and_resume_continue_a_world_run(tmp_path):
    epochs = 12
    args = ["--env", "Breakout", "--name", "k", *TINY_WORLD, "--set", f"schedule.epochs={epochs}",
            "--set", "schedule.test_every=0", "--set", "schedule.video_every=0"]  # fmt: skip
    d = tmp_path / "runs" / "k"
    kill_when(start_train(*args, cwd=tmp_path), d, lambda name: name >= "epoch_000002", 240)
    killed_state, killed_meta = _state(d)
    before = episode_digests(d / "episodes")

    res = run("train.py", "--resume", d, cwd=tmp_path)
    assert "resuming from epoch_" in res.stdout
    after = episode_digests(d / "episodes")
    assert all(after.get(name) == digest for name, digest in before.items())
    state, meta = _state(d)
    assert meta["counters"]["epoch"] == epochs and meta["counters"]["resumes"] == 1
    assert meta["counters"]["env_steps"] > killed_meta["counters"]["env_steps"]
    # optimizers continued rather than restarting: 2 steps in epoch 1, then 1 per epoch
    for stage in ("denoiser", "reward_end"):
        assert (
            killed_state["stages"][stage]["updater"]["steps"]
            == killed_meta["counters"]["epoch"] + 1
        )
        assert state["stages"][stage]["updater"]["steps"] == epochs + 1
    assert (d / "results.json").exists()


def test_sb3_ppo_trains_in_the_diffusion_world_and_plays_the_real_game(tmp_path):
    args = [a for a in TINY_WORLD]
    run("train.py", "--env", "Breakout", "--name", "s", "--agent", "sb3_ppo", *args,
        "--set", "agent.steps_per_update=8", "--set", "agent.kwargs={n_steps: 4, batch_size: 8}",
        cwd=tmp_path)  # fmt: skip
    d = tmp_path / "runs" / "s"
    results = json.loads((d / "results.json").read_text())
    assert results["agent"] == "sb3_ppo" and results["world"] == "diffusion"
    assert results["env_spec"]["mode"] == "test" and len(results["returns"]) == 1
    assert "agent/num_timesteps" in tags(d / "tb")["scalars"]
