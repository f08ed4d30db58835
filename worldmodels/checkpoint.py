"""Checkpoints: weights in safetensors, everything else loadable with ``weights_only=True``.

Layout of one checkpoint (a directory, published by a single atomic rename)::

    checkpoints/epoch_000012/
        weights.safetensors   every module's parameters and buffers, keys "<module>.<param>"
        state.pt              optimizer states, RNG states, counters, modules' extra state;
                              loaded with torch.load(weights_only=True): plain data and tensors only
        meta.json             format version, registry names, the resolved config, counters
    checkpoints/latest        name of the newest complete checkpoint (written atomically)

A checkpoint is rebuilt by registry name and config, never by unpickling classes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from worldmodels.errors import UserError, choices
from worldmodels.fileio import atomic_write_text, fsync_dir

FORMAT_VERSION = 1
WEIGHTS, STATE, META = "weights.safetensors", "state.pt", "meta.json"


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
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name
    tmp = directory / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        tensors: dict[str, torch.Tensor] = {}
        extras: dict[str, dict[str, Any]] = {}
        for mod_name, module in modules.items():
            for key, value in module.state_dict().items():
                if isinstance(value, torch.Tensor):
                    # clone: safetensors refuses tensors that share storage (tied weights)
                    tensors[f"{mod_name}.{key}"] = value.detach().to("cpu").clone().contiguous()
                else:
                    extras.setdefault(mod_name, {})[key] = value
        save_file(tensors, str(tmp / WEIGHTS))
        torch.save({"state": dict(state), "module_extras": extras}, tmp / STATE)
        full_meta = {
            "format_version": FORMAT_VERSION,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "modules": sorted(modules),
            **meta,
        }
        (tmp / META).write_text(json.dumps(full_meta, indent=2) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(directory / "latest", name + "\n")
    _prune(directory, keep, protect=name)
    return final


def _complete(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / META).exists()
    )


def _prune(directory: Path, keep: int, protect: str) -> None:
    for stale in directory.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    checkpoints = _complete(directory)
    for old in checkpoints[: max(0, len(checkpoints) - max(keep, 1))]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint under ``directory``, or None if there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    pointer = directory / "latest"
    if pointer.exists():
        candidate = directory / pointer.read_text().strip()
        if (candidate / META).exists():
            return candidate
    found = _complete(directory)
    return found[-1] if found else None


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
    for fname in (WEIGHTS, STATE, META):
        if not (path / fname).exists():
            raise UserError(f"checkpoint {path} is incomplete: {fname} is missing")
    try:
        meta = json.loads((path / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"checkpoint file {path / META} is corrupt: {exc}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} has format {meta.get('format_version')!r}, "
            f"this version reads {FORMAT_VERSION}"
        )
    try:
        tensors = load_file(str(path / WEIGHTS), device=str(map_location))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise UserError(f"checkpoint file {path / WEIGHTS} is corrupt: {exc}") from None
    try:
        blob = torch.load(path / STATE, map_location=map_location, weights_only=True)
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
