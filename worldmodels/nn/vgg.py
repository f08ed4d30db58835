"""A frozen VGG16 feature stack and the LPIPS-style perceptual distance built on it.

LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric") compares the ReLU outputs that end VGG16's five convolution stages after normalising each
feature vector over channels. This module implements the uniform-weight variant (the paper's
"baseline" that sums over channels instead of applying learned per-channel weights), because the
learned weights, like VGG16's ImageNet weights, cannot be downloaded here. The layer layout follows
torchvision's ``vgg16().features`` so its state dict (``0.weight`` ... ``28.bias``, optionally
prefixed with ``features.``) loads unchanged; weights come only from a local file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from worldmodels.errors import UserError

# Output widths of the 13 convolutions, "M" = 2x2 max pool (VGG16, configuration "D").
VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (LPIPS's taps)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16Features(nn.Sequential):
    """VGG16's convolutional part, frozen; ``forward`` returns the five LPIPS taps.

    Input: ``(B, 3, H, W)`` (or 1-channel, repeated) float in ``[-1, 1]``; it is mapped to
    ``[0, 1]`` and normalised with ImageNet's channel statistics, as the weights expect.
    """

    mean: Tensor  # buffer (1, 3, 1, 1)
    std: Tensor  # buffer (1, 3, 1, 1)

    def __init__(self) -> None:
        layers: list[nn.Module] = []
        c_in = 3
        for spec in VGG16_LAYOUT:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(spec, int)
                layers += [nn.Conv2d(c_in, spec, kernel_size=3, padding=1), nn.ReLU()]
                c_in = spec
        super().__init__(*layers)
        # Not persistent: the state dict is exactly torchvision's.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG16Features:
        return super().train(False)  # always a fixed feature extractor

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, C, H, W)`` in ``[-1, 1]`` -> the five tapped ReLU outputs ``(B, D_i, H_i, W_i)``."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        taps = []
        for i, layer in enumerate(self):
            x = layer(x)
            if i in TAPS:
                taps.append(x)
                if i == TAPS[-1]:
                    break
        return taps


def perceptual_distance(features: VGG16Features, x: Tensor, y: Tensor) -> Tensor:
    """LPIPS with uniform layer weights: ``(B, C, H, W), (B, C, H, W) -> (B,)``.

    Sum over the five taps of the spatial mean of the channel-summed squared difference of
    unit-normalised feature vectors (Zhang et al. 2018, eq. 1 with ``w_l = 1``).
    """
    total = x.new_zeros(x.shape[0], dtype=torch.float32)
    for f in features(torch.cat((x, y), dim=0)):  # one pass for both images
        a, b = f.float().chunk(2, dim=0)  # (B, D, h, w) each
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + (a - b).pow(2).sum(1).mean((1, 2))
    return total


def load_vgg16_features(path: str | Path) -> VGG16Features:
    """A frozen ``VGG16Features`` with weights from a local file (safetensors, or a ``.pth`` state
    dict read with ``weights_only=True``), keyed as torchvision's ``vgg16().features`` or
    ``vgg16()`` (``features.`` prefix; classifier weights are ignored). Raises ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"VGG16 weights file {str(path)!r} not found (vgg16_weights must be a local "
            "safetensors or .pth file with torchvision's vgg16 names, or empty for no perceptual loss)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"could not read VGG16 weights from {str(path)!r}: {exc}") from None
    if not isinstance(state, dict):
        raise UserError(f"{str(path)!r} does not hold a state dict (found {type(state).__name__})")
    state = {
        k.removeprefix("features."): v
        for k, v in state.items()
        if isinstance(k, str) and not k.startswith("classifier.")
    }
    model = VGG16Features()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k].shape]
    if missing or unexpected or wrong:
        raise UserError(
            f"{str(path)!r} does not hold VGG16 feature weights with torchvision's names "
            f"(missing: {missing[:3]}, unexpected: {unexpected[:3]}, wrong shape: {wrong[:3]})"
        )
    model.load_state_dict(state)
    return model
