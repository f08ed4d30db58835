"""Reference scores and the human-normalized score (HNS)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


@cache
def reference_scores() -> dict:
    """``{game: {"random", "human", "IRIS": [...], "DIAMOND": [...]}}`` for the Atari 100k games."""
    text = resources.files("worldmodels").joinpath("reference/atari100k_scores.json").read_text()
    return json.loads(text)["games"]


def human_normalized(game: str, score: float) -> float | None:
    """HNS = (score - random) / (human - random), or None for a game without reference scores."""
    ref = reference_scores().get(game)
    if ref is None:
        return None
    return (score - ref["random"]) / (ref["human"] - ref["random"])
