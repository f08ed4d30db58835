"""Speed of a world and its agent: parameter counts, train steps/s per stage, imagination frames/s,
agent updates/s, each with its FLOPs (counted by ``torch.utils.flop_counter``), achieved FLOP/s
and MFU against the device's peak, eagerly and replayed from CUDA graphs, and the projected
duration of a full run. Synthetic 64x64 replay, so it needs no emulator; every figure is measured
here.

    python bench/world_speed.py --world diffusion --batch-size 8 --threads 1 --device cpu
    python bench/world_speed.py --world iris --device cuda --batch-size 0 --stage-batch-size 0 \\
        --graphs both --json          # published sizes, eager and graphs, full-run projection

Peaks: on CUDA the dense bf16 (or TF32) tensor-core peak of known devices (H100/H200, A100,
L4, RTX 4090; else a measured matmul); on a CPU a measured 2048 x 2048 matmul at the thread count
(what "peak" means there). ``imagination_fullgraph`` / ``recompiles``: the imagined step run
through ``torch.compile(fullgraph=True, dynamic=False)`` (dynamo only, no code generation) over
whole trajectories: whether it captures as one graph, and how many times it recompiled.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worldmodels import config as C  # noqa: E402
from worldmodels.build import build_world_and_agent, compile_hot_modules  # noqa: E402
from worldmodels.cli import precision_choice, resolve_device  # noqa: E402
from worldmodels.envs.dream import DreamEnv  # noqa: E402
from worldmodels.envs.testing import random_store  # noqa: E402
from worldmodels.errors import one_line  # noqa: E402
from worldmodels.interfaces import EnvInfo  # noqa: E402
from worldmodels.nn.blocks import count_parameters  # noqa: E402
from worldmodels.training import StageTrainer, autocast  # noqa: E402

# Dense tensor-core peaks (FLOP/s) from the vendors' data sheets: (bf16, tf32).
CUDA_PEAKS = {
    "H200": (989e12, 494e12),
    "H100": (989e12, 494e12),  # SXM; the PCIe card is ~25% lower
    "A100": (312e12, 156e12),
    "L4": (121e12, 60e12),
    "4090": (165e12, 83e12),
}


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


def flops_of(fn) -> int:
    """FLOPs of one call of ``fn`` (matmuls and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measured_matmul_peak(device: torch.device, amp: bool) -> float:
    n = 2048 if device.type == "cpu" else 8192
    dtype = torch.bfloat16 if amp else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    sec = timed(lambda: a @ a, 3 if device.type == "cpu" else 20, 1, device)
    return 2 * n**3 / sec


def device_peak(device: torch.device, amp: bool, tf32: bool) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (bf16, tf32_peak) in CUDA_PEAKS.items():
            if key in name:
                if amp:
                    return bf16, f"{key} dense bf16 data sheet"
                if tf32:
                    return tf32_peak, f"{key} dense TF32 data sheet"
    peak = measured_matmul_peak(device, amp)
    return peak, f"measured {'bf16' if amp else 'fp32'} matmul"


def fullgraph_check(world, store, agent, device, amp, horizon, b) -> tuple[bool, int, str]:
    """(the imagined step compiles as one graph, recompiles over 3 trajectories, why not)."""
    graphs = {}

    def capture(fn, name):
        def backend(gm, example_inputs):
            graphs[name] = graphs.get(name, 0) + 1
            return gm.forward  # dynamo's capture only: no code generation

        return torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)

    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(allow_rnn=True):
            dream = DreamEnv(
                world, store, num_envs=b, horizon=horizon, device=device, amp=amp,
                observes=agent.observes, capture=capture,
            )  # fmt: skip
            actions = torch.zeros(b, dtype=torch.long, device=device)
            for _ in range(3):
                dream.reset()
                for _ in range(horizon):
                    dream.step(actions)
    except Exception as exc:  # a graph break, or a world that declares no capture
        return False, 0, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    finally:
        torch._dynamo.reset()
    return True, sum(graphs.values()) - len(graphs), ""


