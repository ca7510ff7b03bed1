"""DICOM series → :class:`brainad.data.volumes.Volume` (then sliced like a NIfTI volume).

Files are grouped by ``SeriesInstanceUID`` (a folder of one series, or a DICOMDIR-less folder
tree of several); within a series the slices are ordered by ``ImagePositionPatient`` projected on
the slice normal (the cross product of the two ``ImageOrientationPatient`` directions). The
volume's grid is (column, row, slice) and its affine maps it to RAS millimetres (DICOM's patient
coordinates are LPS, so x and y change sign).

Privacy: a series is named in outputs and logs only by its folder and the first 12 hex digits of
the sha256 of its ``SeriesInstanceUID`` (:func:`series_name`); no other tag value (PatientName,
PatientID, dates, institution ...) is ever copied into a name, a row, a reason or a log line.

Refused, each with a :class:`~brainad.data.volumes.VolumeError` naming the file or series: a file
that is not DICOM or has no pixel data (its own row; the rest of its series is scored), a multi-frame or colour image, a series with mixed slice
sizes or orientations, missing or coincident slice positions, inconsistent slice spacing, pixel
data in a compressed transfer syntax that the installed decoders cannot read (the syntax is named).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from brainad.config import VolumeConfig
from brainad.data.volumes import Volume, VolumeError, check_volume
from brainad.utils import file_sha256

log = logging.getLogger("brainad")

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_SPACING_TOLERANCE = 0.1  # a gap may differ from the median gap by this fraction
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
NO_PIXELS = "DICOM file without pixel data (a report, presentation state or similar); not scored"


class Series(NamedTuple):
    """The files of one series (headers read, pixels not yet).

    Args:
        name: output name (:func:`series_name`).
        folder: the folder holding its files (their common parent).
        files: file paths, in the order found.
        sha256: sha256 over the sorted sha256 of its files.
    """

    name: str
    folder: Path
    files: list[Path]
    sha256: str


class Problem(NamedTuple):
    """A file that is not part of any usable series, and why."""

    path: Path
    reason: str


def looks_like_dicom(path: Path) -> bool:
    """A DICOM suffix, or the ``DICM`` magic at byte 128 (regular files without a suffix; a fifo
    or device is never opened)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def series_name(folder: Path, uid: str) -> str:
    """``<folder name>_series-<sha256(SeriesInstanceUID)[:12]>`` (no tag value in clear)."""
    digest = hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:12]
    stem = _UNSAFE.sub("_", folder.name)[:60] or "dicom"
    return f"{stem}_series-{digest}"


def _read(path: Path, pixels: bool) -> Any:
    """The dataset; without ``pixels`` large values (the pixel data) are not loaded, but whether
    the file has pixel data is known."""
    import pydicom

    with warnings.catch_warnings():  # pydicom warnings may quote tag values: never shown
        warnings.simplefilter("ignore")
        return pydicom.dcmread(str(path), defer_size=None if pixels else 1024)


def group_series(files: Sequence[Path]) -> tuple[list[Series], list[Problem]]:
    """Group DICOM files by ``SeriesInstanceUID``; unreadable files are problems."""
    by_uid: dict[str, list[Path]] = {}
    problems = []
    for path in files:
        try:
            header = _read(path, pixels=False)
        except Exception as exc:  # InvalidDicomError, EOFError, OSError ...
            problems.append(Problem(path, f"not a readable DICOM file ({type(exc).__name__})"))
            continue
        uid = str(header.get("SeriesInstanceUID", "") or "")
        if "PixelData" not in header:
            problems.append(Problem(path, NO_PIXELS))
            continue
        if not uid:
            problems.append(Problem(path, "DICOM file without a SeriesInstanceUID"))
            continue
        by_uid.setdefault(uid, []).append(path)
    series = []
    for uid, members in by_uid.items():
        folder = Path(_common_parent(members))
        digest = hashlib.sha256("".join(sorted(file_sha256(p) for p in members)).encode())
        series.append(Series(series_name(folder, uid), folder, members, digest.hexdigest()))
    return series, problems


def _common_parent(paths: Sequence[Path]) -> str:
    return os.path.commonpath([str(p.parent) for p in paths])


# ----------------------------------------------------------------------------------- assembly
class _Slice(NamedTuple):
    path: Path
    pixels: np.ndarray  # float32 (rows, columns), rescaled
    position: np.ndarray  # ImagePositionPatient (LPS mm)
    orientation: np.ndarray  # ImageOrientationPatient (6,)
    spacing: tuple[float, float]  # PixelSpacing (row spacing, column spacing)
    thickness: float


