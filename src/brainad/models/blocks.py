"""Building blocks shared by the models: GroupNorm and convolutional blocks, the adversarial loss,
a masked mean and the error of a model without a discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bce_with_target(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Binary cross-entropy of discriminator ``logits`` against a constant ``target`` (0 or 1),
    in float32 whatever the autocast precision."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def no_discriminator(name: str) -> ValueError:
    """The error of a discriminator-feature request to a model ``name`` that has none."""
    return ValueError(
        f"model {name!r} has no discriminator, so it has no discriminator feature residual: set "
        "score.weight_discriminator: 0 for the study in params.yaml"
    )


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, 1, S, S) ``values`` over the True pixels of ``mask`` (0 if there are none)."""
    weight = mask.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp(min=1.0)


def group_count(channels: int, max_groups: int = 32) -> int:
    """Number of GroupNorm groups for ``channels``: at most ``max_groups``, dividing ``channels``,
    with at least two channels per group where possible (one channel per group would make the
    preceding convolution's bias invisible to the loss)."""
    groups = max_groups
    while groups > 1 and (channels % groups or channels // groups < 2):
        groups //= 2
    return groups


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that normalises a channels-last CPU input of reduced precision (bf16/fp16
    under autocast) in float32 and casts the result back.

    PyTorch's channels-last GroupNorm in bf16 ran about 3x slower than in float32 on CPU
    (forward and backward, 2-8 channels per group, 1 thread, measured), enough to make bf16
    UNet training slower than fp32; normalising in float32 made the bf16 step 1.7x faster.
    Any other input (float32, contiguous NCHW, where bf16 is fast, or on a GPU, not measured)
    takes ``nn.GroupNorm``'s own computation, so fp32 and deterministic results do not change.
    Same parameters and state-dict keys as ``nn.GroupNorm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = x.dtype in (torch.bfloat16, torch.float16) and x.device.type == "cpu"
        if reduced and x.dim() == 4 and not x.is_contiguous():
            if x.is_contiguous(memory_format=torch.channels_last):
                y = F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)
                return y.to(x.dtype)
        return super().forward(x)


def group_norm(channels: int) -> GroupNorm:
    """:class:`GroupNorm` over ``channels`` with :func:`group_count` groups."""
    return GroupNorm(group_count(channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm → SiLU → 3x3 conv) twice, plus a skip path.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output; a 1x1 convolution adapts the skip path if they differ.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h  # (B, out_channels, H, W)


class Downsample(nn.Module):
    """Halve the resolution with a strided 3x3 convolution (even sizes halve exactly).

    Args:
        channels: input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, H, W) -> (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double the resolution by nearest-neighbour upsampling followed by a 3x3 convolution
    (no transposed convolution, hence no checkerboard artefacts).

    Args:
        channels: input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        return self.conv(x)
