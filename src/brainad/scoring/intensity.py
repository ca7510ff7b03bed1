"""Intensity detectors for registered, skull-stripped volumes (the volume studies' rows), each a
:class:`~brainad.scoring.detector.Detector` through :class:`~brainad.scoring.baselines.Baseline`.

* ``intensity``: the (normalised) intensity itself is the map — thresholding, the bar of the
  voxel-level BraTS study on FLAIR, where tumour and oedema are hyperintense;
* ``mirror_difference``: the slice minus its plain left-right mirror (about the image centre, no
  alignment search: volumes registered to an atlas are centred), positive part only, so a
  hyperintense lesion shows once, not also at its mirror position;
* ``edge_normalised``: hyperintensity relative to learned normality — the intensity as a z-score
  against the healthy training voxels at the same distance from the brain's edge (partial volume
  and residual dura make the rim bright in healthy FLAIR; a plain threshold flags it).

Every map is 0 outside the brain mask; the image score is the mean of the top
:data:`TOPK_PERCENT` % of the map in the brain. HIGHER = MORE ANOMALOUS.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from brainad.scoring.baselines import Baseline, MirrorAsymmetry, _prepare, _require_fit
from brainad.scoring.maps import aggregate

TOPK_PERCENT = 1.0
EDGE_BIN_PX = 2.0  # width of a distance-to-edge bin (px; 2 mm at BraTS' 1 mm)
EDGE_BINS = 20  # the last bin takes every deeper voxel (>= 38 px from the edge)
_MIN_STD = 1e-3


class _MapBaseline(Baseline):
    """A baseline whose statistic is the top-:data:`TOPK_PERCENT` % mean of its own map."""

    def statistic(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return self.statistic_of_map(images, masks, self.anomaly_map(images, masks))

    def statistic_of_map(
        self, images: np.ndarray, masks: np.ndarray, found: np.ndarray | None
    ) -> np.ndarray:
        _, masks = _prepare(images, masks)
        top = aggregate(torch.from_numpy(found), torch.from_numpy(masks), "topk", TOPK_PERCENT)
        return top.numpy().astype(np.float64)


class IntensityMap(_MapBaseline):
    """The intensity itself inside the brain (thresholding). Nothing to fit."""

    name = "intensity"

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        """Nothing to fit (the method uses no training data)."""

    def anomaly_map(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        images, masks = _prepare(images, masks)
        return np.where(masks, images, 0.0).astype(np.float32)


class MirrorDifference(_MapBaseline):
    """The positive part of the slice minus its mirror image (about the vertical centre line),
    inside the overlap of the brain and its mirror. Nothing to fit."""

    name = "mirror_difference"

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        """Nothing to fit (the method uses no training data)."""

    def anomaly_map(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        images, masks = _prepare(images, masks)
        twin, twin_mask = images[..., ::-1], masks[..., ::-1]
        inside = masks & twin_mask
        return np.where(inside, np.maximum(images - twin, 0.0), 0.0).astype(np.float32)


def edge_distance(masks: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) Euclidean distance (px) of each brain pixel to the nearest non-brain pixel."""
    out = np.zeros(masks.shape, np.float32)
    for i, mask in enumerate(np.asarray(masks, bool)[:, 0]):
        padded = np.pad(mask.astype(np.uint8), 1)  # the slice border counts as outside
        out[i, 0] = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    return out


def _edge_bins(masks: np.ndarray) -> np.ndarray:
    return np.minimum((edge_distance(masks) / EDGE_BIN_PX).astype(np.int64), EDGE_BINS - 1)


class EdgeNormalised(_MapBaseline):
    """Intensity as a z-score against healthy training voxels at the same distance from the
    brain's edge (:data:`EDGE_BINS` bins of :data:`EDGE_BIN_PX` px): fitted on HEALTHY
    training slices; a bin without training voxels uses the pooled mean and std."""

    name = "edge_normalised"

    def __init__(self) -> None:
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        images, masks = _prepare(images, masks)
        bins = _edge_bins(masks)[masks]
        values = images[masks].astype(np.float64)
        mean = np.full(EDGE_BINS, values.mean())
        std = np.full(EDGE_BINS, max(values.std(), _MIN_STD))
        for b in range(EDGE_BINS):
            found = values[bins == b]
            if found.size >= 2:
                mean[b], std[b] = found.mean(), max(found.std(), _MIN_STD)
        self.mean, self.std = mean, std

    def anomaly_map(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        _require_fit(self, "mean")
        images, masks = _prepare(images, masks)
        bins = _edge_bins(masks)
        z = (images - self.mean[bins]) / self.std[bins]
        return np.where(masks, z, 0.0).astype(np.float32)


# the volume studies' detector methods by name (``detectors[].method`` in params.yaml)
VOLUME_METHODS: dict[str, type[Baseline]] = {
    cls.name: cls for cls in (IntensityMap, MirrorDifference, EdgeNormalised, MirrorAsymmetry)
}
