"""Checkpoints: weights in safetensors, everything else loadable with ``weights_only=True``.

Layout of one checkpoint (a directory, published by a single atomic rename)::

    checkpoints/epoch_000012/
        weights.safetensors   every module's parameters and buffers, keys "<module>.<param>"
        state.pt              optimizer states, RNG states, counters, modules' extra state;
                              loaded with torch.load(weights_only=True): plain data and tensors only
        meta.json             format version, registry names, the resolved config, counters, and
                              the sha256 of the two files above (checked before they are read)
    checkpoints/latest        name of the newest complete checkpoint (written atomically)

A checkpoint is rebuilt by registry name and config, never by unpickling classes. One holding a
NaN or inf tensor is never written (``NonFiniteCheckpoint``): the last good one stays the newest,
so pruning can never leave only broken ones. A checkpoint directory without ``meta.json`` is
damaged: it is reported, never deleted or overwritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from worldmodels.errors import DiskFull, UserError, choices
from worldmodels.fileio import atomic_write_text, fsync_dir, write_synced

FORMAT_VERSION = 1
WEIGHTS, STATE, META = "weights.safetensors", "state.pt", "meta.json"


class NonFiniteCheckpoint(UserError):
    """The modules or the state hold NaN or inf: the checkpoint was not written."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensors_in(obj: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts / lists / tuples, with its key path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _tensors_in(value, f"{prefix}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors_in(value, f"{prefix}.{i}")


