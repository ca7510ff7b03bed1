"""The mirror-asymmetry alignment search (brainad.scoring.mirror): in deterministic mode the map
is the previous implementation's, bit for bit; in fast mode the batched search picks the same
alignments and so gives the same maps; near-ties go to the reference."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from helpers.brains import disc_brains

from brainad import runtime
from brainad.data.phantom import CONTRASTS, render_slice
from brainad.scoring import mirror
from brainad.scoring.baselines import MirrorAsymmetry


# ------------------------------------------------- the implementation before the batched search
def _old_warp(size: int, angle: float, shift: float) -> np.ndarray:
    centre = (size - 1) / 2.0
    flip = np.array([[-1.0, 0.0, 2 * centre], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    rotate = np.vstack([cv2.getRotationMatrix2D((centre, centre), angle, 1.0), [0.0, 0.0, 1.0]])
    return (rotate @ flip)[:2] + np.array([[0.0, 0.0, shift], [0.0, 0.0, 0.0]])


def _old_search(image, mask, angles, shifts) -> tuple[float, float]:
    size = image.shape[0]
    best, choice = np.inf, (0.0, 0.0)
    for angle in angles:
        for shift in shifts:
            warp = _old_warp(size, angle, shift)
            twin = cv2.warpAffine(image, warp, (size, size), flags=cv2.INTER_LINEAR)
            both = mask & (cv2.warpAffine(mask.astype(np.float32), warp, (size, size)) > 0.5)
            if not both.any() or both.sum() < 0.25 * mask.sum():
                continue
            cost = float(np.abs(image - twin)[both].mean())
            if cost < best - 1e-9:
                best, choice = cost, (angle, shift)
    return choice


def _old_best(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    size = image.shape[0]
    fine = min(64, size)
    levels = []
    for small in (max(8, fine // 2), fine):
        img = cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA)
        msk = cv2.resize(mask.astype(np.float32), (small, small), interpolation=cv2.INTER_AREA)
        levels.append((small, img, msk > 0.5))
    (coarse, img, msk), (_, fine_img, fine_msk) = levels
    reach = max(1, round(16 * coarse / 128))
    rotations = tuple(float(a) for a in range(-12, 13, 3))
    angle, shift = _old_search(img, msk, rotations, range(-reach, reach + 1))
    shift *= fine / coarse
    angles = (angle - 1.5, angle, angle + 1.5)
    angle, shift = _old_search(fine_img, fine_msk, angles, [shift + d for d in (-2, -1, 0, 1, 2)])
    return angle, shift * size / fine


def _old_map(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``MirrorAsymmetry.anomaly_map`` as it was, for (N, 1, S, S) images with non-empty masks."""
    size = images.shape[-1]
    erosion = max(1, round(3 * size / 128))
    kernel = np.ones((2 * erosion + 1, 2 * erosion + 1), np.uint8)
    out = np.zeros(images.shape, np.float32)
    for i, (image, mask) in enumerate(zip(images[:, 0], masks[:, 0])):
        lo, hi = np.percentile(image[mask], (5.0, 95.0))
        x = ((image - lo) / max(hi - lo, 1e-6)).astype(np.float32)
        warp = _old_warp(size, *_old_best(x, mask))
        twin = cv2.warpAffine(x, warp, (size, size), flags=cv2.INTER_LINEAR)
        twin_mask = cv2.warpAffine(mask.astype(np.uint8), warp, (size, size)) > 0
        residual = cv2.GaussianBlur(np.abs(x - twin), (0, 0), 2.0 * size / 128)
        inside = cv2.erode((mask & twin_mask).astype(np.uint8), kernel) > 0
        out[i, 0] = np.where(inside, residual, 0.0)
    return out


