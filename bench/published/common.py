"""What the two harnesses of the published code share: putting a checkout on the path, stand-ins
for modules that only code paths the harnesses never run import, reading the published YAML
configs without hydra, and the timing loop.

A stand-in is installed only where the real module is missing, and raises if anything in it is
used, so it cannot change what is measured.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path


def arguments(doc: str, repo: str) -> argparse.Namespace:
    """The harnesses' command line: ``--src`` (a checkout of ``repo``), batch, threads, repeats."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--src", type=Path, required=True, help=f"a checkout of {repo}")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per figure")
    return p.parse_args()


def use_checkout(src: Path, must_have: str) -> Path:
    """Put ``src/src`` first on ``sys.path`` (the published code runs from its ``src`` folder)."""
    code = src / "src"
    if not (code / must_have).is_file():
        sys.exit(f"error: {src} is not a checkout of the published code (no src/{must_have})")
    sys.path.insert(0, str(code))
    return code


def _refusing(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise RuntimeError(f"{name}.{attr}: a stand-in of the harness (the real {name} is not "
                           "installed); this code path is not part of the measurement")  # fmt: skip

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


def stand_in(*names: str, classes: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """Install a refusing stand-in for each missing module of ``names``; ``classes`` names the
    classes a stand-in must define (used in type hints or as base classes at import time).
    Returns the modules stood in for."""
    import importlib.util

    done = []
    for name in names:
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            continue
        module = _refusing(name)
        for cls in (classes or {}).get(name, ()):
            setattr(module, cls, type(cls, (), {}))
        sys.modules[name] = module
        done.append(name)
    return done


def load_yaml(path: Path) -> dict:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def number(x):
    """PyYAML reads ``1e-4`` (no dot) as a string where OmegaConf reads a float."""
    if isinstance(x, str) and not x.startswith("${"):
        try:
            return float(x)
        except ValueError:
            return x
    return x


def timed(fn, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def mean_time(fn, repeats: int) -> tuple[float, float]:
    """Mean seconds per call of ``fn`` (``timed``), and the share of a core the process had
    meanwhile (about 1.0 on an idle core: a lower figure says another process shared it, and the
    timing is not to be trusted)."""
    c0, w0 = time.process_time(), time.perf_counter()
    times = timed(fn, repeats)
    share = (time.process_time() - c0) / max(time.perf_counter() - w0, 1e-9)
    return sum(times) / len(times), share


def train_step(loss_fn, module, optimizer, max_grad_norm, scheduler=None) -> None:
    """One optimisation step as both published trainers take it (one gradient accumulation)."""
    loss = loss_fn()
    loss.backward()
    if max_grad_norm is not None:
        import torch

        torch.nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()
    if scheduler is not None:
        scheduler.step()
