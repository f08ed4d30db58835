"""Speed of a world and its agent: parameter counts, train steps/s per stage, imagination frames/s,
agent updates/s. Synthetic 64x64 replay, so it needs no emulator; every figure is measured here.

    python bench/world_speed.py --world diffusion --preset atari100k --batch-size 8 --device cpu
    python bench/world_speed.py --world diffusion --batch-size 32 --device cuda --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envs.dream import DreamEnv  # noqa: E402
from envs.testing import random_store  # noqa: E402
from worldmodels import config as C  # noqa: E402
from worldmodels.build import build_world_and_agent, compile_hot_modules  # noqa: E402
from worldmodels.cli import resolve_device, use_amp  # noqa: E402
from worldmodels.interfaces import EnvInfo  # noqa: E402
from worldmodels.nn.blocks import count_parameters  # noqa: E402
from worldmodels.training import StageTrainer, autocast  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, n: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", default="diffusion")
    p.add_argument("--agent", default=None, help="default: the world's default agent")
    p.add_argument("--preset", default="atari100k")
    p.add_argument(
        "--batch-size", type=int, default=8, help="imagined trajectories (and stage batch)"
    )
    p.add_argument(
        "--stage-batch-size",
        type=int,
        default=None,
        help="batch of the stage training figures (default: --batch-size; 0: each stage's "
        "configured batch, which with --batch-size equal to the agent's num_envs also gives "
        "the projected duration of a full run)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: half the cores)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--steps", type=int, default=5, help="timed calls per figure")
    p.add_argument("--compile", action="store_true", help="torch.compile the hot modules")
    p.add_argument("--num-actions", type=int, default=4, help="4 = Breakout")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    cfg = C.resolve(
        env="Breakout", world=args.world, agent=args.agent, preset=args.preset,
        overrides=[f"run.precision={args.precision}", *args.overrides],
    )  # fmt: skip
    amp = use_amp(cfg.run, device)
    info = EnvInfo(num_actions=args.num_actions, obs_shape=(3, 64, 64))
    world, agent = build_world_and_agent(
        cfg.world, cfg.agent, info, seed=0, device=device, channels_last=cfg.run.channels_last
    )
    if args.compile:
        compile_hot_modules(world, agent)
    store = random_store(num_episodes=24, length=200, obs_shape=(3, 64, 64),
                         num_actions=args.num_actions)  # fmt: skip
    b, n, w = args.batch_size, args.steps, max(1, args.steps // 3)

    out: dict = {
        "world": args.world, "agent": cfg.agent.name, "preset": args.preset, "batch_size": b,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": threads, "precision": "bf16" if amp else "fp32",
        "channels_last": cfg.run.channels_last, "compile": args.compile,
        "torch": torch.__version__,
    }  # fmt: skip
    for name, stage in world.stages().items():
        out[f"{name}_params"] = count_parameters(stage.module)
    out["world_params"] = count_parameters(world)
    # evolved agents keep their parameters outside autograd (``num_params``)
    out["agent_params"] = count_parameters(agent) or getattr(agent, "num_params", 0)

    sb = b if args.stage_batch_size is None else args.stage_batch_size
    out["stage_batch_size"] = sb or "configured"
    projected = {}  # seconds of a full run per part, if every figure is at the configured size
    epochs = range(1, getattr(cfg.schedule, "epochs", 0) + 1)
    for name, stage in world.stages().items():
        if sb:
            stage = dataclasses.replace(
                stage, training=dataclasses.replace(stage.training, batch_size=sb)
            )
        else:
            out[f"{name}_batch_size"] = stage.training.batch_size
        trainer = StageTrainer(stage, store, device, seed=0, amp=amp)
        batch = next(trainer.batches(1))  # a fixed batch: data loading is not what is measured
        sec = timed(lambda t=trainer, x=batch: t.step(x), n, w, device)
        out[f"{name}_train_s_per_step"] = sec
        out[f"{name}_train_steps_per_s"] = 1.0 / sec
        projected[name] = sec * sum(stage.training.steps_in(e) for e in epochs)

    # Imagination as the agent uses it: ``reset`` (new real contexts) then the agent's horizon of
    # steps, timed over whole trajectories, since a step's cost can depend on how far the
    # trajectory has gone (the IRIS transformer's key/value cache fills up).
    horizon = getattr(agent.config, "horizon", 15)
    dream = DreamEnv(
        world, store, num_envs=b, horizon=horizon, device=device, amp=amp, observe=agent.observes
    )
    actions = torch.zeros(b, dtype=torch.long, device=device)
    world.eval()

    reset_s, step_s = [], []

    def trajectory() -> None:
        sync(device)
        t0 = time.perf_counter()
        dream.reset()
        sync(device)
        t1 = time.perf_counter()
        for _ in range(horizon):
            dream.step(actions)
        sync(device)
        reset_s.append(t1 - t0)
        step_s.append((time.perf_counter() - t1) / horizon)

    reps = max(1, -(-n // horizon))  # whole trajectories, at least --steps steps
    sec = timed(trajectory, reps, 1, device) / horizon
    out["imagination_s_per_step"] = sec  # resets included
    out["imagination_frames_per_s"] = b / sec
    out["imagination_step_only_s"] = sum(step_s[1:]) / reps  # warm-up left out
    out["imagination_reset_s"] = sum(reset_s[1:]) / reps  # 2 x batch real contexts encoded
    out["imagination_horizon"] = horizon
    denoising = getattr(cfg.world.config, "denoising_steps", None)
    if denoising is not None:
        out["denoising_steps"] = denoising

    if getattr(agent.config, "training", None) is not None:
        configured_envs = getattr(agent.config, "num_envs", None)
        if "num_envs" in {f.name for f in dataclasses.fields(agent.config)}:
            agent.config = dataclasses.replace(agent.config, num_envs=b)  # else fixed by the agent
        m = agent.config.num_envs
        adream = DreamEnv(
            world, store, num_envs=m, horizon=horizon, device=device, amp=amp,
            observe=agent.observes,
        )  # fmt: skip
        sec = timed(lambda: agent.train_in_imagination(adream), max(1, n // 2), 1, device)
        out["agent_update_s"] = sec
        out["agent_updates_per_s"] = 1.0 / sec
        out["agent_updates_per_min"] = 60.0 / sec
        if configured_envs == m:
            projected["agent"] = sec * sum(agent.config.training.steps_in(e) for e in epochs)
        out["agent_imagined_trajectories"] = m
        out["agent_horizon"] = horizon
        if agent.observes == "features":
            obs = torch.zeros(b, world.feature_dim, device=device)
        else:
            obs = torch.zeros(b, 3, 64, 64, dtype=torch.uint8, device=device)
        state = agent.initial_state(b, device)
        first = torch.ones(b, dtype=torch.bool, device=device)
        with torch.inference_mode(), autocast(device, amp):
            sec = timed(lambda: agent.act(obs, state, first), n, w, device)
        out["agent_act_per_s"] = 1.0 / sec

    if not sb and "agent" in projected and epochs:
        # world-model stages and agent updates only: real-env collection and tests not included
        for name, sec in projected.items():
            out[f"projected_{name}_s"] = sec
        out["projected_full_run_days"] = sum(projected.values()) / 86400

    if args.json:
        print(json.dumps(out))
    else:
        width = max(map(len, out))
        for key, value in out.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                shown = str(value)
            else:
                shown = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"
            print(f"{key:<{width}}  {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
