"""THE detector interface and the one engine that scores, calibrates and thresholds with it.

Every method — VQGAN+D, its token prior, the DCGAN, the denoising autoencoder, the anomaly
segmenter and every trivial baseline — is a :class:`Detector`. The evaluate stage, the ablation, train-time validation, ``brainad score`` and
the benchmark all go through the functions of this module:

1. ``detector.maps(images, masks)`` → :class:`AnomalyMaps` (raw pixel maps, per-image values
   that are not maps, and the reconstruction if there is one), one batch at a time;
2. ``detector.scores(maps, masks)`` → :class:`ImageScores` (raw per-image components and the
   anomaly map that evaluation reports);
3. :func:`calibrate` fits the standardisation and the threshold on VALIDATION scans only;
4. :func:`score_images` combines the components into one score and a prediction.

HIGHER = MORE ANOMALOUS everywhere. Results travel in one type, :class:`ScoredImages`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
from torch import Tensor

from brainad import metrics as metrics_lib
from brainad.config import ThresholdConfig
from brainad.scoring.calibration import (
    Calibration,
    combine,
    fit_standardiser,
    identity_standardiser,
)
from brainad.utils import console

log = logging.getLogger("brainad")


class AnomalyMaps(NamedTuple):
    """What a detector computes for a batch, before aggregation.

    Args:
        pixel: ``{kind: (B, 1, S, S)}`` raw pixel maps (not smoothed, not masked).
        image: ``{name: (B,)}`` per-image values that are not maps (a feature residual, the
            statistic of a global baseline).
        recon: (B, 1, S, S) reconstruction in [-1, 1], or None for methods without one.
    """

    pixel: dict[str, Tensor]
    image: dict[str, Tensor]
    recon: Tensor | None


class ImageScores(NamedTuple):
    """Per-image results of a batch.

    Args:
        components: ``{name: (B,)}`` raw component scores (:func:`combine` weighs them).
        map: (B, 1, S, S) the anomaly map evaluation reports (pixel metrics, heat maps), or None.
    """

    components: dict[str, Tensor]
    map: Tensor | None


@runtime_checkable
class Detector(Protocol):
    """An anomaly detector, model or baseline.

    Attributes:
        name: the method's one name (metrics, files, reports).
        kind: ``model`` or ``baseline``.
        batch_size: images per :meth:`maps` call; None = all images at once.
        components: the raw components :meth:`scores` returns, in order (the CLI's
            ``component_*`` columns).
        weights: ``{component: weight}`` that :func:`combine` uses.
        standardise: whether components are standardised on healthy validation scans before
            they are weighed (False: the raw component is the score).
    """

    name: str
    kind: str
    batch_size: int | None
    components: tuple[str, ...]
    weights: dict[str, float]
    standardise: bool

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        """Fit on HEALTHY TRAINING images (a no-op for models trained by the training loop)."""

    def maps(self, images: Tensor, masks: Tensor) -> AnomalyMaps: ...

    def scores(self, maps: AnomalyMaps, masks: Tensor) -> ImageScores: ...


@dataclass(frozen=True)
class ScoredImages:
    """Scores of a set of images (host memory): THE results type of every detector.

    Args:
        components: raw per-image component scores ``{name: (N,)}``.
        score: combined score (higher = more anomalous); None before calibration.
        prediction: 1 where ``score >= threshold``; None before calibration.
        maps: (N, 1, S, S) anomaly maps if requested and the detector has them.
        recons: (N, 1, S, S) reconstructions if requested and the detector has them.
    """

    components: dict[str, np.ndarray]
    score: np.ndarray | None
    prediction: np.ndarray | None
    maps: np.ndarray | None
    recons: np.ndarray | None = None


def check_pair(images: np.ndarray | Tensor, masks: np.ndarray | Tensor) -> None:
    """(N, 1, S, S) images and brain masks of the same shape, else ValueError."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, 1, S, S), got {tuple(images.shape)}")
    if tuple(masks.shape) != tuple(images.shape):
        raise ValueError(
            f"brain masks shape {tuple(masks.shape)} differs from images {tuple(images.shape)}"
        )


def _batches(detector: Detector, n: int, progress: bool):
    step = detector.batch_size or max(n, 1)
    if step < 1:
        raise ValueError(f"{detector.name}: batch_size must be >= 1, got {step}")
    starts = range(0, n, step)
    if progress:
        from rich.progress import track

        starts = track(starts, description=f"scoring ({detector.name})", console=console())
    return step, starts


