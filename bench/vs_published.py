"""Our worlds side by side with the published code on this machine: the same figures of
``bench/world_speed.py`` (ours) and ``bench/published/{diamond,iris}.py`` (the published DIAMOND
and IRIS code, from checkouts you provide), run in turns on one pinned core, round after round
(ours first in odd rounds, the published code first in even ones), so that both see the same
machine. Prints the median of each figure over the rounds and the ratio (published / ours: above
1 means ours is faster).

    python bench/vs_published.py --diamond-src ~/src/diamond --iris-src ~/src/iris \\
        --batch-size 8 --threads 1 --core 1 --rounds 2

Both sides run in fp32 (the published code has no CPU autocast); ``--also-auto`` adds ours at
``run.precision=auto`` (bf16 where this CPU is faster in it). The published code's requirements
(einops for IRIS; omegaconf and torcheval for DIAMOND) must be importable: ``--pythonpath`` adds
a folder that holds them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (row, our world_speed.py key, the published harness's key)
ROWS = {
    "diffusion": [
        ("denoiser step", "denoiser_train_s_per_step", "denoiser_step_s"),
        ("reward/end step", "reward_end_train_s_per_step", "reward_end_step_s"),
        ("imagined trajectory", "imagination_trajectory_s", "imagination_trajectory_s"),
        ("actor-critic update", "agent_update_s", "agent_update_s"),
    ],
    "iris": [
        ("transformer step", "transformer_train_s_per_step", "transformer_step_s"),
        ("imagined trajectory", "imagination_trajectory_s", "imagination_trajectory_s"),
        ("actor-critic update", "agent_update_s", "agent_update_s"),
    ],
}
PUBLISHED = {"diffusion": ("DIAMOND", "diamond.py"), "iris": ("IRIS", "iris.py")}


def run_json(cmd: list[str], env: dict, core: int | None) -> dict:
    def pin() -> None:
        if core is not None:
            os.sched_setaffinity(0, {core})

    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=pin)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        sys.exit(f"error: {' '.join(cmd[:3])} ... failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--diamond-src", type=Path, help="a checkout of eloialonso/diamond (Atari)")
    p.add_argument("--iris-src", type=Path, help="a checkout of eloialonso/iris")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--core", type=int, default=None, help="pin every process to this core")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--also-auto", action="store_true",
                   help="also time ours at run.precision=auto (each round)")  # fmt: skip
    p.add_argument("--pythonpath", default="", help="prepended to PYTHONPATH for both sides")
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = p.parse_args(argv)
    worlds = {
        w: src for w, src in (("diffusion", args.diamond_src), ("iris", args.iris_src)) if src
    }
    if not worlds:
        p.error("give --diamond-src and/or --iris-src")
    if args.rounds < 1 or args.batch_size < 1 or args.threads < 1:
        p.error("--rounds, --batch-size and --threads must be at least 1")
    if args.core is not None:
        if not hasattr(os, "sched_setaffinity"):
            p.error("--core needs Linux (os.sched_setaffinity); leave it out here")
        if args.core not in os.sched_getaffinity(0):
            p.error(f"--core {args.core}: not one of this process's cores "
                    f"{sorted(os.sched_getaffinity(0))}")  # fmt: skip
    for src in worlds.values():
        if not (src / "src").is_dir():
            p.error(f"{src} is not a checkout of the published code (no src/ folder)")

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if args.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.pythonpath,
                                                          env.get("PYTHONPATH", "")]))  # fmt: skip
    common = ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    raw: dict = {w: {"ours": [], "published": [], "ours_auto": []} for w in worlds}
    for r in range(args.rounds):
        for world, src in worlds.items():
            ours = [sys.executable, str(HERE / "world_speed.py"), "--world", world, *common,
                    "--steps", "6", "--no-check-fullgraph", "--json", "--precision"]  # fmt: skip
            sides = {
                "ours": [*ours, "fp32"],
                "published": [sys.executable, str(HERE / "published" / PUBLISHED[world][1]),
                              "--src", str(src), *common, "--repeats", "3"],
            }  # fmt: skip
            if args.also_auto:
                sides["ours_auto"] = [*ours, "auto"]
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                print(
                    f"round {r + 1}/{args.rounds}: {world}, {side} ...", file=sys.stderr, flush=True
                )
                raw[world][side].append(run_json(sides[side], env, args.core))

    lines = [f"batch {args.batch_size}, {args.threads} thread(s), core {args.core}, "
             f"{args.rounds} round(s); seconds, median over rounds"]  # fmt: skip
    head = f"{'':<32}{'ours fp32':>11}{'published':>11}{'pub / ours':>12}"
    summary: dict = {}
    for world in worlds:
        auto = bool(raw[world]["ours_auto"])
        lines += ["", f"{world} vs published {PUBLISHED[world][0]}",
                  head + (f"{'ours auto':>11}{'pub / auto':>12}" if auto else "")]  # fmt: skip
        for row, ours_key, pub_key in ROWS[world]:
            ours = statistics.median(o[ours_key] for o in raw[world]["ours"])
            pub = statistics.median(o[pub_key] for o in raw[world]["published"])
            line = f"  {row:<30}{ours:>11.3f}{pub:>11.3f}{pub / ours:>11.2f}x"
            summary[f"{world}/{row}"] = {"ours_fp32": ours, "published": pub,
                                         "ratio": pub / ours}  # fmt: skip
            if auto:
                a = statistics.median(o[ours_key] for o in raw[world]["ours_auto"])
                line += f"{a:>11.3f}{pub / a:>11.2f}x"
                summary[f"{world}/{row}"].update(ours_auto=a, ratio_auto=pub / a)
            lines.append(line)
        mine, theirs = raw[world]["ours"][0], raw[world]["published"][0]
        lines.append(f"  (an imagined trajectory: a reset and the steps the actor-critic trains "
                     f"on, ours {mine['imagination_horizon']}, the published code's "
                     f"{theirs['trained_transitions']} of {theirs['horizon']} steps)")  # fmt: skip
        shares = [min(o["cpu_share"].values()) for o in raw[world]["published"]]
        lines.append(f"  (published code's lowest share of its core: {min(shares):.2f}; "
                     "below ~0.95 another process shared it)")  # fmt: skip
        if auto:
            lines.append(f"  (ours auto chose {raw[world]['ours_auto'][0]['precision']})")
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps({"summary": summary, "raw": raw}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
