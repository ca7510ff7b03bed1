"""Voxel-level metrics: binned AP/ROC-AUC/best Dice against exact ones, exact Dice at a
threshold, pooling and the subject bootstrap, slice strata and top slices."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from brainad.evaluation import voxels


def _subject(seed: int, n: int = 20000, shift: float = 1.5):
    rng = np.random.default_rng(seed)
    tumour = rng.random(n) < 0.1
    scores = rng.standard_normal(n) + shift * tumour
    return scores, tumour


def _exact_best_dice(scores: np.ndarray, tumour: np.ndarray) -> float:
    order = np.argsort(-scores)
    tp = np.cumsum(tumour[order])
    flagged = np.arange(1, len(scores) + 1)
    return float(np.max(2 * tp / (flagged + tumour.sum())))


def test_binned_metrics_match_exact_ones() -> None:
    scores, tumour = _subject(0)
    edges = voxels.bin_edges([scores], 4096)
    found = voxels.curve_metrics(voxels.counts(scores, tumour, edges))
    assert found["pixel_ap"] == pytest.approx(average_precision_score(tumour, scores), abs=0.005)
    assert found["pixel_auroc"] == pytest.approx(roc_auc_score(tumour, scores), abs=0.002)
    assert found["best_dice"] == pytest.approx(_exact_best_dice(scores, tumour), abs=0.005)


def test_a_perfect_and_a_reversed_map() -> None:
    tumour = np.r_[np.ones(50, bool), np.zeros(950, bool)]
    scores = np.r_[np.full(50, 5.0), np.zeros(950)] + np.linspace(0, 0.1, 1000)
    edges = voxels.bin_edges([scores], 2048)  # more bins than voxels: no two share a bin
    found = voxels.curve_metrics(voxels.counts(scores, tumour, edges))
    assert found["pixel_ap"] == 1.0 and found["pixel_auroc"] == 1.0 and found["best_dice"] == 1.0
    reversed_ = voxels.curve_metrics(
        voxels.counts(-scores, tumour, voxels.bin_edges([-scores], 2048))
    )
    assert reversed_["pixel_auroc"] == 0.0 and reversed_["pixel_ap"] < 0.1


def test_one_class_gives_none() -> None:
    scores = np.arange(10.0)
    found = voxels.curve_metrics(
        voxels.counts(scores, np.zeros(10, bool), voxels.bin_edges([scores], 8))
    )
    assert found == {"pixel_ap": None, "pixel_auroc": None, "best_dice": None, "best_bin": None}


def test_dice_at_a_threshold_is_exact() -> None:
    scores = np.array([0.1, 0.5, 0.9, 0.7, 0.2])
    tumour = np.array([False, True, True, False, False])
    d = voxels.dice_counts(scores, tumour, 0.5)
    assert d == voxels.DiceCounts(hit=2, flagged=3, tumour=2)
    assert voxels.dice(d) == pytest.approx(0.8)
    assert voxels.dice(voxels.DiceCounts(0, 0, 0)) is None


def test_validation_threshold_reaches_the_best_dice() -> None:
    scores, tumour = _subject(1)
    threshold = voxels.validation_threshold(scores, tumour, 2048)
    achieved = voxels.dice(voxels.dice_counts(scores, tumour, threshold))
    assert achieved == pytest.approx(_exact_best_dice(scores, tumour), abs=0.01)
    with pytest.raises(ValueError, match="no tumour voxel"):
        voxels.validation_threshold(scores, np.zeros_like(tumour), 64)


def _per_subject(seeds, shift=1.5):
    data = {f"s{i}": _subject(seed, shift=shift) for i, seed in enumerate(seeds)}
    edges = voxels.bin_edges([d[0] for d in data.values()], 1024)
    counts = {s: voxels.counts(*d, edges) for s, d in data.items()}
    at = {s: voxels.dice_counts(*d, 1.0) for s, d in data.items()}
    return data, counts, at


def test_pooled_is_the_metric_of_all_voxels_and_repeats_weigh() -> None:
    data, counts, at = _per_subject([2, 3, 4])
    pooled = voxels.pooled(counts, at, sorted(counts))
    scores = np.concatenate([d[0] for d in data.values()])
    tumour = np.concatenate([d[1] for d in data.values()])
    assert pooled["pixel_ap"] == pytest.approx(average_precision_score(tumour, scores), abs=0.01)
    assert pooled["dice"] == pytest.approx(voxels.dice(voxels.dice_counts(scores, tumour, 1.0)))
    only = voxels.pooled(counts, at, ["s0", "s0"])  # a draw of one subject twice: its own metric
    assert only["pixel_ap"] == pytest.approx(voxels.pooled(counts, at, ["s0"])["pixel_ap"])


def test_bootstrap_interval_and_difference_to_a_reference() -> None:
    _, counts, at = _per_subject([5, 6, 7, 8])
    same = voxels.bootstrap(counts, at, 200, 0.95, 0, reference=(counts, at))
    low, high = same["ci"]["pixel_ap"]
    assert low <= voxels.pooled(counts, at, sorted(counts))["pixel_ap"] <= high and low < high
    assert same["difference"]["pixel_ap"] == [0.0, 0.0] and same["ahead"]["pixel_ap"] == 0.0
    _, better, better_at = _per_subject([5, 6, 7, 8], shift=3.0)
    found = voxels.bootstrap(better, better_at, 200, 0.95, 0, reference=(counts, at))
    assert found["difference"]["pixel_ap"][0] > 0 and found["ahead"]["pixel_ap"] == 1.0


def test_slice_metrics_per_stratum() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.25])
    positions = np.array([0.0, 0.1, 0.5, 0.5, 0.9, 0.95])
    found = voxels.slice_metrics(labels, scores, positions, 3)
    assert found["all"]["n_anomalous"] == 3 and found["all"]["n_healthy"] == 3
    assert found["stratum_0"] == {"roc_auc": None, "n_anomalous": 0, "n_healthy": 2}
    assert found["stratum_1"]["roc_auc"] is None  # only tumour slices in the middle
    assert found["stratum_2"]["roc_auc"] == 0.0  # the healthy crown slice scores higher
    assert voxels.stratum(1.0, 3) == 2 and voxels.stratum(0.34, 3) == 1


def test_top_slices_report_position_tumour_and_outer_share() -> None:
    scores = np.array([5.0, 1.0, 2.0, 4.0, 0.5])
    positions = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    tumour = np.array([False, True, True, True, False])
    top = voxels.top_slices(scores, positions, tumour, 2, 3)
    assert top["positions"] == [0.0, 0.75] and top["with_tumour"] == [False, True]
    assert top["outer_share"] == 1.0 and top["volume_score"] == 4.5
