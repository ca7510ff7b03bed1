"""Synthetic lesions implanted into held-out healthy scans (the paired lesion track).

Every healthy test scan is scored with and without a lesion, so a detector that keys on the
source of an image (scanner, intensity, size) instead of its content gains nothing here.

Each lesion is an irregular blob: an ellipse whose boundary radius is modulated by random
low-frequency harmonics, with a soft edge, painted only inside the brain mask; the returned lesion
mask is exactly the set of pixels that changed. Four kinds:

* ``blob`` and ``ring`` (a rim brighter than the core, like an enhancing tumour around a necrotic
  centre): an intensity offset of ``±contrast × std(brain pixels)``, clipped to [-1, 1] — many
  leave the slice's intensity range, which a trivial intensity statistic can see;
* ``tissue`` and ``textured`` (a fraction ``in_range_fraction`` of the lesions): the region takes
  the intensity of another tissue of the same slice (a random brain-intensity quantile), smooth or
  with a noise texture, clipped to the slice's own brain range (:data:`IN_RANGE_PERCENTILES`), so
  no pixel leaves the intensities the slice already has.

Sizes are reported in the bins of :data:`SIZE_BINS` (radius as a fraction of the image side).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import cv2
import numpy as np

from brainad.config import LesionConfig

log = logging.getLogger("brainad")

RING_FRACTION = 0.25  # fraction of lesions drawn as rings (brighter rim)
RING_CORE = 0.4  # core intensity of a ring relative to its rim
EDGE_SOFTNESS = 0.25  # half-width of the soft edge, in units of the blob radius
HARMONICS = (2, 3, 4)  # boundary harmonics
HARMONIC_AMPLITUDE = 0.08  # maximum relative amplitude of each harmonic
MAX_ELONGATION = 0.2  # |log| of the ellipse axis ratio factor
CHANGE_EPSILON = 1e-3  # a pixel belongs to the lesion mask if it changed by more than this
MIN_BRAIN_STD = 0.05  # floor of the brain intensity std (flat images still get a lesion)
IN_RANGE_QUANTILES = (0.05, 0.95)  # target intensity of an in-range lesion: a brain quantile
IN_RANGE_PERCENTILES = (1.0, 99.0)  # an in-range lesion is clipped to these brain percentiles
TEXTURE_STD = 0.5  # noise of a ``textured`` lesion, in units of the brain std
TEXTURED_FRACTION = 0.5  # of the in-range lesions
SIZE_BINS = (("small", 0.05), ("medium", 0.09), ("large", float("inf")))  # radius / side, upper
KINDS = ("blob", "ring", "tissue", "textured")


class LesionSet(NamedTuple):
    """Lesioned copies of healthy scans, copy-major: copy ``k`` of image ``i`` is at index
    ``k·N + i``, so ``np.tile(x, per_image)`` (or ``np.tile(masks, (per_image, 1, 1, 1))``) of any
    per-image array lines up with the lesioned copies.

    Args:
        images: (N·per_image, 1, S, S) float32 in [-1, 1].
        masks: (N·per_image, 1, S, S) bool, exactly the pixels that the lesion changed.
        params: one JSON-ready dict per lesion: ``source_index``, ``copy``, ``centre`` [y, x],
            ``radius`` (px), ``contrast`` (signed, units of brain std), ``intensity_offset``,
            ``kind`` (:data:`KINDS`), ``size`` (:data:`SIZE_BINS`), ``bright``, ``n_pixels``.
    """

    images: np.ndarray
    masks: np.ndarray
    params: list[dict]


def _check(images: np.ndarray, brain_masks: np.ndarray, config: LesionConfig) -> None:
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must have shape (N, 1, S, S), got {images.shape}")
    if brain_masks.shape != images.shape:
        raise ValueError(f"brain masks shape {brain_masks.shape} differs from {images.shape}")
    if config.per_image < 1:
        raise ValueError(f"evaluate.lesions.per_image must be >= 1, got {config.per_image}")
    low, high = config.radius_range
    if not 0.0 < low <= high < 0.5:
        raise ValueError(
            f"evaluate.lesions.radius_range must satisfy 0 < min <= max < 0.5, got {[low, high]}"
        )
    low, high = config.contrast_range
    if not 0.0 < low <= high:
        raise ValueError(
            f"evaluate.lesions.contrast_range must satisfy 0 < min <= max (magnitudes), got "
            f"{[low, high]}; the sign comes from evaluate.lesions.bright_fraction"
        )
    for key in ("bright_fraction", "in_range_fraction"):
        if not 0.0 <= getattr(config, key) <= 1.0:
            raise ValueError(
                f"evaluate.lesions.{key} must be in [0, 1], got {getattr(config, key)}"
            )


def _edge_distance(brain: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) of each brain pixel to the nearest non-brain pixel or border."""
    padded = np.pad(brain.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]


