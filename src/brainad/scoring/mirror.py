"""The alignment search of :class:`~brainad.scoring.baselines.MirrorAsymmetry`: the rotation
and horizontal shift of a slice's left-right mirror image that best match the slice.

One search, coarse to fine (:func:`best_mirror`), in two implementations:

* :func:`best_mirror`, the reference: one slice and one candidate at a time, each candidate an
  OpenCV warp of the slice and of its mask. Deterministic mode uses it
  (:func:`brainad.runtime.kernels_pinned`); the committed demo's numbers are its.
* :func:`batched_mirrors`, fast mode: a candidate's shift is a whole-pixel translation of the
  mirror image, so each slice is warped once per angle into a wider image and every shift is a
  window of it; the costs of every candidate of a chunk of slices are array expressions over the
  chunk (24 warps per slice instead of 192; the search ran 4.8x faster, measured). Its costs
  differ from the reference's in the last bits (the shift sits in the window, not in the warp's
  matrix; the mean is summed in another order). Where that could change the choice — another
  candidate within :data:`TIE` (plus a bound for mask pixels near 0.5 after the warp) of the
  best — the slice is searched again by the reference, so both pick the same alignment and the
  maps built on it are identical (``tests/test_mirror.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

# lengths in pixels of a 128-px slice (scaled with the image size)
ASYM_MAX_SHIFT = 16  # horizontal shift of the mirror image, ± pixels (midline offset ± 8)
ASYM_ROTATIONS = tuple(float(a) for a in range(-12, 13, 3))  # coarse, degrees (tilt t needs 2t)
ASYM_SEARCH_SIZE = 64  # the alignment's fine search runs at this size (the coarse one at half)
FINE_ANGLES = (-1.5, 0.0, 1.5)  # degrees around the coarse angle
FINE_REACH = 2  # ± whole pixels around the coarse shift (at the fine size)
BETTER = 1e-9  # a candidate replaces the best only if it is lower by more than this
TIE = 2e-6  # relative: costs this close to the best are re-searched by the reference (20x the
# largest difference of a batched cost from the reference's, measured on phantom slices)
BORDERLINE = 1e-5  # a warped mask value this close to 0.5 may fall on the other side
CHUNK = 32  # slices per vectorised cost evaluation (coarse: CHUNK x 81 x 32² floats per array)


@functools.lru_cache(maxsize=4096)
def mirror_warp(size: int, angle: float, shift: float) -> np.ndarray:
    """2×3 affine that mirrors a ``size``² slice about its vertical centre line, then rotates it
    by ``angle`` degrees about the centre and shifts it by ``shift`` pixels to the right."""
    centre = (size - 1) / 2.0
    mirror = np.array([[-1.0, 0.0, 2 * centre], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    rotate = np.vstack([cv2.getRotationMatrix2D((centre, centre), angle, 1.0), [0.0, 0.0, 1.0]])
    return (rotate @ mirror)[:2] + np.array([[0.0, 0.0, shift], [0.0, 0.0, 0.0]])


class SearchGrid(NamedTuple):
    """Sizes of the two search levels of a slice side, and the coarse level's shift reach."""

    coarse: int
    fine: int
    reach: int


def search_grid(size: int) -> SearchGrid:
    """The coarse level at :data:`ASYM_SEARCH_SIZE` / 2 (at least 8 px) with shifts of
    ± :data:`ASYM_MAX_SHIFT` scaled to it, the fine level at :data:`ASYM_SEARCH_SIZE` (or
    ``size`` if smaller)."""
    fine = min(ASYM_SEARCH_SIZE, size)
    coarse = max(8, fine // 2)
    return SearchGrid(coarse, fine, max(1, round(ASYM_MAX_SHIFT * coarse / 128)))


def _level(image: np.ndarray, mask: np.ndarray, small: int) -> tuple[np.ndarray, np.ndarray]:
    """The slice and its mask at ``small``² (area interpolation; the mask thresholded at 0.5)."""
    img = cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA)
    msk = cv2.resize(mask.astype(np.float32), (small, small), interpolation=cv2.INTER_AREA)
    return img, msk > 0.5


