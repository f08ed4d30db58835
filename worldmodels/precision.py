"""Which precision the networks run in: bf16 autocast where it is faster, fp32 elsewhere.

On CUDA, bf16 autocast (tensor cores). On a CPU it depends on the CPU: with bf16 instructions
(Intel's AMX matrix units, ``amx_bf16`` in ``/proc/cpuinfo``, or AVX512-BF16 dot products,
``avx512_bf16``, as on recent AMD EPYC) oneDNN runs bf16 matmuls and convolutions faster than fp32
- measured on a 2-core AMD EPYC with AVX512-BF16 and torch 2.13, one thread: the diffusion
world's denoiser step 1.63 -> 0.96 s, its actor-critic update 12.0 -> 6.9 s - while without them
bf16 autocast is slower than fp32 (the conversions cost more than the narrower arithmetic
saves). ``run.precision: auto`` therefore reads the CPU's flags and, where it has bf16
instructions, confirms with a short start-up probe (a convolution and a matmul of the sizes the
worlds use, timed in both precisions) before choosing bf16. The choice and the figures behind it
are recorded with the run. Norms, losses, sampling and the optimizer stay in fp32 either way, and
a CPU run repeats bitwise under a seed in either precision.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from worldmodels.training import autocast

PROBE_MIN_SPEEDUP = 1.2
"""bf16 must beat fp32 by this factor in the probe to be chosen on a CPU (a margin over noise)."""


BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags (``/proc/cpuinfo``) of bf16 arithmetic that oneDNN uses: AMX tiles, AVX512-BF16."""


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The bf16 flags the CPU advertises (Linux; none where the file is missing)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return [f for f in BF16_FLAGS if f in flags]


def probe_cpu_bf16(reps: int = 3) -> dict[str, float]:
    """Seconds of a representative workload in fp32 and under bf16 autocast on the CPU (a 3x3
    convolution, 64 channels at 64 x 64, batch 8, and a 1024 x 1024 matmul; best of ``reps``),
    at the current thread count. Takes a fraction of a second."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 64, 64, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    a = torch.randn(1024, 1024, generator=g)
    cpu = torch.device("cpu")

    def work() -> None:
        F.conv2d(x, w, padding=1)
        a @ a

    out = {}
    for name, amp in (("fp32_s", False), ("bf16_s", True)):
        with torch.no_grad(), autocast(cpu, amp):
            work()  # first call: kernel selection
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                work()
                best = min(best, time.perf_counter() - t0)
        out[name] = best
    out["bf16_speedup"] = out["fp32_s"] / max(out["bf16_s"], 1e-12)
    return out


def choose_precision(setting: str, device: torch.device) -> tuple[bool, dict[str, Any]]:
    """``run.precision`` -> (bf16 autocast?, a record of the choice for the run's files).

    ``auto``: bf16 on CUDA; on a CPU bf16 only with bf16 instructions (``BF16_FLAGS``) and a
    probe at least ``PROBE_MIN_SPEEDUP`` faster, else fp32. ``fp32`` / ``bf16``: as asked."""
    if setting in ("fp32", "bf16"):
        return setting == "bf16", {"precision": setting, "reason": "run.precision"}
    if device.type != "cpu":
        return True, {"precision": "bf16", "reason": f"auto on {device.type}"}
    flags = cpu_bf16_flags()
    if not flags:
        return False, {"precision": "fp32", "reason": "auto on a CPU without bf16 instructions"}
    probe = probe_cpu_bf16()
    fast = probe["bf16_speedup"] >= PROBE_MIN_SPEEDUP
    reason = f"auto on a CPU with {'+'.join(flags)}, probe {probe['bf16_speedup']:.2f}x"
    return fast, {"precision": "bf16" if fast else "fp32", "reason": reason, "probe": probe}
