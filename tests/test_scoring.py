"""Tests for the scoring package (map operations, calibration, the GAN detector through the one
engine) with tiny stand-in models (identity / blur reconstruction)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brainad.config import LesionConfig, PerceptualConfig, ScoreConfig
from brainad.evaluation.lesions import implant_lesions
from brainad.models.perceptual import build_perceptual
from brainad.scoring.calibration import Calibration, combine, fit_standardiser
from brainad.scoring.detector import score_raw
from brainad.scoring.gan import COMPONENTS, GANDetector, active_components, component_weights
from brainad.scoring.maps import aggregate, smooth, ssim_map

SIZE = 32


class StandIn(nn.Module):
    """Minimal model: ``reconstruct`` is the identity or a 5x5 box blur; a fixed small conv gives
    the discriminator features. Records whether it was in training mode when called."""

    def __init__(self, blur: bool) -> None:
        super().__init__()
        self.blur = blur
        torch.manual_seed(0)
        self.features = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.seen_training: list[bool] = []

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        self.seen_training.append(self.training)
        if not self.blur:
            return x.clone()
        return F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)

    def discriminator_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.features(x), 0.2)


def _config(**change: object) -> ScoreConfig:
    base = ScoreConfig(
        residual="l1",
        smoothing="gaussian",
        smoothing_px=5,
        aggregate="topk",
        topk_percent=5.0,
        weight_residual=1.0,
        weight_ssim=0.0,
        weight_perceptual=0.0,
        weight_discriminator=0.0,
        weight_asymmetry=0.0,
        batch_size=4,
    )
    return dataclasses.replace(base, **change)


def _scorer(blur: bool, **change: object) -> GANDetector:
    perceptual = build_perceptual(PerceptualConfig("fixed", 4, 2, 0, ""))
    return GANDetector(
        "stand_in", StandIn(blur), _config(**change), perceptual, torch.device("cpu")
    )


def _phantoms(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : SIZE * 1j, -1 : 1 : SIZE * 1j]
    brain = (xx / 0.8) ** 2 + (yy / 0.85) ** 2 <= 1.0
    images = np.full((n, 1, SIZE, SIZE), -1.0, np.float32)
    for i in range(n):
        texture = 0.2 * np.sin(2 * xx + rng.uniform(0, 6)) + 0.02 * rng.normal(size=xx.shape)
        images[i, 0][brain] = texture[brain]
    return images, np.repeat(brain[None, None], n, axis=0)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    return _phantoms(6)


# ------------------------------------------------------------------------------------ scorer
def test_identity_model_scores_zero(data: tuple[np.ndarray, np.ndarray]) -> None:
    images, masks = data
    table = score_raw(_scorer(blur=False), images, masks, keep_maps=True)
    assert set(table.components) == set(COMPONENTS)
    for name in COMPONENTS:
        assert table.components[name].shape == (6,)
        assert np.abs(table.components[name]).max() < 1e-5, name
    assert table.maps.shape == images.shape and np.abs(table.maps).max() < 1e-6
    np.testing.assert_allclose(table.recons, images, atol=1e-6)


def test_blur_model_finds_implanted_lesions(data: tuple[np.ndarray, np.ndarray]) -> None:
    images, masks = data
    lesions = implant_lesions(images, masks, LesionConfig(1, (0.1, 0.15), (3.0, 3.0), 1.0, 0, 0.0))
    scorer = _scorer(blur=True, aggregate="mean")  # top-k would pick the blurred brain edge
    clean = score_raw(scorer, images, masks)
    lesioned = score_raw(scorer, lesions.images, masks, keep_maps=True)
    clean_maps = score_raw(scorer, images, masks, keep_maps=True).maps
    # only the pixel residual is monotone for a blur "model" (SSIM and the perceptual features
    # are contrast-normalised)
    assert (lesioned.components["residual"] > clean.components["residual"]).all()
    maps = lesioned.maps
    assert not maps[~masks].any()  # 0 outside the brain
    # the same pixels, with and without the blob (the blurred brain edge is in both)
    assert maps[lesions.masks].mean() > 1.5 * clean_maps[lesions.masks].mean()
    increase = maps - clean_maps
    assert increase[lesions.masks].mean() > 10 * np.abs(increase[masks & ~lesions.masks]).mean()


def test_batches_match_one_big_batch(data: tuple[np.ndarray, np.ndarray]) -> None:
    images, masks = data
    scorer = _scorer(blur=True, batch_size=4)  # 6 images → batches of 4 and 2
    table = score_raw(scorer, images, masks)
    x, m = torch.from_numpy(images), torch.from_numpy(masks)
    whole = scorer.scores(scorer.maps(x, m), m)
    for name in COMPONENTS:
        np.testing.assert_allclose(
            table.components[name], whole.components[name].numpy(), rtol=1e-5
        )
    assert table.maps is None and table.recons is None


def test_score_batch_no_grad_eval_mode_restored(data: tuple[np.ndarray, np.ndarray]) -> None:
    images, masks = data
    scorer = _scorer(blur=True)
    scorer.model.train()
    x, m = torch.from_numpy(images), torch.from_numpy(masks)
    raw = scorer.maps(x, m)
    out = scorer.scores(raw, m)
    assert scorer.model.seen_training == [False]
    assert scorer.model.training  # previous mode restored
    assert not raw.recon.requires_grad and not out.components["discriminator"].requires_grad
    assert out.components["discriminator"].dtype == torch.float32
    assert (out.components["discriminator"] > 0).all()


def test_bf16_close_to_fp32(data: tuple[np.ndarray, np.ndarray]) -> None:
    images, masks = data
    fp32 = score_raw(_scorer(blur=True), images, masks).components["residual"]
    scorer = _scorer(blur=True)
    scorer.precision = "bf16"
    bf16 = score_raw(scorer, images, masks).components["residual"]
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, fp32, rtol=0.1)


def test_selected_components_only(data: tuple[np.ndarray, np.ndarray]) -> None:
    images, masks = data
    config = _config(weight_ssim=0.5)
    assert active_components(config) == ("residual", "ssim")
    assert active_components(_config(weight_residual=0.0)) == ("residual",)
    perceptual = build_perceptual(PerceptualConfig("fixed", 4, 2, 0, ""))
    scorer = GANDetector(
        "stand_in",
        StandIn(True),
        config,
        perceptual,
        torch.device("cpu"),
        components=active_components(config),
    )
    table = score_raw(scorer, images, masks)
    assert set(table.components) == {"residual", "ssim"}
    full = score_raw(_scorer(blur=True, weight_ssim=0.5), images, masks)
    np.testing.assert_allclose(table.components["ssim"], full.components["ssim"])
    with pytest.raises(ValueError, match="component"):
        GANDetector(
            "stand_in",
            StandIn(True),
            config,
            perceptual,
            torch.device("cpu"),
            components=("lpips",),
        )


def test_l2_residual_is_square_of_l1(data: tuple[np.ndarray, np.ndarray]) -> None:
    images, masks = data
    x, m = torch.from_numpy(images), torch.from_numpy(masks)
    l1_detector = _scorer(blur=True, smoothing="none")
    l2_detector = _scorer(blur=True, smoothing="none", residual="l2")
    l1 = l1_detector.scores(l1_detector.maps(x, m), m).map
    l2 = l2_detector.scores(l2_detector.maps(x, m), m).map
    torch.testing.assert_close(l2, l1**2)


def test_bad_inputs_raise(data: tuple[np.ndarray, np.ndarray]) -> None:
    images, masks = data
    with pytest.raises(ValueError, match="shape"):
        score_raw(_scorer(blur=False), images, masks[:, :, :16])
    with pytest.raises(ValueError, match="precision"):
        GANDetector(
            "stand_in",
            StandIn(False),
            _config(),
            nn.Identity(),
            torch.device("cpu"),
            precision="fp8",
        )
    with pytest.raises(ValueError, match="smoothing_px"):
        _scorer(blur=False, smoothing_px=4)
    with pytest.raises(ValueError, match="aggregate"):
        _scorer(blur=False, aggregate="median")


# ------------------------------------------------------------------------ map operations
def test_aggregation_methods_on_hand_made_map() -> None:
    maps = torch.arange(32, dtype=torch.float32).view(2, 1, 4, 4)  # image 1 holds 16..31
    masks = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    masks[1, 0, 3, :] = False  # image 1: 16..27 inside (12 pixels)
    assert aggregate(maps, masks, "mean").tolist() == [7.5, 21.5]
    assert aggregate(maps, masks, "max").tolist() == [15.0, 27.0]
    # topk 25 %: image 0 → ceil(4) = 4 pixels (12..15), image 1 → ceil(3) = 3 pixels (25..27)
    assert aggregate(maps, masks, "topk", 25.0).tolist() == [13.5, 26.0]
    # topk 10 %: ceil(1.6) = 2 and ceil(1.2) = 2 pixels
    assert aggregate(maps, masks, "topk", 10.0).tolist() == [14.5, 26.5]
    empty = torch.zeros_like(masks)
    assert aggregate(maps, empty, "topk", 10.0).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="topk_percent"):
        aggregate(maps, masks, "topk", 0.0)


def test_smoothing_filters() -> None:
    constant = torch.full((1, 1, 9, 9), 0.7)
    torch.testing.assert_close(smooth(constant, _config(smoothing="gaussian")), constant)
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1.0
    assert smooth(spike, _config(smoothing="median", smoothing_px=3)).abs().max() == 0.0
    blurred = smooth(spike, _config(smoothing="gaussian", smoothing_px=5))
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)  # mass kept, spread out
    assert 0 < blurred[0, 0, 4, 4].item() < 1.0
    assert torch.equal(smooth(spike, _config(smoothing="none")), spike)


def test_ssim_map_properties() -> None:
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 24, 24, generator=rng) * 2 - 1
    torch.testing.assert_close(ssim_map(x, x), torch.ones_like(x))
    shifted = ssim_map(x, (x + 0.3).clamp(-1, 1))
    noisy = ssim_map(x, torch.rand(2, 1, 24, 24, generator=rng) * 2 - 1)
    assert (shifted <= 1 + 1e-6).all() and shifted.mean() < 1.0
    assert noisy.mean() < shifted.mean()
    assert ssim_map(x, -x).mean() < 0  # anti-correlated structure
    # constant images 0 and 1 (0.5 and 1.0 on [0, 1]): only the luminance term remains,
    # (2·0.5·1 + C1) / (0.25 + 1 + C1) with C1 = 0.01²
    flat = ssim_map(torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16))
    torch.testing.assert_close(flat, torch.full_like(flat, (1 + 1e-4) / (1.25 + 1e-4)))


# -------------------------------------------------------------------- standardise / combine
def test_fit_standardiser_and_combine() -> None:
    components = {"residual": np.array([1.0, 2.0, 3.0]), "ssim": np.array([5.0, 5.0, 5.0])}
    means, stds = fit_standardiser(components)
    assert means == {"residual": 2.0, "ssim": 5.0}
    assert stds["residual"] == pytest.approx(1.0)  # sample std of 1, 2, 3
    assert 0 < stds["ssim"] < 1e-4  # constant component: floored, not zero
    calibration = Calibration(means, {"residual": 0.5, "ssim": 2.0}, 0.0, "fixed", {})
    only_residual = combine(components, calibration, component_weights(_config()))
    np.testing.assert_allclose(only_residual, [-2.0, 0.0, 2.0])
    test = {"residual": np.array([2.0, 3.0]), "ssim": np.array([9.0, 1.0])}
    mixed = combine(
        test, calibration, component_weights(_config(weight_residual=2.0, weight_ssim=1.0))
    )
    np.testing.assert_allclose(mixed, [0.0 + 2.0, 4.0 - 2.0])  # 2·(c−2)/0.5 + (s−5)/2


def test_combine_errors() -> None:
    calibration = Calibration({"residual": 0.0}, {"residual": 1.0}, 0.0, "fixed", {})
    components = {"residual": np.zeros(2), "ssim": np.zeros(2)}
    with pytest.raises(ValueError, match="weight_residual"):
        combine(components, calibration, component_weights(_config(weight_residual=0.0)))
    with pytest.raises(ValueError, match="ssim"):
        combine(components, calibration, component_weights(_config(weight_ssim=1.0)))
    with pytest.raises(ValueError, match="non-empty"):
        fit_standardiser({"residual": np.zeros(0)})


def test_calibration_round_trip_and_strictness() -> None:
    calibration = Calibration(
        {"residual": 0.1, "ssim": 0.2}, {"residual": 0.01, "ssim": 0.02}, 1.64, "youden", {"j": 0.5}
    )
    text = json.dumps(calibration.to_dict(), allow_nan=False)
    assert Calibration.from_dict(json.loads(text), COMPONENTS) == calibration
    for key in ("means", "stds", "threshold", "method", "details"):
        broken = calibration.to_dict()
        del broken[key]
        with pytest.raises(ValueError, match=key):
            Calibration.from_dict(broken, COMPONENTS)
    broken = calibration.to_dict() | {"extra": 1}
    with pytest.raises(ValueError, match="extra"):
        Calibration.from_dict(broken, COMPONENTS)
    broken = calibration.to_dict()
    broken["threshold"] = "high"
    with pytest.raises(ValueError, match="threshold"):
        Calibration.from_dict(broken, COMPONENTS)
