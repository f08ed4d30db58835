"""IRIS's frame tokenizer (Micheli et al. 2023): a VQ-VAE that turns a 64x64 frame into 4x4 = 16
discrete tokens from a vocabulary of 512, and back.

Encoder and decoder are the convolutional VQGAN stack (Esser et al. 2021) without the adversarial
part; quantisation is VQ-VAE's (van den Oord et al. 2017): nearest code by L2 distance, gradients
copied straight through the quantiser, and a codebook loss plus a commitment loss on the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodels.errors import UserError
from worldmodels.interfaces import Batch, EnvInfo
from worldmodels.nn.blocks import (
    Downsample,
    PlainResBlock,
    SelfAttention2d,
    Upsample,
    conv1x1,
    conv3x3,
    group_norm,
)
from worldmodels.nn.pixels import to_float
from worldmodels.nn.vgg import VGG16Features, load_vgg16_features, perceptual_distance


@dataclass(frozen=True)
class VQVAEConfig:
    """The tokenizer. Defaults are IRIS's published one (4.03 M trainable parameters).

    IRIS adds LPIPS, a perceptual loss on a pretrained VGG16, whose weights cannot be downloaded
    here. With ``vgg16_weights`` (a local file) this tokenizer adds the uniform-weight LPIPS
    variant (``worldmodels.nn.vgg``) instead. Without it, the default, it adds an image-gradient L1
    term, ``mean|dx(x) - dx(x')| + mean|dy(x) - dy(x')|`` (finite differences): like a perceptual
    loss, and unlike L1 alone, it charges for blurred edges (under L1, a blur that spreads a small
    object over two positions costs little). Caveat, measured on a tiny model: the term pushes an
    untrained decoder towards flat output, so the first steps sit longer on the mean frame.
    """

    vocab_size: int = 512
    """Codebook entries (IRIS: 512)."""
    embed_dim: int = 512
    """Code size (IRIS: 512)."""
    z_channels: int = 512
    """Encoder output channels before the 1x1 projection to embed_dim (IRIS: 512)."""
    channels: int = 64
    """Base width of the encoder and decoder (IRIS: 64)."""
    ch_mult: tuple[int, ...] = (1, 1, 1, 1, 1)
    """Width multiplier per level; each level after the first halves H and W (64 -> 4: 16 tokens)."""
    num_res_blocks: int = 2
    """Residual blocks per encoder level; the decoder uses one more (IRIS: 2 and 3)."""
    attn_resolutions: tuple[int, ...] = (8, 16)
    """Resolutions whose blocks are followed by self-attention (plus the middle block's)."""
    dropout: float = 0.0
    """Dropout inside the residual blocks."""
    norm_groups: int = 32
    """GroupNorm groups, at most one per channel (IRIS: 32, i.e. 2 channels per group at width 64;
    the project's shared blocks use 32 channels per group, which this overrides)."""
    img_channels: int = 3
    """Frame channels; must match the environment's."""
    img_size: int = 64
    """Frame height and width; must match the environment's."""
    commitment: float = 1.0
    """beta: weight of the commitment loss ||z - sg[e]||^2 (IRIS: 1.0)."""
    reconstruction: Literal["l1"] = "l1"
    """Pixel reconstruction loss (IRIS: L1)."""
    perceptual_weight: float = 1.0
    """Weight of the perceptual (LPIPS-style) term; used only when a VGG16 is loaded."""
    vgg16_weights: str = ""
    """Local path to VGG16 weights (torchvision names; safetensors, or .pth loaded with
    weights_only=True). Empty (the default, since pretrained weights cannot be downloaded at run
    time) = no perceptual term: the tokenizer trains on L1 reconstruction alone (plus the
    optional gradient term below)."""
    gradient_weight: float = 0.0
    """Weight of an image-gradient L1 term, an edge-sensitive stand-in for the perceptual loss.
    Off by default: on a small tokenizer it slowed early training (reconstruction L1 after 80
    steps 0.42-0.48 with weight 1 vs 0.18-0.25 with 0, three seeds); not measured at full size."""


def nearest_code(z: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest code by L2 distance: ``(N, D), (V, D) -> (N,) int64``.

    ``||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2``: an ``(N, V)`` matrix, never ``(N, V, D)``; in float32
    even under autocast (bf16 distances would mis-rank near codes).
    """
    with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
        z, e = z.float(), codebook.float()
        dist = torch.addmm(e.pow(2).sum(1), z, e.T, alpha=-2.0)  # (N, V), ||e||^2 - 2 z.e
        dist = dist + z.pow(2).sum(1, keepdim=True)
        return dist.argmin(dim=1)


def quantize(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``z (B, D, h, w)`` -> ``(z_q_st, tokens (B, h * w) int64, z_q)``.

    ``z_q`` holds the nearest codes; ``z_q_st = sg[z_q] + z - sg[z]`` equals ``z_q`` bit for bit and
    passes gradients to ``z`` unchanged, none to the codebook (the straight-through estimator of
    van den Oord et al. 2017: the same as ``z + sg[z_q - z]`` without its rounding, so that
    ``decode(encode(x))`` is exactly the training path's reconstruction).
    """
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(b * h * w, d)  # (B * h * w, D), tokens in row-major order
    tokens = nearest_code(flat, codebook)  # (B * h * w,)
    z_q = codebook[tokens].reshape(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w)
    z_q_st = z_q.detach() + (z - z.detach())
    return z_q_st, tokens.reshape(b, h * w), z_q


def vq_losses(
    z: Tensor, z_q: Tensor, commitment: float, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Codebook loss ``||sg[z] - e||^2`` (moves only the codes) and commitment loss
    ``beta ||z - sg[e]||^2`` (moves only the encoder), each a mean over elements (with
    ``weights (B,)``: of each frame's mean, weighted, e.g. 0 on padding frames)."""
    z, z_q = z.float(), z_q.float()
    if weights is None:
        return F.mse_loss(z_q, z.detach()), commitment * F.mse_loss(z, z_q.detach())
    n = weights.sum().clamp(min=1.0)
    codebook = ((z_q - z.detach()).pow(2).flatten(1).mean(1) * weights).sum() / n
    commit = ((z - z_q.detach()).pow(2).flatten(1).mean(1) * weights).sum() / n
    return codebook, commitment * commit


def image_gradient_l1(x: Tensor, y: Tensor, *, per_frame: bool = False) -> Tensor:
    """Mean L1 distance between the horizontal and between the vertical finite differences of two
    ``(B, C, H, W)`` images: ``mean|dx(x) - dx(y)| + mean|dy(x) - dy(y)|`` (``per_frame``: for
    each image, ``(B,)``)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]) - (y[..., :, 1:] - y[..., :, :-1])  # (B, C, H, W - 1)
    dy = (x[..., 1:, :] - x[..., :-1, :]) - (y[..., 1:, :] - y[..., :-1, :])  # (B, C, H - 1, W)
    if per_frame:
        return dx.abs().flatten(1).mean(1) + dy.abs().flatten(1).mean(1)
    return dx.abs().mean() + dy.abs().mean()


def _stage(c_in: int, c_out: int, blocks: int, attn: bool, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(blocks):
        layers.append(PlainResBlock(c_in if i == 0 else c_out, c_out, dropout))
        if attn:
            layers.append(SelfAttention2d(c_out, head_dim=c_out))  # one head, as IRIS
    return layers


def _middle(c: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        PlainResBlock(c, c, dropout), SelfAttention2d(c, head_dim=c), PlainResBlock(c, c, dropout)
    )


class _Encoder(nn.Sequential):
    """``(B, C, H, W)`` float -> ``(B, z_channels, h, w)``."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        widths = [cfg.channels * m for m in cfg.ch_mult]
        layers: list[nn.Module] = [conv3x3(cfg.img_channels, cfg.channels)]
        c, res = cfg.channels, cfg.img_size
        for i, width in enumerate(widths):
            attn = res in cfg.attn_resolutions
            layers += _stage(c, width, cfg.num_res_blocks, attn, cfg.dropout)
            c = width
            if i < len(widths) - 1:
                layers.append(Downsample(c))
                res //= 2
        layers += [
            _middle(c, cfg.dropout), group_norm(c), nn.SiLU(), conv3x3(c, cfg.z_channels)
        ]  # fmt: skip
        super().__init__(*layers)


class _Decoder(nn.Sequential):
    """``(B, z_channels, h, w)`` -> ``(B, C, H, W)`` float (unbounded: the L1 loss keeps it in range)."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        widths = [cfg.channels * m for m in cfg.ch_mult]
        c = widths[-1]
        res = cfg.img_size // 2 ** (len(widths) - 1)
        layers: list[nn.Module] = [conv3x3(cfg.z_channels, c), _middle(c, cfg.dropout)]
        for i in reversed(range(len(widths))):
            attn = res in cfg.attn_resolutions
            layers += _stage(c, widths[i], cfg.num_res_blocks + 1, attn, cfg.dropout)
            c = widths[i]
            if i > 0:
                layers.append(Upsample(c))
                res *= 2
        layers += [group_norm(c), nn.SiLU(), conv3x3(c, cfg.img_channels)]
        super().__init__(*layers)


class VQVAE(nn.Module):
    """Frames ``(B, C, H, W)`` uint8 <-> tokens ``(B, K)`` int64, ``K = (H / 2^(levels - 1))^2``.

    Training (``loss``): codebook + commitment + L1 reconstruction + perceptual term (LPIPS-style on
    a local VGG16 if ``vgg16_weights`` is set, else image-gradient L1), on the real frames of a
    batch of replay segments.
    """

    Config: ClassVar[type[VQVAEConfig]] = VQVAEConfig

    def __init__(self, config: VQVAEConfig, env_info: EnvInfo) -> None:
        super().__init__()
        cfg = config
        levels = len(cfg.ch_mult)
        expected = (cfg.img_channels, cfg.img_size, cfg.img_size)
        if tuple(env_info.obs_shape) != expected:
            raise UserError(
                f"vqvae expects frames of shape {expected} (img_channels, img_size, img_size) but "
                f"the environment's are {tuple(env_info.obs_shape)}: set img_channels/img_size"
            )
        if levels < 1 or cfg.img_size % 2 ** (levels - 1):
            raise UserError(
                f"vqvae img_size {cfg.img_size} is not divisible by 2^{levels - 1} "
                f"(ch_mult {cfg.ch_mult} has {levels} levels)"
            )
        self.config = cfg
        side = cfg.img_size // 2 ** (levels - 1)
        self.token_grid = (side, side)  # (h, w): tokens are the grid in row-major order
        self.tokens_per_frame = side * side
        self.vocab_size = cfg.vocab_size

        self.encoder = _Encoder(cfg)
        self.pre_quant = conv1x1(cfg.z_channels, cfg.embed_dim)
        self.codebook = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / cfg.vocab_size, 1.0 / cfg.vocab_size)
        self.post_quant = conv1x1(cfg.embed_dim, cfg.z_channels)
        self.decoder = _Decoder(cfg)
        self._set_norm_groups(cfg.norm_groups)

        # The frozen VGG16 is a submodule (it follows .to()), but its weights stay out of the state
        # dict: they come from vgg16_weights only, not from every checkpoint (58 MB each).
        self.perceptual: VGG16Features | None = None
        if cfg.vgg16_weights:
            if cfg.img_channels not in (1, 3):
                raise UserError(
                    f"the VGG16 perceptual loss needs 1- or 3-channel frames, not {cfg.img_channels}"
                )
            self.perceptual = load_vgg16_features(cfg.vgg16_weights)
        self.register_state_dict_post_hook(_drop_perceptual_keys)
        self.register_load_state_dict_pre_hook(_keep_own_perceptual_weights)

    def _set_norm_groups(self, groups: int) -> None:
        for m in self.modules():
            if isinstance(m, nn.GroupNorm):
                g = min(groups, m.num_channels)
                if m.num_channels % g:
                    raise UserError(
                        f"vqvae norm_groups {groups} does not divide a layer of {m.num_channels} "
                        "channels"
                    )
                m.num_groups = g

    # -- inference -----------------------------------------------------------------------------

    def _latent(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` float in ``[-1, 1]`` -> ``z (B, embed_dim, h, w)``."""
        return self.pre_quant(self.encoder(x))

    def _reconstruct(self, z_q: Tensor) -> Tensor:
        """``(B, embed_dim, h, w)`` -> ``(B, C, H, W)`` float, unclamped."""
        return self.decoder(self.post_quant(z_q))

    def encode(self, obs: Tensor) -> Tensor:
        """Frames ``(B, C, H, W)`` uint8 -> tokens ``(B, K)`` int64."""
        assert obs.dtype == torch.uint8 and obs.ndim == 4, (obs.dtype, obs.shape)
        return quantize(self._latent(to_float(obs)), self.codebook.weight)[1]

    def decode(self, tokens: Tensor) -> Tensor:
        """Tokens ``(B, K)`` int64 -> frames ``(B, C, H, W)`` float in ``[-1, 1]``."""
        assert tokens.ndim == 2 and tokens.shape[1] == self.tokens_per_frame, tokens.shape
        h, w = self.token_grid
        z_q = self.codebook(tokens).reshape(-1, h, w, self.config.embed_dim)  # (B, h, w, D)
        return self._reconstruct(z_q.permute(0, 3, 1, 2)).clamp(-1.0, 1.0)

    # -- training ------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Training path: ``x (B, C, H, W)`` float in ``[-1, 1]`` -> ``(z (B, D, h, w), z_q_st
        (B, D, h, w), tokens (B, K) int64, recon (B, C, H, W) float, unclamped)``; gradients of
        ``recon`` reach the encoder straight through the quantiser."""
        z = self._latent(x)
        z_q_st, tokens, _ = quantize(z, self.codebook.weight)
        return z, z_q_st, tokens, self._reconstruct(z_q_st)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """IRIS's tokenizer loss on every real frame (``mask`` True) of ``batch.obs (B, T, C, H, W)``:
        codebook + commitment + L1 reconstruction + perceptual (or image-gradient) term, each a
        mean over the real frames. Padding frames go through the network (static shapes: no
        host sync to drop them) but count for nothing."""
        cfg = self.config
        x = to_float(batch.obs.flatten(0, 1))  # (N = B * T, C, H, W)
        w = batch.mask.flatten().float()  # (N,): 1 on real frames
        n = w.sum().clamp(min=1.0)

        def mean(per_frame: Tensor) -> Tensor:  # (N, ...) -> the mean over real frames
            return (per_frame.flatten(1).float().mean(1) * w).sum() / n

        z = self._latent(x)
        z_q_st, tokens, z_q = quantize(z, self.codebook.weight)
        recon = self._reconstruct(z_q_st)
        codebook_loss, commitment_loss = vq_losses(z, z_q, cfg.commitment, weights=w)
        reconstruction_loss = mean((x - recon.float()).abs())
        if self.perceptual is not None:
            extra_name = "perceptual_loss"
            extra = cfg.perceptual_weight * mean(
                perceptual_distance(self.perceptual, x, recon)[:, None]
            )
        else:
            extra_name = "gradient_loss"
            extra = cfg.gradient_weight * mean(
                image_gradient_l1(x, recon.float(), per_frame=True)[:, None]
            )
        loss = codebook_loss + commitment_loss + reconstruction_loss + extra
        terms = torch.stack((loss, codebook_loss, commitment_loss, reconstruction_loss, extra))
        names = ("loss", "codebook_loss", "commitment_loss", "reconstruction_loss", extra_name)
        logs = dict(zip(names, terms.detach().unbind(), strict=True))  # read once, later
        logs.update(self.codebook_usage(tokens, weights=w))
        return loss, logs

    @torch.no_grad()
    def codebook_usage(self, tokens: Tensor, weights: Tensor | None = None) -> dict[str, Tensor]:
        """Code usage of ``tokens`` ``(N, ...)`` int64 (rows weighted by ``weights (N,)``, e.g. 0
        on padding): ``perplexity`` (exp of the entropy of the empirical code distribution: V if
        uniform, 1 if one code) and ``dead_codes`` (codes never used), as 0-dim tensors (static
        shapes, nothing read back). Pass the tokens of many frames for a meaningful count."""
        per_row = tokens.reshape(tokens.shape[0], -1)  # (N, K)
        w = torch.ones(per_row.shape[0], device=tokens.device) if weights is None else weights
        counts = torch.zeros(self.vocab_size, device=tokens.device)
        counts.index_add_(0, per_row.flatten(), w.float()[:, None].expand_as(per_row).flatten())
        p = counts / counts.sum().clamp_min(1.0)
        entropy = -(p * p.clamp_min(1e-12).log()).sum()
        return {"perplexity": entropy.exp(), "dead_codes": (counts == 0).sum().float()}


_PERCEPTUAL = "perceptual."


def _drop_perceptual_keys(module: VQVAE, state_dict: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + _PERCEPTUAL)]:
        del state_dict[key]


def _keep_own_perceptual_weights(
    module: VQVAE, state_dict: dict, prefix: str, *args: object
) -> None:
    # Checkpoints carry no VGG16 weights (and older ones' are ignored): the loaded file's stay.
    for key in [k for k in state_dict if k.startswith(prefix + _PERCEPTUAL)]:
        del state_dict[key]
    if module.perceptual is not None:
        for key, value in module.perceptual.state_dict().items():
            state_dict[prefix + _PERCEPTUAL + key] = value
