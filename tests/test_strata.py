"""Tests for the real track per stratum (brainad.evaluation.tracks: Strata, strata_of,
stratum_metrics) and its summary sections: like with like, as the headline."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.brains import split_arrays

from brainad.config import EvaluateConfig, LesionConfig, MatchedConfig
from brainad.evaluation.confound import confound_ceiling
from brainad.evaluation.tracks import strata_of, stratum_metrics

MATCHED = MatchedConfig(("axial",), ("T1", "T1CE"), ("T1CE",))


@pytest.fixture
def ev() -> EvaluateConfig:
    lesions = LesionConfig(1, (0.1, 0.1), (2.0, 2.0), 1.0, 0, 0.0)
    return EvaluateConfig(200, 0.95, 5, 0, lesions, MATCHED, "vqgan")


def _test_split(name: str = "Testing", seed: int = 1) -> tuple:
    """Healthy: 40 T2, 10 T1, 10 T1CE; anomalous: 30 T1CE (axial) and 4 coronal T1CE. File sizes
    carry no class information."""
    sequences = ["T2"] * 40 + ["T1"] * 10 + ["T1CE"] * 44
    planes = ["axial"] * 90 + ["coronal"] * 4
    labels = np.r_[np.zeros(60), np.ones(34)].astype(np.int8)
    n = len(labels)
    images = np.zeros((n, 1, 8, 8), np.float16)
    arrays = split_arrays(images, np.ones(images.shape, bool), labels, prefix=name)
    paths = arrays.paths
    sizes = np.random.default_rng(seed).integers(9000, 11000, n).tolist()
    rows = [
        {"path": p, "plane": pl, "sequence": sq, "bytes": b, "width": 256, "height": 256,
         "channels": 1, "bit_depth": 8}
        for p, pl, sq, b in zip(paths.tolist(), planes, sequences, sizes)
    ]  # fmt: skip
    return arrays, rows


def test_strata_of_labels_every_scan_and_marks_the_matched_groups() -> None:
    arrays, rows = _test_split()
    strata = strata_of(arrays, rows, MATCHED)
    assert strata.keys[0] == "axial/T2" and strata.keys[45] == "axial/T1"
    assert strata.keys[-1] == "coronal/T1CE"
    # healthy T1/T1CE and anomalous axial T1CE are matched; healthy T2, coronal anomalies not
    assert strata.matched.sum() == 10 + 10 + 30
    assert not strata.matched[:40].any() and not strata.matched[-4:].any()


def test_strata_of_names_a_scan_missing_from_the_manifest() -> None:
    arrays, rows = _test_split()
    with pytest.raises(ValueError, match=r"Testing/3\.png.*manifest"):
        strata_of(arrays, rows[:3] + rows[4:], MATCHED)


def test_a_contrast_detector_wins_overall_but_not_like_with_like(ev: EvaluateConfig) -> None:
    """Scores that read T1-weighting, not anomaly: high for every T1/T1CE scan, low for T2."""
    arrays, rows = _test_split()
    strata = strata_of(arrays, rows, MATCHED)
    rng = np.random.default_rng(0)
    t1_weighted = np.array([r["sequence"] != "T2" for r in rows])
    scores = np.where(t1_weighted, 1.0, 0.0) + rng.normal(0, 0.1, len(rows))
    overall = stratum_metrics(ev, arrays.labels, scores, 0.5, strata)
    matched = overall["matched"]
    assert matched["n"] == {"healthy": 20, "anomalous": 30}
    assert 0.3 < matched["roc_auc"] < 0.7  # chance, like with like
    assert matched["ci"]["roc_auc"]["low"] < 0.5 < matched["ci"]["roc_auc"]["high"]
    by = overall["by_stratum"]
    assert by["axial/T2"]["healthy_vs_all_anomalous"] == pytest.approx(1.0)  # shortcut
    assert by["axial/T1"]["healthy_vs_all_anomalous"] < 0.75
    assert by["axial/T2"]["like_with_like"] == {"n": {"healthy": 40, "anomalous": 0}}
    assert by["axial/T1CE"]["like_with_like"]["n"] == {"healthy": 10, "anomalous": 30}
    assert by["axial/T1CE"]["like_with_like"]["roc_auc"] < 0.75
    assert "roc_auc" not in by["coronal/T1CE"]["like_with_like"]


def test_the_ceiling_reports_its_matched_roc_auc(ev: EvaluateConfig) -> None:
    """The trivial-feature classifier sees the sequence label: it separates T2 healthy scans from
    the T1CE anomalies, but not T1CE healthy from T1CE anomalous scans."""
    arrays, rows = _test_split()
    val, val_rows = _test_split("Training", seed=2)
    strata = strata_of(arrays, rows, MATCHED)
    record = confound_ceiling(val, arrays, rows + val_rows, ev, strata)
    assert record["matched"]["n"] == {"healthy": 20, "anomalous": 30}
    assert record["by_stratum"]["axial/T1CE"]["like_with_like"]["roc_auc"] < 0.7
    assert record["roc_auc"] > record["matched"]["roc_auc"]
    assert "axial/T1" in record["by_stratum"]
