"""Tiny synthetic volumes for the volume tests: phantom slices stacked into a 3-D grid, written
as NIfTI (nibabel) or as a DICOM series (pydicom) by the tests themselves. No shipped data."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from brainad.data.phantom import CONTRASTS, render_slice
from brainad.data.volumes import image_slice

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-SECRET-4711"


def phantom_volume(
    n_slices: int = 6, size: int = 64, seed: int = 0, tumour: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """uint16 (X, Y, Z) RAS voxels whose inner slices are phantom heads (the first and last are
    empty, so ``volume.slices: brain`` skips them), and the tumour mask (uint8, same shape)."""
    rng = np.random.default_rng(seed)
    data = np.zeros((size, size, n_slices), np.uint16)
    seg = np.zeros((size, size, n_slices), np.uint8)
    for k in range(1, n_slices - 1):
        rendered = render_slice(rng, size, CONTRASTS[seed % len(CONTRASTS)], tumour=tumour)
        data[:, :, k] = image_slice(rendered.image.astype(np.uint16) * 16)
        seg[:, :, k] = image_slice(rendered.tumour_mask.astype(np.uint8))
    return data, seg


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """``data`` as a NIfTI file (``.nii`` or ``.nii.gz`` by the name) with ``affine``."""
    affine = np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def write_dicom_series(
    folder: Path,
    data: np.ndarray,
    spacing: float = 2.0,
    gaps: list[float] | None = None,
    series_uid: str | None = None,
) -> list[Path]:
    """``data`` (columns, rows, slices) as an axial DICOM MR series, one file per slice, written
    in reverse order with shuffled names (the reader must sort by position). ``gaps`` overrides
    the slice positions' spacing per gap. Patient tags carry :data:`PATIENT_NAME` / ``ID``."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    study = generate_uid()
    positions = np.concatenate([[0.0], np.cumsum(gaps or [spacing] * (data.shape[2] - 1))])
    paths = []
    for k in range(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{(7 * k + 3) % 101:04d}"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, "19700101"
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "MR", study, uid
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-32.0, -32.0, float(positions[k])]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], spacing
        plane = np.ascontiguousarray(data[:, :, k].T.astype(np.uint16))  # (rows, columns)
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = plane.tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths


def read_dicom(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(str(path))


# BraTS-style cases: file names of each naming scheme (the brats source's presets)
BRATS_FILES = {
    "brats2013": {
        "flair": "Flair_subtrMeanDivStd.nii.gz",
        "t1c": "T1c_subtrMeanDivStd.nii.gz",
        "label": "OTMultiClass.nii.gz",
        "brainmask": "brainmask.nii.gz",
    },
    "brats2018": {
        "flair": "{case}_flair.nii.gz",
        "t1c": "{case}_t1ce.nii.gz",
        "label": "{case}_seg.nii.gz",
    },
    "brats2023": {
        "flair": "{case}-t2f.nii.gz",
        "t1c": "{case}-t1c.nii.gz",
        "label": "{case}-seg.nii.gz",
    },
}


def brats_case(
    root: Path, case: str, naming: str = "brats2018", seed: int = 0, size: int = 32, depth: int = 16
) -> dict[str, Path]:
    """Write one synthetic BraTS-style case: an ellipsoid brain (zero background) with a bright
    FLAIR tumour sphere (label 2, core 1) in its middle slices, a T1c with an enhancing rim and
    a dark core; a brain mask file where the naming has one. Returns ``{role: path}``."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(np.arange(size), np.arange(size), np.arange(depth), indexing="ij")
    c = (size - 1) / 2
    brain = ((x - c) / (0.42 * size)) ** 2 + ((y - c) / (0.46 * size)) ** 2 + (
        (z - (depth - 1) / 2) / (0.48 * depth)
    ) ** 2 <= 1
    centre = np.array([c + rng.uniform(-0.15, 0.15) * size, c, (depth - 1) / 2])
    radius = 0.18 * size
    distance = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + ((z - centre[2]) * 2) ** 2)
    tumour = (distance <= radius) & brain
    core = (distance <= radius / 2) & brain
    flair = np.where(brain, 1.0 + 0.15 * rng.standard_normal(brain.shape), 0.0)
    flair[tumour] += 1.5
    t1c = np.where(brain, 1.0 + 0.15 * rng.standard_normal(brain.shape), 0.0)
    t1c[tumour & ~core] += 1.0
    t1c[core] -= 0.6
    label = np.where(core, 1, np.where(tumour, 2, 0)).astype(np.uint8)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS voxel axes, as the BraTS files
    volumes = {"flair": flair.astype(np.float32), "t1c": t1c.astype(np.float32), "label": label}
    if "brainmask" in BRATS_FILES[naming]:
        volumes["brainmask"] = brain.astype(np.float64)
    folder = root / case
    return {
        role: write_nifti(folder / BRATS_FILES[naming][role].format(case=case), data, affine)
        for role, data in volumes.items()
    }
