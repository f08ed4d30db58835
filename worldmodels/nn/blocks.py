"""Shared network blocks, written once: every model in the project builds from these.

Conventions: images are ``(B, C, H, W)`` float tensors; ``cond`` is a ``(B, D)`` conditioning
vector that modulates group norms (adaptive group norm, as in DIAMOND and many diffusion U-Nets).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GROUP_SIZE = 32  # channels per group norm group (DIAMOND: 32; a 64-channel layer has 2 groups)
NORM_EPS = 1e-5


def check_levels(channels: tuple, depths: tuple, attn_depths: tuple) -> None:
    """Config check of a multi-level conv net: one entry per level, at least one block each."""
    if not len(channels) == len(depths) == len(attn_depths):
        raise ValueError(
            f"channels, depths and attn_depths need one entry per level, got "
            f"{len(channels)}, {len(depths)} and {len(attn_depths)}"
        )
    if min(depths) < 1:
        raise ValueError(f"every level needs at least one res block, got depths={depths}")


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1)


def conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, stride=1, padding=0)


def num_groups(channels: int) -> int:
    return max(1, channels // GROUP_SIZE)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels), channels, eps=NORM_EPS)


class AdaGroupNorm(nn.Module):
    """Group norm whose per-channel scale and shift are predicted from ``cond``:
    ``GN(x) * (1 + scale(cond)) + shift(cond)``."""

    def __init__(self, channels: int, cond_channels: int) -> None:
        super().__init__()
        self.groups = num_groups(channels)
        self.linear = nn.Linear(cond_channels, 2 * channels)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        x = F.group_norm(x, self.groups, eps=NORM_EPS)
        scale, shift = self.linear(cond)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        return x * (1 + scale) + shift


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the ``H * W`` positions, pre-norm, zero-initialised output
    (so a freshly built block is the identity)."""

    def __init__(self, channels: int, head_dim: int = 8) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = group_norm(channels)
        self.qkv = conv1x1(channels, 3 * channels)
        self.out = conv1x1(channels, channels)
        nn.init.zeros_(self.out.weight)
        assert self.out.bias is not None  # conv1x1 has a bias
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # (B, heads, HW, C / heads) each
        y = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C / heads)
        y = y.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.out(y)


class ResBlock(nn.Module):
    """Two adaptive-norm 3x3 convs with a residual path (1x1 projection when widths differ), the
    second conv zero-initialised; optional self-attention after the sum."""

    def __init__(self, c_in: int, c_out: int, cond_channels: int, attn: bool = False) -> None:
        super().__init__()
        self.proj = conv1x1(c_in, c_out) if c_in != c_out else nn.Identity()
        self.norm1 = AdaGroupNorm(c_in, cond_channels)
        self.conv1 = conv3x3(c_in, c_out)
        self.norm2 = AdaGroupNorm(c_out, cond_channels)
        self.conv2 = conv3x3(c_out, c_out)
        nn.init.zeros_(self.conv2.weight)
        self.attn = SelfAttention2d(c_out) if attn else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        r = self.proj(x)
        x = self.conv1(F.silu(self.norm1(x, cond)))
        x = self.conv2(F.silu(self.norm2(x, cond)))
        return self.attn(x + r)


class ResBlocks(nn.Module):
    """A stack of ResBlocks. With ``skips`` (the U-Net's way up), block ``i`` first concatenates
    ``skips[i]`` to its input on the channel axis. Returns the output and every block's output."""

    def __init__(
        self, c_ins: Sequence[int], c_outs: Sequence[int], cond_channels: int, attn: bool = False
    ) -> None:
        super().__init__()
        assert len(c_ins) == len(c_outs)
        self.blocks = nn.ModuleList(
            ResBlock(i, o, cond_channels, attn) for i, o in zip(c_ins, c_outs, strict=True)
        )

    def forward(
        self, x: Tensor, cond: Tensor, skips: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        outputs = []
        for i, block in enumerate(self.blocks):
            if skips is not None:
                x = torch.cat((x, skips[i]), dim=1)
            x = block(x, cond)
            outputs.append(x)
        return x, outputs


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv (orthogonal init)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
        nn.init.orthogonal_(self.conv.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class FourierFeatures(nn.Module):
    """Random Fourier features of a scalar: ``[cos(2 pi w x), sin(2 pi w x)]``, ``w ~ N(0, 1)``
    fixed at construction (a buffer, so it is saved with the weights)."""

    weight: Tensor  # buffer (1, dim / 2)

    def __init__(self, dim: int) -> None:
        super().__init__()
        assert dim % 2 == 0
        self.register_buffer("weight", torch.randn(1, dim // 2))

    def forward(self, x: Tensor) -> Tensor:
        """``(B,)`` -> ``(B, dim)``."""
        f = 2 * math.pi * x[:, None].float() @ self.weight
        return torch.cat((f.cos(), f.sin()), dim=-1)


class SmallResBlock(nn.Module):
    """Norm -> SiLU -> 3x3 conv with a residual path, without conditioning (actor-critic encoder)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.f = nn.Sequential(group_norm(c_in), nn.SiLU(), conv3x3(c_in, c_out))
        self.skip = conv1x1(c_in, c_out) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.f(x)


class PlainResBlock(nn.Module):
    """GN -> SiLU -> 3x3 conv -> GN -> SiLU -> dropout -> 3x3 conv, added to the input (through a
    1x1 projection when widths differ); unconditioned (the VQ-VAE encoder and decoder of IRIS)."""

    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.f = nn.Sequential(
            group_norm(c_in), nn.SiLU(), conv3x3(c_in, c_out),
            group_norm(c_out), nn.SiLU(), nn.Dropout(dropout), conv3x3(c_out, c_out),
        )  # fmt: skip
        self.skip = conv1x1(c_in, c_out) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.f(x)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
