"""Metrics for rare events (non-zero rewards, episode ends) that a base rate cannot flatter.

On Atari, over 95% of transitions have no reward and no end, so a model that always predicts "no
reward, no end" scores ~0.97 accuracy while knowing nothing. What separates learning from the
prior is how many of the real events a model finds (recall) and how many of its predicted events
are real (precision), each beside the base rate (the share of transitions with the event: what a
model that guesses events at random with the right frequency gets as precision).

Everything here works on counts, so that counts from several batches (or tensors from a captured
step) add up before the ratios are taken: the ratio of means is the ratio of sums; a mean of
per-batch ratios would weight a batch with one event like a batch with fifty.

A reward event is a non-zero reward, matched by sign: a predicted +1 where the real reward is -1
counts as a false positive *and* a miss. An end event is an episode end (``Batch.end``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = [
    "EVENT_COUNT_KEYS",
    "EVENTS",
    "add_event_rates",
    "binary_counts",
    "detection_scores",
    "event_counts",
    "expected_event_counts",
]

EVENTS = ("reward", "end")
EVENT_COUNT_KEYS = tuple(f"{e}_{k}" for e in EVENTS for k in ("hits", "predicted", "real")) + (
    "transitions",
)


def _count(x: Tensor, valid: Tensor) -> Tensor:
    return (x & valid).sum().float()


def binary_counts(pred: Tensor, real: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(hits, predicted, real)`` counts (0-dim float) of a boolean event over ``valid``."""
    return _count(pred & real, valid), _count(pred, valid), _count(real, valid)


def event_counts(
    valid: Tensor,
    reward_pred: Tensor | None = None,
    reward_real: Tensor | None = None,
    end_pred: Tensor | None = None,
    end_real: Tensor | None = None,
) -> dict[str, Tensor]:
    """0-dim float tensors (no host read: safe inside a captured step) counting, over the
    transitions where ``valid`` is True: ``transitions``; and per event given, ``<event>_real``
    (real events), ``<event>_predicted`` (predicted events) and ``<event>_hits`` (both, reward sign
    equal). Rewards are signs or raw rewards (only their sign is read), ends booleans; all of one
    shape."""
    out = {"transitions": valid.sum().float()}
    if reward_pred is not None and reward_real is not None:
        p, r = torch.sign(reward_pred), torch.sign(reward_real)
        out["reward_hits"] = _count((p == r) & (r != 0), valid)
        out["reward_predicted"] = _count(p != 0, valid)
        out["reward_real"] = _count(r != 0, valid)
    if end_pred is not None and end_real is not None:
        counts = binary_counts(end_pred.bool(), end_real.bool(), valid)
        out.update(zip(("end_hits", "end_predicted", "end_real"), counts, strict=True))
    return out


def expected_event_counts(
    valid: Tensor,
    reward_probs: Tensor | None = None,
    reward_real: Tensor | None = None,
    end_probs: Tensor | None = None,
    end_real: Tensor | None = None,
) -> dict[str, Tensor]:
    """The counts of ``event_counts`` in expectation over a model's sampling, from its predicted
    probabilities: ``reward_probs (..., 3)`` over the signs ``(-1, 0, +1)``, ``end_probs (...)``
    the probability of an end; ``valid``, ``reward_real``, ``end_real`` of shape ``(...)``. The
    expected hits over the expected predicted events is the precision of the model's own samples
    (as a ratio of expectations), without sampling noise."""
    v = valid.double()
    out = {"transitions": v.sum()}
    if reward_probs is not None and reward_real is not None:
        p = reward_probs.double()
        cls = (torch.sign(reward_real) + 1).long()  # (...) in {0, 1, 2}
        p_real = p.gather(-1, cls[..., None])[..., 0]
        nonzero = (reward_real != 0).double()
        out["reward_hits"] = (p_real * nonzero * v).sum()
        out["reward_predicted"] = ((1.0 - p[..., 1]) * v).sum()
        out["reward_real"] = (nonzero * v).sum()
    if end_probs is not None and end_real is not None:
        e, r = end_probs.double(), end_real.double()
        out["end_hits"] = (e * r * v).sum()
        out["end_predicted"] = (e * v).sum()
        out["end_real"] = (r * v).sum()
    return out


def _ratio(a: float, b: float) -> float | None:
    return None if b <= 0 else a / b


def detection_scores(hits: float, predicted: float, real: float, total: float) -> dict:
    """``precision``, ``recall``, ``f1``, ``base_rate`` (real / total) and ``predicted_rate``
    (predicted / total); None where a ratio has nothing to divide by (no predicted events: no
    precision; no real events: no recall)."""
    precision = _ratio(hits, predicted)
    recall = _ratio(hits, real)
    f1 = None
    if precision is not None and recall is not None:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "base_rate": _ratio(real, total),
        "predicted_rate": _ratio(predicted, total),
        "real": real,
        "predicted": predicted,
        "hits": hits,
    }


def add_event_rates(logs: Mapping[str, float]) -> dict[str, float]:
    """Logs with their event counts (``event_counts``' keys, e.g. averaged over the steps of an
    epoch) replaced by ``<event>_precision``, ``<event>_recall`` and ``<event>_base_rate``; a
    rate with nothing to divide by is left out (no NaN curves). Other keys pass through."""
    out = {k: v for k, v in logs.items() if k not in EVENT_COUNT_KEYS}
    total = logs.get("transitions")
    for event in EVENTS:
        keys = [f"{event}_{k}" for k in ("hits", "predicted", "real")]
        if total is None or not all(k in logs for k in keys):
            continue
        hits, predicted, real = (float(logs[k]) for k in keys)
        s = detection_scores(hits, predicted, real, float(total))
        for name in ("precision", "recall", "base_rate"):
            if s[name] is not None:
                out[f"{event}_{name}"] = s[name]
    return out
