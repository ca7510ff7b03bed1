"""The ``nifti`` source (``brainad.data.volume_source``): volumes sliced into the pipeline's
layout, manifest rows with subject / slice / volume sha256, masks for the pixel metrics, bad
volumes rejected with their reason."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
from helpers.volumes import phantom_volume, write_nifti

from brainad.config import load_study
from brainad.data.arrays import preprocess_files
from brainad.data.imageio import read_image
from brainad.data.manifest import build_manifest
from brainad.data.sources import acquire
from brainad.data.volumes import read_nifti, slice_volume

ROOT = Path(__file__).resolve().parents[1]
STUDY = load_study("demo", ROOT / "params.yaml")
FILTER = dataclasses.replace(
    STUDY.filter, healthy_classes=("healthy",), anomaly_classes=("anomalous",)
)


def _source(uri: Path):
    return dataclasses.replace(STUDY.source, kind="nifti", uri=str(uri))


@pytest.fixture(scope="module")
def acquired(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("volumes")
    for i in range(2):
        write_nifti(folder / "healthy" / f"sub-{i}.nii.gz", phantom_volume(5, seed=i)[0])
    data, seg = phantom_volume(5, seed=5, tumour=True)
    seg[:, :, 2] = 0  # one selected slice without the anomaly
    write_nifti(folder / "anomalous" / "pat-0.nii.gz", data)
    write_nifti(folder / "anomalous" / "pat-0_seg.nii.gz", seg)
    write_nifti(folder / "anomalous" / "pat-1.nii.gz", phantom_volume(5, seed=6, tumour=True)[0])
    (folder / "healthy" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really")
    (folder / "healthy" / "notes.txt").write_text("hello")
    raw = tmp_path_factory.mktemp("raw") / "raw"
    result = acquire(_source(folder), STUDY.phantom, raw, raw.parent / "dl", STUDY.volume)
    manifest = build_manifest(raw, FILTER, STUDY.preprocess.max_pixels)
    return {"folder": folder, "raw": raw, "record": result.record, "manifest": manifest}


def test_every_selected_slice_is_a_manifest_row_with_subject_and_volume_hash(acquired) -> None:
    rows = acquired["manifest"].rows
    by_subject: dict[str, list[int]] = {}
    for row in rows:
        by_subject.setdefault(row["subject"], []).append(row["slice"])
    assert by_subject == {
        "pat-0": [1, 3],
        "pat-1": [1, 2, 3],
        "sub-0": [1, 2, 3],
        "sub-1": [1, 2, 3],
    }
    volume = acquired["folder"] / "healthy" / "sub-0.nii.gz"
    digest = hashlib.sha256(volume.read_bytes()).hexdigest()
    assert {r["volume_sha256"] for r in rows if r["subject"] == "sub-0"} == {digest}
    assert {r["label"] for r in rows if r["subject"].startswith("pat")} == {"anomaly"}
    assert not acquired["manifest"].warnings and not any(r["error"] for r in rows)


def test_slices_are_the_scoring_slices_and_masks_follow(acquired) -> None:
    volume = read_nifti(acquired["folder"] / "healthy" / "sub-1.nii.gz", STUDY.volume)
    slices = slice_volume(volume, STUDY.volume)
    stored = read_image(acquired["raw"] / "Volumes/healthy/sub-1_z0002.png", 10**6).gray
    assert np.array_equal(stored, slices.images[1])
    rows = [r for r in acquired["manifest"].rows if r["subject"] == "pat-0"]
    assert all(r["mask_path"] for r in rows)
    out = preprocess_files(acquired["raw"], rows, STUDY.preprocess)
    assert out.arrays.has_lesion_mask.all() and out.arrays.lesion_masks.any(axis=(1, 2, 3)).all()


def test_bad_volumes_and_other_files_are_rejected_with_reasons(acquired) -> None:
    rejected = {r["member"]: r["reason"] for r in acquired["record"]["rejected"]}
    assert "not a readable NIfTI file" in rejected["healthy/broken.nii.gz"]
    assert rejected["healthy/notes.txt"] == "not a NIfTI file"
    assert acquired["record"]["volumes"] == 4 and acquired["record"]["n_files"] == 11


def test_a_folder_without_the_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    with pytest.raises(ValueError, match="neither healthy/ nor anomalous/"):
        acquire(
            _source(tmp_path / "scans"), STUDY.phantom, tmp_path / "raw", tmp_path, STUDY.volume
        )
