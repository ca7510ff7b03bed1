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
