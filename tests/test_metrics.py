"""Tests for brainad.metrics against hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from brainad import metrics
from brainad.config import ThresholdConfig

# 6 images; at threshold 0.5: predictions [0, 0, 1, 0, 1, 1] → tp 2, fp 1, tn 2, fn 1.
LABELS6 = np.array([0, 0, 0, 1, 1, 1])
SCORES6 = np.array([0.1, 0.4, 0.6, 0.35, 0.8, 0.9])


def _threshold_config(method: str, fixed: float = 8.0, target: float = 0.95) -> ThresholdConfig:
    return ThresholdConfig(method=method, fixed_value=fixed, target_specificity=target)


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_confusion_and_threshold_metrics_six_images() -> None:
    preds = (SCORES6 >= 0.5).astype(int)
    assert metrics.confusion(LABELS6, preds) == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    out = metrics.threshold_metrics(LABELS6, SCORES6, 0.5)
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["specificity"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 / 3)


def test_score_equal_to_threshold_is_positive() -> None:
    out = metrics.threshold_metrics([0, 1], [0.2, 0.5], 0.5)
    assert out["recall"] == 1.0 and out["specificity"] == 1.0


def test_zero_denominators_are_zero() -> None:
    out = metrics.threshold_metrics(LABELS6, SCORES6, 10.0)  # nothing flagged
    assert out["precision"] == 0.0 and out["recall"] == 0.0 and out["f1"] == 0.0
    assert out["specificity"] == 1.0 and out["accuracy"] == pytest.approx(0.5)


def test_all_metrics_contains_everything() -> None:
    out = metrics.all_metrics(LABELS6, SCORES6, 0.5)
    assert out["confusion"] == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    # pairs (pos, neg): 0.35 beats 0.1 only; 0.8 and 0.9 beat all three → 7 of 9
    assert out["roc_auc"] == pytest.approx(7 / 9)
    assert set(out) >= {"accuracy", "precision", "recall", "specificity", "f1", "average_precision"}


def test_auroc_perfect_inverted_tied() -> None:
    y = np.array([0, 0, 1, 1])
    assert metrics.roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert metrics.roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5
    # pos 2 vs neg 1 win, vs neg 2 tie (1/2); pos 3 wins twice → 3.5 / 4
    assert metrics.roc_auc([0, 1, 0, 1], [1, 2, 2, 3]) == pytest.approx(0.875)


def test_average_precision_hand_case() -> None:
    # ranking: 0.9(1) 0.8(0) 0.7(1): precision at the hits 1 and 2/3, each recall step 1/2
    assert metrics.average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(
        0.5 * 1 + 0.5 * 2 / 3
    )


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1], []])
def test_single_class_raises_clear_message(labels: list[int]) -> None:
    with pytest.raises(ValueError, match=r"both healthy \(0\) and anomalous \(1\)"):
        metrics.check_binary(labels)
    with pytest.raises(ValueError, match="got only label|no labels"):
        metrics.roc_auc(labels, [0.0] * len(labels))


def test_bad_labels_and_scores_raise() -> None:
    with pytest.raises(ValueError, match="0 \\(healthy\\) or 1"):
        metrics.check_binary([0, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_auc([0, 1], [0.0, float("nan")])
    with pytest.raises(ValueError, match="shape"):
        metrics.roc_auc([0, 1], [0.0, 1.0, 2.0])


def test_fast_versions_match_sklearn_with_ties() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)  # rounding makes many ties
    assert metrics._fast_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics._fast_ap(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


# ----------------------------------------------------------------------------------- thresholds
def test_fixed_threshold() -> None:
    out = metrics.calibrate_threshold(LABELS6, SCORES6, _threshold_config("fixed", fixed=8.0))
    assert out.value == 8.0 and out.method == "fixed"


def test_healthy_percentile_uses_only_healthy() -> None:
    healthy = np.arange(100, dtype=float)  # quantile 0.95 of 0..99 = 94.05
    config = _threshold_config("healthy_percentile", target=0.95)
    only_healthy = metrics.calibrate_threshold(np.zeros(100, int), healthy, config)
    assert only_healthy.value == pytest.approx(94.05)
    assert only_healthy.details["val_specificity"] == pytest.approx(0.95)
    mixed = metrics.calibrate_threshold(
        np.r_[np.zeros(100, int), np.ones(3, int)], np.r_[healthy, -5.0, 500.0, 1e4], config
    )
    assert mixed.value == pytest.approx(94.05)
    with pytest.raises(ValueError, match="healthy"):
        metrics.calibrate_threshold([1, 1], [0.1, 0.2], config)


def test_youden_and_f1_max_hand_case() -> None:
    # healthy 1..6, anomalies 5.5, 7, 8. Candidate thresholds (tp, fp):
    #   >=8 (1,0): J 1/3, F1 .5; >=7 (2,0): J 2/3, F1 .8; >=6 (2,1): J .5, F1 2/3;
    #   >=5.5 (3,1): J 5/6, F1 6/7; >=5 (3,2): J 2/3, F1 .75 → both pick 5.5.
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    scores = np.array([1, 2, 3, 4, 5, 6, 5.5, 7, 8], dtype=float)
    youden = metrics.calibrate_threshold(labels, scores, _threshold_config("youden"))
    assert youden.value == 5.5
    assert youden.details["youden_j"] == pytest.approx(5 / 6)
    f1 = metrics.calibrate_threshold(labels, scores, _threshold_config("f1_max"))
    assert f1.value == 5.5
    assert f1.details["val_f1"] == pytest.approx(6 / 7)


def test_youden_and_f1_differ_on_imbalanced_case() -> None:
    # healthy 0..99, anomalies 50.5, 95.5, 200, 201 (tp, fp):
    #   >=201 (1, 0): J .25, F1 .4;   >=200 (2, 0): J .5, F1 4/6;
    #   >=95.5 (3, 4): J .75-.04 = .71, F1 6/11;   >=50.5 (4, 49): J .51, F1 8/57.
    # Youden tolerates 4 false positives for one more hit; F1 (100 healthy) does not.
    labels = np.r_[np.zeros(100, int), np.ones(4, int)]
    scores = np.r_[np.arange(100.0), 50.5, 95.5, 200.0, 201.0]
    youden = metrics.calibrate_threshold(labels, scores, _threshold_config("youden"))
    assert youden.value == 95.5
    assert youden.details["youden_j"] == pytest.approx(0.71)
    f1 = metrics.calibrate_threshold(labels, scores, _threshold_config("f1_max"))
    assert f1.value == 200.0
    assert f1.details["val_f1"] == pytest.approx(4 / 6)


def test_unknown_threshold_method_raises() -> None:
    with pytest.raises(ValueError, match="threshold.method"):
        metrics.calibrate_threshold(LABELS6, SCORES6, _threshold_config("bogus"))


# ------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_shape_and_determinism() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(40, int), np.ones(40, int)]
    scores = rng.normal(size=80) + labels
    out = metrics.bootstrap_ci(labels, scores, 0.5, n=200, ci=0.9, seed=1)
    assert set(out) == {
        "accuracy",
        "precision",
        "recall",
        "specificity",
        "f1",
        "roc_auc",
        "average_precision",
    }
    for name, interval in out.items():
        assert interval["low"] <= interval["value"] <= interval["high"], name
        assert interval["low"] < interval["high"], name
    assert out["roc_auc"]["value"] == pytest.approx(metrics.roc_auc(labels, scores))
    assert out == metrics.bootstrap_ci(labels, scores, 0.5, n=200, ci=0.9, seed=1)
    narrower = metrics.bootstrap_ci(labels, scores, 0.5, n=200, ci=0.5, seed=1)
    assert narrower["roc_auc"]["high"] - narrower["roc_auc"]["low"] < (
        out["roc_auc"]["high"] - out["roc_auc"]["low"]
    )


def test_bootstrap_coverage_of_known_population() -> None:
    # healthy ~ N(0, 1), anomalous ~ N(1.5, 1), balanced, threshold 0.75:
    # true accuracy = Φ(0.75), true AUROC = Φ(1.5 / √2).
    true_accuracy, true_auc = _phi(0.75), _phi(1.5 / math.sqrt(2.0))
    rng = np.random.default_rng(123)
    covered_acc = covered_auc = 0
    for rep in range(40):
        labels = np.r_[np.zeros(60, int), np.ones(60, int)]
        scores = rng.normal(size=120) + 1.5 * labels
        out = metrics.bootstrap_ci(labels, scores, 0.75, n=200, ci=0.95, seed=rep)
        covered_acc += out["accuracy"]["low"] <= true_accuracy <= out["accuracy"]["high"]
        covered_auc += out["roc_auc"]["low"] <= true_auc <= out["roc_auc"]["high"]
    assert covered_acc >= 34
    assert covered_auc >= 34


def test_bootstrap_keeps_both_classes_and_validates() -> None:
    # 1 anomaly among 30: unstratified resampling would often lose it and crash the AUROC.
    labels = np.r_[np.zeros(29, int), 1]
    scores = np.r_[np.linspace(0, 1, 29), 2.0]
    out = metrics.bootstrap_ci(labels, scores, 1.5, n=100, ci=0.95, seed=0)
    assert out["roc_auc"]["low"] == 1.0 and out["recall"]["low"] == 1.0
    with pytest.raises(ValueError, match="bootstrap"):
        metrics.bootstrap_ci(labels, scores, 1.5, n=0, ci=0.95, seed=0)
    with pytest.raises(ValueError, match="ci"):
        metrics.bootstrap_ci(labels, scores, 1.5, n=10, ci=1.5, seed=0)


# ------------------------------------------------------------------------------ direction check
def test_direction_check_flags_inverted_score() -> None:
    inverted = metrics.direction_check([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])
    assert inverted["inverted"] is True and inverted["auroc"] == 0.0
    assert inverted["message"].startswith("**") and "confound" in inverted["message"]
    assert "normalisation" in inverted["message"]
    fine = metrics.direction_check([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert fine == {"auroc": 1.0, "inverted": False, "message": ""}


# -------------------------------------------------------------------------------- pixel metrics
@pytest.fixture
def pixel_case() -> tuple[np.ndarray, np.ndarray]:
    brain = np.zeros((3, 1, 16, 16), bool)
    brain[:, :, 2:14, 2:14] = True
    lesion = np.zeros_like(brain)
    lesion[0, 0, 4:7, 4:7] = True
    lesion[2, 0, 8:12, 5:9] = True
    return lesion, brain


def test_pixel_metrics_perfect_map(pixel_case: tuple[np.ndarray, np.ndarray]) -> None:
    lesion, brain = pixel_case
    maps = lesion.astype(np.float32)
    maps[~brain] = 100.0  # outside the brain: must be ignored
    out = metrics.pixel_metrics(lesion, maps, brain)
    assert out["pixel_auroc"] == 1.0
    assert out["best_dice"] == pytest.approx(1.0)
    assert out["n_pixels"] == int(brain.sum())
    assert out["lesion_fraction"] == pytest.approx(lesion.sum() / brain.sum())


def test_pixel_metrics_partial_map_and_subsampling(
    pixel_case: tuple[np.ndarray, np.ndarray],
) -> None:
    lesion, brain = pixel_case
    maps = lesion.astype(np.float32)
    maps[0, 0, 4:7, 4:7] = 0.0  # first lesion (9 px) missed; second (16 px) found
    out = metrics.pixel_metrics(lesion, maps, brain)
    assert out["best_dice"] == pytest.approx(2 * 16 / (16 + 25))
    small = metrics.pixel_metrics(
        lesion,
        maps + 0.01 * np.arange(maps.size).reshape(maps.shape),
        brain,
        max_pixels=300,
        seed=4,
    )
    assert small["n_pixels"] == 300
    again = metrics.pixel_metrics(
        lesion,
        maps + 0.01 * np.arange(maps.size).reshape(maps.shape),
        brain,
        max_pixels=300,
        seed=4,
    )
    assert small == again


def test_pixel_metrics_needs_lesion_pixels(pixel_case: tuple[np.ndarray, np.ndarray]) -> None:
    _, brain = pixel_case
    with pytest.raises(ValueError, match="pixels"):
        metrics.pixel_metrics(np.zeros_like(brain), np.zeros(brain.shape), brain)


# ------------------------------------------------------------------------------------ plot data
def test_roc_and_pr_points_thinned_and_json_ready() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 1000)
    scores = rng.normal(size=1000) + labels
    roc = metrics.roc_points(labels, scores)
    pr = metrics.pr_points(labels, scores)
    assert 2 < len(roc) <= 200 and 2 < len(pr) <= 200
    assert (roc[0]["fpr"], roc[0]["tpr"]) == (0.0, 0.0)
    assert (roc[-1]["fpr"], roc[-1]["tpr"]) == (1.0, 1.0)
    assert roc[0]["threshold"] > scores.max()
    assert pr[0]["recall"] == 1.0 and pr[-1]["recall"] == 0.0
    json.dumps({"roc": roc, "pr": pr}, allow_nan=False)  # raises on inf/nan
    fprs = [p["fpr"] for p in roc]
    assert fprs == sorted(fprs)
