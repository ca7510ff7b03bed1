"""3-D volumes (NIfTI files, DICOM series) as axial slices for the 2-D models, and maps back.

Every volume reader and writer of brainad (``brainad score``, the ``nifti`` source) goes through
this module, so a volume is sliced the same way everywhere:

1. :func:`read_nifti` (or :func:`brainad.data.dicom.read_series`) gives a :class:`Volume`: the
   voxels in the input's own grid and its affine (voxel → RAS millimetres). Bad input raises
   :class:`VolumeError` naming the file: unreadable or truncated data, a 2-D image, a 4-D volume
   (its first volume is used only with ``volume.take_first_volume``), NaN/Inf voxels, a singular
   affine.
2. :func:`slice_volume` reorients to the closest canonical orientation (RAS, exactly
   ``nibabel.as_closest_canonical``: axes permuted and flipped, never resampled; a non-axial
   acquisition is noted, its axial slices come from the reoriented grid), picks the axial slices
   (``volume.slices``: every slice whose head region covers ``min_brain_fraction`` of it, or the
   ``central_n`` around the middle of the head) and windows each slice to [0, 1] by its own
   percentiles ``window_percentiles`` (quantised to 16-bit levels, so a slice gives the same
   numbers whether it is scored directly or stored as a 16-bit PNG by the ``nifti`` source). The
   slice is then a decoded 2-D image: it goes through :func:`brainad.data.preprocess.preprocess_slice`
   like every other image.
3. Slices are shown in radiological orientation (anterior at the top, the patient's right on the
   image's left, as the 2-D datasets are): :func:`slice_image` / :func:`image_slice`.
4. :func:`volume_map` puts per-slice maps back into the input's grid (slices not scored are 0), so
   :func:`save_nifti` writes a map with the input's shape and affine that overlays in any viewer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from brainad.config import VolumeConfig
from brainad.utils import file_sha256

log = logging.getLogger("brainad")

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_FOREGROUND = 0.1  # head region: voxels above this fraction of the volume's robust range
_LEVELS = 65535.0  # windowed slices are quantised to 16-bit levels


class VolumeError(ValueError):
    """A volume that cannot be scored; ``path`` names the file (or series), ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class Volume(NamedTuple):
    """A 3-D volume in the input's own voxel grid.

    Args:
        name: a file-name-safe name for outputs (file stem, or folder + series hash for DICOM).
        data: float32 (X, Y, Z) voxels as stored in the input.
        affine: float64 (4, 4) voxel index → RAS millimetres.
        sha256: checksum of the input bytes (a series: of its files' checksums, sorted).
        notes: what was done that a user should know (first of a 4-D volume, reoriented ...).
    """

    name: str
    data: np.ndarray
    affine: np.ndarray
    sha256: str
    notes: tuple[str, ...] = ()


class Slices(NamedTuple):
    """The axial slices taken from a volume.

    Args:
        indices: slice index along the superior axis of the canonical (RAS) grid, ascending.
        images: float32 (H, W) slices in [0, 1], radiological orientation (:func:`slice_image`).
        ras_shape: shape of the canonical grid.
        notes: the volume's notes plus any added while slicing (non-axial acquisition).
    """

    indices: list[int]
    images: list[np.ndarray]
    ras_shape: tuple[int, int, int]
    notes: tuple[str, ...]


