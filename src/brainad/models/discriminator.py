"""PatchGAN discriminator of the VQGAN (a logit per overlapping image patch)."""

from __future__ import annotations

import torch
from torch import nn

from brainad.models.blocks import group_norm


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix) discriminator with GroupNorm.

    Layout: conv 4x4/2 + LeakyReLU(0.2), then ``layers`` × (conv 4x4/2 + GroupNorm + LeakyReLU),
    widths doubling up to 8x ``channels``, then a 3x3 conv to a 1-channel logit map of side
    ``image_size / 2**(layers+1)``.

    GroupNorm instead of BatchNorm, deliberately: (1) it keeps no running statistics, so the
    generator step (which runs the discriminator on reconstructions) cannot change any
    discriminator state; (2) real and fake batches are normalised identically in train and eval
    mode; (3) each image is normalised on its own, so :meth:`features` of one image — used as a
    per-image anomaly score — does not depend on the other images in the batch.

    Args:
        channels: width of the first layer.
        layers: strided normalised layers after the first (``disc_layers``).
        image_size: input side; must be divisible by ``2**(layers+1)``.
    """

    def __init__(self, channels: int, layers: int, image_size: int) -> None:
        super().__init__()
        if channels < 1 or layers < 0:
            raise ValueError(
                f"vqgan.model: disc_channels ({channels}) must be >= 1 and disc_layers ({layers}) "
                ">= 0"
            )
        if image_size % 2 ** (layers + 1):
            raise ValueError(
                f"vqgan.model.disc_layers={layers}: image size {image_size} is not divisible by "
                f"2**{layers + 1}; use fewer discriminator layers or a larger image size"
            )
        body: list[nn.Module] = [nn.Conv2d(1, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for index in range(layers):
            out = channels * min(2 ** (index + 1), 8)
            body += [nn.Conv2d(width, out, 4, 2, 1, bias=False), group_norm(out), nn.LeakyReLU(0.2)]
            width = out
        self.body = nn.Sequential(*body)  # (B, 1, S, S) -> (B, width, S/2**(layers+1), ...)
        self.head = nn.Conv2d(width, 1, 3, padding=1)  # -> (B, 1, same, same) logits

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate feature map (B, C, h, w) with ``h = S / 2**(layers+1)``."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, 1, h, w) patch logits
