"""Manifest: fields, fingerprint, errors kept as rows, exclusions, perceptual hash."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from brainad.config import load_study
from brainad.data.manifest import (
    MANIFEST_FIELDS,
    build_manifest,
    fingerprint,
    hamming,
    perceptual_hash,
    read_manifest,
    write_manifest,
)

FILTER = dataclasses.replace(
    load_study("demo", Path(__file__).resolve().parents[1] / "params.yaml").filter,
    healthy_classes=("notumor",),
    anomaly_classes=("glioma", "pituitary"),
)
MAX_PIXELS = 1_000_000
HASH_DISTANCE = 10


def shapes_image(seed: int, size: int = 48) -> np.ndarray:
    """A distinct uint8 slice: random rectangles and circles on a random-gradient background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    image = np.clip(60 + 50 * (np.cos(angle) * xx + np.sin(angle) * yy), 0, 255).astype(np.uint8)
    for _ in range(5):
        x, y = (int(v) for v in rng.integers(4, size - 4, 2))
        radius, value = int(rng.integers(4, 12)), int(rng.integers(120, 256))
        if rng.random() < 0.5:
            cv2.circle(image, (x, y), radius, value, -1)
        else:
            cv2.rectangle(image, (x - radius, y - radius), (x + radius, y), value, -1)
    return image


def gamma(image: np.ndarray, value: float) -> np.ndarray:
    return np.round(255 * (image / 255.0) ** value).astype(np.uint8)


def resized(image: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def _save(root: Path, relative: str, image: np.ndarray) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


# Near-duplicate groups written by write_dataset (clusters the split must find), by hand:
GROUPS = [
    {"Training/notumor/a.png", "Training/notumor/a_big.png", "Training/notumor/a_gamma.png"},
    {"Training/notumor/b.png", "Training/notumor/b_copy.png"},
    {"Training/notumor/c.png", "Testing/notumor/c_small.png"},
    {"Testing/notumor/d.png", "Testing/notumor/d16.png"},
    {"Training/glioma/g1.png", "Training/glioma/g1_contrast.png"},
    {"Training/glioma/conflict.png", "Training/notumor/conflict.png"},
]
SINGLES = ["Training/notumor/e.png", "Testing/glioma/g2.png", "Testing/glioma/g3.png"]
ERRORS = ["Training/notumor/corrupt.jpg", "Training/notumor/text.jpg", "Training/stray.png"]


def write_dataset(root: Path) -> Path:
    """A tiny dataset in the Kaggle layout exercising every manifest/split rule."""
    images = {name: shapes_image(seed) for seed, name in enumerate("abcdegGhx")}
    _save(root, "Training/notumor/a.png", images["a"])
    _save(root, "Training/notumor/a_big.png", resized(images["a"], 96))
    _save(root, "Training/notumor/a_gamma.png", gamma(images["a"], 0.7))
    _save(root, "Training/notumor/b.png", images["b"])
    (root / "Training/notumor/b_copy.png").write_bytes(
        (root / "Training/notumor/b.png").read_bytes()
    )
    _save(root, "Training/notumor/c.png", images["c"])
    _save(root, "Testing/notumor/c_small.png", resized(images["c"], 40))
    _save(root, "Testing/notumor/d.png", images["d"])
    _save(root, "Testing/notumor/d16.png", images["d"].astype(np.uint16) * 257)
    _save(root, "Training/notumor/e.png", images["e"])
    _save(root, "Training/glioma/g1.png", images["g"])
    _save(
        root, "Training/glioma/g1_contrast.png", np.clip(images["g"] * 1.2, 0, 255).astype(np.uint8)
    )
    _save(root, "masks/Training/glioma/g1.png", (images["g"] > 128).astype(np.uint8) * 255)
    _save(root, "Testing/glioma/g2.png", images["G"])
    _save(root, "Testing/glioma/g3.png", images["h"])
    _save(root, "Training/glioma/conflict.png", images["x"])
    _save(root, "Training/notumor/conflict.png", images["x"])
    jpeg = cv2.imencode(".jpg", images["e"])[1].tobytes()
    (root / "Training/notumor/corrupt.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "Training/notumor/text.jpg").write_text("not an image\n")
    _save(root, "Training/stray.png", images["e"])
    _save(root, "Training/meningioma/m1.png", images["a"])
    _save(root, "Testing/meningioma/m2.png", images["b"])
    (root / "Testing/pituitary").mkdir(parents=True)
    return root


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "raw")


@pytest.fixture()
def manifest(dataset: Path):
    return build_manifest(dataset, FILTER, MAX_PIXELS)


def _by_path(rows: list[dict]) -> dict[str, dict]:
    return {row["path"]: row for row in rows}


# ---------------------------------------------------------------------------------- manifest
def test_rows_have_all_fields_sorted_and_labelled(dataset: Path, manifest) -> None:
    expected = set().union(*GROUPS) | set(SINGLES) | set(ERRORS)
    paths = [row["path"] for row in manifest.rows]
    assert paths == sorted(expected)
    assert all(tuple(row) == MANIFEST_FIELDS for row in manifest.rows)
    rows = _by_path(manifest.rows)
    a_big = rows["Training/notumor/a_big.png"]
    data = (dataset / a_big["path"]).read_bytes()
    assert a_big["sha256"] == hashlib.sha256(data).hexdigest()
    assert (a_big["bytes"], a_big["width"], a_big["height"]) == (len(data), 96, 96)
    assert (a_big["channels"], a_big["bit_depth"], a_big["label"]) == (1, 8, "healthy")
    assert rows["Testing/notumor/d16.png"]["bit_depth"] == 16
    assert rows["Testing/glioma/g2.png"]["label"] == "anomaly"
    assert rows["Testing/glioma/g2.png"]["folder"] == "Testing"
    assert rows["Training/glioma/g1.png"]["mask_path"] == "masks/Training/glioma/g1.png"
    assert rows["Training/glioma/g1_contrast.png"]["mask_path"] == ""
    assert all(len(rows[p]["phash"]) == 16 for p in rows if p not in ERRORS)


def test_errors_are_kept_as_rows_with_reasons(manifest) -> None:
    rows = _by_path(manifest.rows)
    assert {p for p, row in rows.items() if row["error"]} == set(ERRORS)
    assert "truncated" in rows["Training/notumor/corrupt.jpg"]["error"]
    assert "not a readable image" in rows["Training/notumor/text.jpg"]["error"]
    assert rows["Training/stray.png"]["error"] == "not inside a class folder"
    for path in ERRORS:
        assert (rows[path]["width"], rows[path]["height"], rows[path]["phash"]) == (0, 0, "")
    assert rows["Training/notumor/corrupt.jpg"]["sha256"]  # read, hashed, then quarantined


def test_excluded_classes_counted_and_empty_class_warned(manifest) -> None:
    assert manifest.excluded == {"meningioma": 2}
    assert any("Testing/pituitary" in w and "empty" in w for w in manifest.warnings)


def test_fingerprint_is_order_free_and_tracks_bytes(dataset: Path, manifest) -> None:
    lines = sorted(f"{row['path']}\t{row['sha256']}\n" for row in manifest.rows)
    assert manifest.fingerprint == hashlib.sha256("".join(lines).encode()).hexdigest()
    assert fingerprint(list(reversed(manifest.rows))) == manifest.fingerprint
    target = dataset / "Testing/notumor/d.png"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    assert build_manifest(dataset, FILTER, MAX_PIXELS).fingerprint != manifest.fingerprint


def test_manifest_round_trip_and_broken_line(tmp_path: Path, manifest) -> None:
    path = tmp_path / "manifest.jsonl"
    write_manifest(path, manifest)
    assert read_manifest(path) == manifest.rows
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], "{broken", *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"manifest\.jsonl:3"):
        read_manifest(path)


