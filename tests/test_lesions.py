"""Tests for brainad.evaluation.lesions: exact masks inside the brain, determinism, bright/dark lesions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from brainad.config import LesionConfig
from brainad.evaluation.lesions import LesionSet, implant_lesions

SIZE = 48


def _phantoms(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Elliptical 'brains' with smooth texture in [-0.6, 0.6]; background -1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : SIZE * 1j, -1 : 1 : SIZE * 1j]
    images = np.full((n, 1, SIZE, SIZE), -1.0, np.float32)
    masks = np.zeros((n, 1, SIZE, SIZE), bool)
    for i in range(n):
        a, b = rng.uniform(0.6, 0.8, 2)
        brain = (xx / a) ** 2 + (yy / b) ** 2 <= 1.0
        texture = 0.3 * np.sin(3 * xx + rng.uniform(0, 6)) * np.cos(2 * yy) + 0.05 * rng.normal(
            size=xx.shape
        )
        images[i, 0][brain] = np.clip(texture, -0.6, 0.6)[brain]
        masks[i, 0] = brain
    return images, masks


@pytest.fixture
def config() -> LesionConfig:
    return LesionConfig(
        per_image=2,
        radius_range=(0.06, 0.14),
        contrast_range=(1.5, 3.0),
        bright_fraction=0.5,
        seed=3,
        in_range_fraction=0.0,  # offset lesions only; the in-range kinds have their own tests
    )


@pytest.fixture
def healthy() -> tuple[np.ndarray, np.ndarray]:
    return _phantoms(5)


def test_shapes_and_range(config: LesionConfig, healthy: tuple[np.ndarray, np.ndarray]) -> None:
    images, brains = healthy
    out = implant_lesions(images, brains, config)
    assert isinstance(out, LesionSet)
    assert out.images.shape == (10, 1, SIZE, SIZE) and out.images.dtype == np.float32
    assert out.masks.shape == (10, 1, SIZE, SIZE) and out.masks.dtype == bool
    assert len(out.params) == 10
    assert out.images.min() >= -1.0 and out.images.max() <= 1.0
    assert all(p["n_pixels"] > 0 for p in out.params)
    # copy-major: copy k of image i at k·N + i, so np.tile lines per-image arrays up
    assert [p["source_index"] for p in out.params] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    assert [p["copy"] for p in out.params] == [0] * 5 + [1] * 5


def test_mask_is_exactly_the_changed_pixels_inside_brain(
    config: LesionConfig, healthy: tuple[np.ndarray, np.ndarray]
) -> None:
    images, brains = healthy
    out = implant_lesions(images, brains, config)
    originals = np.tile(images, (config.per_image, 1, 1, 1))
    changed = out.images != originals
    assert np.array_equal(changed, out.masks)  # every changed pixel is in the mask and back
    assert not (out.masks & ~np.tile(brains, (config.per_image, 1, 1, 1))).any()
    for params, mask in zip(out.params, out.masks):
        assert params["n_pixels"] == int(mask.sum())
        cy, cx = params["centre"]
        assert brains[params["source_index"], 0, cy, cx]


def test_params_within_configured_ranges(
    config: LesionConfig, healthy: tuple[np.ndarray, np.ndarray]
) -> None:
    out = implant_lesions(*healthy, config)
    for p in out.params:
        assert 0.06 * SIZE <= p["radius"] <= 0.14 * SIZE
        assert 1.5 <= abs(p["contrast"]) <= 3.0
        assert p["kind"] in ("blob", "ring")
        assert (p["contrast"] > 0) == p["bright"]


def test_deterministic_per_seed_and_independent_of_batch(
    config: LesionConfig, healthy: tuple[np.ndarray, np.ndarray]
) -> None:
    images, brains = healthy
    first = implant_lesions(images, brains, config)
    second = implant_lesions(images, brains, config)
    assert np.array_equal(first.images, second.images) and first.params == second.params
    other = implant_lesions(images, brains, dataclasses.replace(config, seed=4))
    assert not np.array_equal(first.masks, other.masks)
    head = implant_lesions(images[:2], brains[:2], config)  # lesion (i, k) depends on i, k only
    assert np.array_equal(head.images[:2], first.images[:2])  # copy 0 of images 0, 1
    assert np.array_equal(head.images[2:], first.images[5:7])  # copy 1 of images 0, 1


@pytest.mark.parametrize("bright_fraction, sign", [(1.0, 1.0), (0.0, -1.0)])
def test_bright_and_dark_lesions(
    config: LesionConfig,
    healthy: tuple[np.ndarray, np.ndarray],
    bright_fraction: float,
    sign: float,
) -> None:
    images, brains = healthy
    out = implant_lesions(
        images, brains, dataclasses.replace(config, bright_fraction=bright_fraction)
    )
    delta = (out.images - np.tile(images, (config.per_image, 1, 1, 1)))[out.masks]
    assert delta.size > 0
    assert (np.sign(delta) == sign).all()
    assert all(p["bright"] == (sign > 0) for p in out.params)


def test_contrast_scales_with_brain_std(
    config: LesionConfig, healthy: tuple[np.ndarray, np.ndarray]
) -> None:
    images, brains = healthy
    one = dataclasses.replace(config, per_image=1, contrast_range=(2.0, 2.0), bright_fraction=1.0)
    out = implant_lesions(images, brains, one)
    for i, p in enumerate(out.params):
        assert p["intensity_offset"] == pytest.approx(
            2.0 * images[i, 0][brains[i, 0]].std(), rel=1e-5
        )
        peak = (out.images[i] - images[i]).max()
        assert peak <= p["intensity_offset"] + 1e-6  # the soft profile never exceeds the offset


def test_lesion_on_tiny_brain_stays_inside() -> None:
    images = np.full((1, 1, 32, 32), -1.0, np.float32)
    brains = np.zeros((1, 1, 32, 32), bool)
    brains[0, 0, 14:18, 14:18] = True  # far smaller than the lesion radius
    images[brains] = 0.0
    config = LesionConfig(1, (0.2, 0.3), (2.0, 2.0), 1.0, 0, 0.0)
    out = implant_lesions(images, brains, config)
    assert out.masks.any() and not (out.masks & ~brains).any()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"per_image": 0}, "per_image"),
        ({"radius_range": (0.2, 0.1)}, "radius_range"),
        ({"contrast_range": (-1.0, 2.0)}, "contrast_range"),
        ({"bright_fraction": 1.5}, "bright_fraction"),
    ],
)
def test_invalid_config_raises(
    config: LesionConfig, healthy: tuple[np.ndarray, np.ndarray], change: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        implant_lesions(*healthy, dataclasses.replace(config, **change))


def test_bad_shapes_and_empty_brain_raise(config: LesionConfig) -> None:
    images, brains = _phantoms(2)
    with pytest.raises(ValueError, match="shape"):
        implant_lesions(images[:, 0], brains[:, 0], config)
    brains[1] = False
    with pytest.raises(ValueError, match="empty brain mask"):
        implant_lesions(images, brains, config)


def test_in_range_lesions_keep_to_the_slice_intensities_and_every_kind_and_size_occurs(
    config: LesionConfig,
) -> None:
    """Tissue and textured lesions never leave the slice's own brain intensity range (an
    intensity statistic cannot see them by range alone); all four kinds and three sizes occur
    with the configured fractions, and the mask is exactly the changed pixels."""
    from brainad.evaluation.lesions import KINDS, SIZE_BINS

    images, brains = _phantoms(40, seed=1)
    mixed = dataclasses.replace(
        config, per_image=2, radius_range=(0.02, 0.12), in_range_fraction=0.5
    )
    out = implant_lesions(images, brains, mixed)
    kinds = [p["kind"] for p in out.params]
    assert set(kinds) == set(KINDS)
    assert 0.35 < np.mean([k in ("tissue", "textured") for k in kinds]) < 0.65
    assert {p["size"] for p in out.params} == {name for name, _ in SIZE_BINS}
    for index, info in enumerate(out.params):
        source = images[info["source_index"], 0]
        brain = brains[info["source_index"], 0]
        lesion = out.images[index, 0]
        changed = np.abs(lesion - source) > 0
        assert (changed == out.masks[index, 0]).all() and not (changed & ~brain).any()
        if info["kind"] in ("tissue", "textured") and changed.any():
            values = source[brain]
            assert values.min() - 1e-6 <= lesion[changed].min()
            assert lesion[changed].max() <= values.max() + 1e-6


def test_in_range_fraction_is_validated(config: LesionConfig) -> None:
    images, brains = _phantoms(1)
    with pytest.raises(ValueError, match="in_range_fraction"):
        implant_lesions(images, brains, dataclasses.replace(config, in_range_fraction=1.5))


def test_lesion_track_reports_each_kind_and_size_against_its_own_twins() -> None:
    """``by_kind`` / ``by_size``: a detector that sees only offset lesions scores 1.0 on blob and
    ring and 0.5 on the in-range kinds, with each group's own pair count."""
    from brainad.evaluation.lesions import LesionSet
    from brainad.evaluation.tracks import LesionTrack, _lesion_groups

    kinds = ["blob", "ring", "tissue", "textured"] * 3
    sizes = ["small", "medium", "large"] * 4
    params = [{"kind": k, "size": s} for k, s in zip(kinds, sizes)]
    empty = np.zeros((12, 1, 4, 4))
    track = LesionTrack(LesionSet(empty, empty.astype(bool), params), np.arange(12), empty)
    clean = np.zeros(12)
    lesioned = np.array([1.0 if k in ("blob", "ring") else 0.0 for k in kinds])
    by_kind = _lesion_groups(track, clean, lesioned, "kind")
    assert {k: v["roc_auc"] for k, v in by_kind.items()} == {
        "blob": 1.0, "ring": 1.0, "textured": 0.5, "tissue": 0.5,
    }  # fmt: skip
    assert by_kind["blob"]["n"] == 3 and by_kind["tissue"]["pairs_lesioned_higher"] == 0.0
    by_size = _lesion_groups(track, clean, lesioned, "size")
    assert set(by_size) == {"small", "medium", "large"} and by_size["small"]["n"] == 4
