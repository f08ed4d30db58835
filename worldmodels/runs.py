"""The run directory: one place for a run's config, logs, replay, checkpoints and results.

::

    runs/<name>/config.yaml       resolved config (``--resume`` rebuilds the run from it)
    runs/<name>/provenance.json   command line, env spec (ale-py version, protocol), package versions
    runs/<name>/tb/               TensorBoard event files
    runs/<name>/episodes/         replay: one compressed file per finished episode
    runs/<name>/checkpoints/      weights (safetensors) + optimizer / RNG / counters
    runs/<name>/results.json      returns of the real test episodes, HNS, seed, env spec, versions
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from worldmodels.errors import UserError
from worldmodels.fileio import atomic_write_json, atomic_write_text

PACKAGES = (
    "torch",
    "numpy",
    "gymnasium",
    "ale-py",
    "stable-baselines3",
    "tensorboard",
    "opencv-python-headless",
    "safetensors",
    "pyyaml",
    "pillow",
    "worldmodels",
)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def provenance(self) -> Path:
        return self.root / "provenance.json"

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    @property
    def episodes(self) -> Path:
        return self.root / "episodes"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @classmethod
    def create(cls, root: str | Path) -> RunDir:
        """A new run directory; refuses to reuse one (nothing already written is touched)."""
        root = Path(root)
        if root.exists() and any(root.iterdir()):
            raise UserError(
                f"run directory {root} already exists: resume it with --resume {root} "
                "or pick another --name"
            )
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    @classmethod
    def open(cls, root: str | Path) -> RunDir:
        """An existing run directory (for --resume and evaluate.py)."""
        root = Path(root)
        run = cls(root)
        if not run.config.exists():
            what = "does not exist" if not root.exists() else "has no config.yaml"
            raise UserError(f"{root} is not a run directory: it {what}")
        return run

    def write_config(self, text: str) -> None:
        atomic_write_text(self.config, text)

    def record_session(self, data: dict[str, Any]) -> None:
        """Append one session (command line, env spec, versions) to ``provenance.json``."""
        sessions = []
        if self.provenance.exists():
            try:
                sessions = json.loads(self.provenance.read_text()).get("sessions", [])
            except (json.JSONDecodeError, AttributeError):
                sessions = []  # a damaged record must not stop the run; the new one replaces it
        sessions.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **data})
        atomic_write_json(self.provenance, {"sessions": sessions})


def default_run_name(game: str, world: str | None, agent: str, preset: str, seed: int) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{game}-{world or 'noworld'}-{agent}-{preset}-s{seed}-{stamp}"


def versions() -> dict[str, Any]:
    """Versions of Python, the key packages, the git commit and the accelerator, for the record."""
    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    out["cuda"] = torch.version.cuda
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out["git_commit"] = _git_commit()
    return out


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        res = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    ).stdout.strip()
    return res.stdout.strip() + ("+dirty" if dirty else "")