def _sample_centre(distance: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """A brain pixel at least ``radius`` from the brain edge (or as deep as the brain allows)."""
    deepest = float(distance.max())
    needed = radius if deepest >= radius else 0.5 * deepest
    candidates = np.argwhere(distance >= needed)
    return candidates[rng.integers(len(candidates))]


def _blob(
    shape: tuple[int, int], centre: np.ndarray, radius: float, ring: bool, rng: np.random.Generator
) -> np.ndarray:
    """Lesion profile in [0, 1] on the whole grid: irregular ellipse with a soft edge."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    stretch = np.exp(rng.uniform(-MAX_ELONGATION, MAX_ELONGATION))
    amplitudes = rng.uniform(0, HARMONIC_AMPLITUDE, len(HARMONICS))
    phases = rng.uniform(0, 2 * np.pi, len(HARMONICS))
    dy, dx = yy - centre[0], xx - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    rho = np.hypot(u / (radius * stretch), v * stretch / radius)
    phi = np.arctan2(v, u)
    boundary = 1.0 + sum(a * np.cos(h * phi + p) for h, a, p in zip(HARMONICS, amplitudes, phases))
    rho = rho / boundary
    profile = 1.0 - _smoothstep(1.0 - EDGE_SOFTNESS, 1.0 + EDGE_SOFTNESS, rho)
    if ring:
        profile = profile * (RING_CORE + (1.0 - RING_CORE) * _smoothstep(0.4, 0.8, rho))
    return profile


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def size_bin(radius_fraction: float) -> str:
    """The :data:`SIZE_BINS` name of a lesion radius given as a fraction of the image side."""
    return next(name for name, upper in SIZE_BINS if radius_fraction < upper)


def _in_range_value(
    image: np.ndarray, brain: np.ndarray, radius: float, textured: bool, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """What an in-range lesion paints (the whole grid) and its target intensity: a random brain
    quantile of this slice, plus smoothed noise if ``textured``, clipped to the slice's own
    :data:`IN_RANGE_PERCENTILES` brain range."""
    values = image[brain]
    target = float(np.quantile(values, rng.uniform(*IN_RANGE_QUANTILES)))
    fill = np.full(image.shape, target, np.float64)
    if textured:
        noise = cv2.GaussianBlur(rng.standard_normal(image.shape), (0, 0), max(radius / 4, 1.0))
        noise /= max(float(noise.std()), 1e-6)
        fill += TEXTURE_STD * max(float(values.std()), MIN_BRAIN_STD) * noise
    low, high = np.percentile(values, IN_RANGE_PERCENTILES)
    return np.clip(fill, low, high), target


def _implant_one(
    image: np.ndarray,
    brain: np.ndarray,
    distance: np.ndarray,
    config: LesionConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One lesioned copy of a (S, S) image: (image, mask, params)."""
    size = image.shape[0]
    radius = float(rng.uniform(*config.radius_range) * size)
    centre = _sample_centre(distance, radius, rng)
    in_range = bool(rng.random() < config.in_range_fraction)
    if in_range:
        kind = "textured" if rng.random() < TEXTURED_FRACTION else "tissue"
        profile = _blob(image.shape, centre, radius, False, rng) * brain
        fill, target = _in_range_value(image, brain, radius, kind == "textured", rng)
        painted = (image + profile * (fill - image)).astype(np.float32)
        local = float(image[profile > 0.5].mean()) if (profile > 0.5).any() else target
        offset, bright = target - local, target > local
        contrast = offset / max(float(image[brain].std()), MIN_BRAIN_STD)
    else:
        kind = "ring" if rng.random() < RING_FRACTION else "blob"
        bright = bool(rng.random() < config.bright_fraction)
        contrast = float(rng.uniform(*config.contrast_range)) * (1.0 if bright else -1.0)
        offset = contrast * max(float(image[brain].std()), MIN_BRAIN_STD)
        profile = _blob(image.shape, centre, radius, kind == "ring", rng)
        painted = np.clip(image + offset * profile * brain, -1.0, 1.0).astype(np.float32)
    changed = np.abs(painted - image) > CHANGE_EPSILON
    painted = np.where(changed, painted, image)  # sub-epsilon changes are undone: mask is exact
    params = {
        "centre": [int(centre[0]), int(centre[1])],
        "radius": radius,
        "size": size_bin(radius / size),
        "contrast": float(contrast),
        "intensity_offset": float(offset),
        "kind": kind,
        "bright": bool(bright),
        "n_pixels": int(changed.sum()),
    }
    return painted, changed, params


def implant_lesions(images: np.ndarray, brain_masks: np.ndarray, config: LesionConfig) -> LesionSet:
    """Implant ``config.per_image`` lesions into each healthy image (one lesion per copy).

    Deterministic: lesion ``k`` of image ``i`` depends only on ``(config.seed, i, k)`` and the
    image, not on the other images.

    Args:
        images: (N, 1, S, S) float in [-1, 1], background -1.
        brain_masks: (N, 1, S, S) bool; lesions are painted only inside them.
        config: the ``evaluate.lesions`` section.
    """
    images = np.asarray(images, dtype=np.float32)
    brain_masks = np.asarray(brain_masks).astype(bool)
    _check(images, brain_masks, config)
    n, copies = images.shape[0], config.per_image
    out_images = np.tile(images, (copies, 1, 1, 1))
    out_masks = np.zeros(out_images.shape, dtype=bool)
    params: list[dict | None] = [None] * (n * copies)
    for i in range(n):
        brain = brain_masks[i, 0]
        if not brain.any():
            raise ValueError(f"image {i} has an empty brain mask; cannot place a lesion in it")
        distance = _edge_distance(brain)
        for k in range(copies):
            rng = np.random.default_rng([config.seed, i, k])
            painted, mask, info = _implant_one(images[i, 0], brain, distance, config, rng)
            out_images[k * n + i, 0], out_masks[k * n + i, 0] = painted, mask
            params[k * n + i] = {"source_index": i, "copy": k, **info}
    empty = sum(p["n_pixels"] == 0 for p in params)
    if empty:
        log.warning("%d of %d lesions changed no pixel (saturated tissue)", empty, len(params))
    return LesionSet(out_images, out_masks, params)
