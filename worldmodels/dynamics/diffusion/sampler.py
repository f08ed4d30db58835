"""Deterministic samplers of the EDM probability-flow ODE (Karras et al. 2022).

Every sampler has the same signature, ``sampler(denoise, x, sigmas) -> x0``: ``denoise(x, sigma)``
is ``D(x; sigma)`` with ``x`` ``(B, ...)`` and ``sigma`` ``(B,)``; ``x`` is the initial noise at
``sigmas[0]``; ``sigmas`` is a decreasing schedule ending in 0 (see ``sigma_schedule``), a tensor
or, better in hot loops, Python floats (``sigma_levels``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

Denoise = Callable[[Tensor, Tensor], Tensor]
Sampler = Callable[[Denoise, Tensor, Tensor | Sequence[float]], Tensor]
InitNoise = Literal["sigma_max", "unit"]


def sigma_schedule(steps: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """Noise levels of Karras et al. 2022 eq. (5): ``steps`` levels from ``sigma_max`` down to
    ``sigma_min`` evenly spaced in ``sigma^(1/rho)``, then a trailing 0. Returns ``(steps + 1,)``
    float32."""
    if steps < 1:
        raise ValueError(f"sigma_schedule needs steps >= 1, got {steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min} and {sigma_max}")
    # steps == 1 takes sigma_max alone (linspace(0, 1, 1) == [0]), as eq. (5) with N - 1 -> 0.
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return torch.cat((sigmas, sigmas.new_zeros(1))).float()


def _d(denoise: Denoise, x: Tensor, sigma: float) -> Tensor:
    """ODE slope dx/dsigma = (x - D(x; sigma)) / sigma, Karras eq. (4) with sigma(t) = t."""
    sigma_b = torch.full((x.shape[0],), sigma, device=x.device)  # (B,)
    return (x - denoise(x, sigma_b)) / sigma


def sigma_levels(steps: int, sigma_min: float, sigma_max: float, rho: float) -> tuple[float, ...]:
    """``sigma_schedule`` as Python floats (computed on the host once: a sampling loop that
    branches on them neither synchronises with a device nor breaks a compiled graph)."""
    return tuple(sigma_schedule(steps, sigma_min, sigma_max, rho).tolist())


def _pairs(sigmas: Tensor | Sequence[float]) -> list[tuple[float, float]]:
    s = sigmas.tolist() if isinstance(sigmas, Tensor) else list(sigmas)  # Python floats
    return list(zip(s[:-1], s[1:], strict=True))


def sample_euler(denoise: Denoise, x: Tensor, sigmas: Tensor | Sequence[float]) -> Tensor:
    """First-order Euler steps of the probability-flow ODE (Karras Algorithm 1 without the
    correction; no churn). This is DIAMOND's sampler (3 steps)."""
    for sigma, next_sigma in _pairs(sigmas):
        x = x + (next_sigma - sigma) * _d(denoise, x, sigma)
    return x


def sample_heun(denoise: Denoise, x: Tensor, sigmas: Tensor | Sequence[float]) -> Tensor:
    """Heun's second-order method, Karras et al. 2022 Algorithm 1: an Euler step, then the trapezoid
    correction with the slope at its end; the last step (to sigma 0) stays Euler."""
    for sigma, next_sigma in _pairs(sigmas):
        d = _d(denoise, x, sigma)
        x_euler = x + (next_sigma - sigma) * d
        if next_sigma == 0:
            x = x_euler
        else:
            d_next = _d(denoise, x_euler, next_sigma)
            x = x + (next_sigma - sigma) * (d + d_next) / 2
    return x


SAMPLERS: dict[str, Sampler] = {"euler": sample_euler, "heun": sample_heun}


def initial_noise(
    shape: tuple[int, ...] | torch.Size,
    sigma_max: float,
    mode: InitNoise,
    device: torch.device | str,
) -> Tensor:
    """Starting point of sampling, float32 of ``shape``. ``"sigma_max"``: ``N(0, sigma_max^2)``,
    the EDM prior (Karras Algorithm 1, line 1). ``"unit"``: ``N(0, 1)``, what DIAMOND's published
    code starts from whatever sigma_max is (so its first step sees less noise than sigma_max
    claims)."""
    if mode == "sigma_max":
        return sigma_max * torch.randn(shape, device=device)
    if mode == "unit":
        return torch.randn(shape, device=device)
    raise ValueError(f"unknown initial noise mode {mode!r}; valid: 'sigma_max', 'unit'")
