"""Brain extraction, crop/resize, normalisation, QA, and the per-split arrays (preprocess_files)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from brainad.config import PreprocessConfig
from brainad.data.arrays import (
    SplitArrays,
    empty_arrays,
    load_arrays,
    preprocess_files,
    save_arrays,
)
from brainad.data.phantom import render_slice
from brainad.data.preprocess import (
    extract_brain,
    normalise,
    preprocess_slice,
)
from brainad.data.qa import coverage_stats, qa_figure


@pytest.fixture
def config() -> PreprocessConfig:
    return PreprocessConfig(
        image_size=32,
        skull_strip=True,
        crop_margin=0.05,
        erosion_px=3,
        min_coverage=0.08,
        max_coverage=0.92,
        normalisation="percentile",
        percentiles=(1.0, 99.0),
        max_pixels=1_000_000,
    )


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def _phantom(seed: int, size: int = 64, contrast: str = "t1", tumour: bool = False):
    return render_slice(np.random.default_rng(seed), size, contrast, tumour)


# ------------------------------------------------------------------------------ extraction
@pytest.mark.parametrize("contrast", ["t1", "t2", "flair"])
def test_extraction_dice_on_phantoms(config: PreprocessConfig, contrast: str) -> None:
    dices = []
    for seed in range(10):
        phantom = _phantom(seed, 128, contrast, tumour=seed % 2 == 1)
        result = extract_brain(phantom.image.astype(np.float32) / 255, config)
        assert result.ok, result.reason
        assert result.mask.shape == phantom.image.shape and result.mask.dtype == bool
        assert result.coverage == pytest.approx(result.mask.mean())
        dices.append(_dice(result.mask, phantom.brain_mask))
    assert np.mean(dices) >= 0.85, dices
    assert min(dices) >= 0.75, dices


def test_thick_scalp_ring_larger_than_the_brain_is_stripped(config: PreprocessConfig) -> None:
    yy, xx = np.mgrid[:96, :96]
    radius = np.hypot(yy - 47.5, xx - 47.5) / 96
    brain, ring = radius < 0.3, (radius > 0.33) & (radius < 0.46)
    image = np.where(brain, 0.5, 0.02) + np.where(ring, 0.8, 0)
    assert ring.sum() > brain.sum()  # the scalp ring is the largest component
    result = extract_brain(image.astype(np.float32), config)
    assert result.ok and _dice(result.mask, brain) >= 0.9


def test_scalp_joined_to_the_brain_is_peeled_at_the_skull(config: PreprocessConfig) -> None:
    """T1-weighted heads: bright scalp fat joined to the brain by bright bridges wider than the
    opening (temporal muscle, orbits) — the candidate reaches the head's outline, and the scalp is
    cut at the dark skull ring instead of being kept."""
    yy, xx = np.mgrid[:128, :128]
    radius = np.hypot(yy - 63.5, xx - 63.5) / 128
    angle = np.arctan2(yy - 63.5, xx - 63.5)
    brain, scalp = radius < 0.32, (radius >= 0.38) & (radius < 0.45)
    bridges = (radius >= 0.32) & (radius < 0.38) & (np.abs(np.sin(2 * angle)) < 0.12)
    image = np.full(radius.shape, 0.02) + np.where(brain, 0.45, 0)
    image += np.where(scalp | bridges, 0.9, 0) + np.where(
        (radius >= 0.32) & (radius < 0.38), 0.06, 0
    )
    result = extract_brain(image.astype(np.float32), config)
    assert result.ok, result.reason
    assert not (result.mask & scalp).any()
    assert _dice(result.mask, brain) >= 0.85


def test_dark_slice_is_extracted_like_the_bright_one(config: PreprocessConfig) -> None:
    phantom = _phantom(3, 128, "flair")
    bright = extract_brain(phantom.image / 255.0, config)
    dark = extract_brain(phantom.image / 255.0 * 0.08, config)  # max ~0.08: a very dark slice
    assert dark.ok, dark.reason
    assert _dice(dark.mask, phantom.brain_mask) >= 0.85
    assert _dice(dark.mask, bright.mask) >= 0.95


def test_full_frame_slice_fails_cleanly(config: PreprocessConfig) -> None:
    frame = np.full((80, 96), 0.7, np.float32)
    frame[30:36, 40:46] = 0.1  # tissue everywhere, one dark spot
    result = extract_brain(frame, config)
    assert not result.ok
    assert "max_coverage" in result.reason and result.coverage > config.max_coverage
    pre = preprocess_slice(frame, config)
    assert pre.fallback
    assert pre.image.shape == (32, 32) and -1 <= pre.image.min() and pre.image.max() <= 1


def test_zoomed_in_head_touching_all_borders_never_crashes(config: PreprocessConfig) -> None:
    phantom = _phantom(5, 128, "t2")
    zoomed = cv2.resize(phantom.image[34:94, 30:98], (96, 96)).astype(np.float32) / 255
    result = extract_brain(zoomed, config)
    pre = preprocess_slice(zoomed, config)
    assert pre.fallback == (not result.ok)
    if result.ok:
        assert config.min_coverage <= result.coverage <= config.max_coverage
    else:
        assert result.reason
    assert pre.mask.any() and np.all(pre.image[~pre.mask] == -1)


def test_blank_and_tiny_slices_fall_back(config: PreprocessConfig) -> None:
    blank = extract_brain(np.zeros((40, 40), np.float32), config)
    assert not blank.ok and "blank" in blank.reason
    pre = preprocess_slice(np.zeros((40, 40), np.float32), config)
    assert pre.fallback and pre.mask.all() and np.all(pre.image == 0)  # constant brain maps to 0
    dot = np.zeros((100, 100), np.float32)
    dot[48:54, 48:54] = 0.9
    small = extract_brain(dot, config)
    assert not small.ok and "min_coverage" in small.reason


def test_without_skull_strip_the_mask_is_the_head(config: PreprocessConfig) -> None:
    phantom = _phantom(1, 96, "t1")
    result = extract_brain(phantom.image / 255.0, dataclasses.replace(config, skull_strip=False))
    assert result.ok
    assert (result.mask & phantom.brain_mask).sum() >= 0.98 * phantom.brain_mask.sum()
    assert result.mask.sum() > phantom.brain_mask.sum()  # the scalp is included too


def test_bad_input_raises(config: PreprocessConfig) -> None:
    with pytest.raises(ValueError, match="2-D"):
        extract_brain(np.zeros((4, 4, 3), np.float32), config)
    with pytest.raises(ValueError, match="NaN"):
        extract_brain(np.full((8, 8), np.nan, np.float32), config)
    with pytest.raises(ValueError, match="extra mask 0"):
        preprocess_slice(np.zeros((8, 8), np.float32), config, [np.zeros((4, 4), bool)])
    flipped = dataclasses.replace(config, min_coverage=0.9, max_coverage=0.1)
    with pytest.raises(ValueError, match="min_coverage"):
        preprocess_slice(np.zeros((8, 8), np.float32), flipped)
    with pytest.raises(ValueError, match="preprocess.percentiles"):
        normalise(
            np.zeros((4, 4)),
            np.ones((4, 4), bool),
            dataclasses.replace(config, percentiles=(99.0, 1.0)),
        )


# ---------------------------------------------------------------------------- crop/resize
def test_crop_fills_the_frame_and_extra_masks_follow(config: PreprocessConfig) -> None:
    phantom = _phantom(11, 96, "t2", tumour=True)
    # place the head off-centre in a wider frame so the crop must move it
    gray = np.zeros((110, 160), np.float32)
    gray[10:106, 60:156] = phantom.image / 255.0
    tumour, brain = np.zeros(gray.shape, bool), np.zeros(gray.shape, bool)
    tumour[10:106, 60:156], brain[10:106, 60:156] = phantom.tumour_mask, phantom.brain_mask
    pre = preprocess_slice(gray, config, [tumour, brain])
    assert not pre.fallback
    assert pre.image.dtype == np.float32 and pre.image.shape == (32, 32)
    assert [e.shape for e in pre.extra] == [(32, 32), (32, 32)] and pre.extra[0].dtype == bool
    assert _dice(pre.extra[1], pre.mask) >= 0.85  # ground truth brain moved with the crop
    rows, cols = np.nonzero(pre.mask)
    span = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
    assert span >= 32 / (1 + 2 * config.crop_margin) - 2  # the brain fills the output frame
    # the tumour centroid lands where the crop/pad/resize maps it (derived from the brain box)
    extraction = extract_brain(gray, config)
    r, c = np.nonzero(extraction.mask)
    height, width = r.max() - r.min() + 1, c.max() - c.min() + 1
    top = r.min() - round(config.crop_margin * height)
    left = c.min() - round(config.crop_margin * width)
    h, w = (
        height + 2 * round(config.crop_margin * height),
        width + 2 * round(config.crop_margin * width),
    )
    side = max(h, w)
    top, left = top - (side - h) // 2, left - (side - w) // 2
    tr, tc = np.nonzero(tumour)
    expected = (
        (tr.mean() - top + 0.5) * 32 / side - 0.5,
        (tc.mean() - left + 0.5) * 32 / side - 0.5,
    )
    got = np.nonzero(pre.extra[0])
    assert abs(got[0].mean() - expected[0]) < 1.5 and abs(got[1].mean() - expected[1]) < 1.5


# --------------------------------------------------------------------------- normalisation
@pytest.fixture
def brain_image() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.8, (40, 40)).astype(np.float32)
    mask = np.zeros((40, 40), bool)
    mask[5:35, 8:30] = True
    image[~mask] = 0.95  # bright background must not influence the statistics
    return image, mask


@pytest.mark.parametrize("method", ["thesis", "percentile", "zscore"])
def test_normalise_range_and_background(
    config: PreprocessConfig, brain_image: tuple[np.ndarray, np.ndarray], method: str
) -> None:
    image, mask = brain_image
    out = normalise(image, mask, dataclasses.replace(config, normalisation=method))
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out.min() >= -1 and out.max() <= 1
    assert np.all(out[~mask] == -1)
    assert out[mask].std() > 0.1  # brain contrast survives


def test_normalise_defining_properties(
    config: PreprocessConfig, brain_image: tuple[np.ndarray, np.ndarray]
) -> None:
    image, mask = brain_image
    thesis = normalise(image, mask, dataclasses.replace(config, normalisation="thesis"))
    np.testing.assert_allclose(thesis[mask], 2 * image[mask] - 1, atol=1e-6)
    full = normalise(image, mask, dataclasses.replace(config, percentiles=(0.0, 100.0)))
    assert full[mask].min() == pytest.approx(-1) and full[mask].max() == pytest.approx(1)
    pct = normalise(image, mask, config)  # 1st/99th percentiles of the brain map to -1/+1
    assert np.percentile(pct[mask], 1) == pytest.approx(-1, abs=0.01)
    assert np.percentile(pct[mask], 99) == pytest.approx(1, abs=0.01)
    assert 0.005 <= np.mean(pct[mask] == 1) <= 0.02  # ~1% clipped at the top
    rng = np.random.default_rng(1)
    gauss = np.where(mask, rng.normal(0.5, 0.05, mask.shape), 0).astype(np.float32)
    z = normalise(gauss, mask, dataclasses.replace(config, normalisation="zscore"))
    assert abs(z[mask].mean()) < 0.01
    assert z[mask].std() == pytest.approx(1 / 3, rel=0.03)


def test_normalise_rejects_bad_masks(config: PreprocessConfig) -> None:
    with pytest.raises(ValueError, match="empty"):
        normalise(np.zeros((4, 4)), np.zeros((4, 4), bool), config)
    with pytest.raises(ValueError, match="shape"):
        normalise(np.zeros((4, 4)), np.ones((4, 5), bool), config)


# -------------------------------------------------------------------------------------- QA
def test_coverage_stats_per_class() -> None:
    records = [
        {"path": "a", "class_name": "notumor", "fallback": False, "coverage": 0.2},
        {"path": "b", "class_name": "notumor", "fallback": True, "coverage": 0.95},
        {"path": "c", "class_name": "notumor", "fallback": False, "coverage": 0.4},
        {"path": "d", "class_name": "glioma", "fallback": False, "coverage": 0.3},
    ]
    stats = coverage_stats(records)
    assert list(stats) == ["glioma", "notumor"]
    assert stats["notumor"]["count"] == 3 and stats["notumor"]["fallback"] == 1
    assert stats["notumor"]["fallback_rate"] == pytest.approx(1 / 3)
    assert stats["notumor"]["coverage_median"] == pytest.approx(0.4)
    assert stats["notumor"]["coverage_mean"] == pytest.approx((0.2 + 0.95 + 0.4) / 3)
    assert stats["glioma"]["fallback_rate"] == 0 and stats["glioma"]["coverage_p95"] == 0.3


def test_qa_figure_writes_png(config: PreprocessConfig, tmp_path: Path) -> None:
    samples = []
    for seed, name in [(0, "notumor"), (1, "glioma"), (2, "glioma")]:
        gray = _phantom(seed, 48).image / 255.0
        samples.append((name, gray, preprocess_slice(gray, config)))
    out = tmp_path / "qa" / "preprocess.png"
    qa_figure(samples, out, "QA", config)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    qa_figure(samples[:1], tmp_path / "b.png", "QA without config")
    assert (tmp_path / "b.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no samples"):
        qa_figure([], tmp_path / "c.png", "empty")


# ----------------------------------------------------------------------- preprocess_files
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(root: Path, name: str, data: bytes) -> dict:
    path = root / "Training" / "notumor" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {
        "path": path.relative_to(root).as_posix(),
        "label": "healthy",
        "class_name": "notumor",
        "folder": "Training",
        "sha256": _sha(data),
        "mask_path": "",
    }


def _encode(suffix: str, array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(suffix, array)
    assert ok
    return buffer.tobytes()


@pytest.fixture
def raw_folder(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Five usable files and six that must be quarantined, in a known order."""
    root = tmp_path / "raw"
    phantom = _phantom(21, 64, "t1", tumour=True)
    gray = phantom.image
    jpeg = _encode(".jpg", gray)
    alpha = np.full_like(gray, 255)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([gray, alpha], -1)).save(buffer, format="PNG")  # grey + alpha
    rows = [
        _write(root, "gray.jpg", jpeg),
        _write(root, "colour.jpg", _encode(".jpg", cv2.merge([gray, gray, gray]))),
        _write(root, "deep.png", _encode(".png", gray.astype(np.uint16) * 257)),
        _write(root, "rgba.png", _encode(".png", cv2.merge([gray, gray, gray, alpha]))),
        _write(root, "la.png", buffer.getvalue()),
        _write(root, "truncated.jpg", jpeg[: len(jpeg) // 2]),
        _write(root, "empty.jpg", b""),
        _write(root, "text.png", b"this is not an image\n"),
        {**_write(root, "changed.jpg", jpeg), "sha256": _sha(b"older version")},
        {**_write(root, "x.jpg", jpeg), "path": "../outside.jpg"},
        {**_write(root, "flagged.jpg", jpeg), "error": "unsupported file type"},
    ]
    (tmp_path / "outside.jpg").write_bytes(jpeg)
    mask_file = root / "masks" / "Training" / "glioma" / "gray.png"
    mask_file.parent.mkdir(parents=True)
    mask_file.write_bytes(_encode(".png", phantom.tumour_mask.astype(np.uint8) * 255))
    rows[0].update(label="anomaly", class_name="glioma", mask_path="masks/Training/glioma/gray.png")
    return root, rows


def test_preprocess_files_accepts_and_quarantines(
    config: PreprocessConfig, raw_folder: tuple[Path, list[dict]]
) -> None:
    root, rows = raw_folder
    out = preprocess_files(root, rows, config)
    arrays, quarantined = out.arrays, out.quarantined
    assert len(arrays) + len(quarantined) == len(rows)  # files in = accepted + quarantined
    assert sorted([*arrays.paths.tolist(), *(q.path for q in quarantined)]) == sorted(
        r["path"] for r in rows
    )
    assert [p.split("/")[-1] for p in arrays.paths] == [
        "gray.jpg",
        "colour.jpg",
        "deep.png",
        "rgba.png",
        "la.png",
    ]
    reasons = {q.path.split("/")[-1]: q.reason for q in quarantined}
    assert "truncated" in reasons["truncated.jpg"]
    assert "empty" in reasons["empty.jpg"]
    assert "not a readable image" in reasons["text.png"]
    assert "changed since manifest" in reasons["changed.jpg"]
    assert "outside" in reasons["outside.jpg"]
    assert reasons["flagged.jpg"] == "unsupported file type"  # the manifest's error is kept
    assert arrays.images.dtype == np.float16 and arrays.images.shape == (5, 1, 32, 32)
    assert arrays.images.min() >= -1 and arrays.images.max() <= 1
    assert np.all(arrays.images[~arrays.brain_masks] == -1)
    assert arrays.labels.tolist() == [1, 0, 0, 0, 0] and arrays.labels.dtype == np.int8
    assert arrays.has_lesion_mask.tolist() == [True, False, False, False, False]
    assert arrays.lesion_masks[0].any() and not arrays.lesion_masks[1:].any()
    assert (
        arrays.lesion_masks[0].sum()
        <= 1.05 * (arrays.lesion_masks[0] & arrays.brain_masks[0]).sum()
    )
    assert arrays.sha256[0] == rows[0]["sha256"] and arrays.folders[0] == "Training"
    # bit depth and channel count must not change the result (they differ by class in real data)
    images = arrays.images.astype(np.float32)
    assert np.abs(images[2] - images[3]).max() == 0  # 16-bit and RGBA PNG of the same pixels
    assert np.abs(images[2] - images[4]).max() == 0  # grey+alpha PNG too
    assert np.abs(images[0] - images[2]).mean() < 0.05  # JPEG vs lossless: compression only
    assert [r["path"] for r in out.records] == arrays.paths.tolist()
    assert {"class_name", "fallback", "coverage"} <= set(out.records[0])


def test_preprocess_files_rejects_bad_rows(config: PreprocessConfig, tmp_path: Path) -> None:
    row = _write(tmp_path, "a.jpg", _encode(".jpg", _phantom(0).image))
    with pytest.raises(ValueError, match="label"):
        preprocess_files(tmp_path, [{**row, "label": "glioma"}], config)
    del row["sha256"]
    with pytest.raises(ValueError, match="sha256"):
        preprocess_files(tmp_path, [row], config)
    empty = preprocess_files(tmp_path, [], config)
    assert len(empty.arrays) == 0 and empty.arrays.images.shape == (0, 1, 32, 32)


def test_arrays_round_trip(
    config: PreprocessConfig, raw_folder: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    arrays = preprocess_files(raw_folder[0], raw_folder[1][:3], config).arrays
    path = tmp_path / "out" / "train.npz"
    save_arrays(path, arrays)
    loaded = load_arrays(path)
    for field in dataclasses.fields(SplitArrays):
        original, back = getattr(arrays, field.name), getattr(loaded, field.name)
        assert back.dtype == original.dtype or back.dtype.kind == original.dtype.kind == "U"
        np.testing.assert_array_equal(back, original)
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.npz"]  # no temp files left
    save_arrays(tmp_path / "empty.npz", empty_arrays(16))
    assert load_arrays(tmp_path / "empty.npz").images.shape == (0, 1, 16, 16)


def test_load_arrays_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_arrays(tmp_path / "missing.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="corrupt.npz"):
        load_arrays(corrupt)
    partial = tmp_path / "partial.npz"
    np.savez(partial, images=np.zeros((1, 1, 4, 4), np.float16))
    with pytest.raises(ValueError, match=r"partial.npz.*labels"):
        load_arrays(partial)


def test_split_arrays_checks_shapes() -> None:
    arrays = empty_arrays(8)
    with pytest.raises(ValueError, match="labels"):
        dataclasses.replace(arrays, labels=np.zeros(3, np.int8))
