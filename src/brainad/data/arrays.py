"""Compact per-split arrays: what the training loop, scoring and evaluation read.

:func:`preprocess_files` decodes every row of a split (through :func:`brainad.data.imageio.read_image`),
checks each file's sha256 against the manifest, preprocesses it and stacks the results into a
:class:`SplitArrays`. A file that cannot be used is *quarantined* with its reason — never a crash,
never silently dropped — so ``len(rows) == accepted + quarantined`` always holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from rich.progress import Progress

from brainad.config import PreprocessConfig
from brainad.data.imageio import ImageDecodeError, read_image
from brainad.data.preprocess import Preprocessed, extract_brain, preprocess_slice
from brainad.data.stripqc import strip_measures
from brainad.utils import atomic_path, console

log = logging.getLogger("brainad")

LABELS = {"healthy": 0, "anomaly": 1}
ROW_KEYS = ("path", "label", "class_name", "folder", "sha256", "mask_path")
_DTYPES: dict[str, Any] = {
    "images": np.float16,
    "brain_masks": np.bool_,
    "lesion_masks": np.bool_,
    "has_lesion_mask": np.bool_,
    "labels": np.int8,
    "paths": np.str_,
    "sha256": np.str_,
    "class_names": np.str_,
    "folders": np.str_,
    "fallback": np.bool_,
    "coverage": np.float32,
}
_IMAGE_KEYS = ("images", "brain_masks", "lesion_masks")


@dataclass(frozen=True)
class SplitArrays:
    """The preprocessed images of one split, in manifest-row order.

    Args:
        images: float16 (N, 1, S, S) in [-1, 1]; -1 outside the brain mask.
        brain_masks: bool (N, 1, S, S).
        lesion_masks: bool (N, 1, S, S) ground-truth anomaly masks (all False where none).
        has_lesion_mask: bool (N,) True where a ground-truth mask file exists.
        labels: int8 (N,) 0 healthy, 1 anomaly.
        paths: str (N,) manifest path (relative to the raw root).
        sha256: str (N,) checksum of the file that was read.
        class_names: str (N,) class folder name.
        folders: str (N,) official folder (Training/Testing).
        fallback: bool (N,) True where brain extraction failed and the whole slice was used.
        coverage: float32 (N,) brain-mask fraction of the original slice.
    """

    images: np.ndarray
    brain_masks: np.ndarray
    lesion_masks: np.ndarray
    has_lesion_mask: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    sha256: np.ndarray
    class_names: np.ndarray
    folders: np.ndarray
    fallback: np.ndarray
    coverage: np.ndarray

    def __post_init__(self) -> None:
        images = self.images
        if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
            raise ValueError(f"images: expected shape (N, 1, S, S), got {images.shape}")
        for name in _DTYPES:
            value = getattr(self, name)
            expected = images.shape if name in _IMAGE_KEYS else images.shape[:1]
            if value.shape != expected:
                raise ValueError(f"{name}: expected shape {expected}, got {value.shape}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        """Side S of the square images."""
        return int(self.images.shape[-1])


class Quarantined(NamedTuple):
    """A file that was not used, and why."""

    path: str
    reason: str


class PreprocessOutput(NamedTuple):
    """Result of :func:`preprocess_files`.

    Args:
        arrays: the accepted images.
        quarantined: every rejected file with its reason.
        records: per accepted image ``path, class_name, fallback, coverage, strip`` (the
            strip-QC measures, :mod:`brainad.data.stripqc`), for QA statistics.
    """

    arrays: SplitArrays
    quarantined: list[Quarantined]
    records: list[dict]


class _Accepted(NamedTuple):
    row: dict
    pre: Preprocessed
    has_mask: bool
    strip: dict  # stripqc.strip_measures of the full-resolution brain mask


def empty_arrays(image_size: int) -> SplitArrays:
    """A :class:`SplitArrays` with N = 0 (an empty split stays a valid file)."""
    square = (0, 1, image_size, image_size)
    return SplitArrays(
        **{
            name: np.zeros(square if name in _IMAGE_KEYS else (0,), dtype=dtype)
            for name, dtype in _DTYPES.items()
        }
    )


def select(arrays: SplitArrays, keep: np.ndarray) -> SplitArrays:
    """The rows of ``arrays`` where the boolean (N,) ``keep`` is true, in order."""
    keep = np.asarray(keep, bool)
    return SplitArrays(**{name: getattr(arrays, name)[keep] for name in _DTYPES})


def concatenate(parts: list[SplitArrays]) -> SplitArrays:
    """The rows of every part, in order (all parts of one image size; at least one part)."""
    sizes = sorted({p.image_size for p in parts})
    if len(sizes) != 1:
        raise ValueError(f"arrays of different image sizes {sizes} cannot be concatenated")
    return SplitArrays(
        **{
            name: np.concatenate([getattr(p, name) for p in parts]).astype(dtype, copy=False)
            for name, dtype in _DTYPES.items()
        }
    )


# ------------------------------------------------------------------------------ decoding
class _Rejected(Exception):
    """Internal: the current file is quarantined with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_row(row: dict, index: int) -> None:
    missing = [key for key in ROW_KEYS if key not in row]
    if missing:
        raise ValueError(f"rows[{index}] ({row.get('path', '?')}): missing key(s) {missing}")
    if row["label"] not in LABELS:
        raise ValueError(
            f"rows[{index}] ({row['path']}): label {row['label']!r} is not one of {list(LABELS)}; "
            "the split must only contain healthy/anomaly rows"
        )


def _read_bytes(root: Path, relative: str) -> bytes:
    path = root / relative
    try:
        if not path.resolve().is_relative_to(root.resolve()):
            raise _Rejected("path points outside the dataset root")
        return path.read_bytes()
    except OSError as exc:
        raise _Rejected(f"cannot be read ({exc.strerror or exc})") from exc


