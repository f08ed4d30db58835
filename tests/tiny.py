"""Flags that shrink a diffusion-world run to seconds, shared by the end-to-end tests: each test
adds its own schedule (epochs, checkpoints, tests, videos) in front."""

DIFFUSION = [
    "--set", "eval.episodes=1",
    "--set", "eval.video_max_frames=20",
    "--set", "world.denoiser_training.first_epoch_steps=2",
    "--set", "world.denoiser_training.steps_per_epoch=1",
    "--set", "world.denoiser_training.batch_size=2",
    "--set", "world.reward_end_training.first_epoch_steps=2",
    "--set", "world.reward_end_training.steps_per_epoch=1",
    "--set", "world.reward_end_training.batch_size=2",
    "--set", "agent.training.first_epoch_steps=2",
    "--set", "agent.training.steps_per_epoch=1",
    "--set", "agent.num_envs=2",
    "--set", "agent.horizon=3",
    "--set", "run.progress=false",
]  # fmt: skip
