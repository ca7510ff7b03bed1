"""Slices of 3-D cases for the 2-D models: each axial brain slice exactly as ``brainad score``
prepares a volume's slice (windowed to [0, 1] by its own percentiles, ``volume`` params), then
the slice studies' :func:`~brainad.data.preprocess.preprocess_slice` with the case's own brain
mask as the extraction (the volumes are skull-stripped already): cropped to the brain, resized
to ``preprocess.image_size``, normalised. :func:`model_arrays` stacks them as the training
loop's :class:`~brainad.data.arrays.SplitArrays`; :func:`archive_healthy` takes a slice study's
healthy training slices of chosen sequences (cross-dataset training).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainad.config import PreprocessConfig, VolumeConfig
from brainad.data.arrays import SplitArrays, empty_arrays, load_arrays, select
from brainad.data.brats import Case, SliceRow
from brainad.data.labels import SEQUENCES
from brainad.data.manifest import read_manifest
from brainad.data.preprocess import BrainExtraction, Preprocessed, preprocess_slice
from brainad.data.volumes import slice_image, window


def model_slice(
    plane: np.ndarray,
    brain: np.ndarray,
    preprocess: PreprocessConfig,
    volume: VolumeConfig,
    extra: tuple[np.ndarray, ...] = (),
) -> Preprocessed:
    """One (H, W) image-oriented slice and its brain mask as a model input."""
    gray = window(plane, volume)
    extraction = BrainExtraction(brain, bool(brain.any()), "", float(brain.mean()))
    return preprocess_slice(gray, preprocess, list(extra), extraction)


def model_arrays(
    cases: dict[str, Case],
    rows: dict[str, list[SliceRow]],
    channel: str,
    preprocess: PreprocessConfig,
    volume: VolumeConfig,
    healthy_only: bool,
) -> SplitArrays:
    """The brain slices of ``cases`` (only ``healthy`` ones with ``healthy_only``; excluded slices
    never) as arrays: label 1 for ``anomalous`` slices, the label slice as lesion mask."""
    parts = []
    for subject, case in cases.items():
        for row in rows[subject]:
            if row.status == "excluded" or (healthy_only and row.status != "healthy"):
                continue
            plane = slice_image(case.channels[channel], row.slice)
            brain = slice_image(case.brain, row.slice)
            tumour = slice_image(case.label, row.slice)
            pre = model_slice(plane, brain, preprocess, volume, (tumour,))
            parts.append((subject, row, case.sha256[channel], pre))
    if not parts:
        return empty_arrays(preprocess.image_size)
    n = len(parts)
    return SplitArrays(
        images=np.stack([p.image for *_, p in parts])[:, None].astype(np.float16),
        brain_masks=np.stack([p.mask for *_, p in parts])[:, None],
        lesion_masks=np.stack([p.extra[0] for *_, p in parts])[:, None],
        has_lesion_mask=np.ones(n, bool),
        labels=np.array([int(r.status == "anomalous") for _, r, _, _ in parts], np.int8),
        paths=np.array([f"{s}/z{r.slice:04d}" for s, r, _, _ in parts]),
        sha256=np.array([h for _, _, h, _ in parts]),
        class_names=np.array([r.status for _, r, _, _ in parts]),
        folders=np.array([s for s, *_ in parts]),
        fallback=np.array([p.fallback for *_, p in parts], bool),
        coverage=np.array([p.coverage for *_, p in parts], np.float32),
    )


def archive_healthy(
    arrays_path: Path, manifest_path: Path, sequences: tuple[str, ...]
) -> SplitArrays:
    """The healthy rows of a slice study's preprocessed split (``arrays_path``) whose manifest
    sequence label (``manifest_path``, joined on the path) is one of ``sequences``.

    Raises:
        ValueError: an unknown sequence name, or an arrays row the manifest does not list (the
            two files come from different runs: re-run that study's data stages).
    """
    unknown = [s for s in sequences if s not in SEQUENCES]
    if unknown or not sequences:
        raise ValueError(
            f"variants.archive_sequences: {list(sequences)} must name sequence labels among "
            f"{list(SEQUENCES)} (unknown: {unknown})"
        )
    arrays = load_arrays(arrays_path)
    sequence_of = {row["path"]: row["sequence"] for row in read_manifest(manifest_path)}
    missing = sorted(str(p) for p in arrays.paths if str(p) not in sequence_of)
    if missing:
        raise ValueError(
            f"{arrays_path}: {len(missing)} row(s) not in {manifest_path} (first: {missing[0]}); "
            "re-run that study's prepare and preprocess stages"
        )
    found = np.array([sequence_of[str(p)] for p in arrays.paths])
    return select(arrays, (arrays.labels == 0) & np.isin(found, list(sequences)))
