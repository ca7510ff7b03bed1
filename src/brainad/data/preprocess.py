"""Slice preprocessing: brain extraction, crop, resize and intensity normalisation.

Real slices are 2-D axial MRI of mixed sizes, contrasts and scanners, and the classes come from
different sources, so every step here is per image and robust:

1. :func:`extract_brain` — OpenCV brain extraction on a ~256 px working copy (robustly stretched,
   so dark slices behave like bright ones): smoothing, Otsu threshold (fixed thresholds cut dark
   slices), opening to cut skull/scalp bridges, frame lines and text, largest component (or the
   largest component *inside* a closed scalp ring), hole filling, erosion of the skull rim.
   Otsu is retried at lower thresholds while the brain stays separated from the head outline,
   which adds darker tissue and guards against Otsu splitting tissue classes (see
   :func:`_brain_work`). A mask whose coverage is outside ``[min_coverage, max_coverage]`` is a
   failed extraction (``ok=False`` with the reason).
2. :func:`preprocess_slice` — crop to the mask's bounding box plus a margin, pad to a square,
   resize; on a failed extraction the uncropped slice is used and flagged (``fallback=True``).
3. :func:`normalise` — intensities inside the brain mask mapped to [-1, 1]; -1 outside.

Failures that differ by class would be a shortcut for any model, so :func:`brainad.data.qa.coverage_stats`
and :func:`brainad.data.qa.qa_figure` make them visible per class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

from brainad.config import PreprocessConfig

log = logging.getLogger("brainad")

WORK_SIZE = 256  # side (longest) of the working copy; erosion_px is measured at this scale
_BLUR_PX = 5  # Gaussian smoothing kernel before Otsu (working pixels, odd)
_OPEN_PX = 7  # opening kernel that cuts thin skull/scalp bridges (working pixels)
_RING_FRACTION = 0.75  # a component filling less than this of its filled outline may be a ring
_INNER_FRACTION = 0.4  # ... and is one if its largest inner component fills this of the hole
_BRAIN_FACTORS = (1.0, 0.75, 0.5)  # Otsu threshold multipliers tried for the brain, in order
_MIN_HEAD_FRACTION = 0.4  # a smaller separated candidate is a tissue class, not the brain
_EDGE_PX = 3  # a candidate within this distance (working pixels) of ...
_EDGE_FRACTION = 0.5  # ... this fraction of the head outline touches it (scalp not separated)
_HEAD_FACTOR = 0.5  # the head region is everything above half the Otsu threshold
_MIN_CONTRAST = 2  # grey levels (of 255) below which a working copy is blank
_SKULL_MAX_DEPTH = 0.25  # of the head's equivalent radius: the deepest a skull ring is looked for
_SULCUS_FRACTION = 0.08  # closing disk that fills surface sulci, of the brain's diameter
_SCALP_CONTRAST = 1.3  # a scalp's peak grey level is at least this times the brain's


class BrainExtraction(NamedTuple):
    """Result of :func:`extract_brain`.

    Args:
        mask: bool (H, W) brain mask at the input's resolution.
        ok: False means the extraction failed (the caller falls back to the uncropped slice).
        reason: empty, or why the extraction failed.
        coverage: fraction of the slice covered by ``mask``.
    """

    mask: np.ndarray
    ok: bool
    reason: str
    coverage: float


class Preprocessed(NamedTuple):
    """One preprocessed slice.

    Args:
        image: float32 (S, S) in [-1, 1]; -1 outside the brain mask.
        mask: bool (S, S) brain mask after crop and resize.
        extra: the extra masks (e.g. tumour ground truth) under the same crop/resize, bool (S, S).
        fallback: True if extraction failed and the uncropped slice was used.
        coverage: brain-mask fraction of the original slice (of the head mask on fallback).
        box: ``(top, bottom, left, right)`` of the original slice that was padded to a square
            and resized (the whole slice on fallback); :func:`restore_map` undoes it.
    """

    image: np.ndarray
    mask: np.ndarray
    extra: list[np.ndarray]
    fallback: bool
    coverage: float
    box: tuple[int, int, int, int] = (0, 0, 0, 0)


class _Work(NamedTuple):
    """The smoothed 8-bit working copy of a slice (``blank`` if it has no contrast)."""

    image: np.ndarray
    blank: bool


# ---------------------------------------------------------------------------- mask helpers
def _check_gray(gray: np.ndarray) -> np.ndarray:
    gray = np.asarray(gray)
    if gray.ndim != 2 or min(gray.shape) < 2:
        raise ValueError(f"expected a 2-D grayscale slice of at least 2x2, got shape {gray.shape}")
    gray = gray.astype(np.float32, copy=False)
    if not np.isfinite(gray).all():
        raise ValueError("slice contains NaN or infinite values; decode it with read_image")
    return gray


def _work_copy(gray: np.ndarray) -> _Work:
    """Resize so the longest side is :data:`WORK_SIZE`, stretch to 8 bit robustly, smooth."""
    height, width = gray.shape
    scale = WORK_SIZE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(gray, size, interpolation=interp)
    lo, hi = float(small.min()), float(np.percentile(small, 99.5))
    if hi - lo <= 1e-6:
        hi = float(small.max())
    stretched = np.clip((small - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    work = cv2.GaussianBlur((stretched * 255).astype(np.uint8), (_BLUR_PX, _BLUR_PX), 0)
    return _Work(work, int(work.max()) - int(work.min()) < _MIN_CONTRAST)


def _otsu(work: np.ndarray, factor: float = 1.0) -> np.ndarray:
    """Foreground above ``factor`` times the Otsu threshold of the 8-bit working copy."""
    threshold, _ = cv2.threshold(work, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return work > threshold * factor


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if count <= 1:
        return np.zeros_like(mask, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill every background region not connected to the border."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8), (0, 0), 1)
    return (mask | (flood[1:-1, 1:-1] == 0)).astype(bool)


def _disk(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _to_shape(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resize a working-resolution mask back to ``shape`` with smooth (linear, 0.5) edges."""
    resized = cv2.resize(
        mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR
    )
    return resized >= 0.5


