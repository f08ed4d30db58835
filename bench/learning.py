"""A short learning benchmark: does this world learn the game's dynamics beyond trivial
baselines, and does an agent trained in it beat the random policy in the real game?

    python bench/learning.py --size cpu --world diffusion            # <= 60 min on 2 CPU cores
    python bench/learning.py --size gpu --world iris --agent actor_critic   # <= 8 min, one H100/H200

Two phases, each with a fixed budget (the sizes below; ``--set`` changes any config value):

1. **World.** ``train.py --agent random``: real data collected by the uniformly random policy
   (``schedule.initial_collect_steps``), the world trained on it for ``schedule.epochs`` epochs
   (a checkpoint after each), and the random policy's final real test (``eval.episodes``, >= 30):
   a normal run directory, ``<out>/world``. Then every ``--curve-every``-th checkpoint's world is
   rolled out open loop on held-out real episodes (fresh test-mode games, never in replay) beside
   the copy-last and mean-frame baselines: PSNR / SSIM of the whole frame and PSNR on the pixels
   that move, per horizon step; reward and end recall / precision beside the base rates, open
   loop and teacher-forced (``worldmodels.compare``).
2. **Agent.** The agent trains in imagination of the final world for ``--agent-updates`` updates,
   then plays the same real test games (same seed) as the random policy did.

Everything lands in ``<out>/learning.json`` and one TensorBoard run, ``<out>/world/tb`` (the
world's training curves, then ``learning/`` and ``compare/`` tags). Each return figure has a 95%
bootstrap CI, and the agent-minus-random difference has one too: "beats random" means that CI is
above 0. The numbers are reported whatever they show.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train  # noqa: E402
from worldmodels import config as C  # noqa: E402
from worldmodels.errors import UserError  # noqa: E402

SIZES = {
    "cpu": {
        "preset": "learn-cpu", "device": "cpu", "agent_updates": 400, "horizon": 16,
        "contexts": 32, "curve_every": 5, "max_minutes": 60,
        "about": "mid-size networks, 10k random steps, 10 epochs of world training, 400 agent "
        "updates; <= 60 min on 2 CPU cores",
    },
    "gpu": {
        "preset": "learn-gpu", "device": "cuda", "agent_updates": 1000, "horizon": 32,
        "contexts": 64, "curve_every": 5, "max_minutes": 8,
        "about": "the published networks, 10k random steps, 10 epochs of world training, 1000 "
        "agent updates; <= 8 min on one H100/H200",
    },
}  # fmt: skip


def parse(argv):
    p = argparse.ArgumentParser(
        prog="bench/learning.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--size", choices=sorted(SIZES), required=True)
    p.add_argument("--world", required=True, help="world model (diffusion, iris, vae, ...)")
    p.add_argument("--agent", help="agent trained in imagination (default: the world's own)")
    p.add_argument("--env", default="Breakout", help="game (default: Breakout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output directory (default: runs/learning-<world>-<size>-<time>)")
    p.add_argument("--agent-updates", type=int, help="default: the size's")
    p.add_argument("--horizon", type=int, help="open-loop steps scored (default: the size's)")
    p.add_argument("--contexts", type=int, help="held-out real contexts (default: the size's)")
    p.add_argument(
        "--curve-every", type=int, help="score every N-th epoch's world (default: the size's)"
    )
    p.add_argument(
        "--max-minutes", type=float,
        help="wall-clock guard: agent training stops early (and says so) to finish within it "
        "(default: the size's)",
    )  # fmt: skip
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="config override for both phases (repeatable), e.g. --set eval.episodes=50",
    )  # fmt: skip
    p.add_argument("--device", help="default: the size's (cpu or cuda)")
    return p.parse_args(argv)


def _bench_args(args) -> dict:
    size = SIZES[args.size]
    keys = ("agent_updates", "horizon", "contexts", "curve_every", "max_minutes")
    out = {k: getattr(args, k) for k in keys}
    for k, v in out.items():
        out[k] = size[k] if v is None else v
        if out[k] < (0 if k == "agent_updates" else 1):
            raise UserError(f"--{k.replace('_', '-')} must be at least 1, got {out[k]}")
    return out


def _scores_row(comparison, label: str) -> dict:
    sc = comparison.scores[label]
    return {
        "psnr": sc.psnr, "ssim": sc.ssim, "moving_psnr": sc.moving_psnr,
        "reward_accuracy": sc.reward_accuracy, "end_accuracy": sc.end_accuracy,
        "open_loop": sc.open_loop, "teacher_forced": sc.teacher_forced,
    }  # fmt: skip


def _beats(world: list, baseline: list) -> list[bool | None]:
    return [None if w is None or b is None else w > b for w, b in zip(world, baseline, strict=True)]


def world_quality(run, cfg, device, amp, b: dict, seed: int) -> dict:
    """Open-loop scores of every ``curve_every``-th checkpoint's world (and the last) on held-out
    real episodes, beside the baselines; logged to ``<run tb>/compare`` (one TensorBoard run per
    column; x-axis: the horizon step)."""
    from worldmodels import contract
    from worldmodels.build import build_world, env_factory, env_info_of
    from worldmodels.checkpoint import complete_checkpoints, load_checkpoint
    from worldmodels.compare import (
        compare_worlds,
        format_comparison,
        log_comparison,
        record_segments,
    )
    from worldmodels.registry import WORLDS
    from worldmodels.seeding import derive_seed

    ckpts = complete_checkpoints(run.checkpoints)
    kind = cfg.schedule.kind
    if kind == "auto":
        kind = contract.schedule_kind(WORLDS.get(cfg.world.name))
    if kind == "staged":
        # phases, not epochs: the world is complete only after its last stage
        chosen, labels = ckpts[-1:], ["final"]
    else:
        epochs = [json.loads((c / "meta.json").read_text())["counters"]["epoch"] for c in ckpts]
        picked = [(c, e) for c, e in zip(ckpts, epochs, strict=True) if e % b["curve_every"] == 0]
        if not picked or picked[-1][0] != ckpts[-1]:
            picked.append((ckpts[-1], epochs[-1]))
        chosen, labels = [c for c, _ in picked], [f"epoch_{e}" for _, e in picked]
    env = env_factory(cfg.env)("test", min(b["contexts"], 8))
    try:
        info = env_info_of(env)
        worlds = {}
        for c, label in zip(chosen, labels, strict=True):
            w = build_world(cfg.world, info, device=device, channels_last=cfg.run.channels_last)
            load_checkpoint(c, {"world": w}, map_location=device)
            worlds[label] = w.eval()
        context = max(w.context_len for w in worlds.values())
        segments = record_segments(
            env, b["contexts"], context + b["horizon"],
            seed=derive_seed(seed, "learning", "held-out"),
            life_loss_ends=cfg.env.life_loss_terminal,
        )  # fmt: skip
    finally:
        env.close()
    cmp = compare_worlds(
        worlds, segments, horizon=b["horizon"], device=device, amp=amp,
        seed=derive_seed(seed, "learning", "imagine"),
    )  # fmt: skip
    print(format_comparison(cmp))
    log_comparison(cmp, Path(run.tb) / "compare")  # one TensorBoard run per column
    final = cmp.labels[-1]
    copy = cmp.scores["copy-last"]
    return {
        "checkpoints": {k: _scores_row(cmp, k) for k in cmp.labels},
        "baselines": {k: _scores_row(cmp, k) for k in cmp.baselines},
        "moving_fraction": cmp.moving_fraction,
        "real_events": {
            "transitions": copy.transitions,
            "nonzero_rewards": copy.real_nonzero_rewards,
            "ends": copy.real_ends,
        },  # fmt: skip
        "final": final,
        "final_beats_copy_last_moving_psnr": _beats(
            cmp.scores[final].moving_psnr, copy.moving_psnr
        ),
        "final_beats_copy_last_psnr": _beats(cmp.scores[final].psnr, copy.psnr),
        "contexts": b["contexts"],
        "horizon": b["horizon"],
    }


def train_agent(run, cfg_world, agent_cfg, device, amp, b, deadline, logger) -> tuple:
    """The agent trained in imagination of the run's final world; returns it, its world, and a
    record of the training (updates done, seconds, whether the deadline cut it short)."""
    from worldmodels.build import build_dream, build_world_and_agent, env_factory, env_info_of
    from worldmodels.checkpoint import latest_checkpoint, load_checkpoint
    from worldmodels.graphs import graphs_enabled
    from worldmodels.replay import ReplayStore

    probe = env_factory(cfg_world.env)("train", 1)
    info = env_info_of(probe)
    probe.close()
    world, agent = build_world_and_agent(
        cfg_world.world, agent_cfg.agent, info, seed=cfg_world.run.seed, device=device,
        channels_last=cfg_world.run.channels_last,
    )  # fmt: skip
    load_checkpoint(latest_checkpoint(run.checkpoints), {"world": world}, map_location=device)
    world.eval()
    store = ReplayStore(run.episodes)  # read only: nothing is added
    graphs = "cuda" if graphs_enabled(agent_cfg.run.cuda_graphs, device) else None
    dream = build_dream(agent_cfg, world, agent, store, device=device, amp=amp, graphs=graphs)
    done, logs, t0, cut = 0, [], time.perf_counter(), False
    if dream is None:
        print(f"agent {agent_cfg.agent.name} does not train in imagination: tested as built")
    else:
        for _ in range(b["agent_updates"]):
            if time.monotonic() > deadline:
                cut = True
                break
            logs.append(agent.train_in_imagination(dream))
            done += 1
            if done % 10 == 0 or done == b["agent_updates"]:
                mean = {k: float(np.mean([x[k] for x in logs[-10:]])) for k in logs[-1]}
                logger.scalars(mean, done, prefix="learning/agent/")
                print(f"agent update {done}/{b['agent_updates']}: " + ", ".join(
                    f"{k} {v:.4g}" for k, v in list(mean.items())[:5]))  # fmt: skip
    record = {
        "updates": done, "updates_planned": b["agent_updates"],
        "seconds": time.perf_counter() - t0, "cut_by_deadline": cut,
        "last_logs": {k: float(np.mean([x[k] for x in logs[-10:]])) for k in logs[-1]}
        if logs else {},
    }  # fmt: skip
    return agent, world, record


def _returns(result) -> dict:
    from worldmodels.aggregate import mean_ci

    r = [float(x) for x in result]
    return {
        "episodes": len(r), "mean": float(np.mean(r)), "std": float(np.std(r)),
        "ci95": list(mean_ci(r)), "returns": r,
    }  # fmt: skip


def main(argv=None) -> int:
    args = parse(argv)
    size = SIZES[args.size]
    b = _bench_args(args)
    start = time.monotonic()
    deadline = start + 60 * b["max_minutes"] - 240  # leave time for the tests and the files
    from worldmodels.cli import setup_process, use_amp
    from worldmodels.runs import RunDir, versions

    agent_name = (
        args.agent or C.resolve(env=args.env, world=args.world, preset=size["preset"]).agent.name
    )
    out = Path(
        args.out or f"runs/learning-{args.world}-{args.size}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    RunDir.check_creatable(out)  # refuse before any work
    sets = [f"run.device={args.device or size['device']}", *args.overrides]
    common = [x for o in sets for x in ("--set", o)]
    # Phase 1: random data, the world trained on it, the random policy's real test.
    t0 = time.perf_counter()
    argv1 = ["--env", args.env, "--world", args.world, "--agent", "random",
             "--preset", size["preset"], "--seed", str(args.seed), "--name", "world",
             "--set", f"run.runs_dir={out}", *common]  # fmt: skip
    print("phase 1: train.py " + " ".join(argv1))
    rc = train.main(argv1)
    if rc:
        raise UserError(f"phase 1 (train.py) failed with status {rc}")
    world_seconds = time.perf_counter() - t0
    run = RunDir.open(out / "world")
    cfg = C.load_run_config(run.config)
    random_results = json.loads(run.results.read_text())

    # Phase 2 shares phase 1's settings; only the agent differs.
    agent_cfg = C.resolve(
        env=args.env, world=args.world, agent=agent_name, preset=size["preset"],
        overrides=[*sets, f"run.seed={args.seed}"],
    )  # fmt: skip
    device = setup_process(cfg.run)
    amp = use_amp(cfg.run, device)
    from worldmodels.agent_input import AgentInput
    from worldmodels.aggregate import difference_ci
    from worldmodels.build import env_factory
    from worldmodels.collect import play_test_episodes
    from worldmodels.seeding import derive_seed
    from worldmodels.tb import TBLogger

    logger = TBLogger(str(run.tb))
    with contextlib.closing(logger):
        t0 = time.perf_counter()
        quality = world_quality(run, cfg, device, amp, b, args.seed)
        quality_seconds = time.perf_counter() - t0
        agent, world, training = train_agent(run, cfg, agent_cfg, device, amp, b, deadline, logger)
        t0 = time.perf_counter()
        env = env_factory(cfg.env)("test", min(cfg.eval.num_envs, cfg.eval.episodes))
        try:
            result = play_test_episodes(
                agent, env, cfg.eval.episodes,
                # the games the random policy played in phase 1's final test
                seed=derive_seed(cfg.run.seed, "test", cfg.schedule.epochs), device=device,
                epsilon=cfg.eval.epsilon, greedy=cfg.eval.greedy,
                observer=AgentInput(agent, world, device),
            )  # fmt: skip
        finally:
            env.close()
        test_seconds = time.perf_counter() - t0
        agent_ret, random_ret = _returns(result.returns), _returns(random_results["returns"])
        diff = difference_ci(agent_ret["returns"], random_ret["returns"])
        logger.scalars(
            {"agent_return": agent_ret["mean"], "random_return": random_ret["mean"]},
            training["updates"], prefix="learning/real/",
        )  # fmt: skip
    record = {
        "benchmark": "bench/learning.py",
        "size": args.size,
        "about": size["about"],
        "game": args.env,
        "world": args.world,
        "agent": agent_name,
        "seed": args.seed,
        "device": str(device),
        "precision": "bf16" if amp else "fp32",
        "budgets": {
            "random_env_steps": cfg.schedule.initial_collect_steps,
            "world_epochs": cfg.schedule.epochs,
            "stage_steps": {
                name: sum(stage.training.steps_in(e) for e in range(1, cfg.schedule.epochs + 1))
                for name, stage in world.stages().items()
            },
            **b,
        },  # fmt: skip
        "protocol": cfg.env.protocol_values(),
        "world_quality": quality,
        "agent_training": training,
        "real_returns": {
            "agent": agent_ret,
            "random": random_ret,
            "agent_minus_random_ci95": list(diff),
            "agent_beats_random": diff[0] > 0,
            "test_seed_shared": True,
        },  # fmt: skip
        "seconds": {
            "world_phase": world_seconds,
            "world_quality": quality_seconds,
            "agent_training": training["seconds"],
            "agent_test": test_seconds,
            "total": time.monotonic() - start,
        },  # fmt: skip
        "runs": {"world": str(run.root), "tensorboard": str(run.tb)},
        "versions": versions(),
    }
    (out / "learning.json").write_text(json.dumps(record, indent=2) + "\n")
    print(summary(record))
    print(f"wrote {out / 'learning.json'} (tensorboard --logdir {run.tb} --host 127.0.0.1)")
    return 0


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def summary(record: dict) -> str:
    q, r = record["world_quality"], record["real_returns"]
    final = q["checkpoints"][q["final"]]
    copy = q["baselines"]["copy-last"]

    def cell(x):
        return "-" if x is None else f"{x:.2f}"

    h = len(final["psnr"])
    steps = sorted({1, 2, 4, 8, h} & set(range(1, h + 1)))
    lines = [
        f"{record['world']} world, {record['agent']} agent, {record['game']}, size {record['size']}",
        "open loop on held-out real games (dB): h, PSNR world / copy-last, moving-pixel PSNR "
        "world / copy-last",
    ]
    for s in steps:
        lines.append(
            f"  h={s:<3} {cell(final['psnr'][s - 1])} / {cell(copy['psnr'][s - 1])}    "
            f"{cell(final['moving_psnr'][s - 1])} / {cell(copy['moving_psnr'][s - 1])}"
        )
    for kind in ("reward", "end"):
        tf = (final["teacher_forced"] or {}).get(kind) or {}
        ol = final["open_loop"][kind]
        lines.append(
            f"  {kind}: base rate {_rate(ol['base_rate'])}; teacher-forced recall "
            f"{cell(tf.get('recall'))} precision {cell(tf.get('precision'))}; open loop recall "
            f"{cell(ol['recall'])} precision {cell(ol['precision'])}"
        )
    a, rnd = r["agent"], r["random"]
    lines.append(
        f"real return over {a['episodes']} games: agent {a['mean']:.2f} "
        f"[{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}], random {rnd['mean']:.2f} "
        f"[{rnd['ci95'][0]:.2f}, {rnd['ci95'][1]:.2f}]; agent - random 95% CI "
        f"[{r['agent_minus_random_ci95'][0]:.2f}, {r['agent_minus_random_ci95'][1]:.2f}] -> "
        + ("beats random" if r["agent_beats_random"] else "does not beat random")
    )
    lines.append(f"total {record['seconds']['total'] / 60:.1f} min")
    return "\n".join(lines)


if __name__ == "__main__":
    from worldmodels.cli import run_main

    sys.exit(run_main(main))
