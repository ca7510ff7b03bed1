"""The ``nifti`` source: a local folder of 3-D volumes, sliced into the pipeline's 2-D layout.

Layout of ``source.uri`` (BraTS-like)::

    healthy/<subject>.nii.gz        healthy volumes (``.nii`` too)
    anomalous/<subject>.nii.gz      volumes with an anomaly
    anomalous/<subject>_seg.nii.gz  optional anomaly mask (any voxel > 0), same grid as its volume

Each volume is read, reoriented and sliced exactly as ``brainad score`` does
(:func:`brainad.data.volumes.slice_volume`, ``volume`` params); each selected axial slice is
written as a 16-bit PNG ``Volumes/<class>/<subject>_z<k>.png`` (lossless: the windowed slices are
16-bit levels), its mask as ``masks/Volumes/<class>/<subject>_z<k>.png``, and ``volumes.jsonl``
records every slice's subject, slice index and the volume's sha256 for the manifest. From there
the manifest, split (by subject group), preprocess and evaluation are those of every study; the
masks are the lesion masks of the pixel metrics.

Decisions: the class is the volume's folder, so the study's ``filter`` names ``healthy`` and
``anomalous``; of an anomalous volume *with* a mask only the slices where the mask has a voxel are
kept (a slice labelled anomalous must show the anomaly), without a mask every selected slice
counts as anomalous. A volume (or mask) that cannot be used is not copied and is listed in the
record's ``rejected`` with the reason, like any other source's rejected files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np

from brainad.config import SourceConfig, VolumeConfig
from brainad.data.manifest import MASKS_DIR, VOLUMES_INDEX
from brainad.data.volumes import (
    Slices,
    Volume,
    VolumeError,
    canonical,
    is_nifti,
    nifti_stem,
    read_nifti,
    slice_image,
    slice_volume,
)
from brainad.utils import write_bytes, write_text

log = logging.getLogger("brainad")

VOLUME_FOLDER = "Volumes"
CLASSES = ("healthy", "anomalous")
SEG_SUFFIX = "_seg"
LAYOUT = "healthy/<subject>.nii.gz, anomalous/<subject>.nii.gz [, anomalous/<subject>_seg.nii.gz]"


def acquire_nifti(source: SourceConfig, config: VolumeConfig, staged: Path) -> dict:
    """Slice the volumes of ``source.uri`` into ``staged`` (see the module docstring).

    Raises:
        ValueError: ``source.uri`` is not a folder in the layout, or no volume could be used.
    """
    folder = Path(source.uri).expanduser()
    if not source.uri or not folder.is_dir():
        raise ValueError(f"source.uri: {source.uri!r} is not a folder; expected {LAYOUT}")
    classes = [c for c in CLASSES if (folder / c).is_dir()]
    if not classes:
        raise ValueError(f"{folder}: has neither healthy/ nor anomalous/; expected {LAYOUT}")
    rejected: list[dict] = []
    index: list[dict] = []
    volumes = 0
    for class_name in classes:
        for path in sorted((folder / class_name).iterdir()):
            member = f"{class_name}/{path.name}"
            if not is_nifti(path.name) or nifti_stem(path.name).endswith(SEG_SUFFIX):
                if not is_nifti(path.name):
                    rejected.append({"member": member, "reason": "not a NIfTI file"})
                continue
            try:
                entries = _slice_subject(path, class_name, config, staged)
            except VolumeError as exc:
                rejected.append({"member": member, "reason": exc.reason})
                continue
            index += entries
            volumes += 1
    if not index:
        raise ValueError(f"{folder}: no usable volume ({len(rejected)} rejected); see the log")
    text = "".join(json.dumps(entry) + "\n" for entry in index)
    write_text(staged / VOLUMES_INDEX, text)
    for entry in rejected:
        log.warning("%s/%s: not used: %s", folder, entry["member"], entry["reason"])
    log.info("nifti source: %d volumes → %d slices", volumes, len(index))
    return {"volumes": volumes, "slices": len(index), "rejected": rejected, "n_files": len(index)}


def _mask_path(path: Path) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        candidate = path.with_name(f"{nifti_stem(path.name)}{SEG_SUFFIX}{suffix}")
        if candidate.is_file():
            return candidate
    return None


def _slice_subject(path: Path, class_name: str, config: VolumeConfig, staged: Path) -> list[dict]:
    """Write the slices (and mask slices) of one subject; their index entries."""
    subject = nifti_stem(path.name)
    volume = read_nifti(path, config)
    slices = slice_volume(volume, config)
    masks = _mask_slices(volume, slices, _mask_path(path), config)
    entries = []
    for i, k in enumerate(slices.indices):
        if masks is not None and class_name == "anomalous" and not masks[i].any():
            continue
        name = f"{subject}_z{k:04d}.png"
        relative = f"{VOLUME_FOLDER}/{class_name}/{name}"
        levels = np.round(slices.images[i] * 65535.0).astype(np.uint16)
        write_bytes(staged / relative, _png(levels))
        if masks is not None:
            mask = masks[i].astype(np.uint8) * 255
            write_bytes(staged / MASKS_DIR / VOLUME_FOLDER / class_name / name, _png(mask))
        entry = {"path": relative, "subject": subject, "slice": k}
        entries.append({**entry, "volume_sha256": volume.sha256})
    if not entries:
        raise VolumeError(path, "its mask has no voxel on any selected slice; nothing to use")
    return entries


def _mask_slices(
    volume: Volume, slices: Slices, mask_path: Path | None, config: VolumeConfig
) -> list[np.ndarray] | None:
    """The mask's slices in the same orientation as the volume's (``None`` without a mask)."""
    if mask_path is None:
        return None
    mask = read_nifti(mask_path, config)
    if mask.data.shape != volume.data.shape or not np.allclose(mask.affine, volume.affine):
        raise VolumeError(
            mask_path,
            f"mask grid {mask.data.shape} differs from its volume's {volume.data.shape} (shape or "
            "affine); resample the mask onto the volume",
        )
    ras, _ = canonical(mask)
    return [slice_image(ras, k) > 0 for k in slices.indices]


def _png(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise OSError("OpenCV could not encode a PNG")
    return data.tobytes()