def _open(mask: np.ndarray) -> np.ndarray:
    """Morphological opening: cuts thin bridges, frame lines and text."""
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, _disk(_OPEN_PX)).astype(bool)


def _head_work(work: np.ndarray) -> np.ndarray:
    """Whole head (non-background) region at working resolution: low Otsu, opened, filled."""
    return _largest_component(_fill_holes(_open(_otsu(work, _HEAD_FACTOR))))


def _brain_candidate(work: np.ndarray, factor: float) -> np.ndarray:
    """Otsu (times ``factor``), opening, largest component (or the one inside a ring), filled."""
    opened = _open(_otsu(work, factor))
    component = _largest_component(opened)
    filled = _fill_holes(component)
    holes = filled & ~component
    if component.sum() < _RING_FRACTION * filled.sum():  # maybe a closed scalp ring
        inner = _largest_component(opened & holes)
        if inner.sum() >= _INNER_FRACTION * holes.sum():  # the brain fills the ring's hole
            filled = _fill_holes(inner)
    return filled


def _touches_edge(candidate: np.ndarray, head: np.ndarray) -> bool:
    """True if ``candidate`` reaches most of the head's outline (no scalp separated from it)."""
    outline = head & ~cv2.erode(head.astype(np.uint8), _disk(3)).astype(bool)
    near = cv2.dilate(candidate.astype(np.uint8), _disk(_EDGE_PX)).astype(bool)
    return bool((near & outline).sum() > _EDGE_FRACTION * max(outline.sum(), 1))


