"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

A full disk (or quota) is a ``DiskFull`` error naming the file, never a traceback; the temp file
of the failed write is removed, so the previous version of the file stays as it was.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from worldmodels.errors import DiskFull

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the device (or the user's quota) has no space left."""
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


def _write_all(f, data: bytes, path: Path) -> None:
    """Write, flush and fsync ``data`` meant for ``path``: the one place file contents reach
    the disk (tests patch it to fill the disk)."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def write_synced(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` and fsync it (not atomic: for files inside a
    directory that is itself published atomically, like a checkpoint)."""
    path = Path(path)
    try:
        with open(path, "wb") as f:
            _write_all(f, data, path)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(path) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync it, then ``os.replace`` it into place."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            _write_all(f, data, path)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFull(path) from None
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def fsync_dir(directory: str | Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
