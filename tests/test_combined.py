"""A model's detector combined with the mirror asymmetry (``score.weight_asymmetry``): the extra
component sees a one-sided lesion, the combined score is the calibrated weighted sum, the map
stays the model's, and a scorer bundle with the combination loads and scores the same."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.brains import SIZE, bundle_preprocess, disc_brains, segmenter_config

from brainad.cli.score import load_engine
from brainad.config import PerceptualConfig, ThresholdConfig
from brainad.models.segmenter import Segmenter
from brainad.scoring.baselines import MirrorAsymmetry
from brainad.scoring.bundle import ScorerBundle, load_scorer, make_detector, save_scorer
from brainad.scoring.calibration import fit_standardiser
from brainad.scoring.combined import WithAsymmetry
from brainad.scoring.detector import calibrate, score_images, score_raw
from brainad.scoring.gan import SELECTION_SCORE
from brainad.scoring.segmenter import SegmenterDetector

CPU = torch.device("cpu")
PERCEPTUAL = PerceptualConfig(kind="fixed", channels=4, scales=2, seed=0, vgg16_weights="")
SCORE = dataclasses.replace(SELECTION_SCORE, aggregate="max", batch_size=4)
COMBINED = dataclasses.replace(SCORE, weight_asymmetry=2.0)


def _segmenter() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(segmenter_config(), SIZE)


def _symmetric_brains(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Disc brains made exactly left-right symmetric (each half mirrored onto the other)."""
    images, masks = (t.numpy() for t in disc_brains(n, seed=3))
    half = SIZE // 2
    images[..., half:] = images[..., :half][..., ::-1]
    masks[..., half:] = masks[..., :half][..., ::-1]
    return np.ascontiguousarray(images), np.ascontiguousarray(masks)


def _one_sided_lesion(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    spot = ((yy - 13) ** 2 + (xx - 10) ** 2 <= 9)[None, None] & masks
    return np.where(spot, 0.9, images).astype(np.float32)


def test_make_detector_adds_the_asymmetry_component_only_with_a_weight() -> None:
    model = _segmenter()
    plain = make_detector("segmenter", model, SCORE, PERCEPTUAL, CPU)
    combined = make_detector("segmenter", model, COMBINED, PERCEPTUAL, CPU)
    assert isinstance(plain, SegmenterDetector)
    assert isinstance(combined, WithAsymmetry) and combined.inner.name == "segmenter"
    assert combined.weights == {"segmentation": 1.0, "asymmetry": 2.0}
    with pytest.raises(ValueError, match="weight_asymmetry must be > 0"):
        WithAsymmetry(plain, 0.0)
    with pytest.raises(ValueError, match="only a standardised model detector"):
        WithAsymmetry(MirrorAsymmetry(), 1.0)


def test_the_component_sees_a_one_sided_lesion_and_the_map_stays_the_models() -> None:
    images, masks = _symmetric_brains(4)
    lesioned = _one_sided_lesion(images, masks)
    model = _segmenter()
    combined = make_detector("segmenter", model, COMBINED, PERCEPTUAL, CPU)
    plain = make_detector("segmenter", model, SCORE, PERCEPTUAL, CPU)
    clean_raw = score_raw(combined, images, masks, keep_maps=True)
    lesion_raw = score_raw(combined, lesioned, masks, keep_maps=True)
    assert combined.components == ("segmentation", "asymmetry")  # the protocol's declaration
    assert tuple(clean_raw.components) == combined.components
    assert lesion_raw.components["asymmetry"].min() > 3 * clean_raw.components["asymmetry"].max()
    own = score_raw(plain, lesioned, masks, keep_maps=True)
    np.testing.assert_array_equal(own.maps, lesion_raw.maps)
    np.testing.assert_array_equal(
        own.components["segmentation"], lesion_raw.components["segmentation"]
    )


def test_the_combined_score_is_the_calibrated_weighted_sum_and_survives_a_bundle(
    tmp_path: Path,
) -> None:
    images, masks = (t.numpy() for t in disc_brains(10, seed=5))
    labels = np.r_[np.zeros(6), np.ones(4)]
    images[6:] = _one_sided_lesion(images[6:], masks[6:])
    model = _segmenter()
    detector = make_detector("segmenter", model, COMBINED, PERCEPTUAL, CPU)
    threshold = ThresholdConfig(
        method="healthy_percentile", fixed_value=0.0, target_specificity=0.9
    )
    calibration = calibrate(detector, images, masks, labels, threshold)
    raw = score_raw(detector, images, masks).components
    means, stds = fit_standardiser({k: v[labels == 0] for k, v in raw.items()})
    expected = sum(w * (raw[k] - means[k]) / stds[k] for k, w in detector.weights.items())
    scored = score_images(detector, calibration, images, masks)
    np.testing.assert_allclose(scored.score, expected, rtol=1e-5, atol=1e-5)

    preprocess = bundle_preprocess()
    meta = {"study": "test", "model": "segmenter", "epoch": 1}
    save_scorer(
        tmp_path / "segmenter.pt",
        ScorerBundle(model, calibration, COMBINED, preprocess, PERCEPTUAL, meta),
    )
    loaded = load_scorer(tmp_path / "segmenter.pt")
    again = score_images(loaded.detector(CPU), loaded.calibration, images, masks)
    np.testing.assert_allclose(again.score, scored.score, rtol=1e-6)
    # the CLI's engine (``brainad score``) loads the combined bundle, with both component columns
    engine = load_engine(tmp_path / "segmenter.pt", CPU)
    assert engine.components == ("segmentation", "asymmetry")
    via_cli = engine.score(images, masks, False)
    np.testing.assert_allclose(via_cli.score, scored.score, rtol=1e-6)