def is_nifti(name: str) -> bool:
    """True for ``.nii`` / ``.nii.gz`` names (any case)."""
    return name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(name: str) -> str:
    """``scan`` for ``scan.nii.gz`` or ``scan.nii``."""
    lower = name.lower()
    for suffix in (".nii.gz", ".nii"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


# ------------------------------------------------------------------------------------ reading
def read_nifti(path: Path, config: VolumeConfig, sha256: str = "") -> Volume:
    """Load a ``.nii`` / ``.nii.gz`` file.

    Raises:
        VolumeError: unreadable, truncated or corrupt file, or a volume :func:`check_volume` refuses.
    """
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types (EOFError, zlib.error, ImageFileError)
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise VolumeError(
            path,
            f"not a readable NIfTI file (truncated or corrupt: {type(exc).__name__}: {detail})",
        ) from None
    data, notes = check_volume(data, affine, path, config)
    return Volume(nifti_stem(path.name), data, affine, sha256 or file_sha256(path), notes)


def check_volume(
    data: np.ndarray, affine: np.ndarray, where: str | Path, config: VolumeConfig
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The voxels as float32 (X, Y, Z), checked; the notes about what was done.

    Raises:
        VolumeError: not 3-D (or 4-D with ``take_first_volume``), non-finite voxels, a singular or
            non-finite affine, a complex or structured data type.
    """
    notes: list[str] = []
    if data.dtype.kind not in "biuf":
        raise VolumeError(where, f"unsupported voxel type {data.dtype}; save it as int or float")
    if data.ndim < 3:
        raise VolumeError(
            where,
            f"a 2-D image (shape {data.shape}), not a volume; save a 2-D slice as PNG to score it",
        )
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 4 and config.take_first_volume:
        notes.append(f"4-D input (shape {data.shape}): only its first volume was used")
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(
            where,
            f"a {data.ndim}-D volume (shape {data.shape}); set volume.take_first_volume: true in "
            "params.yaml to score its first volume, or split it into 3-D volumes",
        )
    if min(data.shape[:2]) < 2:
        raise VolumeError(where, f"slices of shape {data.shape[:2]} are too small to score")
    data = np.asarray(data, dtype=np.float32)
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise VolumeError(
            where, f"{bad} voxels are NaN or infinite; fix or mask them (e.g. set them to 0)"
        )
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError(
            where,
            "the affine (voxel to world transform) is singular or not finite, so the voxels "
            "have no orientation; fix the header (sform/qform) of the file",
        )
    return data, tuple(notes)


# ------------------------------------------------------------------------------------ slicing
def _orientation(affine: np.ndarray) -> np.ndarray:
    import nibabel.orientations as orientations

    return orientations.io_orientation(affine)


def canonical(volume: Volume) -> tuple[np.ndarray, tuple[str, ...]]:
    """The voxels in the closest canonical (RAS) grid (``nibabel.as_closest_canonical``) and a
    note when the acquisition was not axial."""
    import nibabel.orientations as orientations

    ornt = _orientation(volume.affine)
    codes = "".join(orientations.ornt2axcodes(ornt))
    notes = volume.notes
    if codes[2] not in "SI":
        note = (
            f"non-axial acquisition (voxel axes {codes}): reoriented to RAS, axial slices are "
            "taken across the acquired slices"
        )
        log.info("%s: %s", volume.name, note)
        notes = (*notes, note)
    ras = orientations.apply_orientation(volume.data, ornt)
    return np.ascontiguousarray(ras, dtype=np.float32), notes


def head_fraction(ras: np.ndarray) -> np.ndarray:
    """Per axial slice of a RAS grid, the fraction of its voxels in the head region."""
    low, high = float(ras.min()), float(np.percentile(ras, 99.5))
    if high - low <= 1e-6:
        return np.zeros(ras.shape[2], np.float64)
    foreground = ras > low + _FOREGROUND * (high - low)
    return foreground.mean(axis=(0, 1))


def select_slices(ras: np.ndarray, config: VolumeConfig, where: str | Path) -> list[int]:
    """Axial slice indices to score (see :class:`brainad.config.VolumeConfig`).

    Raises:
        VolumeError: no slice qualifies.
    """
    fraction = head_fraction(ras)
    if config.slices == "brain":
        chosen = [int(k) for k in np.nonzero(fraction >= config.min_brain_fraction)[0]]
    else:
        head = np.nonzero(fraction > 0)[0]
        count = max(1, config.central_n)
        middle = (head[0] + head[-1]) / 2 if len(head) else (ras.shape[2] - 1) / 2
        start = int(np.floor(middle - (count - 1) / 2 + 0.5))
        start = max(0, min(start, ras.shape[2] - count))
        chosen = list(range(start, min(ras.shape[2], start + count)))
        chosen = [k for k in chosen if fraction[k] > 0]
    if not chosen:
        raise VolumeError(
            where,
            f"no axial slice has enough head in it (largest head fraction {fraction.max():.3f}, "
            f"volume.min_brain_fraction {config.min_brain_fraction}); is the volume empty?",
        )
    return chosen


def window(plane: np.ndarray, config: VolumeConfig) -> np.ndarray:
    """A slice windowed to [0, 1] by its percentiles ``window_percentiles`` (16-bit levels)."""
    low, high = np.percentile(plane, config.window_percentiles)
    if high - low <= 1e-6:
        return np.zeros(plane.shape, np.float32)
    scaled = np.clip((plane - low) / (high - low), 0.0, 1.0)
    levels = np.round(scaled * _LEVELS).astype(np.uint16)
    return levels.astype(np.float32) / _LEVELS  # as read_image decodes a 16-bit PNG


def slice_image(ras: np.ndarray, k: int) -> np.ndarray:
    """Axial slice ``k`` of a RAS grid as an image: ``image[r, c] = ras[X-1-c, Y-1-r, k]``."""
    return np.ascontiguousarray(ras[::-1, ::-1, k].T)


def image_slice(image: np.ndarray) -> np.ndarray:
    """The inverse of :func:`slice_image`: an image back to an (X, Y) plane of the RAS grid."""
    return np.ascontiguousarray(np.asarray(image).T[::-1, ::-1])


def slice_volume(volume: Volume, config: VolumeConfig) -> Slices:
    """Reorient, select and window the axial slices of ``volume``.

    Raises:
        VolumeError: no slice qualifies.
    """
    ras, notes = canonical(volume)
    indices = select_slices(ras, config, volume.name)
    images = [window(slice_image(ras, k), config) for k in indices]
    return Slices(indices, images, tuple(int(s) for s in ras.shape), notes)


# --------------------------------------------------------------------------------- maps back
def volume_map(volume: Volume, slices: Slices, maps: dict[int, np.ndarray]) -> np.ndarray:
    """Per-slice maps (slice index → (H, W) image-oriented map at the slice's size) as a float32
    volume in the input's grid (shape and voxel order of ``volume.data``); other slices are 0."""
    import nibabel.orientations as orientations

    ras = np.zeros(slices.ras_shape, np.float32)
    for k, values in maps.items():
        ras[:, :, k] = image_slice(values)
    ornt = _orientation(volume.affine)
    back = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), ornt)
    out = orientations.apply_orientation(ras, back)
    if out.shape != volume.data.shape:  # a bug, never the user's input
        raise RuntimeError(f"map shape {out.shape} != volume shape {volume.data.shape}")
    return np.ascontiguousarray(out, dtype=np.float32)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write ``data`` with ``affine`` (sform and qform) as NIfTI-1 (gzipped if the name ends in
    ``.gz``), atomically."""
    import gzip

    import nibabel as nib

    from brainad.utils import write_bytes

    image = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    payload = image.to_bytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    write_bytes(path, payload)
