"""Per-row resets of recurrent state: the project's one helper for "rows where an episode starts
take the initial state, the others keep theirs"."""

from __future__ import annotations

from torch import Tensor


def reset_rows(first: Tensor, state: tuple[Tensor, ...], initial: tuple[Tensor, ...]) -> tuple:
    """``state`` with the rows where ``first (B,)`` is True replaced by ``initial``'s: each a
    tuple of ``(B, ...)`` tensors (an LSTM's ``(h, c)``); static shapes, no host read."""
    out = []
    for s, i in zip(state, initial, strict=True):
        f = first.to(s.device).view(-1, *([1] * (s.ndim - 1)))
        out.append(i.where(f, s))
    return tuple(out)
