"""Trivial unsupervised baselines, fitted on the TRAIN split (healthy images only).

They are reported beside every model: if a statistic as simple as the mean brain intensity
separates the test classes, the classes are confounded (source, scanner, normalisation) and a
model's AUROC says little about anomaly detection. HIGHER SCORE = MORE ANOMALOUS.

* ``mean_intensity``: |z| of the mean brain intensity against the training images;
* ``image_stats``: Mahalanobis distance of seven intensity/shape statistics (Ledoit-Wolf);
* ``pca_recon``: PCA reconstruction residual of per-image standardised brains;
* ``nearest_neighbour``: L2 distance at 32×32 to the nearest training image;
* ``mirror_asymmetry``: training-free left-right asymmetry — the slice against its mirror image,
  aligned by a small shift/rotation search (:mod:`brainad.scoring.mirror`), smoothed, on a
  per-image robust intensity scale; the score is a high quantile inside the eroded brain mask.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA

from brainad.config import EvaluateConfig
from brainad.runtime import kernels_pinned
from brainad.scoring.detector import AnomalyMaps, ImageScores
from brainad.scoring.maps import aggregate
from brainad.scoring.mirror import batched_mirrors, best_mirror, mirror_warp

log = logging.getLogger("brainad")

_EPS = 1e-6
PCA_TOPK_PERCENT = 1.0
NN_SIZE = 32
STAT_NAMES = ("mean", "std", "skew", "kurtosis", "area_fraction", "p1", "p99")
# mirror asymmetry, lengths in pixels of a 128-px slice (scaled with the image size)
ASYM_SIGMA = 2.0  # Gaussian smoothing of the residual
ASYM_EROSION = 3  # brain-mask erosion before the quantile (the rim is never symmetric)
ASYM_RANGE = (5.0, 95.0)  # per-image intensity percentiles mapped to 0..1
ASYM_QUANTILE = 0.95  # of the residual inside the eroded mask


class Baseline:
    """What the baselines share as :class:`~brainad.scoring.detector.Detector` protocol: fitted on
    healthy training images, all images at once, one raw statistic ``score`` that is the score
    itself (no standardisation, weight 1). A subclass implements ``fit`` and ``statistic``
    (and ``anomaly_map`` if it has one)."""

    name = ""
    kind = "baseline"
    batch_size: int | None = None
    components: tuple[str, ...] = ("score",)
    weights = {"score": 1.0}
    standardise = False

    def statistic(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def anomaly_map(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray | None:
        return None

    def statistic_of_map(
        self, images: np.ndarray, masks: np.ndarray, found: np.ndarray | None
    ) -> np.ndarray:
        """The statistic when :meth:`anomaly_map` was already computed (``found``): a baseline
        whose statistic aggregates its map overrides this, so the map is computed once."""
        return self.statistic(images, masks)

    def maps(self, images: torch.Tensor, masks: torch.Tensor) -> AnomalyMaps:
        x, m = images.numpy(), masks.numpy()
        found = self.anomaly_map(x, m)
        pixel = {} if found is None else {"map": torch.from_numpy(found)}
        score = self.statistic_of_map(x, m, found)
        return AnomalyMaps(pixel, {"score": torch.from_numpy(score)}, None)

    def scores(self, maps: AnomalyMaps, masks: torch.Tensor) -> ImageScores:
        return ImageScores({"score": maps.image["score"]}, maps.pixel.get("map"))


# ------------------------------------------------------------------------------------ helpers
def _prepare(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Checked float32 images and bool masks; an empty mask is replaced by the whole slice."""
    images = np.asarray(images, dtype=np.float32)
    masks = np.asarray(masks).astype(bool)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, 1, S, S), got {images.shape}")
    if masks.shape != images.shape:
        raise ValueError(f"brain masks shape {masks.shape} differs from images {images.shape}")
    if images.shape[0] == 0:
        raise ValueError("no images given")
    empty = ~masks.reshape(len(masks), -1).any(1)
    if empty.any():
        log.warning("%d image(s) with an empty brain mask use the whole slice", int(empty.sum()))
        masks = masks | empty[:, None, None, None]
    return images, masks


