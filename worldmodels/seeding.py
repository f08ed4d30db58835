"""Seeds and RNG state: set once in the entry point, captured into every checkpoint."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy's legacy global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(seed: int, *names: str | int) -> int:
    """A stable sub-seed for one consumer (``derive_seed(s, "collect")``), independent of call order.

    Kept below 2**31 - 1, the largest seed ALE accepts."""
    seq = np.random.SeedSequence([seed % 2**32, *(_name_to_int(n) for n in names)])
    return int(seq.generate_state(1, dtype=np.uint32)[0]) % (2**31 - 1)


def _name_to_int(name: str | int) -> int:
    if isinstance(name, int):
        return name % 2**32
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % 2**32


def global_rng_state() -> dict:
    """The global RNGs as plain data that ``torch.load(weights_only=True)`` accepts."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np.asarray(np_state["key"], dtype=np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
