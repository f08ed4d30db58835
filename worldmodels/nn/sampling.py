"""Categorical draws that suit hot loops (no host synchronisation, static shapes), and
epsilon-greedy exploration: the project's one implementation of each.

``torch.distributions.Categorical`` validates its arguments (a host read of every call's logits)
and draws with ``multinomial``; the Gumbel-max trick needs one uniform draw and an argmax, which a
compiled graph or a CUDA graph replays as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_categorical(
    logits: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """One draw per row from ``softmax(logits / temperature)`` (``temperature == 0``: argmax), by
    the Gumbel-max trick, with no host synchronisation. ``(..., C)`` -> ``(...,)`` int64.

    The noise comes from the global torch RNG on the logits' device, or, given a CPU
    ``generator`` (an agent's own, so that its draws are the same on every device), from that
    generator, copied to the device without waiting."""
    if temperature == 0:
        return logits.argmax(-1)
    if generator is None:
        u = torch.rand(logits.shape, device=logits.device)
    else:
        u = torch.rand(logits.shape, generator=generator).to(logits.device, non_blocking=True)
    # u = 0 gives -inf noise: that class is never drawn
    return (logits.float() / temperature - torch.log(-torch.log(u))).argmax(-1)


def epsilon_greedy(
    actions: Tensor, epsilon: float, num_actions: int, generator: torch.Generator
) -> Tensor:
    """Replace each action ``(B,)`` by a uniform one with probability ``epsilon``, drawn from the
    CPU ``generator`` (the draws always happen, so the generator advances the same way whatever
    ``epsilon`` is); the result is on the actions' device."""
    n = actions.shape[0]
    coin = torch.rand(n, generator=generator) < epsilon
    uniform = torch.randint(num_actions, (n,), generator=generator)
    dev = actions.device
    return torch.where(coin.to(dev), uniform.to(dev), actions)


def categorical_log_prob(logits: Tensor, index: Tensor) -> Tensor:
    """``log softmax(logits)[index]``: ``(..., C)``, ``(...,)`` int64 -> ``(...,)`` float32."""
    return logits.float().log_softmax(-1).gather(-1, index[..., None])[..., 0]


def categorical_entropy(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)``, ``(..., C)`` -> ``(...,)`` float32 (0 * log 0 = 0)."""
    log_p = logits.float().log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)
