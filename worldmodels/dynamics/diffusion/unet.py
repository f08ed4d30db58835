"""DIAMOND's next-frame denoiser: the raw U-Net ``F_theta`` (``DenoiserNet``) and the EDM-
preconditioned denoiser ``D_theta`` around it (``Denoiser``) with its training loss and sampling.

Frames are float ``(C, H, W)`` in ``[-1, 1]``; ``T`` is the number of context frames (4 in DIAMOND)
and ``K`` the number of frames predicted autoregressively during training (2 in DIAMOND).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodels.dynamics.diffusion.edm import (
    EDMConfig,
    Preconditioners,
    add_training_noise,
    denoiser_target,
    preconditioners,
    sample_training_sigma,
)
from worldmodels.dynamics.diffusion.sampler import (
    SAMPLERS,
    InitNoise,
    initial_noise,
    sigma_levels,
)
from worldmodels.nn.blocks import (
    Downsample,
    FourierFeatures,
    ResBlocks,
    Upsample,
    check_levels,
    conv3x3,
    group_norm,
)


def quantize(x: Tensor) -> Tensor:
    """Clamp to ``[-1, 1]`` and round to the nearest of the 256 levels ``k / 255 * 2 - 1``, i.e.
    what the frame would be as ``uint8`` pixels. Rounds to nearest: DIAMOND's published code
    floors (via ``.byte()``), which darkens every generated frame by half a level on average."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


@dataclass(frozen=True)
class DenoiserNetConfig:
    """Shape of the denoising U-Net. Defaults are DIAMOND's Atari 100k network (4.41 M params)."""

    context: int = 4
    """Past frames and actions conditioning each prediction (T)."""
    channels: tuple[int, ...] = (64, 64, 64, 64)
    """Width of each U-Net level; the resolution halves between levels (64 -> 32 -> 16 -> 8)."""
    depths: tuple[int, ...] = (2, 2, 2, 2)
    """Res blocks per level on the way down (depth + 1 on the way up)."""
    attn_depths: tuple[bool, ...] = (False, False, False, False)
    """Self-attention in the res blocks of each level (the middle blocks always have it)."""
    cond_channels: int = 256
    """Width of the conditioning vector (noise level + actions) driving the adaptive norms."""
    img_channels: int = 3

    def __post_init__(self) -> None:
        check_levels(self.channels, self.depths, self.attn_depths)
        if self.cond_channels % self.context:
            raise ValueError(
                f"cond_channels ({self.cond_channels}) must be divisible by context "
                f"({self.context}): each past action is embedded to cond_channels // context"
            )


