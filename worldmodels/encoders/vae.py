"""The convolutional VAE of World Models (Ha & Schmidhuber 2018, appendix A.1): a 64x64 frame ->
a diagonal Gaussian over ``z`` (32 dims; 64 for Doom) -> the frame back.

Encoder: 4 convolutions (kernel 4, stride 2, no padding, ReLU): 64 -> 31 -> 14 -> 6 -> 2, so
``256 * 2 * 2 = 1024`` features, then linear maps to ``mu`` and ``logvar``. Decoder: a linear map
``z -> 1024`` viewed as a ``(1024, 1, 1)`` image, then 4 transposed convolutions (kernels 5, 5, 6, 6,
stride 2, ReLU between): 1 -> 5 -> 13 -> 30 -> 64, and a sigmoid for pixels in ``[0, 1]``.

The network sees pixels in ``[0, 1]`` as in the paper; ``decode`` hands frames back in the
project's ``[-1, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodels.interfaces import Batch, EnvInfo

_ENC_KERNEL = 4  # every encoder conv: kernel 4, stride 2, no padding (64 -> 31 -> 14 -> 6 -> 2)
_DEC_KERNELS = (5, 5, 6, 6)  # decoder transposed convs, stride 2: 1 -> 5 -> 13 -> 30 -> 64


@dataclass(frozen=True)
class ConvVAEConfig:
    """Shape and loss of the VAE. Defaults are the paper's CarRacing model (4.35 M parameters)."""

    z_dim: int = 32
    """Latent size (the paper: 32 for CarRacing, 64 for Doom)."""
    channels: tuple[int, ...] = (32, 64, 128, 256)
    """Width of the 4 stride-2 encoder convs; the decoder mirrors them (128, 64, 32 -> image)."""
    img_channels: int = 3
    """Channels of one frame."""
    img_size: int = 64
    """Height and width of the frames; the paper's kernel sizes only fit 64."""
    kl_weight: float = 1.0
    """Weight of the KL term (the paper: 1)."""
    free_bits: float = 0.0
    """KL floor per latent dimension in nats (0 = off): each dimension's KL, averaged over the real
    frames of the batch, counts as at least this much, so its gradient vanishes below the floor
    (free bits, Kingma et al. 2016). The paper's code instead floors the KL *summed* over the
    dimensions at ``kl_tolerance * z_dim`` with ``kl_tolerance = 0.5``; 0.5 here is the per-dimension
    version of that tolerance."""
    reconstruction: Literal["mse", "bce"] = "mse"
    """'mse': the paper's squared error of pixels in [0, 1], summed over the pixels of a frame;
    'bce': Bernoulli cross-entropy with logits, also summed over pixels (the decoder's pre-sigmoid
    output is the logit). Both are averaged over the real frames of the batch."""

    def __post_init__(self) -> None:
        if len(self.channels) != len(_DEC_KERNELS):
            raise ValueError(f"the VAE has 4 conv levels, got channels={self.channels}")
        if self.img_size != 64:
            raise ValueError(f"the VAE's kernel sizes fit 64x64 frames only, got {self.img_size}")
        if self.reconstruction not in ("mse", "bce"):
            raise ValueError(f"reconstruction must be 'mse' or 'bce', got {self.reconstruction!r}")
        if self.free_bits < 0:
            raise ValueError(f"free_bits must be >= 0 nats, got {self.free_bits}")

    @property
    def feature_dim(self) -> int:
        """Flattened encoder output: ``channels[-1] * 2 * 2`` for 64x64 frames (1024 by default)."""
        side = self.img_size
        for _ in self.channels:
            side = (side - _ENC_KERNEL) // 2 + 1
        return self.channels[-1] * side * side


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, 1))`` per dimension, in closed form (Kingma & Welling 2014,
    appendix B): ``0.5 * (mu^2 + exp(logvar) - 1 - logvar)``. Same shape as the inputs."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)


def free_bits_kl(kl: Tensor, weight: Tensor, free_bits: float) -> tuple[Tensor, Tensor]:
    """The KL term with a floor per dimension: ``kl`` ``(N, Z)`` per frame and dimension, ``weight``
    ``(N,)`` bool (False = frame does not count). Returns ``(sum_z max(mean_n kl, free_bits),
    mean_n kl (Z,))``: below the floor a dimension's term is constant, so it gets no gradient."""
    n = weight.sum().clamp(min=1)
    per_dim = torch.where(weight[:, None], kl, 0.0).sum(0) / n  # (Z,) mean over counted frames
    return per_dim.clamp(min=free_bits).sum(), per_dim


