"""Volumes as slices (``brainad.data.volumes``, ``brainad.data.dicom``): reading, reorientation
to RAS, slice selection and windowing, maps back into the input's grid, DICOM series assembly
(order, affine, privacy) and every refusal naming the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.volumes import phantom_volume, write_dicom_series, write_nifti

from brainad.config import load_study
from brainad.data import dicom
from brainad.data.imageio import read_image
from brainad.data.preprocess import preprocess_slice, restore_map
from brainad.data.volumes import (
    Volume,
    VolumeError,
    canonical,
    read_nifti,
    save_nifti,
    slice_image,
    slice_volume,
    volume_map,
    window,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = load_study("demo", ROOT / "params.yaml")
VOLUME = CONFIG.volume
SAGITTAL = np.array([[0, 0, -1.5, 40], [1, 0, 0, -30], [0, 1, 0, -20], [0, 0, 0, 1.0]])


def test_reorientation_is_nibabel_s_closest_canonical_and_maps_go_back_exactly() -> None:
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    for affine in (np.diag([2.0, 2, 3, 1]), SAGITTAL, np.diag([-1.0, 1, -1, 1])):
        volume = Volume("v", data, affine, "")
        ras, _ = canonical(volume)
        expected = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
        assert np.array_equal(ras, expected.get_fdata(dtype=np.float32))
        slices = slice_volume(volume, dataclasses.replace(VOLUME, min_brain_fraction=0.0))
        maps = {k: slice_image(ras, k) for k in slices.indices}
        assert np.array_equal(volume_map(volume, slices, maps), data)


def test_brain_selection_skips_empty_slices_and_central_takes_n(tmp_path: Path) -> None:
    data, _ = phantom_volume(8)
    path = write_nifti(tmp_path / "s.nii.gz", data)
    volume = read_nifti(path, VOLUME)
    assert slice_volume(volume, VOLUME).indices == [1, 2, 3, 4, 5, 6]
    central = dataclasses.replace(VOLUME, slices="central", central_n=2)
    assert slice_volume(volume, central).indices == [3, 4]


def test_slices_are_windowed_radiological_images_like_a_16_bit_png(tmp_path: Path) -> None:
    data, _ = phantom_volume(4)
    volume = read_nifti(write_nifti(tmp_path / "s.nii", data), VOLUME)
    slices = slice_volume(volume, VOLUME)
    image = slices.images[0]
    assert image.min() == 0.0 and image.max() == 1.0
    plane = data[:, :, slices.indices[0]].astype(np.float32)
    assert np.array_equal(image, window(plane[::-1, ::-1].T, VOLUME))
    import cv2

    png = tmp_path / "slice.png"
    png.write_bytes(cv2.imencode(".png", np.round(image * 65535).astype(np.uint16))[1].tobytes())
    assert np.array_equal(read_image(png, 10**6).gray, image)  # the nifti source's PNGs


def test_restore_map_undoes_crop_pad_and_resize() -> None:
    data, _ = phantom_volume(3, size=64)
    gray = window(slice_image(data.astype(np.float32), 1), VOLUME)
    pre = preprocess_slice(gray, CONFIG.preprocess)
    top, bottom, left, right = pre.box
    assert not pre.fallback and (bottom - top, right - left) != gray.shape
    restored = restore_map(np.ones_like(pre.image), pre.box, gray.shape)
    assert restored.shape == gray.shape
    assert restored[top:bottom, left:right].min() > 0.99 and restored.sum() == pytest.approx(
        (bottom - top) * (right - left), rel=0.01
    )


def test_saved_map_has_the_affine_and_shape(tmp_path: Path) -> None:
    data = np.zeros((4, 5, 6), np.float32)
    save_nifti(tmp_path / "m.nii.gz", data, SAGITTAL)
    loaded = nib.load(str(tmp_path / "m.nii.gz"))
    assert loaded.shape == (4, 5, 6) and np.allclose(loaded.affine, SAGITTAL)


# ------------------------------------------------------------------------------- refusals
def _refused(path: Path, *words: str, config=VOLUME) -> None:
    with pytest.raises(VolumeError) as caught:
        read_nifti(path, config)
    assert caught.value.path == str(path)
    for word in words:
        assert word in caught.value.reason


def test_truncated_nifti_is_refused(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "t.nii.gz", phantom_volume(4)[0])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _refused(path, "not a readable NIfTI file", "truncated")


def test_4d_volume_is_refused_unless_params_say_first_volume(tmp_path: Path) -> None:
    data = np.stack([phantom_volume(4)[0]] * 2, axis=-1)
    path = write_nifti(tmp_path / "f.nii.gz", data)
    _refused(path, "4-D", "take_first_volume")
    first = read_nifti(path, dataclasses.replace(VOLUME, take_first_volume=True))
    assert first.data.shape == data.shape[:3] and "first volume" in first.notes[0]


def test_2d_nifti_is_refused(tmp_path: Path) -> None:
    _refused(write_nifti(tmp_path / "p.nii", np.ones((8, 8), np.float32)), "2-D image")


def test_nan_and_inf_voxels_are_refused(tmp_path: Path) -> None:
    data = phantom_volume(4)[0].astype(np.float32)
    data[3, 3, 1], data[4, 4, 2] = np.nan, np.inf
    _refused(write_nifti(tmp_path / "n.nii.gz", data), "2 voxels are NaN or infinite")


def test_singular_affine_is_refused(tmp_path: Path) -> None:
    image = nib.Nifti1Image(phantom_volume(4)[0], np.eye(4))
    image.set_sform(np.eye(4), 1)
    image.set_qform(np.eye(4), 0)
    raw = bytearray(image.to_bytes())
    raw[312:328] = bytes(16)  # srow_z = 0: the third axis has no direction
    path = tmp_path / "s.nii"
    path.write_bytes(bytes(raw))
    _refused(path, "singular")


def test_non_axial_acquisition_gives_axial_slices_and_says_so(tmp_path: Path) -> None:
    ras = phantom_volume(6)[0]
    data = np.transpose(ras, (1, 2, 0))  # stored sagittally: voxel axes A, S, R (slices along R)
    affine = np.array([[0.0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    volume = read_nifti(write_nifti(tmp_path / "sag.nii.gz", data, affine), VOLUME)
    slices = slice_volume(volume, VOLUME)
    assert "non-axial acquisition" in slices.notes[-1]
    assert "voxel axes ASR" in slices.notes[-1]
    assert slices.indices == [1, 2, 3, 4] and slices.ras_shape == (64, 64, 6)
    assert np.array_equal(slices.images[0], window(slice_image(ras.astype(np.float32), 1), VOLUME))


# ----------------------------------------------------------------------------------- DICOM
def test_dicom_series_is_sorted_by_position_with_an_ras_affine(tmp_path: Path) -> None:
    data, _ = phantom_volume(5)
    files = write_dicom_series(tmp_path / "s", data, spacing=2.5)
    series, problems = dicom.group_series(files)
    assert not problems and len(series) == 1
    volume = dicom.read_series(series[0], VOLUME)
    assert np.array_equal(volume.data, data.astype(np.float32))  # order restored from positions
    expected = np.array([[-1.0, 0, 0, 32], [0, -1, 0, 32], [0, 0, 2.5, 0], [0, 0, 0, 1]])
    assert np.allclose(volume.affine, expected)
    assert series[0].name.startswith("s_series-") and len(series[0].name) == len("s_series-") + 12


def test_two_series_in_one_tree_are_two_volumes(tmp_path: Path) -> None:
    files = write_dicom_series(tmp_path / "a", phantom_volume(3, seed=1)[0])
    files += write_dicom_series(tmp_path / "a" / "b", phantom_volume(4, seed=2)[0])
    series, _ = dicom.group_series(files)
    assert sorted(len(s.files) for s in series) == [3, 4]


def test_series_with_inconsistent_spacing_is_refused(tmp_path: Path) -> None:
    files = write_dicom_series(tmp_path / "s", phantom_volume(5)[0], gaps=[2, 2, 5, 2])
    with pytest.raises(VolumeError, match="inconsistent slice spacing"):
        dicom.read_series(dicom.group_series(files)[0][0], VOLUME)


def test_series_with_mixed_sizes_is_refused(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.1"
    files = write_dicom_series(tmp_path / "s", phantom_volume(4)[0], series_uid=uid)
    files += write_dicom_series(tmp_path / "s" / "x", phantom_volume(3, size=48)[0], series_uid=uid)
    with pytest.raises(VolumeError, match="mixed slice sizes"):
        dicom.read_series(dicom.group_series(files)[0][0], VOLUME)