class UNet(nn.Module):
    """Conditioned U-Net over ``(B, c, H, W)`` features, ``c = channels[0]``; H and W are padded
    up to a multiple of ``2^(levels - 1)`` and cropped back."""

    def __init__(
        self,
        channels: tuple[int, ...],
        depths: tuple[int, ...],
        attn_depths: tuple[bool, ...],
        cond_channels: int,
    ) -> None:
        super().__init__()
        downs, ups = [], []
        for i, (n, attn) in enumerate(zip(depths, attn_depths, strict=True)):
            c1, c2 = channels[max(0, i - 1)], channels[i]
            downs.append(ResBlocks([c1] + [c2] * (n - 1), [c2] * n, cond_channels, attn))
            # The way up consumes n + 1 skips: each down block's output, then the level's input.
            ups.append(ResBlocks([2 * c2] * n + [c1 + c2], [c2] * n + [c1], cond_channels, attn))
        self.down_blocks = nn.ModuleList(downs)
        self.up_blocks = nn.ModuleList(reversed(ups))
        self.mid_blocks = ResBlocks(
            [channels[-1]] * 2, [channels[-1]] * 2, cond_channels, attn=True
        )
        self.downsamples = nn.ModuleList([nn.Identity(), *(Downsample(c) for c in channels[:-1])])
        self.upsamples = nn.ModuleList(
            [nn.Identity(), *(Upsample(c) for c in reversed(channels[:-1]))]
        )
        self.multiple = 2 ** (len(channels) - 1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        x = F.pad(x, (0, pad_w, 0, pad_h))
        skips: list[list[Tensor]] = []
        for down, block in zip(self.downsamples, self.down_blocks, strict=True):
            x = down(x)
            level_in = x
            x, outs = block(x, cond)
            skips.append([level_in, *outs])
        x, _ = self.mid_blocks(x, cond)
        for up, block, level_skips in zip(
            self.upsamples, self.up_blocks, reversed(skips), strict=True
        ):
            x, _ = block(up(x), cond, level_skips[::-1])
        return x[..., :h, :w]


class DenoiserNet(nn.Module):
    """``F_theta``: the raw network of DIAMOND's denoiser (its "inner model")."""

    def __init__(self, cfg: DenoiserNetConfig, num_actions: int) -> None:
        super().__init__()
        self.cfg = cfg
        e = cfg.cond_channels // cfg.context
        self.noise_emb = FourierFeatures(cfg.cond_channels)
        self.act_emb = nn.Embedding(num_actions, e)
        self.cond_mlp = nn.Sequential(
            nn.Linear(cfg.cond_channels, cfg.cond_channels),
            nn.SiLU(),
            nn.Linear(cfg.cond_channels, cfg.cond_channels),
        )
        self.conv_in = conv3x3((cfg.context + 1) * cfg.img_channels, cfg.channels[0])
        self.unet = UNet(cfg.channels, cfg.depths, cfg.attn_depths, cfg.cond_channels)
        self.norm_out = group_norm(cfg.channels[0])
        self.conv_out = conv3x3(cfg.channels[0], cfg.img_channels)
        # Zero output: a fresh denoiser returns c_skip * noisy, the best guess without data.
        nn.init.zeros_(self.conv_out.weight)
        assert self.conv_out.bias is not None  # conv3x3 has a bias
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, noisy: Tensor, c_noise: Tensor, context: Tensor, actions: Tensor) -> Tensor:
        """``noisy`` ``(B, C, H, W)`` (already scaled by c_in), ``c_noise`` ``(B,)``, ``context``
        ``(B, T * C, H, W)`` (past frames, oldest first), ``actions`` ``(B, T)`` int64 ->
        ``(B, C, H, W)``."""
        b, t = actions.shape
        assert t == self.cfg.context, f"expected {self.cfg.context} context actions, got {t}"
        assert context.shape[1] == t * noisy.shape[1], (context.shape, noisy.shape)
        act = self.act_emb(actions).reshape(b, -1)  # (B, T * e) = (B, cond_channels)
        cond = self.cond_mlp(self.noise_emb(c_noise) + act)  # (B, cond_channels)
        x = self.conv_in(torch.cat((context, noisy), dim=1))  # (B, channels[0], H, W)
        x = self.unet(x, cond)
        return self.conv_out(F.silu(self.norm_out(x)))


