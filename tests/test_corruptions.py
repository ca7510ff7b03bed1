"""Training corruptions: coarse noise inside the brain; synthetic anomalies with exact targets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.brains import SEGMENTER, disc_brains

from brainad.models.corruptions import (
    CHANGE_EPS,
    brain_of,
    coarse_noise,
    noise_region,
    rectangle_union,
    synthetic_anomalies,
)


def test_coarse_noise_is_only_inside_the_brain_and_seeded() -> None:
    x, masks = disc_brains(8)
    noise = coarse_noise(x, 4, 0.2, torch.Generator().manual_seed(1))
    assert torch.equal(brain_of(x), masks)
    assert (noise[~masks] == 0).all()
    assert (noise[masks] != 0).float().mean() > 0.99
    assert 0.1 < noise[masks].std() < 0.3  # bilinear interpolation shrinks the std a little
    again = coarse_noise(x, 4, 0.2, torch.Generator().manual_seed(1))
    assert torch.equal(noise, again)


def test_coarse_noise_is_low_frequency() -> None:
    """Neighbouring pixels differ far less than white noise of the same std would (~1.13 std)."""
    x = torch.zeros(16, 1, 64, 64)  # all brain: no mask edges
    noise = coarse_noise(x, 8, 1.0, torch.Generator().manual_seed(0))
    step = (noise[..., 1:] - noise[..., :-1]).abs().mean()
    assert step < 0.15 * noise.std()
    white = torch.randn(16, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    assert (white[..., 1:] - white[..., :-1]).abs().mean() > 1.0 * white.std()


def test_anomaly_targets_are_exactly_the_changed_brain_pixels() -> None:
    x, masks = disc_brains(32, seed=3)
    out = synthetic_anomalies(x, SEGMENTER, torch.Generator().manual_seed(0))
    changed = (out.images - x).abs() > CHANGE_EPS
    assert torch.equal(out.target > 0, changed)
    assert (out.target[~masks] == 0).all() and (out.images[~masks] == x[~masks]).all()
    assert out.target.max() <= 1.0 and out.images.abs().max() <= 1.0
    per_image = changed.flatten(1).any(1)
    assert 0 < per_image.sum() < len(x)  # clean_fraction 0.25: some clean, most corrupted


def test_foreign_patches_have_one_level_and_fields_many() -> None:
    """A foreign patch has one target level (its alpha, hard edges — unlike the soft-edged
    evaluation lesions); a smooth field has many."""
    x, _ = disc_brains(32, seed=4)
    config = dataclasses.replace(SEGMENTER, clean_fraction=0.0)
    out = synthetic_anomalies(x, config, torch.Generator().manual_seed(2))
    levels = [torch.unique(t[t > 0]).numel() for t in out.target]
    assert all(n > 0 for n in levels)  # clean_fraction 0: every image is corrupted
    assert 1 in levels and max(levels) > 20
    alphas = [float(t[t > 0][0]) for t, n in zip(out.target, levels) if n == 1]
    assert all(0.1 <= a <= 1.0 for a in alphas)


def test_no_anomaly_when_every_image_is_clean() -> None:
    x, _ = disc_brains(8)
    out = synthetic_anomalies(x, dataclasses.replace(SEGMENTER, clean_fraction=1.0))
    assert torch.equal(out.images, x) and (out.target == 0).all()


def test_regions_are_rectangle_unions() -> None:
    """Every row of a region is one or a few runs of pixels: no soft edge, no ellipse fill."""
    regions = rectangle_union(16, 32, torch.Generator().manual_seed(0), "cpu")
    assert regions.any(dim=(1, 2, 3)).all()
    rows = regions[:, 0].int()
    starts = (rows[..., 1:] > rows[..., :-1]).sum(-1) + rows[..., 0]  # runs per row
    assert starts.max() <= 3  # at most one run per rectangle


def test_noise_regions_vary_in_size_and_number_and_mix_with_rectangles() -> None:
    """Thresholded low-frequency fields: hard-edged blobs whose area varies widely from image to
    image; with both shapes listed, each image gets one of them."""
    regions = noise_region(32, 64, torch.Generator().manual_seed(1), "cpu")
    area = regions.float().mean(dim=(1, 2, 3))
    assert area.max() > 3 * area[area > 0].min()
    assert set(torch.unique(regions.float()).tolist()) <= {0.0, 1.0}
    x, _ = disc_brains(64, seed=2)
    both = dataclasses.replace(SEGMENTER, clean_fraction=0.0, regions=("rectangles", "noise"))
    out = synthetic_anomalies(x, both, torch.Generator().manual_seed(3))
    changed = (out.target > 0).any(dim=(1, 2, 3))
    assert changed.float().mean() > 0.8  # nearly every image is corrupted somewhere
    assert torch.equal(out.target > 0, (out.images - x).abs() > CHANGE_EPS)
    bad = dataclasses.replace(SEGMENTER, regions=("ellipses",))
    try:
        synthetic_anomalies(x, bad)
    except ValueError as error:
        assert "segmenter.model.regions" in str(error)
    else:
        raise AssertionError("an unknown region shape was accepted")


def test_soft_edges_fade_the_corruption_and_its_target_and_zero_keeps_hard_edges() -> None:
    """``edge_softness`` > 0: a foreign patch fades in over its edge (many target levels, none
    above 1) and the image changes exactly where the target is positive (0: one level per patch,
    :func:`test_foreign_patches_have_one_level_and_fields_many`)."""
    x, masks = disc_brains(32, seed=4)
    hard = dataclasses.replace(SEGMENTER, clean_fraction=0.0)
    soft = dataclasses.replace(hard, edge_softness=6.0)
    out = synthetic_anomalies(x, soft, torch.Generator().manual_seed(2))
    changed = (out.images - x).abs() > CHANGE_EPS
    assert torch.equal(out.target > 0, changed) and (out.target[~masks] == 0).all()
    levels = [torch.unique(t[t > 0]).numel() for t in out.target]
    assert min(levels) > 5  # faded edges: no patch keeps a single level
    assert all(0 < float(t.max()) <= 1.0 for t in out.target)
    with pytest.raises(ValueError, match="edge_softness must be >= 0"):
        synthetic_anomalies(x, dataclasses.replace(SEGMENTER, edge_softness=-1.0))
