"""``brainad score`` on volumes (issue 16): NIfTI files, DICOM series and 2-D images in one call;
per-slice and per-volume rows; NIfTI maps with the input's affine and shape; a real scanner file
from pydicom's own test data; every bad volume a quarantine row naming the file; no patient
identifier in any output or log line; ``--resume`` skips recorded volumes."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest
from helpers.scorer_bundle import write_bundle
from helpers.volumes import (
    PATIENT_ID,
    PATIENT_NAME,
    phantom_volume,
    read_dicom,
    write_dicom_series,
    write_nifti,
)
from pydicom.data import get_testdata_file

from brainad.cli import main
from brainad.config import load_study
from brainad.data.volumes import slice_image, window

ROOT = Path(__file__).resolve().parents[1]
VOLUME = load_study("demo", ROOT / "params.yaml").volume
AFFINE = np.array([[0.9, 0, 0, -30.0], [0, 1.1, 0, -40], [0, 0, 2.5, 12], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundle") / "vqgan.pt")


def score(bundle: Path, *inputs: object, out: Path, maps: str = "top-5", extra=()) -> int:
    args = ["score", "--model", str(bundle), *map(str, inputs), "--out", str(out)]
    return main([*args, "--maps", maps, "--workers", "0", *extra])


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "scores.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.round(image * 65535).astype(np.uint16))[1].tobytes()


@pytest.fixture(scope="module")
def mixed(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One call on a NIfTI file, a DICOM folder and a PNG (slice 2 of the NIfTI, as 16 bits)."""
    tmp = tmp_path_factory.mktemp("mixed")
    data, _ = phantom_volume(6, seed=3)
    scan = write_nifti(tmp / "scan.nii.gz", data, AFFINE)
    series = phantom_volume(5, seed=4)[0]
    write_dicom_series(tmp / "dicom_folder" / "t1", series, spacing=3.0)
    (tmp / "img.png").write_bytes(_png(window(slice_image(data.astype(np.float32), 2), VOLUME)))
    code = score(bundle, scan, tmp / "dicom_folder", tmp / "img.png", out=tmp / "out")
    return {"tmp": tmp, "code": code, "rows": rows(tmp / "out"), "data": data, "series": series}


def _of(table: list[dict], level: str, name: str = "") -> list[dict]:
    return [r for r in table if r["level"] == level and name in r["volume"]]


def test_mixed_inputs_give_slice_volume_and_image_rows(mixed: dict) -> None:
    assert mixed["code"] == 0
    table = mixed["rows"]
    assert len(_of(table, "image")) == 1
    for name, indices in (("scan", ["1", "2", "3", "4"]), ("t1_series-", ["1", "2", "3"])):
        slices, (volume,) = _of(table, "slice", name), _of(table, "volume", name)
        assert [r["slice"] for r in slices] == indices
        scores = np.array([float(r["score"]) for r in slices])
        assert float(volume["score"]) == scores.max()
        assert volume["slice"] == slices[int(scores.argmax())]["slice"]
        assert float(volume["top_k_mean"]) == pytest.approx(np.sort(scores)[-3:].mean())
        assert volume["prediction"] == str(int(any(r["prediction"] == "1" for r in slices)))


def test_a_slice_scores_like_the_same_slice_as_a_16_bit_png(mixed: dict) -> None:
    (image,) = _of(mixed["rows"], "image")
    slice_two = next(r for r in _of(mixed["rows"], "slice", "scan") if r["slice"] == "2")
    assert float(image["score"]) == pytest.approx(float(slice_two["score"]), abs=1e-6)


def test_nifti_map_has_the_input_s_affine_and_shape(mixed: dict) -> None:
    (volume,) = _of(mixed["rows"], "volume", "scan")
    loaded = nib.load(str(mixed["tmp"] / "out" / volume["map"]))
    assert loaded.shape == mixed["data"].shape
    assert np.allclose(loaded.affine, AFFINE)
    values = np.asarray(loaded.dataobj)
    assert values[:, :, 0].max() == 0 and values[:, :, 5].max() == 0  # slices not scored
    assert all(values[:, :, k].max() > 0 for k in range(1, 5))
    head = mixed["data"][:, :, 2] > 0
    assert values[:, :, 2][~head].mean() < values[:, :, 2][head].mean()  # map sits on the head


def test_dicom_series_gets_a_nifti_map_and_top_slice_pngs(mixed: dict) -> None:
    (volume,) = _of(mixed["rows"], "volume", "t1_series-")
    loaded = nib.load(str(mixed["tmp"] / "out" / volume["map"]))
    assert loaded.shape == mixed["series"].shape
    assert np.allclose(loaded.affine, [[-1, 0, 0, 32], [0, -1, 0, 32], [0, 0, 3, 0], [0, 0, 0, 1]])
    pngs = sorted((mixed["tmp"] / "out" / "maps").glob("*t1_series-*_slice*.png"))
    assert len(pngs) == 3  # volume.top_k