class Denoiser(nn.Module):
    """``D_theta``: the EDM-preconditioned next-frame denoiser, ``D(x; sigma) = c_skip * x +
    c_out * F(c_in * x, c_noise, past frames, past actions)`` (Karras eq. (7)), with DIAMOND's
    autoregressive training loss and sampling."""

    def __init__(self, net_cfg: DenoiserNetConfig, edm: EDMConfig, num_actions: int) -> None:
        super().__init__()
        self.net_cfg = net_cfg
        self.edm = edm
        self.net = DenoiserNet(net_cfg, num_actions)

    def _preconditioners(self, sigma: Tensor) -> Preconditioners:
        # The offset noise is folded in at sampling time too, so the net sees the same c_noise
        # for a given sigma as in training (DIAMOND).
        return preconditioners(sigma, self.edm.sigma_data, self.edm.sigma_offset_noise)

    def _scale_context(self, ctx_obs: Tensor) -> Tensor:
        b, t, c, h, w = ctx_obs.shape
        return (ctx_obs / self.edm.sigma_data).reshape(b, t * c, h, w)  # (B, T * C, H, W)

    def _net_output(
        self, noisy: Tensor, pre: Preconditioners, ctx: Tensor, ctx_act: Tensor
    ) -> Tensor:
        """Raw ``F`` as float32; ``ctx`` is the scaled, flattened context ``(B, T * C, H, W)``."""
        return self.net(noisy * pre.c_in[:, None, None, None], pre.c_noise, ctx, ctx_act).float()

    @staticmethod
    def _combine(noisy: Tensor, out: Tensor, pre: Preconditioners) -> Tensor:
        return pre.c_skip[:, None, None, None] * noisy + pre.c_out[:, None, None, None] * out

    def denoise(self, noisy: Tensor, sigma: Tensor, ctx_obs: Tensor, ctx_act: Tensor) -> Tensor:
        """``D(noisy; sigma)``: ``noisy`` ``(B, C, H, W)``, ``sigma`` ``(B,)``, ``ctx_obs``
        ``(B, T, C, H, W)`` float in ``[-1, 1]``, ``ctx_act`` ``(B, T)`` int64 -> ``(B, C, H, W)``
        float32. The net may run under ``torch.autocast``; the preconditioning is float32."""
        noisy = noisy.float()
        pre = self._preconditioners(sigma)
        out = self._net_output(noisy, pre, self._scale_context(ctx_obs), ctx_act)
        return self._combine(noisy, out, pre)

    def loss(self, obs: Tensor, act: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """DIAMOND's training loss on segments of ``T + K`` frames.

        ``obs`` ``(B, T + K, C, H, W)`` float in ``[-1, 1]``, ``act`` ``(B, T + K)`` int64 (``act[t]``
        taken at frame ``t``), ``mask`` ``(B, T + K)`` bool (False on padding). Target ``j`` is
        frame ``T + j``, denoised from frames ``[j, T + j)`` where the frames already predicted are
        the model's own predictions (clamped, quantised, detached), so training sees the drift it
        meets in imagination. The loss is the MSE between ``F`` and its target (Karras eq. (8),
        whose weighting cancels to 1) over unmasked rows, averaged over the ``K`` targets; a target
        whose rows are all padding contributes 0.
        """
        b, length, c, h, w = obs.shape
        t = self.net_cfg.context
        k = length - t
        assert k >= 1, f"need more than {t} frames per segment, got {length}"
        assert act.shape == (b, length) and mask.shape == (b, length), (act.shape, mask.shape)
        frames = list(obs.float().unbind(1))  # (B, C, H, W) each; predicted ones get replaced
        total = obs.new_zeros((), dtype=torch.float32)
        logs: dict[str, Tensor] = {}
        for j in range(k):
            x0 = frames[t + j]  # the real frame: not replaced yet
            ctx = self._scale_context(torch.stack(frames[j : t + j], dim=1))
            sigma = sample_training_sigma(b, self.edm, obs.device)  # (B,)
            noisy = add_training_noise(x0, sigma, self.edm.sigma_offset_noise)
            pre = self._preconditioners(sigma)
            out = self._net_output(noisy, pre, ctx, act[:, j : t + j])
            target = denoiser_target(x0, noisy, pre)
            row_mse = (out - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
            # Same-size rows: the mean over unmasked rows is the MSE over unmasked elements.
            # Written without boolean indexing so an all-padding target gives 0, not NaN.
            m = mask[:, t + j].float()
            loss_j = (row_mse * m).sum() / m.sum().clamp(min=1)
            total = total + loss_j
            logs[f"loss_target{j}"] = loss_j.detach()
            if j < k - 1:
                frames[t + j] = quantize(self._combine(noisy, out, pre).detach())
        loss = total / k
        logs["loss"] = loss.detach()  # tensors: the updater reads all the logs back at once
        return loss, logs

    @torch.no_grad()
    def sample(
        self,
        ctx_obs: Tensor,
        ctx_act: Tensor,
        *,
        steps: int,
        sampler: str,
        sigma_min: float,
        sigma_max: float,
        rho: float,
        init: InitNoise,
        sigmas: Sequence[float] | None = None,
    ) -> Tensor:
        """The next frame ``(B, C, H, W)`` float in ``[-1, 1]`` on the 8-bit grid, from
        ``ctx_obs`` ``(B, T, C, H, W)`` float in ``[-1, 1]`` and ``ctx_act`` ``(B, T)`` int64.
        ``sampler`` is a key of ``SAMPLERS``; ``init`` a mode of ``initial_noise``.
        DIAMOND: 3 Euler steps, sigma 5 -> 2e-3, rho 7, init "unit"."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        b, _, c, h, w = ctx_obs.shape
        ctx = self._scale_context(ctx_obs.float())  # computed once for all steps

        def denoise(x: Tensor, sigma: Tensor) -> Tensor:
            pre = self._preconditioners(sigma)
            return self._combine(x, self._net_output(x, pre, ctx, ctx_act), pre)

        if sigmas is None:  # the schedule of these settings (pass ``sigma_levels`` in loops)
            sigmas = sigma_levels(steps, sigma_min, sigma_max, rho)
        x = initial_noise((b, c, h, w), sigma_max, init, ctx_obs.device)
        return quantize(SAMPLERS[sampler](denoise, x, sigmas))
