"""Image features for the slice labeler (:mod:`brainad.data.labelfit`).

Two feature sets, both computed from the decoded raw slice (never the preprocessed one, so the
labels do not depend on the skull stripping) and the file's header values:

* ``shape`` (~70 values): the head outline (Otsu mask of the blurred slice, largest component,
  holes filled) — bounding-box aspect ratio and fill, left-right and top-bottom mirror symmetry of
  the mask and of the intensities, the outline's width profile over 8 heights and height profile
  over 8 columns — plus the intensity histogram of the head (16 bins, mean, sd, skewness,
  kurtosis), how bright the outer rim of the head is against its inside (bone is bright on CT,
  dark on MR), and the header: channels, log width, log height, bytes per pixel.
* ``shape+hog``: ``shape`` plus a 16x16 thumbnail of the head's bounding box and a HOG descriptor
  (9 orientations, 8-px cells, :func:`_hog`) of its 64x64 resize: the layout of edges that tells an axial
  slice from a coronal or sagittal one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from rich.progress import track

from brainad.data.imageio import ImageDecodeError, read_image
from brainad.utils import console

log = logging.getLogger("brainad")

FEATURE_SETS = ("shape", "shape+hog")
_SHAPE_SIZE = 32


def head_outline(gray: np.ndarray) -> np.ndarray:
    """Bool mask of the head: Otsu threshold of the blurred slice, largest component, filled."""
    work = cv2.normalize(gray.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    work = cv2.GaussianBlur(work, (5, 5), 0)
    _, binary = cv2.threshold(work, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count < 2:
        return np.ones(gray.shape, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def _box(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _symmetry(a: np.ndarray, flipped: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), flipped.ravel() - flipped.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def _moments(values: np.ndarray) -> list[float]:
    mean, sd = float(values.mean()), float(values.std())
    if sd == 0:
        return [mean, 0.0, 0.0, 0.0]
    z = (values - mean) / sd
    return [mean, sd, float((z**3).mean()), float((z**4).mean())]


def _rim_contrast(gray: np.ndarray, mask: np.ndarray) -> list[float]:
    """Mean of the outer 6 % band of the head and of its inside, relative to the head's p99."""
    side = max(3, int(0.06 * max(mask.shape)))
    inner = cv2.erode(mask.astype(np.uint8), np.ones((side, side), np.uint8)).astype(bool)
    band = mask & ~inner
    scale = float(np.percentile(gray[mask], 99)) or 1.0
    rim = float(gray[band].mean()) / scale if band.any() else 0.0
    core = float(gray[inner].mean()) / scale if inner.any() else 0.0
    return [rim, core, rim - core]


def _edges(mask: np.ndarray, crop_mask: np.ndarray) -> list[float]:
    """Where the head leaves the frame (the neck of a sagittal or coronal slice leaves at the
    bottom) and how symmetric the upper and lower halves of its outline are."""
    touch = [mask[0].mean(), mask[-1].mean(), mask[:, 0].mean(), mask[:, -1].mean()]
    half = crop_mask.shape[0] // 2
    upper, lower = crop_mask[:half], crop_mask[half:]
    return [*map(float, touch), _symmetry(upper, upper[:, ::-1]), _symmetry(lower, lower[:, ::-1])]