def test_no_patient_identifier_in_outputs_or_logs(bundle: Path, tmp_path: Path, caplog) -> None:
    write_dicom_series(tmp_path / "dcm", phantom_volume(4, seed=5)[0])
    assert str(read_dicom(next((tmp_path / "dcm").iterdir())).PatientName) == PATIENT_NAME
    with caplog.at_level(logging.DEBUG, logger="brainad"):
        assert score(bundle, tmp_path / "dcm", out=tmp_path / "out", maps="all") == 0
    texts = [p.read_bytes().decode("latin-1") for p in (tmp_path / "out").rglob("*") if p.is_file()]
    texts += [p.name for p in (tmp_path / "out").rglob("*")] + [caplog.text]
    for secret in (PATIENT_NAME, "Doe", PATIENT_ID, "19700101"):
        assert not any(secret in text for text in texts), secret


def test_a_real_scanner_file_from_pydicom_is_scored(bundle: Path, tmp_path: Path) -> None:
    source = get_testdata_file("MR_small.dcm", download=False)
    (tmp_path / "mr").mkdir()
    shutil.copy(source, tmp_path / "mr" / "MR_small.dcm")
    assert score(bundle, tmp_path / "mr", out=tmp_path / "out") == 0
    (volume,) = _of(rows(tmp_path / "out"), "volume")
    assert volume["status"] == "scored" and volume["slice"] == "0"
    loaded = nib.load(str(tmp_path / "out" / volume["map"]))
    assert loaded.shape == (64, 64, 1)
    expected = np.diag([-0.3125, -0.3125, 0.8, 1.0])
    expected[:3, 3] = [83.9063, 91.2, 6.6406]  # ImagePositionPatient, LPS -> RAS
    assert np.allclose(loaded.affine, expected, atol=1e-4)


def test_resume_skips_recorded_volumes_and_overwrite_clears_maps(bundle: Path, tmp_path: Path):
    scan = write_nifti(tmp_path / "in" / "a.nii.gz", phantom_volume(4, seed=6)[0])
    assert score(bundle, scan, out=tmp_path / "out") == 0
    first = (tmp_path / "out" / "scores.csv").read_bytes()
    assert score(bundle, scan, out=tmp_path / "out", extra=("--resume",)) == 0
    assert (tmp_path / "out" / "scores.csv").read_bytes() == first
    assert score(bundle, scan, out=tmp_path / "out", maps="none", extra=("--overwrite",)) == 0
    assert not (tmp_path / "out" / "maps").exists()
    assert json.loads((tmp_path / "out" / "run.json").read_text())["maps"] == "none"


# ---------------------------------------------------------------------------- bad volumes
def _bad_nifti(kind: str, folder: Path) -> Path:
    data = phantom_volume(4, seed=7)[0]
    if kind == "truncated":
        path = write_nifti(folder / "truncated.nii.gz", data)
        path.write_bytes(path.read_bytes()[:300])
        return path
    if kind == "4-D":
        return write_nifti(folder / "four.nii.gz", np.stack([data, data], -1))
    if kind == "2-D":
        return write_nifti(folder / "flat.nii", np.ones((16, 16), np.float32))
    if kind == "NaN":
        broken = data.astype(np.float32)
        broken[5, 5, 1] = np.nan
        return write_nifti(folder / "nan.nii.gz", broken)
    image = nib.Nifti1Image(data, np.eye(4))
    image.set_qform(np.eye(4), 0)
    raw = bytearray(image.to_bytes())
    raw[312:328] = bytes(16)  # srow_z = 0
    path = folder / "singular.nii"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("truncated", "not a readable NIfTI file"),
        ("4-D", "volume.take_first_volume"),
        ("2-D", "a 2-D image"),
        ("NaN", "NaN or infinite"),
        ("singular", "singular"),
    ],
)
def test_bad_nifti_is_a_quarantine_row_and_the_rest_is_scored(
    bundle: Path, tmp_path: Path, kind: str, words: str
) -> None:
    bad = _bad_nifti(kind, tmp_path / "in")
    good = write_nifti(tmp_path / "in" / "good.nii.gz", phantom_volume(4, seed=8)[0])
    assert score(bundle, bad, good, out=tmp_path / "out") == 1
    table = rows(tmp_path / "out")
    (row,) = [r for r in table if r["status"] == "quarantined"]
    assert row["path"] == str(bad) and row["level"] == "volume" and words in row["reason"]
    assert _of(table, "volume", "good")[0]["status"] == "scored"