def nonfinite_tensors(named: list[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an inf."""
    bad = []
    for name, t in named:
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad


def save_checkpoint(
    directory: str | Path,
    name: str,
    *,
    modules: Mapping[str, nn.Module],
    state: Mapping[str, Any],
    meta: Mapping[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``directory/name`` atomically, point ``latest`` at it and prune to ``keep`` newest.

    ``modules``: name -> module (tensor entries of each ``state_dict`` go to safetensors, other
    entries such as ``_extra_state`` to ``state.pt``). ``state``: optimizer states, RNG states,
    counters: anything made of dicts, lists, numbers, strings and tensors.

    Raises ``NonFiniteCheckpoint`` (writing nothing) if any tensor is NaN or inf, ``DiskFull``
    naming the file if the disk fills up (the previous checkpoints stay as they were).
    """
    directory = Path(directory)
    final = directory / name
    tensors: dict[str, torch.Tensor] = {}
    extras: dict[str, dict[str, Any]] = {}
    for mod_name, module in modules.items():
        for key, value in module.state_dict().items():
            if isinstance(value, torch.Tensor):
                # clone: safetensors refuses tensors that share storage (tied weights)
                tensors[f"{mod_name}.{key}"] = value.detach().to("cpu").clone().contiguous()
            else:
                extras.setdefault(mod_name, {})[key] = value
    blob = {"state": dict(state), "module_extras": extras}
    named = [*tensors.items(), *_tensors_in(blob, "state")]
    bad = nonfinite_tensors(named)
    if bad:
        try:
            last = latest_checkpoint(directory)
        except UserError:
            last = None
        raise NonFiniteCheckpoint(
            f"not writing checkpoint {final}: {len(bad)} of {len(named)} tensors hold NaN or inf "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the last good checkpoint "
            f"({last if last is not None else 'none yet'}) is kept"
        )
    if final.exists() and not (final / META).exists():
        raise UserError(_damaged(final))

    buf = io.BytesIO()
    torch.save(blob, buf)
    files = {WEIGHTS: save_safetensors(tensors), STATE: buf.getvalue()}
    full_meta = {
        "format_version": FORMAT_VERSION,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "modules": sorted(modules),
        "files": {f: {"sha256": sha256(data), "bytes": len(data)} for f, data in files.items()},
        **meta,
    }
    files[META] = (json.dumps(full_meta, indent=2) + "\n").encode()

    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp-{name}-{os.getpid()}"
    old = directory / f".old-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        for fname, data in files.items():
            write_synced(tmp / fname, data)
        verify_checkpoint(tmp)  # what reached the disk reads back with the right checksums
        if final.exists():  # a complete checkpoint of the same name (a resumed run's redo)
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(directory)
    except DiskFull as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DiskFull(final / exc.path.name) from None  # name it where it was going
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    atomic_write_text(directory / "latest", name + "\n")
    _prune(directory, keep, protect=name)
    return final


def _damaged(path: Path) -> str:
    return (
        f"checkpoint {path} has no {META} (damaged or copied in part): it is never deleted; "
        f"restore its {META}, or move the directory out of {path.parent} to use the one before it"
    )


def _dirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _complete(directory: Path) -> list[Path]:
    return [p for p in _dirs(directory) if (p / META).exists()]


def complete_checkpoints(directory: str | Path) -> list[Path]:
    """Every complete checkpoint under ``directory`` (those with their ``meta.json``), oldest
    first; empty if there is none (or no such directory)."""
    directory = Path(directory)
    return _complete(directory) if directory.is_dir() else []


def _prune(directory: Path, keep: int, protect: str) -> None:
    for stale in (*directory.glob(".tmp-*"), *directory.glob(".old-*")):
        shutil.rmtree(stale, ignore_errors=True)
    checkpoints = _complete(directory)  # a damaged checkpoint (no meta.json) is never pruned
    for old in checkpoints[: max(0, len(checkpoints) - max(keep, 1))]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint under ``directory``, or None if there is none.

    ``UserError`` if the newest one (the one ``latest`` names, else the last by name) has no
    ``meta.json``: resuming from an older one or from scratch would silently lose work."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    pointer = directory / "latest"
    if pointer.exists():
        candidate = directory / pointer.read_text().strip()
        if candidate.is_dir() and candidate != directory:
            if not (candidate / META).exists():
                raise UserError(_damaged(candidate))
            return candidate
    dirs = _dirs(directory)
    if dirs and not (dirs[-1] / META).exists():
        raise UserError(_damaged(dirs[-1]))
    found = _complete(directory)
    return found[-1] if found else None


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"checkpoint file {path / META} is corrupt: {exc}") from None
    if not isinstance(meta, dict):
        raise UserError(f"checkpoint file {path / META} is corrupt: not a JSON object")
    return meta


def verify_checkpoint(path: str | Path) -> dict[str, bytes]:
    """Read the checkpoint's files and check them against the sha256 in its ``meta.json``.

    Returns the files' bytes; ``UserError`` naming the first file that is missing or differs."""
    path = Path(path)
    meta = _read_meta(path)
    out = {}
    listed = meta.get("files")
    if listed is not None and not isinstance(listed, dict):
        raise UserError(f"checkpoint file {path / META} is corrupt: 'files' is not a mapping")
    for fname in (WEIGHTS, STATE):
        if not (path / fname).exists():
            raise UserError(f"checkpoint {path} is incomplete: {fname} is missing")
        data = (path / fname).read_bytes()
        if listed is not None:  # checkpoints written before checksums existed have none
            expected = (listed.get(fname) or {}).get("sha256")
            if expected != sha256(data):
                raise UserError(
                    f"checkpoint file {path / fname} is corrupt: its sha256 differs from the one "
                    f"in {META} (flipped bytes or a partial copy); restore it, or move the "
                    "checkpoint directory away to use the one before it"
                )
        out[fname] = data
    return out


def load_checkpoint(
    path: str | Path,
    modules: Mapping[str, nn.Module],
    *,
    map_location: str | torch.device = "cpu",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights into ``modules`` (strictly) and return ``(state, meta)``.

    Any missing, truncated or tampered file is a ``UserError`` naming the file.
    """
    path = Path(path)
    if not path.is_dir():
        siblings = choices(p.name for p in _complete(path.parent)) if path.parent.is_dir() else ""
        raise UserError(f"no checkpoint at {path} (found: {siblings or 'none'})")
    if not (path / META).exists():
        raise UserError(_damaged(path))
    meta = _read_meta(path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} has format {meta.get('format_version')!r}, "
            f"this version reads {FORMAT_VERSION}"
        )
    files = verify_checkpoint(path)
    try:
        tensors = load_safetensors(files[WEIGHTS])
        tensors = {k: v.to(map_location) for k, v in tensors.items()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise UserError(f"checkpoint file {path / WEIGHTS} is corrupt: {exc}") from None
    try:
        blob = torch.load(io.BytesIO(files[STATE]), map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors have many types; all mean the same here
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"checkpoint file {path / STATE} is corrupt: {msg}") from None
    if not isinstance(blob, dict) or "state" not in blob:
        raise UserError(f"checkpoint file {path / STATE} is corrupt: unexpected contents")

    missing = sorted(set(modules) - set(meta.get("modules", [])))
    if missing:
        raise UserError(f"checkpoint {path} holds no weights for {', '.join(missing)}")
    extras = blob.get("module_extras", {})
    for mod_name, module in modules.items():
        prefix = f"{mod_name}."
        sd: dict[str, Any] = {
            k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)
        }
        sd.update(extras.get(mod_name, {}))
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:400]
            raise UserError(f"checkpoint {path} does not fit {mod_name!r}: {detail}") from None
    return blob["state"], meta
