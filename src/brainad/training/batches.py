"""Tensors for the one training loop: whole splits on the device, seeded batches, augmentation.

The preprocessed splits are small (N × 1 × S × S float16), so the loop keeps them on the device
and indexes batches directly — no JPEG decoding and no ``DataLoader`` workers. Batch order is a
function of ``(seed, epoch)`` alone, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from brainad.config import AugmentConfig
from brainad.data.arrays import SplitArrays


def to_tensor(
    arrays: SplitArrays, device: torch.device | str, healthy_only: bool = False
) -> torch.Tensor:
    """The images of ``arrays`` as float32 (N, 1, S, S) on ``device`` (only label 0 if asked)."""
    images = arrays.images[arrays.labels == 0] if healthy_only else arrays.images
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator()
    generator.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return generator


def batch_indices(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    drop_last: bool = True,
) -> list[torch.Tensor]:
    """Shuffled index batches of one epoch for process ``rank`` of ``world``.

    The permutation comes from a generator seeded with ``(seed, epoch)``, so it needs no saved
    state to resume. Ranks take interleaved slices of it and always get the same number of
    batches: with ``drop_last`` the tail that does not divide evenly is dropped (at most
    ``world - 1`` items, then each rank's incomplete last batch); without it the permutation is
    padded by wrapping around and each rank's last batch may be smaller.

    Raises:
        ValueError: ``n < 0``, ``batch_size < 1`` or ``rank`` not in ``[0, world)``.
    """
    if n < 0 or batch_size < 1:
        raise ValueError(f"batch_indices: need n >= 0 and batch_size >= 1, got {n}, {batch_size}")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"batch_indices: rank {rank} is not in [0, world={world})")
    perm = torch.randperm(n, generator=_epoch_generator(seed, epoch))
    if drop_last:
        perm = perm[: n - n % world]
    elif n % world and n:
        perm = torch.cat([perm, perm[: world - n % world]])
    shard = perm[rank::world]
    if drop_last:
        count = len(shard) // batch_size
    else:
        count = math.ceil(len(shard) / batch_size)
    return [shard[i * batch_size : (i + 1) * batch_size] for i in range(count)]


# ---------------------------------------------------------------------------- augmentation
def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(count, generator=generator, device=generator.device) * (high - low) + low


def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its angle; the background (-1) stays -1 (padding is done at 0 of x+1)."""
    radians = degrees * (math.pi / 180)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    shifted = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return shifted - 1


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale brain pixels (> -1) about each image's brain mean by its factor."""
    brain = x > -1
    weight = brain.to(x.dtype)
    count = weight.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
    mean = (x * weight).sum(dim=(1, 2, 3), keepdim=True) / count
    scaled = (x - mean) * factor.view(-1, 1, 1, 1) + mean
    return torch.where(brain, scaled, x)


def augment_batch(
    x: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Training-only augmentation of a batch (B, 1, S, S) in [-1, 1], vectorised on its device.

    Per sample: horizontal flip with probability 1/2 (``config.flip``), rotation by an angle
    uniform in ``±config.rotate_deg`` (background -1 preserved), and contrast of brain pixels
    scaled by a factor uniform in ``[1 - contrast, 1 + contrast]``; clipped to [-1, 1]. Random
    numbers come from ``generator`` (on its own device), so batches are reproducible. With
    everything off the input is returned unchanged.

    Raises:
        ValueError: ``x`` is not 4-D, or ``rotate_deg``/``contrast`` is negative.
    """
    if x.ndim != 4:
        raise ValueError(f"augment_batch: expected (B, C, H, W), got shape {tuple(x.shape)}")
    if config.rotate_deg < 0 or config.contrast < 0:
        raise ValueError("augment: rotate_deg and contrast must be >= 0 (fix params.yaml)")
    if not (config.flip or config.rotate_deg > 0 or config.contrast > 0):
        return x
    batch, dtype = x.shape[0], x.dtype
    out = x.float()
    if config.flip:
        flip = (_uniform(batch, 0, 1, generator) < 0.5).to(x.device)
        out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
    if config.rotate_deg > 0:
        angles = _uniform(batch, -config.rotate_deg, config.rotate_deg, generator).to(x.device)
        out = _rotate(out, angles)
    if config.contrast > 0:
        factors = _uniform(batch, 1 - config.contrast, 1 + config.contrast, generator)
        out = _contrast(out, factors.to(x.device))
    return out.clamp(-1, 1).to(dtype)


# -------------------------------------------------------------------------------- dataset
class SliceItem(NamedTuple):
    """One slice: image float32 (1, S, S), brain mask bool (1, S, S), label 0/1."""

    image: torch.Tensor
    mask: torch.Tensor
    label: int


class SliceDataset(torch.utils.data.Dataset):
    """A thin ``Dataset`` view of :class:`SplitArrays` for users who want a ``DataLoader``.

    Args:
        arrays: the preprocessed split.
        healthy_only: keep only label-0 slices.
    """

    def __init__(self, arrays: SplitArrays, healthy_only: bool = False) -> None:
        self.arrays = arrays
        keep = arrays.labels == 0 if healthy_only else np.ones(len(arrays), dtype=bool)
        self.indices = np.flatnonzero(keep)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> SliceItem:
        i = int(self.indices[index])
        image = torch.from_numpy(self.arrays.images[i].astype(np.float32))
        mask = torch.from_numpy(self.arrays.brain_masks[i].copy())
        return SliceItem(image, mask, int(self.arrays.labels[i]))
