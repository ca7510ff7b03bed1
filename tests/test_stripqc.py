"""The skull-stripping QC rule, against the phantom's known brain masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainad.config import load_study
from brainad.data.phantom import CONTRASTS, render_slice
from brainad.data.preprocess import extract_brain
from brainad.data.stripqc import strip_failed, strip_measures

CONFIG = load_study("demo", Path(__file__).resolve().parents[1] / "params.yaml").preprocess


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.mark.parametrize("contrast", CONTRASTS)
def test_phantom_stripping_matches_truth_and_passes_the_rule(contrast: str) -> None:
    for index in range(4):
        truth = render_slice(np.random.default_rng([11, index]), 96, contrast, False)
        gray = truth.image.astype(np.float32) / 255
        extraction = extract_brain(gray, CONFIG)
        assert _dice(extraction.mask, truth.brain_mask) > 0.85
        measures = strip_measures(gray, extraction.mask, not extraction.ok)
        assert strip_failed(measures, contrast.upper()) == ""


def test_rule_flags_kept_scalp_and_fragments() -> None:
    truth = render_slice(np.random.default_rng([11, 0]), 96, "t1", False)
    gray = truth.image.astype(np.float32) / 255
    yy, xx = np.mgrid[:96, :96]
    radius = np.hypot(yy - 48, xx - 48)
    ring = np.where(radius < 34, 0.4, 0.0) + np.where((radius >= 30) & (radius < 34), 0.6, 0.0)
    kept = radius < 34  # a mask that kept a bright rim (scalp fat on T1) all around
    assert "rim_brightness" in strip_failed(strip_measures(ring, kept, False), "T1")
    assert "rim_brightness" not in strip_failed(strip_measures(ring, kept, False), "T2")
    fragments = truth.brain_mask.copy()
    fragments[:, ::6] = False  # a comb: ragged, not brain-shaped
    fragments[::6, :] = False
    fragments[: fragments.shape[0] // 2] = False
    fragments[:, : fragments.shape[1] // 2] = False
    reasons = strip_failed(strip_measures(gray, fragments, False), "T1")
    assert "solidity" in reasons or "head_fraction" in reasons
    assert "fell back" in strip_failed(strip_measures(gray, truth.brain_mask, True), "T1")