def test_root_without_class_folders_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "Training").mkdir()
    (tmp_path / "Training" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="expected the layout"):
        build_manifest(tmp_path, FILTER, MAX_PIXELS)


def test_odd_names_and_outside_symlink(tmp_path: Path) -> None:
    root, outside = tmp_path / "raw", tmp_path / "outside.png"
    _save(root, "Training/notumor/ok.png", shapes_image(1))
    _save(tmp_path, "outside.png", shapes_image(2))
    (root / "Training/notumor/link.png").symlink_to(outside)
    odd = os.fsdecode(b"Training/notumor/\xff\xfe-" + b"n" * 200 + b".png")
    (root / odd).write_bytes((root / "Training/notumor/ok.png").read_bytes())
    rows = _by_path(build_manifest(root, FILTER, MAX_PIXELS).rows)
    assert rows["Training/notumor/link.png"]["error"] == "symlink points outside the dataset"
    assert (
        rows[odd]["error"] == "" and rows[odd]["phash"] == rows["Training/notumor/ok.png"]["phash"]
    )
    path = tmp_path / "m.jsonl"
    write_manifest(path, build_manifest(root, FILTER, MAX_PIXELS))
    assert odd in {row["path"] for row in read_manifest(path)}


# ---------------------------------------------------------------------------------- pHash
def test_phash_robust_to_resize_gamma_and_contrast() -> None:
    for seed in range(6):
        image = shapes_image(seed)
        reference = perceptual_hash(image / 255.0)
        variants = [
            resized(image, 96),
            resized(image, 32),
            gamma(image, 0.7),
            gamma(image, 1.4),
            np.clip(image * 1.3 - 20, 0, 255).astype(np.uint8),
        ]
        for variant in variants:
            assert hamming(reference, perceptual_hash(variant / 255.0)) <= 8


def test_phash_separates_different_slices() -> None:
    hashes = [perceptual_hash(shapes_image(seed) / 255.0) for seed in range(12)]
    distances = [hamming(a, b) for k, a in enumerate(hashes) for b in hashes[k + 1 :]]
    assert min(distances) > HASH_DISTANCE


def test_hamming_counts_bits_and_checks_length() -> None:
    assert hamming("0" * 16, "f" * 16) == 64
    assert hamming("0" * 15 + "3", "0" * 16) == 2
    with pytest.raises(ValueError, match="16 hex"):
        hamming("abc", "0" * 16)
    with pytest.raises(ValueError, match="2-D"):
        perceptual_hash(np.zeros((4, 4, 3)))
