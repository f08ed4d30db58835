"""EDM maths (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models") as small pure functions: preconditioning, the training noise distribution and the
training target. DIAMOND's additions (offset noise folded into the preconditioning) are marked.

Randomness comes from the global torch RNG on purpose: the entry point seeds it and checkpoints
save it, which keeps CPU runs bitwise reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class EDMConfig:
    """Noise and preconditioning settings of an EDM denoiser. Defaults are DIAMOND's."""

    sigma_data: float = 0.5
    """Std of the data (pixels in [-1, 1]); sets the preconditioning (Karras Table 1)."""
    sigma_offset_noise: float = 0.3
    """Std of a per-(image, channel) constant added during training (DIAMOND), so the model can
    also shift the mean brightness; folded into the preconditioning as an extra noise level."""
    p_mean: float = -0.4
    """Mean of log(sigma) during training (EDM uses -1.2; DIAMOND -0.4)."""
    p_std: float = 1.2
    """Std of log(sigma) during training (Karras Table 1)."""
    sigma_min_train: float = 2e-3
    """Training sigmas are clipped to [sigma_min_train, sigma_max_train] (DIAMOND)."""
    sigma_max_train: float = 20.0


class Preconditioners(NamedTuple):
    """The four scalings of Karras eq. (7), each ``(B,)`` float32."""

    c_in: Tensor
    c_skip: Tensor
    c_out: Tensor
    c_noise: Tensor


def effective_sigma(sigma: Tensor, sigma_offset_noise: float = 0.0) -> Tensor:
    """Total noise std when offset noise of std ``sigma_offset_noise`` is added (DIAMOND)."""
    return (sigma.float() ** 2 + sigma_offset_noise**2).sqrt()


def preconditioners(
    sigma: Tensor, sigma_data: float, sigma_offset_noise: float = 0.0
) -> Preconditioners:
    """EDM preconditioning, Karras et al. 2022 Table 1 ("Ours"), with the offset noise folded
    into sigma as in DIAMOND. ``sigma`` is ``(B,)``; returns ``(B,)`` float32 each."""
    s = effective_sigma(sigma, sigma_offset_noise)
    var = s**2 + sigma_data**2  # variance of the noisy input for data of std sigma_data
    return Preconditioners(
        c_in=var.rsqrt(),
        c_skip=sigma_data**2 / var,
        c_out=s * sigma_data * var.rsqrt(),
        c_noise=s.log() / 4,
    )


def sample_training_sigma(n: int, cfg: EDMConfig, device: torch.device | str) -> Tensor:
    """Log-normal training noise levels, ln(sigma) ~ N(P_mean, P_std^2) (Karras Table 1),
    clipped to ``[sigma_min_train, sigma_max_train]`` (DIAMOND). Returns ``(n,)`` float32."""
    log_sigma = cfg.p_mean + cfg.p_std * torch.randn(n, device=device)
    return log_sigma.exp().clamp(cfg.sigma_min_train, cfg.sigma_max_train)


def add_training_noise(x0: Tensor, sigma: Tensor, offset_std: float) -> Tensor:
    """``x0 + offset + sigma * n`` (Karras eq. (2) training noise plus DIAMOND's offset noise):
    ``x0`` ``(B, C, H, W)``, ``sigma`` ``(B,)``, offset ``~ N(0, offset_std^2)`` of shape
    ``(B, C, 1, 1)``."""
    b, c = x0.shape[:2]
    offset = offset_std * torch.randn(b, c, 1, 1, device=x0.device, dtype=x0.dtype)
    return x0 + offset + _bcast(sigma, x0) * torch.randn_like(x0)


def denoiser_target(x0: Tensor, noisy: Tensor, pre: Preconditioners) -> Tensor:
    """Effective training target of the raw network, Karras eq. (8): ``(x0 - c_skip * noisy) /
    c_out``, each ``(B,)`` scaling broadcast over ``(B, C, H, W)``."""
    return (x0 - _bcast(pre.c_skip, x0) * noisy) / _bcast(pre.c_out, x0)


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` with as many dims as ``like``."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))
