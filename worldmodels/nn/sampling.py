"""Categorical draws that suit hot loops: no host synchronisation, static shapes, the global RNG.

``torch.distributions.Categorical`` validates its arguments (a host read of every call's logits)
and draws with ``multinomial``; the Gumbel-max trick needs one uniform draw and an argmax, which a
compiled graph or a CUDA graph replays as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_categorical(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """One draw per row from ``softmax(logits / temperature)`` (``temperature == 0``: argmax), by
    the Gumbel-max trick: no host synchronisation, global torch RNG. ``(..., C)`` -> ``(...,)``
    int64."""
    if temperature == 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, device=logits.device)  # u = 0 gives -inf noise: never drawn
    return (logits.float() / temperature - torch.log(-torch.log(u))).argmax(-1)


def categorical_log_prob(logits: Tensor, index: Tensor) -> Tensor:
    """``log softmax(logits)[index]``: ``(..., C)``, ``(...,)`` int64 -> ``(...,)`` float32."""
    return logits.float().log_softmax(-1).gather(-1, index[..., None])[..., 0]


def categorical_entropy(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)``, ``(..., C)`` -> ``(...,)`` float32 (0 * log 0 = 0)."""
    log_p = logits.float().log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)
