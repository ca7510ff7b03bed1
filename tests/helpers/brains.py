"""Tiny synthetic 'brains' for the UNet models' tests (32 px, CPU): a textured disc on a -1
background, micro configs of the denoising autoencoder, the inpainter and the segmenter, and split arrays."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from brainad.config import DAEConfig, InpainterConfig, PreprocessConfig, SegmenterConfig
from brainad.data.arrays import SplitArrays

SIZE = 32
DAE = DAEConfig(channels=(8, 16, 32), noise_res=4, noise_std=0.2, loss="l1")
INPAINTER = InpainterConfig(channels=(8, 16, 32), cell=4, mirror_channel=True, loss="l1")
SEGMENTER = SegmenterConfig(
    channels=(8, 16, 32),
    mirror_channel=True,
    clean_fraction=0.25,
    field_res=4,
    field_strength=0.5,
    regions=("rectangles",),
    edge_softness=0.0,
)


def disc_brains(n: int, size: int = SIZE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (n, 1, size, size) float32 and their brain masks: background exactly -1, a
    disc of random radius holding an 'anatomy' — vertical stripes of a random phase on a random
    brightness, a darker central band and a faint smooth texture — in about [-0.9, 0.7]."""
    generator = torch.Generator().manual_seed(seed)
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    radius = size * (0.34 + 0.1 * torch.rand(n, 1, 1, 1, generator=generator))
    masks = (yy**2 + xx**2) < radius**2  # (n, 1, S, S)
    level = 0.4 * torch.rand(n, 1, 1, 1, generator=generator) - 0.2
    phase = 6.283 * torch.rand(n, 1, 1, 1, generator=generator)
    stripes = 0.25 * torch.sin(xx * (6.283 / 8) + phase)
    texture = F.interpolate(
        torch.rand(n, 1, 6, 6, generator=generator), size=(size, size), mode="bilinear"
    )
    band = (xx.abs() < size / 10).float() * 0.3
    brain = (level + stripes - band + 0.2 * texture).clamp(-0.95, 1.0)
    return torch.where(masks, brain, torch.tensor(-1.0)).contiguous(), masks


def split_arrays(
    images: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray, labels: np.ndarray,
    prefix: str = "x",
) -> SplitArrays:  # fmt: skip
    """A :class:`SplitArrays` of these images (float16, as the preprocess stage writes them),
    named ``<prefix>/<i>.png``."""
    images, masks = np.asarray(images), np.asarray(masks)
    n = len(images)
    return SplitArrays(
        images=images.astype(np.float16),
        brain_masks=masks.astype(bool),
        lesion_masks=np.zeros(images.shape, bool),
        has_lesion_mask=np.zeros(n, bool),
        labels=labels.astype(np.int8),
        paths=np.array([f"{prefix}/{i}.png" for i in range(n)]),
        sha256=np.array([f"{i:064x}" for i in range(n)]),
        class_names=np.where(labels == 1, "glioma", "notumor"),
        folders=np.full(n, "Training"),
        fallback=np.zeros(n, bool),
        coverage=np.full(n, 0.5, np.float32),
    )


def bundle_preprocess() -> PreprocessConfig:
    """Preprocessing settings for a scorer bundle of a :data:`SIZE`-px model."""
    return PreprocessConfig(
        image_size=SIZE, skull_strip=True, crop_margin=0.05, erosion_px=3, min_coverage=0.08,
        max_coverage=0.92, normalisation="percentile", percentiles=(1.0, 99.0),
        max_pixels=40_000_000,
    )  # fmt: skip


def segmenter_config(**change) -> SegmenterConfig:
    """:data:`SEGMENTER` with ``change`` applied."""
    return dataclasses.replace(SEGMENTER, **change)