class ConvVAE(nn.Module):
    """Frames ``(B, C, H, W)`` uint8 <-> continuous latents ``(B, z_dim)``."""

    Config = ConvVAEConfig

    def __init__(self, config: ConvVAEConfig, env_info: EnvInfo) -> None:
        super().__init__()
        shape = (config.img_channels, config.img_size, config.img_size)
        if tuple(env_info.obs_shape) != shape:
            raise ValueError(
                f"the VAE is configured for frames {shape}, the env gives {tuple(env_info.obs_shape)}"
            )
        self.config = config
        ch = (config.img_channels, *config.channels)
        self.encoder = nn.Sequential(
            *(
                layer
                for c_in, c_out in zip(ch[:-1], ch[1:], strict=True)
                for layer in (nn.Conv2d(c_in, c_out, _ENC_KERNEL, stride=2), nn.ReLU())
            )
        )
        feat = config.feature_dim
        self.fc_mu = nn.Linear(feat, config.z_dim)
        self.fc_logvar = nn.Linear(feat, config.z_dim)
        self.fc_dec = nn.Linear(config.z_dim, feat)
        # The paper's decoder: 1024 -> 128 -> 64 -> 32 -> 3 channels (the encoder's widths mirrored).
        dec = (feat, *reversed(config.channels[:-1]), config.img_channels)
        layers: list[nn.Module] = []
        for i, (c_in, c_out, k) in enumerate(zip(dec[:-1], dec[1:], _DEC_KERNELS, strict=True)):
            layers.append(nn.ConvTranspose2d(c_in, c_out, k, stride=2))
            if i < len(_DEC_KERNELS) - 1:
                layers.append(nn.ReLU())
        self.decoder = nn.Sequential(*layers)

    def _features(self, obs: Tensor) -> Tensor:
        # uint8 [0, 255] (or float in [-1, 1]) -> float [0, 1], the paper's input range.
        x = obs.float().div(255.0) if obs.dtype == torch.uint8 else (obs.float() + 1.0) / 2.0
        return self.encoder(x).reshape(x.shape[0], -1)  # (N, feature_dim); reshape: channels-last

    def encode_dist(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``(..., C, H, W)`` uint8 (or float in ``[-1, 1]``) -> ``(mu, logvar)``, each
        ``(..., z_dim)`` float32."""
        lead = obs.shape[:-3]
        h = self._features(obs.reshape(-1, *obs.shape[-3:]))  # (N, feature_dim)
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)  # (N, z_dim) each
        return mu.reshape(*lead, -1), logvar.reshape(*lead, -1)

    def encode(self, obs: Tensor, *, sample: bool = False) -> Tensor:
        """``(..., C, H, W)`` uint8 -> ``z`` ``(..., z_dim)``: the posterior mean, or with
        ``sample=True`` a reparameterised draw ``mu + exp(logvar / 2) * eps`` (the paper trains its
        MDN-RNN on such draws), from the global torch RNG."""
        mu, logvar = self.encode_dist(obs)
        if not sample:
            return mu
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu)

    def _decode_logits(self, z: Tensor) -> Tensor:
        # (N, z_dim) -> (N, C, H, W) pre-sigmoid outputs.
        x = self.fc_dec(z).reshape(z.shape[0], -1, 1, 1)  # (N, feature_dim, 1, 1)
        return self.decoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """``z`` ``(..., z_dim)`` -> frames ``(..., C, H, W)`` float in ``[-1, 1]``."""
        lead = z.shape[:-1]
        logits = self._decode_logits(z.reshape(-1, z.shape[-1]))  # (N, C, H, W)
        x = torch.sigmoid(logits).mul(2.0).sub(1.0)
        return x.reshape(*lead, *x.shape[1:])

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Negative ELBO on the real frames of ``batch`` (``obs`` ``(B, T, C, H, W)`` uint8, counted
        where ``mask`` is True): reconstruction summed over pixels + ``kl_weight`` * KL summed over
        dimensions (each floored at ``free_bits``), both averaged over real frames. Padding frames
        go through the network (no host sync to drop them) but count for nothing."""
        cfg = self.config
        obs = batch.obs.flatten(0, 1)  # (N = B * T, C, H, W)
        real = batch.mask.flatten()  # (N,)
        n = real.sum().clamp(min=1)
        mu, logvar = (x.float() for x in self.encode_dist(obs))  # (N, z_dim) each; fp32 maths
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        logits = self._decode_logits(z).float()  # (N, C, H, W)
        target = obs.float().div(255.0)  # (N, C, H, W) in [0, 1]
        if cfg.reconstruction == "mse":
            rec = (torch.sigmoid(logits) - target).square()
        else:
            rec = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        rec = torch.where(real, rec.sum((1, 2, 3)), 0.0).sum() / n  # summed over pixels
        kl_term, kl_dims = free_bits_kl(gaussian_kl(mu, logvar), real, cfg.free_bits)
        loss = rec + cfg.kl_weight * kl_term
        with torch.no_grad():
            kl = kl_dims.sum()
            values = torch.stack((loss, rec, kl, kl / cfg.z_dim))  # read once, by the updater
        keys = ("loss", "reconstruction_loss", "kl", "kl_per_dim")
        return loss, dict(zip(keys, values.unbind(), strict=True))
