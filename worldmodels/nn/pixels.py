"""Pixels between their stored form (uint8 in [0, 255]) and the models' (float in [-1, 1])."""

from __future__ import annotations

import torch
from torch import Tensor


def to_float(obs: Tensor, mask: Tensor | None = None) -> Tensor:
    """uint8 ``(..., C, H, W)`` -> float32 in ``[-1, 1]``. With ``mask`` (the leading dims of
    ``obs``, False on padding) padded frames become 0, the mid-grey that DIAMOND pads with."""
    x = obs.float().div(127.5).sub(1.0)
    if mask is not None:
        x = x * mask.view(*mask.shape, *([1] * (x.ndim - mask.ndim))).to(x.dtype)
    return x


def to_uint8(x: Tensor) -> Tensor:
    """float in ``[-1, 1]`` -> uint8, rounding to the nearest of the 256 levels (clamped)."""
    return x.detach().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