def _depth_profile(work: np.ndarray, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each head pixel to the head's outline, and the median grey level of each
    one-pixel ring of that distance, from the outline inwards (index = depth in pixels)."""
    depth = cv2.distanceTransform(head.astype(np.uint8), cv2.DIST_L2, 5)
    rings = np.floor(depth[head]).astype(np.int64)
    values = work[head]
    order = np.lexsort((values, rings))
    rings, values = rings[order], values[order]
    starts = np.searchsorted(rings, np.arange(rings.max() + 1))
    ends = np.searchsorted(rings, np.arange(rings.max() + 1), side="right")
    medians = np.array(
        [values[(a + b - 1) // 2] if b > a else 0 for a, b in zip(starts, ends)], np.float32
    )
    return depth, medians


def _peel_scalp(work: np.ndarray, head: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Cut the scalp off a brain candidate that reaches the head's outline (bright scalp fat
    joined to the brain, typical of T1-weighted slices). Following the head inwards ring by ring
    (distance from its outline), a scalp shows as a bright peak, the skull as the darker valley
    after it, and the brain as the level beyond; the candidate is cut at the valley's deepest
    point. A head without a scalp peak clearly brighter than its brain (:data:`_SCALP_CONTRAST`)
    and a valley below the brain level keeps the candidate unchanged."""
    depth, level = _depth_profile(work, head)
    radius = np.sqrt(head.sum() / np.pi)
    reach = min(len(level) - 1, max(4, int(_SKULL_MAX_DEPTH * radius)))
    inner = float(np.median(work[head & (depth > reach)])) if (depth > reach).any() else 0.0
    peak = 1 + int(np.argmax(level[1:reach]))
    if level[peak] < _SCALP_CONTRAST * max(inner, 1.0) or peak + 1 >= reach:
        return brain
    valley = peak + 1 + int(np.argmin(level[peak + 1 : reach + 1]))
    if level[valley] >= inner:
        return brain
    kept = _fill_holes(_largest_component(_open(brain & (depth > valley))))
    return kept if kept.sum() >= _MIN_HEAD_FRACTION * brain.sum() else brain


def _close_sulci(brain: np.ndarray) -> np.ndarray:
    """Fill the dark sulci and CSF that a threshold leaves out at the brain's surface (the mask of
    a FLAIR or T1 slice follows the gyri): a closing with a disk of :data:`_SULCUS_FRACTION` of
    the mask's equivalent diameter, then hole filling. Concavities wider than that disk (the
    interhemispheric fissure at the poles, a resection) stay open."""
    side = max(3, int(_SULCUS_FRACTION * 2 * np.sqrt(brain.sum() / np.pi)) | 1)
    closed = cv2.morphologyEx(brain.astype(np.uint8), cv2.MORPH_CLOSE, _disk(side))
    return _fill_holes(closed.astype(bool))


def _brain_work(work: np.ndarray, erosion_px: int) -> np.ndarray:
    """Brain mask at working resolution (see the module docstring for the steps).

    Otsu candidates are tried at decreasing thresholds (:data:`_BRAIN_FACTORS`): each lower
    threshold adds darker brain tissue (grey matter, CSF) as long as the candidate stays
    separated from the head's outline by the dark skull. The lowest separated candidate wins; if
    it is smaller than :data:`_MIN_HEAD_FRACTION` of the head (Otsu split tissue classes, e.g.
    white matter only, on a slice with little background), the first candidate reaching the
    outline (the head, scalp attached or absent) is used instead.
    """
    head = _head_work(work)
    separated, brain = None, head
    for factor in _BRAIN_FACTORS:
        candidate = _brain_candidate(work, factor) & head
        if not candidate.any():
            continue
        if not _touches_edge(candidate, head):
            separated = candidate
            continue
        brain = _peel_scalp(work, head, candidate)
        break
    if separated is not None and separated.sum() >= _MIN_HEAD_FRACTION * head.sum():
        brain = separated
    brain = _close_sulci(brain)
    if erosion_px > 0:
        brain = cv2.erode(brain.astype(np.uint8), _disk(2 * erosion_px + 1)).astype(bool)
    return _largest_component(brain) if brain.any() else brain


def head_mask(gray: np.ndarray, min_coverage: float) -> np.ndarray:
    """Non-background head region of a slice; the whole slice if that region is too small."""
    gray = _check_gray(gray)
    work = _work_copy(gray)
    if not work.blank:
        mask = _to_shape(_head_work(work.image), gray.shape)
        if mask.mean() >= min_coverage:
            return mask
    return np.ones(gray.shape, dtype=bool)


def extract_brain(gray: np.ndarray, config: PreprocessConfig) -> BrainExtraction:
    """Extract the brain of a 2-D slice (float, any range; usually [0, 1] from ``read_image``).

    With ``config.skull_strip`` false the mask is the head region (or the whole slice) and
    ``ok`` is True.

    Raises:
        ValueError: ``gray`` is not a finite 2-D array.
    """
    gray = _check_gray(gray)
    if not config.skull_strip:
        mask = head_mask(gray, config.min_coverage)
        return BrainExtraction(mask, True, "", float(mask.mean()))
    work = _work_copy(gray)
    if work.blank:
        empty = np.zeros(gray.shape, dtype=bool)
        return BrainExtraction(empty, False, "blank slice (no contrast)", 0.0)
    mask = _to_shape(_brain_work(work.image, config.erosion_px), gray.shape)
    coverage = float(mask.mean())
    if coverage < config.min_coverage:
        reason = f"coverage {coverage:.3f} < min_coverage {config.min_coverage}"
        return BrainExtraction(mask, False, reason, coverage)
    if coverage > config.max_coverage:
        reason = f"coverage {coverage:.3f} > max_coverage {config.max_coverage}"
        return BrainExtraction(mask, False, reason, coverage)
    return BrainExtraction(mask, True, "", coverage)


# ------------------------------------------------------------------------- crop and resize
class _Box(NamedTuple):
    top: int
    bottom: int
    left: int
    right: int


def _crop_box(mask: np.ndarray, margin: float) -> _Box:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    pad_y, pad_x = round(margin * (bottom - top)), round(margin * (right - left))
    height, width = mask.shape
    return _Box(
        max(0, top - pad_y),
        min(height, bottom + pad_y),
        max(0, left - pad_x),
        min(width, right + pad_x),
    )


def _square(array: np.ndarray) -> np.ndarray:
    """Pad to a square with zeros (background), centred."""
    height, width = array.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return np.pad(array, ((top, side - height - top), (left, side - width - left)))


def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
    interp = cv2.INTER_AREA if image.shape[0] >= size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0


def _check_extra(extra_masks: Sequence[np.ndarray], shape: tuple[int, ...]) -> list[np.ndarray]:
    out = []
    for i, extra in enumerate(extra_masks):
        extra = np.asarray(extra)
        if extra.shape != shape:
            raise ValueError(
                f"extra mask {i} has shape {extra.shape} but the slice is {shape}; "
                "a mask must have the same size as its image"
            )
        out.append(extra.astype(bool))
    return out


def _check_config(config: PreprocessConfig) -> None:
    if config.image_size < 8:
        raise ValueError(f"preprocess.image_size: {config.image_size} is too small (use >= 8)")
    if not 0 <= config.min_coverage < config.max_coverage <= 1:
        raise ValueError(
            "preprocess.min_coverage/max_coverage: need 0 <= min_coverage < max_coverage <= 1, "
            f"got {config.min_coverage}, {config.max_coverage}; fix params.yaml"
        )
    if config.crop_margin < 0 or config.erosion_px < 0:
        raise ValueError("preprocess.crop_margin and preprocess.erosion_px must be >= 0")


def preprocess_slice(
    gray: np.ndarray,
    config: PreprocessConfig,
    extra_masks: Sequence[np.ndarray] = (),
    extraction: BrainExtraction | None = None,
) -> Preprocessed:
    """Extract, crop, pad to square, resize and normalise one slice.

    ``extra_masks`` (e.g. tumour ground truth, same shape as ``gray``) follow the same crop and
    resize. On a failed extraction the slice is not cropped, the mask is the head region (or the
    whole slice) and ``fallback`` is True. ``extraction``: the result of :func:`extract_brain`
    on the same slice and config, if the caller already has it (it is not recomputed).

    Raises:
        ValueError: ``gray`` is not a finite 2-D array, or an extra mask has another shape.
    """
    _check_config(config)
    gray = _check_gray(gray)
    extras = _check_extra(extra_masks, gray.shape)
    extraction = extraction if extraction is not None else extract_brain(gray, config)
    box = _Box(0, gray.shape[0], 0, gray.shape[1])
    if extraction.ok:
        mask, coverage = extraction.mask, extraction.coverage
        box = _crop_box(mask, config.crop_margin)
        cut = (slice(box.top, box.bottom), slice(box.left, box.right))
        gray, mask, extras = gray[cut], mask[cut], [e[cut] for e in extras]
    else:
        mask = head_mask(gray, config.min_coverage)
        coverage = float(mask.mean())
    size = config.image_size
    image = _resize_image(_square(gray), size)
    mask_out = _resize_mask(_square(mask), size)
    if not mask_out.any():  # a sliver lost in resizing: keep the whole frame rather than nothing
        mask_out = np.ones_like(mask_out)
    extra_out = [_resize_mask(_square(e), size) for e in extras]
    return Preprocessed(
        image=normalise(image, mask_out, config),
        mask=mask_out,
        extra=extra_out,
        fallback=not extraction.ok,
        coverage=coverage,
        box=tuple(int(b) for b in box),
    )


def restore_map(values: np.ndarray, box: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """Undo :func:`preprocess_slice`'s geometry for a map ``values`` (S, S) of its output: resize
    (linear) to the padded square, drop the padding, place the crop ``box`` into a zero float32
    array of the original slice ``shape``."""
    top, bottom, left, right = (int(b) for b in box)
    height, width = bottom - top, right - left
    side = max(height, width)
    square = cv2.resize(
        np.asarray(values, np.float32), (side, side), interpolation=cv2.INTER_LINEAR
    )
    pad_top, pad_left = (side - height) // 2, (side - width) // 2
    out = np.zeros(shape, np.float32)
    out[top:bottom, left:right] = square[pad_top : pad_top + height, pad_left : pad_left + width]
    return out


# --------------------------------------------------------------------------- normalisation
def normalise(image: np.ndarray, mask: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Map intensities inside ``mask`` to [-1, 1] by ``config.normalisation``; -1 outside.

    ``thesis``: ``(x - 0.5) / 0.5`` for x in [0, 1]; ``percentile``: percentiles
    ``config.percentiles`` of brain pixels map to -1 and +1; ``zscore``: ``(x - mean) / std / 3``
    of brain pixels. A constant brain maps to 0. The result is clipped to [-1, 1].

    Raises:
        ValueError: shapes differ, the mask is empty, or the method is unknown.
    """
    image = np.asarray(image, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if image.shape != mask.shape:
        raise ValueError(f"image shape {image.shape} and mask shape {mask.shape} differ")
    if not mask.any():
        raise ValueError("brain mask is empty; nothing to normalise")
    brain = image[mask]
    method = config.normalisation
    if method == "thesis":
        out = (image - 0.5) / 0.5
    elif method == "percentile":
        if not 0 <= config.percentiles[0] < config.percentiles[1] <= 100:
            raise ValueError(
                f"preprocess.percentiles: {list(config.percentiles)} must be [low, high] with "
                "0 <= low < high <= 100; fix params.yaml"
            )
        lo, hi = np.percentile(brain, config.percentiles)
        out = (image - lo) / (hi - lo) * 2 - 1 if hi - lo > 1e-6 else np.zeros_like(image)
    elif method == "zscore":
        std = float(brain.std())
        out = (image - brain.mean()) / (3 * std) if std > 1e-6 else np.zeros_like(image)
    else:
        raise ValueError(f"preprocess.normalisation: unknown method {method!r}")
    out = np.clip(out, -1.0, 1.0).astype(np.float32)
    out[~mask] = -1.0
    return out