def shape_features(gray: np.ndarray, header: dict) -> np.ndarray:
    """The ``shape`` feature set of one slice (see the module docstring)."""
    gray = gray.astype(np.float32)
    gray = (gray - gray.min()) / max(float(np.ptp(gray)), 1e-6)
    mask = head_outline(gray)
    rows, cols = _box(mask)
    crop_mask = cv2.resize(mask[rows, cols].astype(np.float32), (_SHAPE_SIZE, _SHAPE_SIZE))
    crop = cv2.resize(gray[rows, cols], (_SHAPE_SIZE, _SHAPE_SIZE), interpolation=cv2.INTER_AREA)
    height, width = rows.stop - rows.start, cols.stop - cols.start
    head = gray[mask]
    histogram = np.histogram(head, bins=16, range=(0.0, 1.0))[0] / max(head.size, 1)
    n_pixels = max(header["width"] * header["height"], 1)
    values = [
        height / max(width, 1),
        float(mask.sum()) / max(height * width, 1),
        float(mask.mean()),
        _symmetry(crop_mask, crop_mask[:, ::-1]),
        _symmetry(crop_mask, crop_mask[::-1, :]),
        _symmetry(crop, crop[:, ::-1]),
        _symmetry(crop, crop[::-1, :]),
        *crop_mask.mean(axis=1).reshape(8, -1).mean(axis=1),
        *crop_mask.mean(axis=0).reshape(8, -1).mean(axis=1),
        *_edges(mask, crop_mask),
        *histogram,
        *_moments(head),
        float((head > 0.9).mean()),
        *_rim_contrast(gray, mask),
        float(header["channels"]),
        float(np.log(max(header["width"], 1))),
        float(np.log(max(header["height"], 1))),
        header["bytes"] / n_pixels,
    ]
    return np.asarray(values, dtype=np.float32)


def _hog(image: np.ndarray, cell: int = 8, bins: int = 9) -> np.ndarray:
    """Histogram of oriented gradients: unsigned orientation, magnitude-weighted, per cell,
    L2-normalised per cell (a simple HOG; the OpenCV build here has no HOGDescriptor)."""
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.hypot(gx, gy)
    orientation = (np.arctan2(gy, gx) % np.pi) / np.pi * bins
    index = np.minimum(orientation.astype(np.int64), bins - 1)
    n = image.shape[0] // cell
    cells = (np.arange(image.shape[0]) // cell)[:, None] * n + (np.arange(image.shape[1]) // cell)
    flat = (cells * bins + index).ravel()
    hist = np.bincount(flat, weights=magnitude.ravel(), minlength=n * n * bins).reshape(n * n, bins)
    hist /= np.linalg.norm(hist, axis=1, keepdims=True) + 1e-6
    return hist.ravel()


def hog_features(gray: np.ndarray) -> np.ndarray:
    """16x16 thumbnail and 64x64 HOG of the head's bounding box."""
    gray = gray.astype(np.float32)
    gray = (gray - gray.min()) / max(float(np.ptp(gray)), 1e-6)
    rows, cols = _box(head_outline(gray))
    crop = gray[rows, cols]
    thumb = cv2.resize(crop, (16, 16), interpolation=cv2.INTER_AREA).ravel()
    small = cv2.resize(crop, (64, 64), interpolation=cv2.INTER_AREA)
    return np.concatenate([thumb, _hog(small)]).astype(np.float32)


def image_features(gray: np.ndarray, header: dict) -> dict[str, np.ndarray]:
    """Both feature sets of one decoded slice, by :data:`FEATURE_SETS` name."""
    shape = shape_features(gray, header)
    return {"shape": shape, "shape+hog": np.concatenate([shape, hog_features(gray)])}


def extract_features(root: Path, rows: list[dict], max_pixels: int) -> dict[str, np.ndarray]:
    """Feature matrices (one row per manifest row) of every set; undecodable rows are all zero."""
    per_row: list[dict[str, np.ndarray] | None] = []
    for row in track(rows, description="label features", console=console()):
        if row["error"]:
            per_row.append(None)
            continue
        try:
            gray = read_image(Path(root) / row["path"], max_pixels).gray
        except ImageDecodeError as exc:  # decoded in the manifest pass; changed since?
            log.warning("%s: cannot decode for labelling (%s)", row["path"], exc.reason)
            per_row.append(None)
            continue
        per_row.append(image_features(gray, row))
    out = {}
    for name in FEATURE_SETS:
        width = next((len(f[name]) for f in per_row if f is not None), 0)
        zeros = np.zeros(width, np.float32)
        out[name] = (
            np.stack([f[name] if f is not None else zeros for f in per_row])
            if rows
            else (np.zeros((0, width), np.float32))
        )
    return out