# ------------------------------------------------------------------------------ the reference
def _mirror_search(
    image: np.ndarray, mask: np.ndarray, angles: Sequence[float], shifts: Sequence[float]
) -> tuple[float, float]:
    """The (angle, shift) of ``angles`` × ``shifts`` whose mirrored slice best matches ``image``:
    least mean absolute difference over the overlap of both brain masks (at least a quarter of
    the mask; (0, 0) if no candidate overlaps that much)."""
    size = image.shape[0]
    best, choice = np.inf, (0.0, 0.0)
    for angle in angles:
        for shift in shifts:
            warp = mirror_warp(size, angle, shift)
            twin = cv2.warpAffine(image, warp, (size, size), flags=cv2.INTER_LINEAR)
            both = mask & (cv2.warpAffine(mask.astype(np.float32), warp, (size, size)) > 0.5)
            if not both.any() or both.sum() < 0.25 * mask.sum():
                continue
            cost = float(np.abs(image - twin)[both].mean())
            if cost < best - BETTER:
                best, choice = cost, (angle, shift)
    return choice


def best_mirror(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """The mirror alignment (angle in degrees, shift in pixels of ``image``), coarse to fine: the
    whole :data:`ASYM_ROTATIONS` × shift range at the coarse size of :func:`search_grid`, then
    :data:`FINE_ANGLES` and ± :data:`FINE_REACH` px around the best at the fine size."""
    size = image.shape[0]
    grid = search_grid(size)
    img, msk = _level(image, mask, grid.coarse)
    fine_img, fine_msk = _level(image, mask, grid.fine)
    shifts = range(-grid.reach, grid.reach + 1)
    angle, shift = _mirror_search(img, msk, ASYM_ROTATIONS, shifts)
    shift *= grid.fine / grid.coarse
    angles = [angle + a for a in FINE_ANGLES]
    offsets = range(-FINE_REACH, FINE_REACH + 1)
    angle, shift = _mirror_search(fine_img, fine_msk, angles, [shift + d for d in offsets])
    return angle, shift * size / grid.fine


# -------------------------------------------------------------------------- the batched search
class _Choice(NamedTuple):
    """Per slice of a chunk: the chosen candidate's angle and shift, and whether the reference
    must decide instead (``undecided``)."""

    angle: np.ndarray
    shift: np.ndarray
    undecided: np.ndarray


def _warped(
    images: np.ndarray, masks: np.ndarray, angles: np.ndarray, centres: np.ndarray, reach: int
) -> tuple[np.ndarray, np.ndarray]:
    """(N, A, s, s + 2·reach) mirror images of (N, s, s) slices and of their masks (float), one
    per angle of (N, A) ``angles``: column ``reach + x - d`` holds column ``x`` of the mirror
    image shifted by ``centres + d`` (|d| <= reach)."""
    n, size = len(images), images.shape[-1]
    width = size + 2 * reach
    out = np.empty((2, n, angles.shape[1], size, width), np.float32)
    for i in range(n):
        mask = masks[i].astype(np.float32)
        for j, angle in enumerate(angles[i]):
            warp = mirror_warp(size, float(angle), float(centres[i]) + reach)
            out[0, i, j] = cv2.warpAffine(images[i], warp, (width, size), flags=cv2.INTER_LINEAR)
            out[1, i, j] = cv2.warpAffine(mask, warp, (width, size))
    return out[0], out[1]


def _costs(
    images: np.ndarray, masks: np.ndarray, twins: np.ndarray, twin_masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Summed absolute difference and overlap count, (N, A, J) for J = 2·reach + 1 windows (in
    descending shift), of slices and their windowed mirror images from :func:`_warped`. One
    window at a time: each product is then contiguous and summed pairwise (float32, as the
    reference's mean; 4x faster than one 5-D expression, measured)."""
    n, a, size, width = twins.shape
    inside = twin_masks > 0.5
    windows = width - size + 1
    total = np.empty((n, a, windows), np.float32)
    count = np.empty((n, a, windows), np.int64)
    for w in range(windows):
        both = masks[:, None] & inside[..., w : w + size]  # (N, A, s, s)
        diff = np.abs(images[:, None] - twins[..., w : w + size])
        diff *= both
        total[..., w] = diff.reshape(n, a, -1).sum(-1)
        count[..., w] = both.reshape(n, a, -1).sum(-1)
    return total, count


def _first_best(cost: np.ndarray) -> np.ndarray:
    """Per row of (N, K) ``cost`` (inf: invalid), the candidate the reference's loop keeps: the
    first that no later one beats by more than :data:`BETTER`; -1 where none is valid."""
    best = np.full(len(cost), np.inf)
    choice = np.full(len(cost), -1)
    for k in range(cost.shape[1]):
        better = cost[:, k] < best - BETTER
        best[better], choice[better] = cost[better, k], k
    return choice


def _choose(
    total: np.ndarray, count: np.ndarray, masks: np.ndarray, borderline: np.ndarray,
    spread: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The reference's choice among (N, K) candidates, and whether it is undecided: another
    candidate's cost within the error bounds of both (:data:`TIE`, and for ``borderline`` mask
    pixels, each of which may move the count by one and the sum by ``spread`` + cost), or the
    choice valid only if no borderline pixel falls the other way."""
    needed = 0.25 * masks.reshape(len(masks), -1).sum(1)[:, None]
    raw = total / np.maximum(count, 1)
    valid = (count > 0) & (count >= needed)
    choice = _first_best(np.where(valid, raw, np.inf))
    rows = np.arange(len(raw))
    possible = valid | ((borderline > 0) & (count + borderline >= needed))
    room = count - borderline
    error = TIE * (1.0 + raw) + borderline * (spread[:, None] + raw) / np.maximum(room, 1)
    lower = np.where(room > 0, raw - error, -np.inf)
    ceiling = np.where(choice >= 0, (raw + error)[rows, choice], np.inf)
    contender = possible & (lower <= ceiling[:, None])
    contender[rows[choice >= 0], choice[choice >= 0]] = False
    may_fail = (choice >= 0) & (room[rows, choice] < needed[:, 0])  # valid only by a flip
    return choice, contender.any(1) | may_fail


def _stage(
    images: np.ndarray, masks: np.ndarray, angles: np.ndarray, centres: np.ndarray, reach: int
) -> _Choice:
    """One search level for a chunk: candidates (N, A) ``angles`` × shifts ``centres`` ± ``reach``
    in the reference's order (angle-major, shift ascending)."""
    twins, twin_masks = _warped(images, masks, angles, centres, reach)
    total, count = _costs(images, masks, twins, twin_masks)
    near = np.abs(twin_masks - 0.5) < BORDERLINE  # conservative: the whole wide image
    borderline = np.broadcast_to(near.sum(axis=(2, 3))[..., None], total.shape)
    n, a, j = total.shape
    flat = [x[..., ::-1].reshape(n, a * j) for x in (total, count, borderline)]
    flat_images = images.reshape(n, -1)  # a mirror pixel mixes slice values and 0 (outside)
    spread = np.maximum(flat_images.max(1), 0.0) - np.minimum(flat_images.min(1), 0.0)
    choice, undecided = _choose(*flat[:2], masks, flat[2], spread)
    picked = np.maximum(choice, 0)
    offset = picked % j - reach
    angle = np.where(choice >= 0, angles[np.arange(n), picked // j], 0.0)
    shift = np.where(choice >= 0, centres + offset, 0.0)
    return _Choice(angle, shift, undecided)


def _batched_chunk(images: np.ndarray, masks: np.ndarray) -> list[tuple[float, float]]:
    """:func:`best_mirror` of each slice of a chunk, the reference only where undecided."""
    size = images.shape[-1]
    grid = search_grid(size)
    coarse = [_level(x, m, grid.coarse) for x, m in zip(images, masks)]
    fine = [_level(x, m, grid.fine) for x, m in zip(images, masks)]
    n = len(images)
    rotations = np.broadcast_to(np.array(ASYM_ROTATIONS), (n, len(ASYM_ROTATIONS)))
    first = _stage(*map(np.stack, zip(*coarse)), rotations, np.zeros(n), grid.reach)
    angles = first.angle[:, None] + np.array(FINE_ANGLES)[None]
    centres = first.shift * (grid.fine / grid.coarse)
    second = _stage(*map(np.stack, zip(*fine)), angles, centres, FINE_REACH)
    undecided = first.undecided | second.undecided
    return [
        best_mirror(images[i], masks[i])
        if undecided[i]
        else (float(second.angle[i]), float(second.shift[i]) * size / grid.fine)
        for i in range(n)
    ]


def batched_mirrors(images: np.ndarray, masks: np.ndarray) -> list[tuple[float, float]]:
    """:func:`best_mirror` of every (S, S) slice of (N, S, S) float32 ``images`` with bool
    ``masks``, the search vectorised over chunks of :data:`CHUNK` slices (fast mode)."""
    found: list[tuple[float, float]] = []
    for start in range(0, len(images), CHUNK):
        stop = start + CHUNK
        found.extend(_batched_chunk(images[start:stop], masks[start:stop]))
    return found