def measure(
    args, cfg, device, amp, graphs: str | None, out: dict, tag: str, first: bool, save
) -> dict:
    """Every timing of one mode (eager: ``graphs=None``; ``"cuda"``: replayed graphs) into
    ``out`` with the suffix ``tag`` (and, ``first``, the FLOP counts and sizes); returns the
    projected seconds per part of a full run."""
    info = EnvInfo(num_actions=args.num_actions, obs_shape=(3, 64, 64))
    torch.manual_seed(0)
    world, agent = build_world_and_agent(
        cfg.world, cfg.agent, info, seed=0, device=device, channels_last=cfg.run.channels_last
    )
    if args.compile:
        compile_hot_modules(world, agent)
    store = random_store(num_episodes=24, length=200, obs_shape=(3, 64, 64),
                         num_actions=args.num_actions)  # fmt: skip
    n, w = args.steps, max(1, args.steps // 3)
    gw = 3 if graphs else 0  # graphed calls: two eager warm-ups, then the capture
    epochs = range(1, getattr(cfg.schedule, "epochs", 0) + 1)
    projected: dict[str, float] = {}
    sb = out["stage_batch_size"]
    horizon = getattr(agent.config, "horizon", 15)
    b = args.batch_size
    spares = cfg.schedule.dream_spares

    def guarded(part: str, fn: Callable[[], None]) -> None:
        """Run one part; a failure (on a GPU, a capture that CUDA refuses) is recorded as
        ``error_<part><tag>`` and the other parts still run: one prepared GPU run reports all
        it can."""
        try:
            fn()
        except Exception as exc:  # recorded and reported; main() then exits with 1
            key = f"error_{part}{tag}"
            out[key] = f"{type(exc).__name__}: {one_line(str(exc))[:400]}"
            print(f"{key}: {out[key]}", file=sys.stderr)
            save()

    def stage_part(name: str, stage: Any) -> None:
        if sb != "configured":
            stage = dataclasses.replace(
                stage, training=dataclasses.replace(stage.training, batch_size=sb)
            )
        trainer = StageTrainer(stage, store, device, seed=0, amp=amp, graphs=graphs or False)
        batch = next(trainer.batches(1))  # a fixed batch: data loading is not what is measured
        if first:
            twin = StageTrainer(copy.deepcopy(stage), store, device, seed=0, amp=amp)
            out[f"{name}_flops_per_step"] = flops_of(lambda: twin.step(batch))
            out[f"{name}_batch_size"] = stage.training.batch_size
        sec = timed(lambda: trainer.step(batch), n, w + gw, device)
        out[f"{name}_train_s_per_step{tag}"] = sec
        out[f"{name}_train_steps_per_s{tag}"] = 1.0 / sec
        projected[name] = sec * sum(stage.training.steps_in(e) for e in epochs)
        save()

    def imagination_part() -> None:
        """Imagination as the agent uses it: ``reset`` (new real contexts) then the agent's
        horizon of steps, timed over whole trajectories (a step's cost can depend on how far the
        trajectory has gone: the IRIS transformer's key/value cache fills up and is refreshed)."""
        dream = DreamEnv(
            world, store, num_envs=b, horizon=horizon, device=device, amp=amp,
            observes=agent.observes, spares=spares, graphs=graphs,
        )  # fmt: skip
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

        if first:
            fdream = DreamEnv(world, store, num_envs=b, horizon=horizon, device=device, amp=amp,
                              observes=agent.observes, spares=spares)  # fmt: skip
            fdream.reset()
            with autocast(device, amp):
                out["imagination_flops_per_step"] = flops_of(lambda: fdream.step(actions))
        reps = max(1, -(-n // horizon))  # whole trajectories, at least --steps steps
        warm = 2 if graphs else 1
        sec = timed(trajectory, reps, warm, device) / horizon
        out[f"imagination_s_per_step{tag}"] = sec  # resets included
        out[f"imagination_trajectory_s{tag}"] = sec * horizon  # a reset and the horizon's steps
        out[f"imagination_frames_per_s{tag}"] = b / sec
        out[f"imagination_step_only_s{tag}"] = sum(step_s[warm:]) / reps
        out[f"imagination_reset_s{tag}"] = sum(reset_s[warm:]) / reps
        save()
        if first:
            out["imagination_horizon"] = horizon
            out["imagination_spares"] = spares
            denoising = getattr(cfg.world.config, "denoising_steps", None)
            if denoising is not None:
                out["denoising_steps"] = denoising

    def agent_part() -> None:
        configured_envs = getattr(agent.config, "num_envs", None)
        if "num_envs" in {f.name for f in dataclasses.fields(agent.config)}:
            agent.config = dataclasses.replace(agent.config, num_envs=b)  # else fixed by the agent
        m = agent.config.num_envs
        adream = DreamEnv(
            world, store, num_envs=m, horizon=horizon, device=device, amp=amp,
            observes=agent.observes, spares=spares, graphs=graphs,
        )  # fmt: skip
        if first:
            twin, tdream = copy.deepcopy((agent, adream))
            out["agent_flops_per_update"] = flops_of(lambda: twin.train_in_imagination(tdream))
        sec = timed(lambda: agent.train_in_imagination(adream), max(1, n // 2), 1 + gw, device)
        out[f"agent_update_s{tag}"] = sec
        out[f"agent_updates_per_min{tag}"] = 60.0 / sec
        save()
        if configured_envs == m:
            projected["agent"] = sec * sum(agent.config.training.steps_in(e) for e in epochs)
        if first:
            out["agent_imagined_trajectories"] = m
            out["agent_horizon"] = horizon
            obs = (
                torch.zeros(b, world.feature_dim, device=device)
                if agent.observes == "features"
                else torch.zeros(b, 3, 64, 64, dtype=torch.uint8, device=device)
            )
            state = agent.initial_state(b, device)
            starts = torch.ones(b, dtype=torch.bool, device=device)
            with torch.inference_mode(), autocast(device, amp):
                out["agent_act_per_s"] = 1.0 / timed(lambda: agent.act(obs, state, starts), n, w,
                                                     device)  # fmt: skip

    for name, stage in world.stages().items():
        guarded(name, functools.partial(stage_part, name, stage))
    guarded("imagination", imagination_part)
    if getattr(agent.config, "training", None) is not None:
        guarded("agent", agent_part)

    if first:
        out["world_params"] = count_parameters(world)
        for name, stage in world.stages().items():
            out[f"{name}_params"] = count_parameters(stage.module)
        # evolved agents keep their parameters outside autograd (``num_params``)
        out["agent_params"] = count_parameters(agent) or getattr(agent, "num_params", 0)
        if args.check_fullgraph:
            ok, recompiles, why = fullgraph_check(world, store, agent, device, amp, horizon, b)
            out["imagination_fullgraph"] = ok
            out["recompiles"] = recompiles
            if why:
                out["fullgraph_error"] = why
    return projected


def add_rates(out: dict, peak: float, tags: list[str]) -> None:
    """Achieved FLOP/s and MFU of every timed figure with a FLOP count."""
    pairs = [(k[: -len("_flops_per_step")], k, "_train_s_per_step") for k in out
             if k.endswith("_flops_per_step") and k != "imagination_flops_per_step"]  # fmt: skip
    pairs.append(("imagination", "imagination_flops_per_step", "_step_only_s"))
    pairs.append(("agent", "agent_flops_per_update", "_update_s"))
    for name, flops_key, time_suffix in pairs:
        for tag in tags:
            sec = out.get(f"{name}{time_suffix}{tag}")
            if flops_key in out and sec:
                out[f"{name}_tflops{tag}"] = out[flops_key] / sec / 1e12
                out[f"{name}_mfu{tag}"] = out[flops_key] / sec / peak


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", default="diffusion")
    p.add_argument("--agent", default=None, help="default: the world's default agent")
    p.add_argument("--preset", default="atari100k")
    p.add_argument("--batch-size", type=int, default=8,
                   help="imagined trajectories (and stage batch); 0: the agent's num_envs")  # fmt: skip
    p.add_argument(
        "--stage-batch-size", type=int, default=None,
        help="batch of the stage training figures (default: --batch-size; 0: each stage's "
        "configured batch, which with --batch-size 0 also gives the projected duration of a "
        "full run)",
    )  # fmt: skip
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: half the cores)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--steps", type=int, default=5, help="timed calls per figure")
    p.add_argument("--compile", action="store_true", help="torch.compile the hot modules")
    p.add_argument("--graphs", default="off", choices=["off", "on", "both"],
                   help="CUDA graphs: off (eager), on (replayed), both (side by side); on a "
                   "CPU the captured code path runs eagerly (a dry run)")  # fmt: skip
    p.add_argument("--check-fullgraph", action=argparse.BooleanOptionalAction, default=True,
                   help="run the imagined step through torch.compile(fullgraph=True)")  # fmt: skip
    p.add_argument("--num-actions", type=int, default=4, help="4 = Breakout")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", type=Path, default=None,
                   help="also write the JSON object here, after every figure (a run cut short "
                   "by a time limit keeps what it measured)")  # fmt: skip
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = C.resolve(
        env="Breakout", world=args.world, agent=args.agent, preset=args.preset,
        overrides=[f"run.precision={args.precision}", *args.overrides],
    )  # fmt: skip
    amp, precision = precision_choice(cfg.run, device)
    if args.batch_size == 0:
        args.batch_size = getattr(cfg.agent.config, "num_envs", 8)
    sb = args.batch_size if args.stage_batch_size is None else args.stage_batch_size
    out: dict = {
        "world": args.world, "agent": cfg.agent.name, "preset": args.preset,
        "batch_size": args.batch_size, "stage_batch_size": sb or "configured",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": threads, "precision": precision["precision"],
        "precision_reason": precision["reason"], "channels_last": cfg.run.channels_last,
        "compile": args.compile, "torch": torch.__version__,
    }  # fmt: skip
    peak, source = device_peak(device, amp, tf32=True)
    out["peak_tflops"] = peak / 1e12
    out["peak_source"] = source

    # Off CUDA, "graphs" runs the captured code path eagerly (a dry run of this script: its
    # figures say nothing about CUDA graphs).
    mode = "cuda" if device.type == "cuda" else "simulate"
    out["graphs_mode"] = mode if args.graphs != "off" else "off"
    modes = {"off": [None], "on": [mode], "both": [None, mode]}[args.graphs]
    tags = ["" if graphs is None else "_graphs" for graphs in modes]

    def save() -> None:
        if args.out is not None:
            args.out.write_text(json.dumps(out))

    projections = {}
    for i, (graphs, tag) in enumerate(zip(modes, tags, strict=True)):
        projections[tag] = measure(args, cfg, device, amp, graphs, out, tag, i == 0, save)
    add_rates(out, peak, tags)

    epochs = getattr(cfg.schedule, "epochs", 0)
    for tag in tags:
        projected = projections[tag]
        if sb == 0 and "agent" in projected and epochs:
            # world-model stages and agent updates only: real-env collection and tests not included
            for name, sec in projected.items():
                out[f"projected_{name}_s{tag}"] = sec
            out[f"projected_full_run_hours{tag}"] = sum(projected.values()) / 3600

    save()
    if args.json:
        print(json.dumps(out))
    else:
        width = max(map(len, out))
        for key, value in out.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                shown = str(value)
            elif isinstance(value, float):
                shown = f"{value:,.4g}" if abs(value) < 1e-3 else f"{value:,.3f}"
            else:
                shown = f"{value:,}"
            print(f"{key:<{width}}  {shown}")
    failed = [k for k in out if k.startswith("error_")]
    if failed:
        print(f"{len(failed)} part(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