def _raw_batches(
    detector: Detector, images: np.ndarray, masks: np.ndarray, progress: bool
) -> Iterator[tuple[AnomalyMaps, Tensor]]:
    """``(detector.maps(x, m), m)`` for consecutive batches of ``detector.batch_size`` images."""
    import torch

    check_pair(images, masks)
    step, starts = _batches(detector, len(images), progress)
    for start in starts:
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + step], dtype=np.float32))
        m = torch.from_numpy(np.ascontiguousarray(masks[start : start + step], dtype=bool))
        yield detector.maps(x, m), m


def score_raw(
    detector: Detector,
    images: np.ndarray,
    masks: np.ndarray,
    keep_maps: bool = False,
    progress: bool = False,
) -> ScoredImages:
    """Raw components (and maps/reconstructions if ``keep_maps``) of (N, 1, S, S) arrays, in
    batches of ``detector.batch_size``; no calibration applied (``score`` is None)."""
    parts: dict[str, list[np.ndarray]] = {}
    maps, recons = [], []
    for raw, m in _raw_batches(detector, images, masks, progress):
        scored = detector.scores(raw, m)
        for name, values in scored.components.items():
            parts.setdefault(name, []).append(values.cpu().numpy())
        if keep_maps and scored.map is not None:
            maps.append(scored.map.cpu().numpy())
        if keep_maps and raw.recon is not None:
            recons.append(raw.recon.cpu().numpy())
    components = {name: np.concatenate(v) for name, v in parts.items()}
    if not parts:  # no images: empty components, so calibration and reports still line up
        components = {name: np.zeros(0, np.float32) for name in detector.weights}
    return ScoredImages(
        components,
        None,
        None,
        np.concatenate(maps) if maps else None,
        np.concatenate(recons) if recons else None,
    )


def pixel_maps(detector: Detector, images: np.ndarray, masks: np.ndarray) -> dict[str, Tensor]:
    """Every raw pixel map kind of ``detector`` (``AnomalyMaps.pixel``: not smoothed) for
    (N, 1, S, S) arrays, float32 on the host, in batches of ``detector.batch_size``."""
    import torch

    parts: dict[str, list[Tensor]] = {}
    for raw, _ in _raw_batches(detector, images, masks, progress=False):
        for kind, values in raw.pixel.items():
            parts.setdefault(kind, []).append(values.float().cpu())
    return {kind: torch.cat(values) for kind, values in parts.items()}


def apply_calibration(
    detector: Detector, calibration: Calibration, raw: ScoredImages
) -> ScoredImages:
    """Combined score and prediction of raw components under a fitted ``calibration``."""
    score = combine(raw.components, calibration, detector.weights)
    prediction = (score >= calibration.threshold).astype(np.int8)
    return ScoredImages(raw.components, score, prediction, raw.maps, raw.recons)


def calibrate(
    detector: Detector, images: np.ndarray, masks: np.ndarray, labels: np.ndarray,
    threshold: ThresholdConfig,
) -> Calibration:  # fmt: skip
    """Standardise components on the healthy VALIDATION scans, then choose the threshold there."""
    raw = score_raw(detector, images, masks)
    healthy = labels == 0
    if not healthy.any():
        raise ValueError("validation split has no healthy images; check the split fractions")
    if detector.standardise:
        means, stds = fit_standardiser({k: v[healthy] for k, v in raw.components.items()})
    else:
        means, stds = identity_standardiser(tuple(raw.components))
    provisional = Calibration(means, stds, float("nan"), "none", {})
    val_scores = combine(raw.components, provisional, detector.weights)
    chosen = metrics_lib.calibrate_threshold(labels, val_scores, threshold)
    details = dict(chosen.details)
    if len(np.unique(labels)) == 2:
        details["val_direction"] = metrics_lib.direction_check(labels, val_scores)
    return Calibration(means, stds, float(chosen.value), chosen.method, details)


def score_images(
    detector: Detector,
    calibration: Calibration,
    images: np.ndarray,
    masks: np.ndarray,
    keep_maps: bool = False,
) -> ScoredImages:
    """Components → combined score → prediction (evaluation, ablation and the CLI share it)."""
    raw = score_raw(detector, images, masks, keep_maps=keep_maps, progress=len(images) > 256)
    return apply_calibration(detector, calibration, raw)