def test_4d_volume_is_scored_by_its_first_volume_when_params_say_so(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b.pt", volume={"take_first_volume": True})
    data = phantom_volume(4, seed=9)[0]
    path = write_nifti(tmp_path / "four.nii.gz", np.stack([data, data * 0], -1))
    assert score(bundle, path, out=tmp_path / "out") == 0
    (volume,) = _of(rows(tmp_path / "out"), "volume")
    assert "only its first volume" in volume["reason"]
    assert nib.load(str(tmp_path / "out" / volume["map"])).shape == data.shape


def test_non_axial_volume_is_scored_axially_and_says_so(bundle: Path, tmp_path: Path) -> None:
    data = np.transpose(phantom_volume(6, seed=10)[0], (1, 2, 0))  # voxel axes A, S, R
    affine = np.array([[0.0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    path = write_nifti(tmp_path / "sag.nii.gz", data, affine)
    assert score(bundle, path, out=tmp_path / "out") == 0
    table = rows(tmp_path / "out")
    (volume,) = _of(table, "volume")
    assert "non-axial acquisition" in volume["reason"]
    assert [r["slice"] for r in _of(table, "slice")] == ["1", "2", "3", "4"]
    loaded = nib.load(str(tmp_path / "out" / volume["map"]))
    assert loaded.shape == data.shape and np.allclose(loaded.affine, affine)


def test_dicom_file_without_pixel_data_is_its_own_row(bundle: Path, tmp_path: Path) -> None:
    files = write_dicom_series(tmp_path / "dcm", phantom_volume(4, seed=11)[0])
    ds = read_dicom(files[0])
    del ds.PixelData
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7"
    ds.save_as(str(tmp_path / "dcm" / "report.dcm"))
    assert score(bundle, tmp_path / "dcm", out=tmp_path / "out") == 1
    table = rows(tmp_path / "out")
    (bad,) = [r for r in table if r["status"] == "quarantined"]
    assert bad["path"].endswith("report.dcm") and "without pixel data" in bad["reason"]
    assert _of(table, "volume", "dcm_series-")[0]["status"] == "scored"


@pytest.mark.parametrize(
    ("case", "words"),
    [("spacing", "inconsistent slice spacing"), ("sizes", "mixed slice sizes")],
)
def test_inconsistent_dicom_series_is_a_quarantine_row(
    bundle: Path, tmp_path: Path, case: str, words: str
) -> None:
    if case == "spacing":
        write_dicom_series(tmp_path / "dcm", phantom_volume(5, seed=12)[0], gaps=[2, 2, 6, 2])
    else:
        uid = "1.2.826.0.1.3680043.8.498.77"
        write_dicom_series(tmp_path / "dcm", phantom_volume(4, seed=12)[0], series_uid=uid)
        small = phantom_volume(3, size=48, seed=13)[0]
        write_dicom_series(tmp_path / "dcm" / "more", small, series_uid=uid)
    good = write_nifti(tmp_path / "good.nii.gz", phantom_volume(4, seed=14)[0])
    assert score(bundle, tmp_path / "dcm", good, out=tmp_path / "out") == 1
    (row,) = [r for r in rows(tmp_path / "out") if r["status"] == "quarantined"]
    assert row["path"] == str(tmp_path / "dcm") and words in row["reason"]
    assert row["volume"].startswith("dcm_series-")


def test_compressed_dicom_the_decoders_cannot_read_names_file_and_syntax(
    bundle: Path, tmp_path: Path
) -> None:
    source = get_testdata_file("MR_small_jpeg_ls_lossless.dcm", download=False)
    (tmp_path / "jls").mkdir()
    shutil.copy(source, tmp_path / "jls" / "compressed.dcm")
    assert score(bundle, tmp_path / "jls", out=tmp_path / "out") == 2
    (row,) = rows(tmp_path / "out")
    assert row["status"] == "quarantined"
    assert str(tmp_path / "jls" / "compressed.dcm") in row["reason"]
    assert "JPEG-LS Lossless Image Compression" in row["reason"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX fifo")
def test_a_fifo_without_suffix_is_never_opened_to_look_for_dicom(bundle: Path, tmp_path: Path):
    write_nifti(tmp_path / "in" / "a.nii.gz", phantom_volume(4, seed=15)[0])
    os.mkfifo(tmp_path / "in" / "pipe")  # opening it for reading would block forever
    assert score(bundle, tmp_path / "in", out=tmp_path / "out") == 0
    assert [r["level"] for r in rows(tmp_path / "out")][-1] == "volume"