# ------------------------------------------------------------------------------------ helpers
def _phantoms(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Phantom head slices (every contrast, every third with a tumour) on [-1, 1]."""
    rng = np.random.default_rng(seed)
    slices = [render_slice(rng, size, CONTRASTS[i % len(CONTRASTS)], i % 3 == 0) for i in range(n)]
    images = np.stack([s.image for s in slices])[:, None].astype(np.float32) / 127.5 - 1.0
    return images, np.stack([s.brain_mask for s in slices])[:, None].astype(bool)


def _batch() -> tuple[np.ndarray, np.ndarray]:
    """A fixed synthetic batch: 64-px phantoms and 32-px disc brains upsampled to 64 px."""
    images, masks = _phantoms(10, 64, seed=3)
    discs, disc_masks = disc_brains(6, size=32, seed=4)
    discs = torch.nn.functional.interpolate(discs, size=64).numpy()
    disc_masks = torch.nn.functional.interpolate(disc_masks.float(), size=64).numpy() > 0.5
    return np.concatenate([images, discs]), np.concatenate([masks, disc_masks])


def _unit(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = []
    for image, mask in zip(images[:, 0], masks[:, 0]):
        lo, hi = np.percentile(image[mask], (5.0, 95.0))
        out.append(((image - lo) / max(hi - lo, 1e-6)).astype(np.float32))
    return np.stack(out)


# -------------------------------------------------------------------------------------- tests
def test_kernels_pinned_only_inside_deterministic_kernels() -> None:
    assert not runtime.kernels_pinned()
    with runtime.deterministic_kernels(False):
        assert not runtime.kernels_pinned()
    with pytest.raises(RuntimeError), runtime.deterministic_kernels(True):
        assert runtime.kernels_pinned()
        raise RuntimeError("restored on the way out")
    assert not runtime.kernels_pinned()


def test_pinned_map_is_the_previous_implementations_bit_for_bit(monkeypatch) -> None:
    """Deterministic mode runs the reference search (never the batched one), and the map equals
    the implementation before the batched search exactly."""
    images, masks = _batch()

    def refuse(*args):
        raise AssertionError("the batched search ran in deterministic mode")

    monkeypatch.setattr("brainad.scoring.baselines.batched_mirrors", refuse)
    with runtime.deterministic_kernels(True):
        pinned = MirrorAsymmetry().anomaly_map(images, masks)
    np.testing.assert_array_equal(pinned, _old_map(images, masks))
    assert (pinned > 0).any()


@pytest.mark.parametrize("size", [32, 64, 128])
def test_batched_search_picks_the_reference_alignment(size: int) -> None:
    """On phantom slices of every contrast (tilted, off-centre, with and without tumours) the
    batched search returns exactly the reference's (angle, shift)."""
    images, masks = _phantoms(12 if size == 128 else 20, size, seed=size)
    x = _unit(images, masks)
    found = mirror.batched_mirrors(x, masks[:, 0])
    assert found == [mirror.best_mirror(a, m) for a, m in zip(x, masks[:, 0])]
    assert len({a for a, _ in found}) > 1 and len({s for _, s in found}) > 1  # not all trivial


def test_fast_map_matches_the_pinned_map() -> None:
    images, masks = _batch()
    fast = MirrorAsymmetry().anomaly_map(images, masks)
    with runtime.deterministic_kernels(True):
        pinned = MirrorAsymmetry().anomaly_map(images, masks)
    np.testing.assert_allclose(fast, pinned, rtol=0, atol=1e-6)
    assert np.array_equal(fast > 0, pinned > 0)


def test_near_ties_are_searched_by_the_reference(monkeypatch) -> None:
    """A uniform slice matches its mirror equally well (cost 0) at every candidate that overlaps
    its disc-shaped mask: the batched search defers to the reference for it, and only for it."""
    images, masks = _phantoms(3, 64, seed=5)
    yy, xx = np.mgrid[:64, :64] - 31.5
    disc = (xx**2 + yy**2) < 20**2
    x = np.concatenate([_unit(images, masks), np.full((1, 64, 64), 0.5, np.float32)])
    masks = np.concatenate([masks[:, 0], disc[None]])
    calls = []
    reference = mirror.best_mirror
    monkeypatch.setattr(mirror, "best_mirror", lambda a, m: calls.append(1) or reference(a, m))
    found = mirror.batched_mirrors(x, masks)
    assert len(calls) == 1
    assert found == [reference(a, m) for a, m in zip(x, masks)]
    assert found[-1] == (-12.0 - 1.5, -10.0)  # the first of equals: -4 px coarse, then -2 fine


def test_choose_follows_the_reference_order_and_flags_close_costs() -> None:
    masks = np.ones((3, 8, 8), bool)  # 64 pixels: a candidate needs an overlap of 16
    count = np.array([[40, 40, 40], [40, 40, 10], [40, 40, 40]])
    total = np.array([[8.0, 4.0, 6.0], [4.0, 4.0 + 4e-8, 0.0], [4.0, 8.0, 8.0]])
    borderline = np.zeros_like(count)
    borderline[2, 1] = 30  # flips could bring candidate 1 of the third row near the best
    spread = np.full(3, 2.0)
    choice, undecided = mirror._choose(total, count, masks, borderline, spread)
    assert choice.tolist() == [1, 0, 0]  # the first of equals; too small an overlap is invalid
    assert undecided.tolist() == [False, True, True]
