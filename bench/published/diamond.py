"""Times the published DIAMOND code (Alonso et al. 2024, github.com/eloialonso/diamond, its Atari
version) the way ``bench/world_speed.py`` times ours: random weights, synthetic 64x64 frames, 4
actions, the published configs (``config/agent/default.yaml``, ``config/trainer.yaml``), built and
stepped as its trainer does, eagerly (no ``torch.compile``). Prints one JSON object.

    python bench/published/diamond.py --src ~/src/diamond --batch-size 8 --threads 1

Needs the published code's own requirements (omegaconf, torcheval); wandb, imported but only used
for logging, is stood in for where it is missing. Figures:

* ``denoiser_step_s``: loss + backward + clip + AdamW on ``batch`` segments of the published length
  (4 context frames + 1 + 1 autoregressive step: 2 denoising passes, as our denoiser stage does);
* ``reward_end_step_s``: the same for the reward/end model (19-step segments);
* ``imagination_trajectory_s``: ``WorldModelEnv`` with ``batch`` rows, a whole 15-step trajectory
  with its reset (its first reset preloads 256 batches of contexts; timed apart as
  ``preload_s``); ``imagination_step_s``: the same per step;
* ``agent_update_s``: ``ActorCritic.compute_loss`` (15 imagined steps, with the restarts and
  burn-ins of rows that end) + backward + clip + AdamW.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, load_yaml, mean_time, number, stand_in, train_step, use_checkout  # noqa: E402

NUM_ACTIONS = 4  # Breakout


def main() -> int:
    args = arguments(__doc__, "eloialonso/diamond")
    use_checkout(args.src, "models/diffusion/denoiser.py")
    stood_in = stand_in("wandb")

    import torch
    import torch.utils.data

    try:  # torch >= 2.5 no longer takes the (always ignored) argument the published sampler passes
        torch.utils.data.Sampler.__init__(object.__new__(torch.utils.data.Sampler), None)
    except TypeError:
        torch.utils.data.Sampler.__init__ = lambda self, data_source=None: None  # type: ignore

    from agent import Agent, AgentConfig
    from data import Batch, BatchSampler, Dataset, Episode, SegmentId, collate_segments_to_batch
    from envs import WorldModelEnv, WorldModelEnvConfig
    from models.actor_critic import ActorCriticConfig, ActorCriticLossConfig
    from models.diffusion import DenoiserConfig, DiffusionSamplerConfig, InnerModelConfig
    from models.diffusion import SigmaDistributionConfig
    from models.rew_end_model import RewEndModelConfig
    from utils import configure_opt, count_parameters, get_lr_sched, set_seed

    torch.set_num_threads(args.threads)
    set_seed(0)
    b = args.batch_size

    # ---- the published configs (hydra's interpolations filled in by hand)
    agent_y = load_yaml(args.src / "config/agent/default.yaml")
    size = load_yaml(args.src / "config/env/atari.yaml")["train"]["size"]
    tr = load_yaml(args.src / "config/trainer.yaml")

    def fields(d: dict) -> dict:
        return {k: number(v) for k, v in d.items() if k != "_target_"}

    den = agent_y["denoiser"]
    inner = InnerModelConfig(**fields(den["inner_model"]))
    channels = inner.img_channels
    agent_cfg = AgentConfig(
        denoiser=DenoiserConfig(inner_model=inner, sigma_data=den["sigma_data"],
                                sigma_offset_noise=den["sigma_offset_noise"]),
        rew_end_model=RewEndModelConfig(**{**fields(agent_y["rew_end_model"]),
                                           "img_channels": channels, "img_size": size}),
        actor_critic=ActorCriticConfig(**{**fields(agent_y["actor_critic"]),
                                          "img_channels": channels, "img_size": size}),
        num_actions=NUM_ACTIONS,
    )  # fmt: skip
    w = tr["world_model_env"]
    sampler = {**fields(w["diffusion_sampler"]), "s_tmax": float("inf")}
    wm_cfg = WorldModelEnvConfig(horizon=w["horizon"],
                                 num_batches_to_preload=w["num_batches_to_preload"],
                                 diffusion_sampler=DiffusionSamplerConfig(**sampler))  # fmt: skip
    sigma_cfg = SigmaDistributionConfig(**fields(tr["denoiser"]["sigma_distribution"]))
    ac_loss_cfg = ActorCriticLossConfig(**fields(tr["actor_critic"]["actor_critic_loss"]))
    n_cond = inner.num_steps_conditioning
    den_len = n_cond + 1 + tr["denoiser"]["training"]["num_autoregressive_steps"]
    re_len = w["horizon"] + n_cond  # ${world_model_env.horizon} + num_steps_conditioning
    weights = tr["denoiser"]["training"]["sample_weights"]

    # ---- the agent, its optimisers and its imagination, as the trainer builds them
    agent = Agent(agent_cfg)
    names = {"denoiser": "denoiser", "reward_end": "rew_end_model", "agent": "actor_critic"}
    opts, scheds, clips = {}, {}, {}
    for key, name in names.items():
        opts[key] = configure_opt(getattr(agent, name), **fields(tr[name]["optimizer"]))
        scheds[key] = get_lr_sched(opts[key], tr[name]["training"]["lr_warmup_steps"])
        clips[key] = number(tr[name]["training"]["max_grad_norm"])

    def frames(*shape):  # 8-bit frames in [-1, 1], as the published data loader gives them
        return torch.randint(0, 256, shape).float().div(255).mul(2).sub(1)

    dataset = Dataset(args.src / "_bench_unused", "bench", cache_in_ram=True, save_on_disk=False)
    for _ in range(24):
        n = 200
        dataset.add_episode(Episode(obs=frames(n, channels, size, size),
                                    act=torch.randint(0, NUM_ACTIONS, (n,)), rew=torch.zeros(n),
                                    end=torch.zeros(n, dtype=torch.uint8),
                                    trunc=torch.zeros(n, dtype=torch.uint8), info={}))  # fmt: skip
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=BatchSampler(dataset, b, n_cond, weights),
        collate_fn=collate_segments_to_batch, num_workers=0,
    )  # fmt: skip
    env = WorldModelEnv(agent.denoiser, agent.rew_end_model, loader, wm_cfg)
    agent.setup_training(sigma_cfg, ac_loss_cfg, env)
    agent.train()

    def batch(t: int):
        return Batch(obs=frames(b, t, channels, size, size),
                     act=torch.randint(0, NUM_ACTIONS, (b, t)),
                     rew=torch.randint(-1, 2, (b, t)).float(),
                     end=torch.zeros(b, t, dtype=torch.long),
                     trunc=torch.zeros(b, t, dtype=torch.long),
                     mask_padding=torch.ones(b, t, dtype=torch.bool), info=[{}] * b,
                     segment_ids=[SegmentId(i, 0, t) for i in range(b)])  # fmt: skip

    out: dict = {"code": "published DIAMOND", "src": str(args.src), "batch_size": b,
                 "threads": args.threads, "precision": "fp32", "torch": torch.__version__,
                 "stood_in": stood_in, "denoiser_seq_len": den_len,
                 "reward_end_seq_len": re_len, "horizon": wm_cfg.horizon,
                 "denoising_steps": wm_cfg.diffusion_sampler.num_steps_denoising,
                 "params": {key: count_parameters(getattr(agent, name))
                            for key, name in names.items()}}  # fmt: skip
    share = {}

    for key, length in (("denoiser", den_len), ("reward_end", re_len)):
        model, x = getattr(agent, names[key]), batch(length)
        out[f"{key}_step_s"], share[key] = mean_time(
            lambda m=model, x=x, k=key: train_step(
                lambda: m.compute_loss(x)[0], m, opts[k], clips[k], scheds[k]),
            args.repeats)  # fmt: skip

    zeros = torch.zeros(b, dtype=torch.long)
    t0 = time.perf_counter()
    with torch.no_grad():
        env.reset()  # the first reset preloads and burns in num_batches_to_preload batches
    out["preload_s"] = time.perf_counter() - t0

    def trajectory():
        with torch.no_grad():
            env.reset()
            for _ in range(wm_cfg.horizon):
                env.step(zeros)

    sec, share["imagination"] = mean_time(trajectory, args.repeats)
    out["imagination_trajectory_s"] = sec
    out["imagination_step_s"] = sec / wm_cfg.horizon
    out["trained_transitions"] = wm_cfg.horizon  # the actor-critic's loss reads every step

    ac = agent.actor_critic
    out["agent_update_s"], share["agent"] = mean_time(
        lambda: train_step(lambda: ac.compute_loss()[0], ac, opts["agent"], clips["agent"],
                           scheds["agent"]), args.repeats)  # fmt: skip
    out["cpu_share"] = {k: round(v, 3) for k, v in share.items()}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
