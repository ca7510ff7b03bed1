"""Tests for brainad.evaluation.confound: the trivial-feature classifier beside every model."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.brains import split_arrays

from brainad.config import EvaluateConfig, LesionConfig, MatchedConfig
from brainad.data.arrays import SplitArrays
from brainad.evaluation.confound import confound_ceiling, trivial_features


def _split(name: str, n: int, seed: int) -> tuple[SplitArrays, list[dict]]:
    """Half healthy, half anomalous noise images whose pixels carry no class information."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(np.int8)
    images = rng.uniform(-1, 1, (n, 1, 8, 8)).astype(np.float16)
    arrays = split_arrays(images, np.ones(images.shape, bool), labels, prefix=name)
    paths = arrays.paths
    rows = [
        {"path": p, "bytes": int(rng.integers(9000, 11000)), "width": 256, "height": 256,
         "channels": 1, "bit_depth": 8}
        for p in paths
    ]  # fmt: skip
    return arrays, rows


@pytest.fixture
def ev() -> EvaluateConfig:
    lesions = LesionConfig(1, (0.1, 0.1), (2.0, 2.0), 1.0, 0, 0.0)
    return EvaluateConfig(
        50, 0.95, 5, 0, lesions, MatchedConfig(("axial",), ("T1",), ("T1CE",)), "vqgan"
    )


def test_ceiling_finds_a_shortcut_and_stays_near_chance_without_one(ev: EvaluateConfig) -> None:
    val, val_rows = _split("val", 60, 0)
    test, test_rows = _split("test", 60, 1)
    fair = confound_ceiling(val, test, val_rows + test_rows, ev)
    assert fair["chosen"] in ("logistic", "forest") and abs(fair["roc_auc"] - 0.5) < 0.2
    for rows, arrays in ((val_rows, val), (test_rows, test)):  # the anomalies come from elsewhere
        for row, label in zip(rows, arrays.labels):
            row["width"] = 512 if label else 256
            row["plane"] = "coronal" if label else "axial"
    shortcut = confound_ceiling(val, test, val_rows + test_rows, ev)
    assert shortcut["roc_auc"] > 0.95 and shortcut["ci"]["low"] > 0.8
    assert "plane=axial" in shortcut["features"]
    assert all(c["val_cv_roc_auc"] > 0.95 for c in shortcut["candidates"].values())


def test_features_need_every_image_in_the_manifest(ev: EvaluateConfig) -> None:
    val, rows = _split("val", 10, 0)
    with pytest.raises(ValueError, match="val/3.png.*not in the manifest"):
        trivial_features(val, {r["path"]: r for r in rows if r["path"] != "val/3.png"}, {})


def test_too_few_validation_images_per_class_skip_the_ceiling(ev: EvaluateConfig) -> None:
    val, val_rows = _split("val", 3, 0)  # one healthy image
    test, test_rows = _split("test", 10, 1)
    out = confound_ceiling(val, test, val_rows + test_rows, ev)
    assert out["roc_auc"] is None and out["chosen"] is None
