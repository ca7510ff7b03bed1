"""A small UNet for 2-D slices, shared by the denoising autoencoder, the inpainter and the segmenter.

Read top to bottom: :class:`ConvBlock` (two 3x3 convolutions, each followed by GroupNorm and
SiLU), then :class:`UNet`: a stem at full resolution, one strided-convolution downsampling step
per further level, and the mirror path back up (nearest upsampling + 3x3 convolution, then the
skip connection of the same level concatenated and merged by a :class:`ConvBlock`). With
``channels = [c0, c1, …, cL]`` and an S×S input, level ``i`` holds ``c_i`` channels at
``S / 2**i``; S must be divisible by ``2**L``. Last, :class:`UNetModel`: the model protocol the
one-UNet models share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from brainad.config import from_dict, to_dict
from brainad.models.blocks import group_norm, no_discriminator


def check_unet(channels: Sequence[int], image_size: int, section: str) -> None:
    """ValueError naming ``<section>.channels`` unless the UNet fits ``image_size``.

    Args:
        channels: widths per level, full resolution first.
        image_size: side of the square input images.
        section: the params section of the model (for the message), e.g. ``dae.model``.
    """
    if not channels or min(channels) < 1:
        raise ValueError(
            f"{section}.channels must be a non-empty list of positive integers, got "
            f"{list(channels)}"
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"{section}: image_size must be a positive integer, got {image_size!r}")
    factor = 2 ** (len(channels) - 1)
    if image_size % factor:
        raise ValueError(
            f"{section}.channels has {len(channels)} levels, so the image size must be divisible "
            f"by {factor}; got image_size={image_size} (change preprocess.image_size or drop a "
            "level)"
        )


class ConvBlock(nn.Module):
    """(3x3 conv → GroupNorm → SiLU) twice; keeps the resolution.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            group_norm(out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            group_norm(out_channels),
            nn.SiLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, in, H, W) -> (B, out, H, W)


class UpStep(nn.Module):
    """One level up: nearest upsampling x2 + 3x3 conv to the skip's width, concatenate the skip,
    merge with a :class:`ConvBlock`.

    Args:
        in_channels: channels of the coarser input.
        out_channels: channels of the skip connection and of the output.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.merge = ConvBlock(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, out, 2h, 2w)
        return self.merge(torch.cat([x, skip], dim=1))  # (B, 2·out, 2h, 2w) -> (B, out, 2h, 2w)


class UNet(nn.Module):
    """Image (B, in_channels, S, S) → map (B, out_channels, S, S), no output activation.

    Args:
        channels: widths per level, full resolution first (e.g. ``[16, 32, 64, 128]``: levels at
            S, S/2, S/4, S/8).
        in_channels: input channels (1: the slice; 2: the slice and its left-right mirror).
        out_channels: output channels.
    """

    def __init__(self, channels: Sequence[int], in_channels: int, out_channels: int) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"UNet: in_channels and out_channels must be >= 1, got {in_channels}, "
                f"{out_channels}"
            )
        widths = list(channels)
        self.stem = ConvBlock(in_channels, widths[0])  # (B, c0, S, S)
        self.down = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(w_in, w_out, 3, stride=2, padding=1),  # halves H, W
                ConvBlock(w_out, w_out),
            )
            for w_in, w_out in zip(widths, widths[1:])
        )  # level i: (B, c_i, S/2**i, S/2**i)
        self.up = nn.ModuleList(
            UpStep(w_in, w_out) for w_in, w_out in zip(widths[:0:-1], widths[-2::-1])
        )  # coarsest first: c_L -> c_{L-1}, …, c_1 -> c_0
        self.head = nn.Conv2d(widths[0], out_channels, 1)  # (B, out_channels, S, S)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        skips = [h]
        for step in self.down:
            h = step(h)
            skips.append(h)
        skips.pop()  # the coarsest level is h itself
        for step in self.up:
            h = step(h, skips.pop())
        return self.head(h)


class UNetModel(nn.Module):
    """The protocol (:class:`brainad.models.protocol.GANModule`) shared by the one-UNet models
    (the dae, the inpainter, the segmenter): one network, ``generator``; no discriminator; a
    spec of the ``<name>.model`` section and the image size. A subclass sets ``name`` and
    ``config_class`` and implements ``generator_step`` and ``reconstruct``.

    Args:
        config: the ``<name>.model`` section (it has ``channels``).
        image_size: side of the square input images; divisible by ``2**(len(channels)-1)``.
        in_channels: input channels of the UNet (its output has one).
    """

    name = ""
    config_class: type = object
    spec_keys = ("config", "image_size")
    spec_defaults: ClassVar[dict[str, Any]] = {}
    """Keys a checkpoint written before they existed was trained without, with those values."""
    has_discriminator = False  # scoring leaves out the discriminator component for it

    def __init__(self, config: Any, image_size: int, in_channels: int) -> None:
        super().__init__()
        check_unet(config.channels, image_size, f"{self.name}.model")
        self.config = config
        self.image_size = image_size
        self.unet = UNet(config.channels, in_channels=in_channels, out_channels=1)

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.unet}

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, epoch: int) -> None:
        return None

    def discriminator_features(self, x: torch.Tensor) -> torch.Tensor:
        raise no_discriminator(self.name)

    def epoch_logs(self) -> dict[str, float]:
        return {}

    def spec(self) -> dict[str, Any]:
        return {"config": to_dict(self.config), "image_size": self.image_size}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> UNetModel:
        """Rebuild from :meth:`spec` output; use :func:`brainad.models.registry.build_model`,
        which checks the keys first."""
        config = {**cls.spec_defaults, **spec["config"]}
        return cls(from_dict(cls.config_class, config, "spec.config"), spec["image_size"])
