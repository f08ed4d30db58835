"""The run directory: one place for a run's config, logs, replay, checkpoints and results.

::

    runs/<name>/config.yaml       resolved config (``--resume`` rebuilds the run from it)
    runs/<name>/provenance.json   command line, env spec (ale-py version, protocol), package versions
    runs/<name>/tb/               TensorBoard event files
    runs/<name>/episodes/         replay: one compressed file per finished episode
    runs/<name>/checkpoints/      weights (safetensors) + optimizer / RNG / counters
    runs/<name>/results.json      returns of the real test episodes, HNS, seed, env spec, versions
    runs/<name>/results.N.json    earlier results of the same run (a rerun keeps every one)
    runs/<name>/.lock             held (an OS file lock) by the one process working in the run

Only one process works in a run directory at a time: ``RunDir.lock`` takes an exclusive OS lock
(``fcntl.flock``, released by the OS however the process ends, SIGKILL included) and a second
process gets a one-line error naming the holder's pid.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
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

    @staticmethod
    def check_creatable(root: str | Path) -> None:
        """Raise the ``UserError`` that ``create(root)`` would, without creating anything (so
        that a run checks its directory before spending minutes building)."""
        root = Path(root)
        if root.exists():
            if not root.is_dir():
                raise UserError(f"cannot create run directory {root}: a file of that name exists")
            if any(root.iterdir()):
                raise UserError(
                    f"run directory {root} already exists: resume it with --resume {root} "
                    "or pick another --name"
                )
        parent = root.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise UserError(
                f"cannot create run directory {root}: {parent} is not a directory "
                "(set run.runs_dir to a writable directory)"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(
                f"cannot create run directory {root}: {parent} is not writable "
                "(set run.runs_dir to a writable directory)"
            )

    @classmethod
    def create(cls, root: str | Path) -> RunDir:
        """A new run directory; refuses to reuse one (nothing already written is touched)."""
        root = Path(root)
        cls.check_creatable(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create run directory {root}: {exc.strerror or exc} "
                "(set run.runs_dir to a writable directory)"
            ) from None
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

    def lock(self, command: str) -> RunLock:
        """Take this run's lock for the life of the process (or until ``release``)."""
        return RunLock(Path(self.root) / ".lock", command)

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


class RunLock:
    """An exclusive ``fcntl.flock`` on ``path``; the file says who holds it (pid, command).

    The OS drops the lock when the process ends, however it ends, so a killed run never leaves
    a stale lock behind. Two opens of the file conflict even inside one process."""

    def __init__(self, path: Path, command: str) -> None:
        self.path = path
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no OS lock to take (documented in docs/runs.md)
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            pid, _, what = holder.partition(" ")
            raise UserError(
                f"run directory {path.parent} is in use by process {pid}"
                + (f" ({what})" if what else "")
                + ": wait for it to finish or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def check_name(name: str, what: str = "--name") -> None:
    """A one-line ``UserError`` unless ``name`` is a plain directory name (no path separator)."""
    from worldmodels.checks import check_name as check

    try:
        check(name, what)
    except ValueError as exc:
        raise UserError(str(exc)) from None


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
