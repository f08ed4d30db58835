"""The README's commands, run as written on a CPU: every line of its "Using it" block that fits in
CI (the CPU-scale ones), in order, in a fresh directory, with its placeholders filled by the runs
the earlier lines made. Lines that need a CUDA GPU or an hour are listed, not run."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def not_in_ci(cmd: str) -> str | None:
    """Why a README command is not run here, or None."""
    if " sweep " in cmd:
        return "130 full runs (tests/test_sweep.py runs a 2 x 2 sweep at the test preset)"
    if " play " in cmd and "--headless" not in cmd:
        return "an interactive window (tests/test_play.py drives it under Xvfb)"
    if "bench/learning.py" in cmd:
        return "45 min on 2 cores (tests/test_learning_bench.py runs it at a tiny size)"
    if (
        "train.py" in cmd
        and "--preset" not in cmd
        and "--resume" not in cmd
        and "--help" not in cmd
    ):
        return "the published scale: days on a GPU"
    return None


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Using it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.strip().splitlines() if line.strip()]


def test_every_readme_command_that_fits_on_a_cpu_works_as_written(tmp_path):
    commands = _commands()
    assert len(commands) >= 10
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    made: dict[str, Path] = {}  # world (or "random") -> its run directory
    seconds = {}
    for cmd in commands:
        if not_in_ci(cmd):
            continue
        line = cmd
        if "<diffusion run>" in line or "<iris run>" in line:
            line = line.replace("runs/<diffusion run>", str(made["diffusion"]))
            line = line.replace("runs/<iris run>", str(made["iris"]))
        line = line.replace("runs/<name>", str(made.get("diffusion", "")))
        argv = line.split()
        assert argv[0] == "python", line
        if argv[-1] == "runs/*":  # the shell's glob
            argv = argv[:-1] + sorted(str(p) for p in (tmp_path / "runs").iterdir())
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, *[str(ROOT / a) if a.endswith(".py") else a
                                                for a in argv[1:]]],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
        seconds[cmd] = time.perf_counter() - t0
        assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        found = re.search(r"run directory: (\S+)", res.stdout)
        if found and "train.py" in cmd and "--resume" not in cmd:
            world = re.search(r"--world (\w+)", cmd)
            key = "random" if world is None else world.group(1)
            made.setdefault(key, tmp_path / found.group(1))
    assert {"diffusion", "iris", "vae", "random"} <= made.keys()
    assert (tmp_path / "exported" / "demo" / "world.safetensors").exists()
    # the README's Python block, on the folder its export line wrote
    block = (ROOT / "README.md").read_text().split("```python", 1)[1].split("```", 1)[0]
    res = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    print({k: round(v, 1) for k, v in seconds.items()})