def _pixels(ds: Any, path: Path) -> np.ndarray:
    if "PixelData" not in ds:
        raise VolumeError(path, NO_PIXELS)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise VolumeError(path, "multi-frame DICOM image: not supported; export single frames")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise VolumeError(path, "colour DICOM image: brainad scores grayscale MR")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = ds.pixel_array
    except Exception as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        if syntax is not None and syntax.is_compressed:
            raise VolumeError(
                path,
                f"pixel data in the compressed transfer syntax '{syntax.name}' ({syntax}) cannot "
                f"be decoded by the installed decoders ({detail}); convert the series to an "
                "uncompressed syntax (e.g. gdcmconv --raw, dcmdjpeg) or install pylibjpeg",
            ) from None
        raise VolumeError(path, f"pixel data cannot be decoded ({detail})") from None
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return np.asarray(array, np.float32) * slope + intercept


def _slice(path: Path) -> _Slice:
    try:
        ds = _read(path, pixels=True)
    except Exception as exc:
        raise VolumeError(path, f"not a readable DICOM file ({type(exc).__name__})") from None
    pixels = _pixels(ds, path)
    try:
        position = np.array([float(v) for v in ds.ImagePositionPatient], np.float64)
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient], np.float64)
    except (AttributeError, TypeError, ValueError):
        raise VolumeError(
            path, "no ImagePositionPatient/ImageOrientationPatient: the slice cannot be placed"
        ) from None
    spacing = ds.get("PixelSpacing") or [1.0, 1.0]
    thickness = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    if position.shape != (3,) or orientation.shape != (6,):
        raise VolumeError(path, "malformed ImagePositionPatient/ImageOrientationPatient")
    return _Slice(
        path, pixels, position, orientation, (float(spacing[0]), float(spacing[1])), thickness
    )


def _check_consistent(series: Series, slices: list[_Slice]) -> None:
    shapes = sorted({s.pixels.shape for s in slices})
    if len(shapes) > 1:
        raise VolumeError(
            series.folder,
            f"series {series.name}: mixed slice sizes {shapes}; a series must have one size",
        )
    first = slices[0]
    for s in slices[1:]:
        if not np.allclose(s.orientation, first.orientation, atol=1e-3):
            raise VolumeError(
                series.folder, f"series {series.name}: slices with different orientations"
            )
        if not np.allclose(s.spacing, first.spacing, rtol=1e-3):
            raise VolumeError(series.folder, f"series {series.name}: mixed pixel spacings")


def _order(series: Series, slices: list[_Slice]) -> tuple[list[_Slice], np.ndarray, float]:
    """Slices sorted along the normal, the normal, and the slice spacing (mm)."""
    row, column = slices[0].orientation[:3], slices[0].orientation[3:]
    normal = np.cross(row, column)
    if np.linalg.norm(normal) < 1e-6:
        raise VolumeError(series.folder, f"series {series.name}: degenerate orientation")
    ordered = sorted(slices, key=lambda s: float(s.position @ normal))
    if len(ordered) == 1:
        return ordered, normal, ordered[0].thickness
    depth = np.array([float(s.position @ normal) for s in ordered])
    gaps = np.diff(depth)
    median = float(np.median(gaps))
    if gaps.min() <= 1e-4:
        raise VolumeError(
            series.folder, f"series {series.name}: two slices share a position (duplicate files?)"
        )
    if np.abs(gaps - median).max() > _SPACING_TOLERANCE * median + 1e-3:
        raise VolumeError(
            series.folder,
            f"series {series.name}: inconsistent slice spacing (gaps from {gaps.min():.3g} to "
            f"{gaps.max():.3g} mm); missing slices or several acquisitions in one series",
        )
    return ordered, normal, median


def read_series(series: Series, config: VolumeConfig) -> Volume:
    """Read the pixels of ``series`` into a volume with its RAS affine.

    Raises:
        VolumeError: the first file or series property that prevents building the volume.
    """
    slices = [_slice(path) for path in series.files]
    _check_consistent(series, slices)
    ordered, normal, gap = _order(series, slices)
    first = ordered[0]
    row_spacing, column_spacing = first.spacing
    lps = np.eye(4)
    lps[:3, 0] = first.orientation[:3] * column_spacing  # voxel i: along a row (next column)
    lps[:3, 1] = first.orientation[3:] * row_spacing  # voxel j: down a column (next row)
    lps[:3, 2] = normal * gap
    lps[:3, 3] = first.position
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS
    data = np.stack([s.pixels.T for s in ordered], axis=-1)  # (columns, rows, slices)
    data, notes = check_volume(data, affine, series.folder, config)
    return Volume(series.name, data, affine, series.sha256, notes)
