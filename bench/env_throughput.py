"""Real-env speed: agent steps/s and emulator frames/s of ``AtariVecEnv`` under random actions.

    python bench/env_throughput.py [--game Breakout] [--seconds 5] [--backend vector|python|both]
                                   [--num-envs 1 4 8] [--json]

Training mode, Atari-100k protocol (``AtariConfig`` defaults), random actions drawn up front, so
the numbers are the env alone (emulation, max-pool, resize, batching into torch tensors).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import numpy as np
import torch

from worldmodels.envs.atari import make_atari_env
from worldmodels.envs.atari_config import AtariConfig


def measure(config: AtariConfig, num_envs: int, seconds: float, seed: int = 0) -> dict:
    """Step ``num_envs`` envs with random actions for about ``seconds``; return the rates."""
    with make_atari_env(config, num_envs, "train") as env:
        rng = np.random.default_rng(seed)
        actions = torch.from_numpy(rng.integers(0, env.num_actions, (1024, num_envs)))
        env.reset(seed=seed)
        for t in range(20):  # warm-up: first frames, thread start, allocator
            env.step(actions[t])
        steps, episodes = 0, 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for t in range(64):
                _, _, terminated, truncated, _ = env.step(actions[(steps + t) % 1024])
                episodes += int((terminated | truncated).sum())
            steps += 64
        env_steps = steps * num_envs
        return {
            "backend": env.backend,
            "num_envs": num_envs,
            "env_threads": env.num_threads,
            "env_steps_per_s": env_steps / elapsed,
            "frames_per_s": env_steps * config.frame_skip / elapsed,
            "env_steps": env_steps,
            "episodes": episodes,
            "seconds": elapsed,
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--game", default="Breakout")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--backend", choices=["vector", "python", "both"], default="both")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # the env does not use torch ops; keep the process light
    backends = ["vector", "python"] if args.backend == "both" else [args.backend]
    base = AtariConfig(game=args.game)
    results = [
        measure(dataclasses.replace(base, backend=backend), n, args.seconds)
        for backend in backends
        for n in args.num_envs
    ]
    record = {
        "game": args.game,
        "protocol": base.protocol,
        "frame_skip": base.frame_skip,
        "size": base.size,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    if args.json:
        print(json.dumps(record))
        return
    print(
        f"{args.game}, {base.protocol} protocol (frame skip {base.frame_skip}, {base.size}x"
        f"{base.size} RGB), random actions, train mode, {os.cpu_count()} CPUs, "
        f"torch threads {record['torch_threads']}"
    )
    print(f"{'backend':>8} {'envs':>5} {'threads':>8} {'steps/s':>10} {'frames/s':>10}")
    for r in results:
        print(
            f"{r['backend']:>8} {r['num_envs']:>5} {r['env_threads']:>8} "
            f"{r['env_steps_per_s']:>10,.0f} {r['frames_per_s']:>10,.0f}"
        )


if __name__ == "__main__":
    main()
