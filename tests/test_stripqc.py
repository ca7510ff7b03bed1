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


def test_strip_sheets_one_per_group_with_outlines_and_flags(tmp_path: Path) -> None:
    from PIL import Image

    from brainad.data.stripqc import SHEET_COLUMNS, SHEET_TILE, strip_sheets

    rows, records = {}, []
    for index in range(10):
        contrast = "t1" if index < 7 else "t2"
        truth = render_slice(np.random.default_rng([12, index]), 96, contrast, False)
        path = f"notumor/{index}.png"
        Image.fromarray(truth.image).save(tmp_path / f"{index}.png")
        (tmp_path / "notumor").mkdir(exist_ok=True)
        (tmp_path / f"{index}.png").rename(tmp_path / path)
        rows[path] = {"path": path, "class_name": "notumor", "plane": "axial",
                      "sequence": contrast.upper()}  # fmt: skip
        failed = index == 0  # a record the rule flags: its tile gets the blue corner
        strip = {"fallback": float(failed), "solidity": 1.0, "head_fraction": 0.8,
                 "rim_brightness": 1.0, "rim_touch": 0.0}  # fmt: skip
        records.append({"path": path, "strip": strip})
    out = tmp_path / "sheets"
    (out).mkdir()
    (out / "stale.png").write_bytes(b"old")  # a sheet of a group that no longer exists
    drawn = strip_sheets(tmp_path, records, rows, CONFIG, out)
    assert drawn == {"notumor_axial_T1.png": 7, "notumor_axial_T2.png": 3}
    assert sorted(p.name for p in out.iterdir()) == sorted(drawn)
    sheet = np.asarray(Image.open(out / "notumor_axial_T1.png"))
    assert sheet.shape == (SHEET_TILE, SHEET_COLUMNS * SHEET_TILE, 3)  # 7 tiles, one row of 8
    first = sheet[:SHEET_TILE, :SHEET_TILE]
    assert (first[:8, :8] == (25, 76, 255)).all()  # flagged by the rule
    red = (first[..., 0] == 255) & (first[..., 1] == 0) & (first[..., 2] == 0)
    assert red.sum() > 50  # the brain outline is drawn
    second = sheet[:SHEET_TILE, SHEET_TILE : 2 * SHEET_TILE]
    assert not (second[:8, :8] == (25, 76, 255)).all(axis=-1).all()
