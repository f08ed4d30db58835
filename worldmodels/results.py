"""``results.json``: the record of real test episodes that every score in the project comes from."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from worldmodels.collect import TestResult
from worldmodels.fileio import atomic_write_json
from worldmodels.scores import human_normalized, reference_scores

RESULTS_VERSION = 1


def results_record(
    result: TestResult,
    *,
    game: str,
    seed: int,
    agent: str,
    world: str | None,
    env_spec: dict[str, Any],
    protocol: dict[str, Any],
    versions: dict[str, Any],
    config: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    env_steps: int | None = None,
) -> dict[str, Any]:
    """Everything needed to report, aggregate and reproduce a score."""
    returns = np.asarray(result.returns, dtype=np.float64)
    mean = float(returns.mean())
    ref = reference_scores().get(game)
    published = None
    if ref is not None:
        published = {k: float(np.mean(ref[k])) for k in ("IRIS", "DIAMOND") if k in ref}
    return {
        "results_version": RESULTS_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "game": game,
        "agent": agent,
        "world": world,
        "seed": seed,
        "episodes": len(result.returns),
        "returns": [float(r) for r in result.returns],
        "lengths": [int(n) for n in result.lengths],
        "mean": mean,
        "std": float(returns.std()),
        "median": float(np.median(returns)),
        "min": float(returns.min()),
        "max": float(returns.max()),
        "hns": human_normalized(game, mean),
        "reference": None if ref is None else {"random": ref["random"], "human": ref["human"]},
        "published_mean": published,
        "env_steps": env_steps,
        "checkpoint": checkpoint,
        "protocol": protocol,
        "env_spec": env_spec,
        "versions": versions,
        "config": config,
        "seconds": result.seconds,
    }


def write_results(path: str | Path, record: dict[str, Any]) -> None:
    atomic_write_json(path, record)


def keep_previous(path: str | Path) -> Path | None:
    """Move an existing ``results.json`` to the next free ``results.N.json`` (N = 1, 2, ...)
    before a new one is written, so no result of a run is ever overwritten; returns where."""
    path = Path(path)
    if not path.exists():
        return None
    taken = [
        int(p.name[len(path.stem) + 1 : -len(path.suffix)])
        for p in path.parent.glob(f"{path.stem}.*{path.suffix}")
        if p.name[len(path.stem) + 1 : -len(path.suffix)].isdigit()
    ]
    target = path.with_name(f"{path.stem}.{max(taken, default=0) + 1}{path.suffix}")
    path.rename(target)
    return target


def summary_line(record: dict[str, Any]) -> str:
    """``Breakout  mean 1.43 +- 1.2 over 30 episodes  (random 1.7, human 30.5)  HNS -0.01``."""
    line = (
        f"{record['game']}: mean return {record['mean']:.2f} +- {record['std']:.2f} "
        f"over {record['episodes']} episodes"
    )
    ref = record.get("reference")
    if ref:
        line += (
            f" (reference random {ref['random']}, human {ref['human']}; HNS {record['hns']:.3f})"
        )
    return line
