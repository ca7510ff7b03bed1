"""Params sections of the UNet models of the detector bake-off: the denoising autoencoder, the
masked-region inpainter and the anomaly segmenter (re-exported by :mod:`brainad.config`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from brainad.config.fit import FitConfig


@dataclass(frozen=True)
class DAEConfig:
    """The ``dae.model`` section: a UNet trained to remove coarse noise (Kascenas et al. 2022).

    Args:
        channels: UNet widths per level, full resolution first (:class:`brainad.models.unet.UNet`).
        noise_res: side of the grid the Gaussian training noise is drawn on before it is
            bilinearly upsampled to the image (16 at 128 px: 8-px noise cells).
        noise_std: standard deviation of the noise on the [-1, 1] intensity scale.
        loss: ``l1`` (mean absolute error) or ``l2`` (mean squared error) of the denoised image
            against the clean one, inside the brain.
    """

    channels: tuple[int, ...]
    noise_res: int
    noise_std: float
    loss: Literal["l1", "l2"]


@dataclass(frozen=True)
class DAEStudyConfig:
    """The ``dae`` section: the denoising autoencoder and its training settings."""

    model: DAEConfig
    fit: FitConfig


@dataclass(frozen=True)
class InpainterConfig:
    """The ``inpainter.model`` section: a UNet that predicts hidden cells of a slice from the
    visible rest (:mod:`brainad.models.inpainter`).

    Args:
        channels: UNet widths per level, full resolution first.
        cell: side in pixels of the square cells of which a quarter is hidden at a time (16 at
            128 px: about the diameter of a medium lesion).
        mirror_channel: also feed the left-right mirror of the masked slice (the hidden cells'
            contralateral twins) as an input channel.
        loss: ``l1`` or ``l2`` error over the hidden brain pixels.
    """

    channels: tuple[int, ...]
    cell: int
    mirror_channel: bool
    loss: Literal["l1", "l2"]


@dataclass(frozen=True)
class InpainterStudyConfig:
    """The ``inpainter`` section: the masked-region inpainting UNet and its training settings."""

    model: InpainterConfig
    fit: FitConfig


@dataclass(frozen=True)
class SegmenterConfig:
    """The ``segmenter.model`` section: a UNet that segments synthetic corruptions of healthy
    slices (:mod:`brainad.models.corruptions`), unlike the lesions the evaluation implants.

    Args:
        channels: UNet widths per level, full resolution first.
        mirror_channel: also feed the left-right mirrored slice as a second input channel.
        clean_fraction: fraction of training images left uncorrupted (target 0 everywhere).
        field_res: side of the grid of the smooth intensity field before upsampling.
        field_strength: largest amplitude of the intensity field on the [-1, 1] scale; a
            change of this size is a target of 1.
        regions: shapes of the corrupted regions, one drawn per image: ``rectangles`` (a union
            of axis-aligned rectangles) and/or ``noise`` (a thresholded low-frequency random
            field: irregular blobs of any size, DRAEM-style).
        edge_softness: largest Gaussian sigma (px of a 128-px slice) that softens a region's
            edges before blending, drawn per batch from [0, edge_softness]; 0 = hard edges.
    """

    channels: tuple[int, ...]
    mirror_channel: bool
    clean_fraction: float
    field_res: int
    field_strength: float
    regions: tuple[str, ...]
    edge_softness: float


@dataclass(frozen=True)
class SegmenterStudyConfig:
    """The ``segmenter`` section: the anomaly segmenter and its training settings."""

    model: SegmenterConfig
    fit: FitConfig


# -------------------------------------------------------------------------------- evaluation
