"""Frozen feature networks for the perceptual loss and the perceptual score component.

The reproduced study used a custom perceptual network, not a pretrained VGG: two parallel
convolutional branches with different kernel sizes plus a residual connection that maps the input
into feature space. :class:`FixedPerceptual` is that network with seeded, frozen random weights,
applied at several scales. :class:`VGG16Perceptual` uses torchvision's VGG16 features from a
weights file the user supplies; nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from brainad.config import PerceptualConfig


class _TwoBranch(nn.Module):
    """3x3 and 7x7 branches plus a 1x1 residual projection of the input."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.small = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.large = nn.Conv2d(in_channels, channels, 7, padding=3)
        self.residual = nn.Conv2d(in_channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = torch.cat(
            [F.leaky_relu(self.small(x), 0.2), F.leaky_relu(self.large(x), 0.2)], 1
        )
        return branches + self.residual(x)  # (B, 2C, H, W)


class FixedPerceptual(nn.Module):
    """Seeded, frozen two-branch feature network applied at ``scales`` scales.

    Args:
        config: the ``perceptual`` section (``channels``, ``scales``, ``seed``).
    """

    def __init__(self, config: PerceptualConfig) -> None:
        super().__init__()
        if config.scales < 1 or config.channels < 1:
            raise ValueError("perceptual.scales and perceptual.channels must be >= 1")
        self.scales = config.scales
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)  # weights depend on the seed only, not on global state
        try:
            self.block1 = _TwoBranch(1, config.channels)
            self.block2 = _TwoBranch(2 * config.channels, config.channels)
        finally:
            torch.random.set_rng_state(generator_state)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FixedPerceptual:  # always frozen, always eval
        return super().train(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of ``x`` (B, 1, H, W): two per scale, coarser scales by 2x average pooling."""
        out = []
        for scale in range(self.scales):
            if scale:
                x = F.avg_pool2d(x, 2)
            f1 = self.block1(x)
            f2 = self.block2(F.avg_pool2d(f1, 2))
            out.extend([f1, f2])
        return out


class VGG16Perceptual(nn.Module):
    """torchvision VGG16 ``features`` up to relu3_3, from a local ``state_dict`` file.

    Args:
        config: the ``perceptual`` section; ``vgg16_weights`` must name an existing file.
    """

    _taps = (3, 8, 15)  # relu1_2, relu2_2, relu3_3

    def __init__(self, config: PerceptualConfig) -> None:
        super().__init__()
        path = Path(config.vgg16_weights)
        if not config.vgg16_weights or not path.is_file():
            raise ValueError(
                f"perceptual.kind is 'vgg16' but perceptual.vgg16_weights={config.vgg16_weights!r} "
                "is not a file; download torchvision's vgg16 weights yourself and set the path, "
                "or use perceptual.kind: fixed (nothing is downloaded by brainad)"
            )
        from torchvision.models import vgg16

        features = vgg16(weights=None).features
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # not a weights-only state_dict
            raise ValueError(
                f"{path}: cannot be read as a VGG16 state_dict without executing code ({exc})"
            ) from exc
        # a full torchvision VGG16 state_dict or one of its `features` module alone
        if any(k.startswith("features.") for k in state):
            state = {
                k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")
            }
        try:
            features.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{path}: not VGG16 weights ({str(exc).splitlines()[0]})") from exc
        self.body = features[: self._taps[-1] + 1]
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG16Perceptual:
        return super().train(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of ``x`` in [-1, 1] (B, 1, H, W), replicated to RGB and ImageNet-normalised."""
        h = ((x + 1) / 2).repeat(1, 3, 1, 1)
        h = (h - self.mean) / self.std
        out = []
        for index, layer in enumerate(self.body):
            h = layer(h)
            if index in self._taps:
                out.append(h)
        return out


def build_perceptual(config: PerceptualConfig) -> nn.Module:
    """The feature network named by ``config.kind``."""
    if config.kind == "vgg16":
        return VGG16Perceptual(config)
    return FixedPerceptual(config)


def perceptual_distance(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image perceptual distance (B,): mean over scales of the mean squared feature difference
    after unit-normalising each feature map along channels."""
    total = x.new_zeros(x.shape[0], dtype=torch.float32)
    fx, fy = net.features(x), net.features(y)
    for a, b in zip(fx, fy):
        a = F.normalize(a.float(), dim=1)
        b = F.normalize(b.float(), dim=1)
        total = total + (a - b).pow(2).mean(dim=(1, 2, 3))
    return total / len(fx)


def perceptual_map(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel perceptual residual map (B, 1, H, W) at the input resolution."""
    size = x.shape[-2:]
    total = torch.zeros(x.shape[0], 1, *size, device=x.device, dtype=torch.float32)
    fx, fy = net.features(x), net.features(y)
    for a, b in zip(fx, fy):
        d = (
            (F.normalize(a.float(), dim=1) - F.normalize(b.float(), dim=1))
            .pow(2)
            .sum(1, keepdim=True)
        )
        total = total + F.interpolate(d, size=size, mode="bilinear", align_corners=False)
    return total / len(fx)