def _load_mask(
    root: Path, relative: str, shape: tuple[int, ...], config: PreprocessConfig
) -> np.ndarray:
    try:
        gray = read_image(root / relative, config.max_pixels, _read_bytes(root, relative)).gray
    except (ImageDecodeError, _Rejected) as exc:
        raise _Rejected(f"lesion mask {relative}: {getattr(exc, 'reason', exc)}") from exc
    if gray.shape != shape:
        raise _Rejected(
            f"lesion mask {relative} is {gray.shape[::-1]} but the image is {shape[::-1]}"
        )
    return gray > 0.5


def _process_row(root: Path, row: dict, config: PreprocessConfig) -> _Accepted:
    """Read, verify, decode and preprocess one row; raises :class:`_Rejected` to quarantine it."""
    if row.get("error"):  # the manifest already found the file unusable
        raise _Rejected(str(row["error"]))
    data = _read_bytes(root, row["path"])
    digest = hashlib.sha256(data).hexdigest()
    if digest != row["sha256"]:
        raise _Rejected(
            f"changed since manifest (sha256 {digest[:12]}… != {str(row['sha256'])[:12]}…); "
            "re-run the prepare stage"
        )
    try:
        gray = read_image(root / row["path"], config.max_pixels, data).gray
    except ImageDecodeError as exc:
        raise _Rejected(exc.reason) from exc
    extras = [_load_mask(root, row["mask_path"], gray.shape, config)] if row["mask_path"] else []
    try:
        extraction = extract_brain(gray, config)
        pre = preprocess_slice(gray, config, extras, extraction)
    except ValueError as exc:
        raise _Rejected(f"preprocessing failed: {exc}") from exc
    return _Accepted(row, pre, bool(extras), strip_measures(gray, extraction.mask, pre.fallback))


def _stack(accepted: list[_Accepted], image_size: int) -> SplitArrays:
    if not accepted:
        return empty_arrays(image_size)
    size = (image_size, image_size)
    return SplitArrays(
        images=np.stack([a.pre.image for a in accepted])[:, None].astype(np.float16),
        brain_masks=np.stack([a.pre.mask for a in accepted])[:, None],
        lesion_masks=np.stack(
            [a.pre.extra[0] if a.has_mask else np.zeros(size, bool) for a in accepted]
        )[:, None],
        has_lesion_mask=np.array([a.has_mask for a in accepted], dtype=bool),
        labels=np.array([LABELS[a.row["label"]] for a in accepted], dtype=np.int8),
        paths=np.array([str(a.row["path"]) for a in accepted], dtype=np.str_),
        sha256=np.array([str(a.row["sha256"]) for a in accepted], dtype=np.str_),
        class_names=np.array([str(a.row["class_name"]) for a in accepted], dtype=np.str_),
        folders=np.array([str(a.row["folder"]) for a in accepted], dtype=np.str_),
        fallback=np.array([a.pre.fallback for a in accepted], dtype=bool),
        coverage=np.array([a.pre.coverage for a in accepted], dtype=np.float32),
    )


def preprocess_files(root: Path, rows: list[dict], config: PreprocessConfig) -> PreprocessOutput:
    """Preprocess the files of ``rows`` (paths relative to ``root``) in row order.

    Each row needs the keys :data:`ROW_KEYS`. Rows with a manifest ``error``, unreadable,
    undecodable or changed files (sha256 differs from the row) and broken lesion masks are
    quarantined with their reason.

    Raises:
        ValueError: a row lacks a key or has a label other than ``healthy``/``anomaly``.
    """
    root = Path(root)
    for index, row in enumerate(rows):
        _check_row(row, index)
    accepted: list[_Accepted] = []
    quarantined: list[Quarantined] = []
    with Progress(transient=True, console=console()) as progress:
        task = progress.add_task("preprocessing", total=len(rows))
        for row in rows:
            try:
                accepted.append(_process_row(root, row, config))
            except _Rejected as exc:
                quarantined.append(Quarantined(str(row["path"]), exc.reason))
                log.warning("quarantined %s: %s", row["path"], exc.reason)
            progress.advance(task)
    if len(accepted) + len(quarantined) != len(rows):  # the invariant the reports rely on
        raise RuntimeError("preprocess_files lost a file; this is a bug")
    records = [
        {
            "path": str(a.row["path"]),
            "class_name": str(a.row["class_name"]),
            "fallback": a.pre.fallback,
            "coverage": a.pre.coverage,
            "strip": a.strip,
        }
        for a in accepted
    ]
    return PreprocessOutput(_stack(accepted, config.image_size), quarantined, records)


# --------------------------------------------------------------------------- save / load
def save_arrays(path: Path, arrays: SplitArrays) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` atomically (strings stored as unicode)."""
    payload = {f.name: np.asarray(getattr(arrays, f.name)) for f in dataclasses.fields(arrays)}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **payload)


def load_arrays(path: Path) -> SplitArrays:
    """Read a file written by :func:`save_arrays`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is corrupt, lacks arrays or has inconsistent shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the preprocess stage that produces it")
    hint = "delete it and re-run the preprocess stage"
    try:
        with np.load(path, allow_pickle=False) as data:
            present = set(data.files)
            values = {
                name: data[name].astype(dtype, copy=False)
                for name, dtype in _DTYPES.items()
                if name in present
            }
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable arrays file ({exc}); {hint}") from exc
    missing = sorted(set(_DTYPES) - set(values))
    if missing:
        raise ValueError(f"{path}: missing array(s) {missing}; {hint}")
    try:
        return SplitArrays(**values)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}; {hint}") from exc