def _brain_moments(values: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row mean and std (population) of (N, P) ``values`` over ``inside`` pixels."""
    count = inside.sum(1)
    mean = np.where(inside, values, 0.0).sum(1) / count
    var = np.where(inside, (values - mean[:, None]) ** 2, 0.0).sum(1) / count
    return mean, np.sqrt(var)


def _masked_quantiles(values: np.ndarray, inside: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """(N, len(qs)) per-row quantiles over ``inside`` pixels (linear, as ``np.quantile``)."""
    ordered = np.sort(np.where(inside, values, np.inf), axis=1)
    last = inside.sum(1) - 1
    out = []
    for q in qs:
        position = q * last
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, last)
        a = np.take_along_axis(ordered, low[:, None], 1)[:, 0]
        b = np.take_along_axis(ordered, high[:, None], 1)[:, 0]
        out.append(a + (position - low) * (b - a))
    return np.stack(out, 1)


def _require_fit(baseline: object, attribute: str) -> None:
    if getattr(baseline, attribute, None) is None:
        raise RuntimeError(f"{type(baseline).__name__}: call fit() on the training images first")


# ---------------------------------------------------------------------------------- baselines
class MeanIntensity(Baseline):
    """|z| of the mean brain intensity relative to the training images (deliberately trivial)."""

    name = "mean_intensity"

    def __init__(self) -> None:
        self.center: float | None = None
        self.scale: float = 1.0

    def _means(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        images, masks = _prepare(images, masks)
        flat = images.reshape(len(images), -1).astype(np.float64)
        return _brain_moments(flat, masks.reshape(len(masks), -1))[0]

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        means = self._means(images, masks)
        self.center, self.scale = float(means.mean()), max(float(means.std()), _EPS)

    def statistic(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        _require_fit(self, "center")
        return np.abs(self._means(images, masks) - self.center) / self.scale


def image_statistics(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, 7) brain statistics: mean, std, skew, excess kurtosis, brain-area fraction, p1, p99."""
    images, masks = _prepare(images, masks)
    values = images.reshape(len(images), -1).astype(np.float64)
    inside = masks.reshape(len(masks), -1)
    mean, std = _brain_moments(values, inside)
    centred = np.where(inside, (values - mean[:, None]) / np.maximum(std, _EPS)[:, None], 0.0)
    count = inside.sum(1)
    skew = (centred**3).sum(1) / count
    kurtosis = (centred**4).sum(1) / count - 3.0
    area = count / inside.shape[1]
    p1, p99 = _masked_quantiles(values, inside, (0.01, 0.99)).T
    return np.stack([mean, std, skew, kurtosis, area, p1, p99], 1)


class ImageStats(Baseline):
    """Mahalanobis distance of :func:`image_statistics` from the training distribution
    (features standardised, Ledoit-Wolf shrunk covariance)."""

    name = "image_stats"

    def __init__(self) -> None:
        self.covariance: LedoitWolf | None = None
        self.center = np.zeros(len(STAT_NAMES))
        self.scale = np.ones(len(STAT_NAMES))

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        features = image_statistics(images, masks)
        self.center = features.mean(0)
        self.scale = np.maximum(features.std(0), _EPS)
        self.covariance = LedoitWolf().fit((features - self.center) / self.scale)

    def statistic(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        _require_fit(self, "covariance")
        z = (image_statistics(images, masks) - self.center) / self.scale
        return np.sqrt(np.maximum(self.covariance.mahalanobis(z), 0.0))


class PCARecon(Baseline):
    """PCA reconstruction of per-image standardised brains (z-scored inside the mask, 0 outside).

    Args:
        n_components: PCA components (clamped to the number of training images).
        seed: random state of the (randomised) SVD.
    """

    name = "pca_recon"

    def __init__(self, n_components: int, seed: int = 0) -> None:
        if n_components < 1:
            raise ValueError(f"evaluate.pca_components must be >= 1, got {n_components}")
        self.n_components = n_components
        self.seed = seed
        self.pca: PCA | None = None

    @staticmethod
    def _standardise(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, masks = _prepare(images, masks)
        values = images.reshape(len(images), -1)
        inside = masks.reshape(len(masks), -1)
        mean, std = _brain_moments(values.astype(np.float64), inside)
        z = (values - mean[:, None]) / np.maximum(std, _EPS)[:, None]
        return np.where(inside, z, 0.0).astype(np.float32), masks

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        z, _ = self._standardise(images, masks)
        k = min(self.n_components, z.shape[0], z.shape[1])
        if k < self.n_components:
            log.warning("pca_recon: %d components requested, %d possible", self.n_components, k)
        self.pca = PCA(n_components=k, random_state=self.seed).fit(z)

    def anomaly_map(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """(N, 1, S, S) squared reconstruction residual, 0 outside the brain mask."""
        _require_fit(self, "pca")
        z, masks = self._standardise(images, masks)
        recon = self.pca.inverse_transform(self.pca.transform(z))
        return ((z - recon) ** 2).reshape(masks.shape).astype(np.float32) * masks

    def statistic(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return self.statistic_of_map(images, masks, self.anomaly_map(images, masks))

    def statistic_of_map(
        self, images: np.ndarray, masks: np.ndarray, found: np.ndarray | None
    ) -> np.ndarray:
        """Mean of the top ``PCA_TOPK_PERCENT`` % of the brain pixels of the residual map."""
        residual = found
        _, masks = _prepare(images, masks)
        top = aggregate(
            torch.from_numpy(residual), torch.from_numpy(masks), "topk", PCA_TOPK_PERCENT
        )
        return top.numpy().astype(np.float64)


class NearestNeighbour(Baseline):
    """L2 distance at 32×32 (brain pixels; outside set to the -1 background) to the nearest
    training image."""

    name = "nearest_neighbour"

    def __init__(self, chunk: int = 512) -> None:
        self.chunk = chunk
        self.train: np.ndarray | None = None
        self.train_sq: np.ndarray | None = None

    @staticmethod
    def _features(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        images, masks = _prepare(images, masks)
        small = F.adaptive_avg_pool2d(torch.from_numpy(images), NN_SIZE)
        inside = F.adaptive_avg_pool2d(torch.from_numpy(masks.astype(np.float32)), NN_SIZE) > 0.5
        return torch.where(inside, small, -1.0).flatten(1).numpy().astype(np.float64)

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        self.train = self._features(images, masks)
        self.train_sq = (self.train**2).sum(1)

    def statistic(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        _require_fit(self, "train")
        query = self._features(images, masks)
        out = np.empty(len(query))
        for start in range(0, len(query), self.chunk):
            part = query[start : start + self.chunk]
            squared = (part**2).sum(1)[:, None] + self.train_sq[None, :] - 2.0 * part @ self.train.T
            out[start : start + len(part)] = np.sqrt(np.maximum(squared.min(1), 0.0))
        return out


def _unit_range(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` with its :data:`ASYM_RANGE` brain percentiles mapped to 0 and 1 (float32)."""
    lo, hi = np.percentile(image[mask], ASYM_RANGE)
    return ((image - lo) / max(hi - lo, _EPS)).astype(np.float32)


def _asymmetry(x: np.ndarray, mask: np.ndarray, warp: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """|slice - its mirror image under ``warp``|, smoothed, inside the ``kernel``-eroded overlap
    of both masks (0 elsewhere)."""
    size = x.shape[-1]
    twin = cv2.warpAffine(x, warp, (size, size), flags=cv2.INTER_LINEAR)
    twin_mask = cv2.warpAffine(mask.astype(np.uint8), warp, (size, size)) > 0
    residual = cv2.GaussianBlur(np.abs(x - twin), (0, 0), ASYM_SIGMA * size / 128)
    inside = cv2.erode((mask & twin_mask).astype(np.uint8), kernel) > 0
    return np.where(inside, residual, 0.0)


class MirrorAsymmetry(Baseline):
    """Training-free left-right asymmetry (healthy brains are nearly symmetric, most lesions are
    not). Each slice is mapped to 0..1 by its own :data:`ASYM_RANGE` brain percentiles (so a
    lesion's intensity cannot shift the scale much), compared with its mirror image aligned by
    :func:`~brainad.scoring.mirror.best_mirror`; the absolute difference, Gaussian-smoothed
    (:data:`ASYM_SIGMA`), is the map inside the eroded overlap of both masks, and its
    :data:`ASYM_QUANTILE` is the score. A lesion shows twice in the map: where it is and at its
    mirror position.

    The alignment search is the reference (slice by slice) in deterministic mode
    (:func:`~brainad.runtime.kernels_pinned`), else the batched one, which picks the same
    alignments (:mod:`brainad.scoring.mirror`) about five times faster."""

    name = "mirror_asymmetry"

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        """Nothing to fit (the method uses no training data)."""

    def anomaly_map(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        images, masks = _prepare(images, masks)
        size = images.shape[-1]
        erosion = max(1, round(ASYM_EROSION * size / 128))
        kernel = np.ones((2 * erosion + 1, 2 * erosion + 1), np.uint8)
        scaled = np.stack([_unit_range(x, m) for x, m in zip(images[:, 0], masks[:, 0])])
        if kernels_pinned():
            found = [best_mirror(x, m) for x, m in zip(scaled, masks[:, 0])]
        else:
            found = batched_mirrors(scaled, masks[:, 0])
        out = np.zeros(images.shape, np.float32)
        for i, (x, mask, alignment) in enumerate(zip(scaled, masks[:, 0], found)):
            out[i, 0] = _asymmetry(x, mask, mirror_warp(size, *alignment), kernel)
        return out

    def statistic(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return self.statistic_of_map(images, masks, self.anomaly_map(images, masks))

    def statistic_of_map(
        self, images: np.ndarray, masks: np.ndarray, found: np.ndarray | None
    ) -> np.ndarray:
        """:data:`ASYM_QUANTILE` of the map over its support (0 for a slice without one)."""
        flat = found.reshape(len(found), -1)
        inside = flat > 0
        scores = np.zeros(len(found))
        has = inside.any(1)
        if has.any():
            scores[has] = _masked_quantiles(flat[has], inside[has], (ASYM_QUANTILE,))[:, 0]
        return scores


def default_baselines(config: EvaluateConfig) -> list[Baseline]:
    """The five trivial baselines reported beside every model."""
    return [
        MeanIntensity(),
        ImageStats(),
        PCARecon(config.pca_components, seed=config.seed),
        NearestNeighbour(),
        MirrorAsymmetry(),
    ]
