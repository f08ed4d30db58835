"""Summary of ``bench/gpu_check.sh``: per world and stage, seconds per step eager and with CUDA
graphs, the speed-up, achieved TFLOP/s and MFU, and the projected full run, beside the targets.

    python bench/gpu_summary.py bench/gpu_check_out/diffusion.json bench/gpu_check_out/iris.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Targets of the "GPU-first hot loops" work, on one H100/H200 (seconds; hours for the runs).
TARGETS = {
    ("diffusion", "agent_update_s"): 0.08,
    ("diffusion", "denoiser_train_s_per_step"): 0.02,
    ("diffusion", "projected_full_run_hours"): 12.0,
    ("iris", "projected_full_run_hours"): 12.0,
}


def _fmt(x) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if isinstance(x, float) and abs(x) < 10 else f"{x:,.1f}"


def summarize(d: dict) -> list[str]:
    world = d.get("world", "?")
    lines = [
        f"## {world} on {d.get('device_name')} ({d.get('precision')}, graphs: "
        f"{d.get('graphs_mode')}; peak {d.get('peak_tflops', 0):.3g} TFLOP/s, "
        f"{d.get('peak_source')})",
        f"{'part':<14} {'batch':>6} {'eager s':>9} {'graphs s':>9} {'speed-up':>8} "
        f"{'TFLOP/s':>8} {'MFU':>6}",
    ]
    parts = [k[: -len("_train_s_per_step")] for k in d if k.endswith("_train_s_per_step")]
    rows = [(p, f"{p}_train_s_per_step", d.get(f"{p}_batch_size")) for p in parts]
    rows.append(("imagination", "imagination_step_only_s", d.get("batch_size")))
    rows.append(("reset", "imagination_reset_s", d.get("batch_size")))
    rows.append(("agent update", "agent_update_s", d.get("agent_imagined_trajectories")))
    for name, key, batch in rows:
        eager, graphs = d.get(key), d.get(f"{key}_graphs")
        speedup = eager / graphs if eager and graphs else None
        short = {"imagination": "imagination", "reset": None, "agent update": "agent"}.get(
            name, name
        )
        best = "_graphs" if graphs else ""
        tflops = d.get(f"{short}_tflops{best}") if short else None
        mfu = d.get(f"{short}_mfu{best}") if short else None
        lines.append(
            f"{name:<14} {batch or '-':>6} {_fmt(eager):>9} {_fmt(graphs):>9} "
            f"{(f'{speedup:.2f}x' if speedup else '-'):>8} {_fmt(tflops):>8} "
            f"{(f'{100 * mfu:.1f}%' if mfu is not None else '-'):>6}"
        )
    for tag, label in (("", "eager"), ("_graphs", "graphs")):
        hours = d.get(f"projected_full_run_hours{tag}")
        if hours is not None:
            parts_s = {
                k[len("projected_") : -len(f"_s{tag}")]: v
                for k, v in d.items()
                if k.startswith("projected_") and k.endswith(f"_s{tag}") and "full_run" not in k
            }
            detail = ", ".join(f"{k} {v / 3600:.1f} h" for k, v in parts_s.items())
            lines.append(f"projected full run ({label}): {hours:.1f} h ({detail})")
    lines.append(
        f"imagination_fullgraph: {d.get('imagination_fullgraph')}, "
        f"recompiles: {d.get('recompiles')} {d.get('fullgraph_error', '')}".rstrip()
    )
    for key, why in d.items():
        if key.startswith("error_"):
            lines.append(f"FAILED {key[len('error_') :]}: {why}")
    for (w, key), target in TARGETS.items():
        if w != world:
            continue
        got = d.get(f"{key}_graphs", d.get(key))
        verdict = "-" if got is None else ("met" if got <= target else "NOT met")
        lines.append(f"target {key} <= {target}: {_fmt(got)} ({verdict})")
    return lines


def main(paths: list[str]) -> int:
    for path in paths:
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"## {p.name}: no result ({type(exc).__name__}); see {p.with_suffix('.err')}")
            continue
        print("\n".join(summarize(d)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
