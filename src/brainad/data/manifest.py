"""The manifest: one audited row per image file of the raw dataset.

The raw data is laid out ``root/<folder>/<class>/<file>`` (the Kaggle layout: folders ``Training``
and ``Testing``, classes ``glioma``, ``notumor``, ...); tumour masks, when a source provides them,
live at ``root/masks/<folder>/<class>/<stem>.png``. Slices cut from 3-D volumes (the ``nifti``
source) are listed in ``root/volumes.jsonl`` with their ``subject``, ``slice`` index and the
volume's sha256; other rows have ``subject`` "", ``slice`` -1, ``volume_sha256`` "".
:func:`build_manifest` walks that tree and
records for every file of a class named in the filter its checksum, size, decoded geometry and a
64-bit DCT perceptual hash (used by :mod:`brainad.data.split` to find near-duplicates); the prepare
stage then adds the slice labels (:mod:`brainad.data.labelfit`) and the curation verdict
(:mod:`brainad.data.curation`; ``curation`` is empty for a kept row, else the reason).

Nothing is dropped silently: a file that cannot be decoded stays in the manifest with its
``error`` (it is quarantined later, with the reason in the split report), files of classes outside
the filter are counted per class, and odd layouts produce warnings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from rich.progress import track

from brainad.config import FilterConfig
from brainad.data.imageio import IMAGE_SUFFIXES, ImageDecodeError, read_image
from brainad.data.labels import NO_LABELS, SOURCE_LABELS
from brainad.utils import atomic_path, console

log = logging.getLogger("brainad")

MANIFEST_FIELDS: tuple[str, ...] = (
    "path",
    "class_name",
    "label",
    "folder",
    "sha256",
    "bytes",
    "width",
    "height",
    "channels",
    "bit_depth",
    "phash",
    "mask_path",
    "error",
    "subject",
    "slice",
    "volume_sha256",
    "plane",
    "modality",
    "sequence",
    "flags",
    "label_source",
    "curation",
)
MASKS_DIR = "masks"
VOLUMES_INDEX = "volumes.jsonl"  # slice file -> subject, slice, volume_sha256 (nifti source)
LAYOUT = "root/<folder>/<class>/<image> (e.g. root/Training/notumor/1.jpg)"
ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}  # non-UTF-8 file names round-trip


class Manifest(NamedTuple):
    """The result of walking a raw dataset.

    Args:
        rows: one dict per file (keys :data:`MANIFEST_FIELDS`), sorted by ``path``; ``label`` is
            ``healthy`` or ``anomaly`` (empty for a file outside any class folder).
        excluded: number of files per class folder whose class is not in the filter.
        warnings: human-readable notes about the layout (empty class folders, stray files, ...).
        fingerprint: sha256 over the sorted lines ``path\\tsha256\\n`` of all rows.
    """

    rows: list[dict]
    excluded: dict[str, int]
    warnings: list[str]
    fingerprint: str


class _Entry(NamedTuple):
    """A file found by the walk, before it is read."""

    file: Path
    folder: str
    class_name: str
    label: str
    error: str


class _Walk(NamedTuple):
    entries: list[_Entry]
    excluded: dict[str, int]
    warnings: list[str]


# ----------------------------------------------------------------------------------- hashing
def perceptual_hash(gray: np.ndarray) -> str:
    """64-bit DCT perceptual hash of a 2-D gray image, as 16 hex characters.

    The image is area-resized to 32x32, transformed with a 2-D DCT, and the 8x8 lowest
    frequencies are thresholded at their median (the DC term is left out of the median). Resized
    or re-windowed copies of a slice land within a few bits; different slices are ~32 bits apart.
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(
            f"perceptual_hash needs a non-empty 2-D gray image, got shape {gray.shape}"
        )
    small = cv2.resize(gray.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    block = cv2.dct(small)[:8, :8].ravel()
    median = np.median(block[1:])
    bits = block > median
    return np.packbits(bits).tobytes().hex()


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two 16-hex-character perceptual hashes."""
    for value in (a, b):
        if len(value) != 16:
            raise ValueError(f"perceptual hash {value!r} must have 16 hex characters")
    return (int(a, 16) ^ int(b, 16)).bit_count()


def fingerprint(rows: list[dict]) -> str:
    """sha256 over the sorted lines ``path\\tsha256\\n`` of ``rows`` (independent of row order)."""
    lines = sorted(f"{row['path']}\t{row['sha256']}\n" for row in rows)
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode(**ENCODING))
    return digest.hexdigest()


# -------------------------------------------------------------------------------------- walk
def _subdirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: p.name)


def _files(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if not p.is_dir()), key=lambda p: p.name)


def _label_of(class_name: str, filter: FilterConfig) -> str:
    if class_name in filter.healthy_classes:
        return "healthy"
    if class_name in filter.anomaly_classes:
        return "anomaly"
    return ""


def _check_filter(filter: FilterConfig) -> None:
    both = sorted(set(filter.healthy_classes) & set(filter.anomaly_classes))
    if both:
        raise ValueError(
            f"filter: classes {both} are both in healthy_classes and anomaly_classes; "
            "each class must be one or the other"
        )
    if not filter.healthy_classes:
        raise ValueError("filter.healthy_classes is empty; name at least one healthy class")


def _data_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ValueError(f"{root}: dataset root is not a directory; expected the layout {LAYOUT}")
    folders = [p for p in _subdirs(root) if p.name != MASKS_DIR]
    if not any(_subdirs(folder) for folder in folders):
        raise ValueError(
            f"{root}: no folder with class subfolders found; expected the layout {LAYOUT}"
        )
    return folders


def _walk_class(folder: Path, class_dir: Path, label: str, walk: _Walk) -> None:
    files = _files(class_dir)
    where = f"{folder.name}/{class_dir.name}"
    nested = _subdirs(class_dir)
    if nested:
        n_nested = sum(1 for d in nested for p in d.rglob("*") if not p.is_dir())
        walk.warnings.append(
            f"{where}: {len(nested)} subfolder(s) with {n_nested} file(s) ignored "
            f"(the layout is {LAYOUT})"
        )
    if not label:
        walk.excluded[class_dir.name] = walk.excluded.get(class_dir.name, 0) + len(files)
        return
    if not files:
        walk.warnings.append(f"{where}: class folder is empty")
    walk.entries.extend(_Entry(f, folder.name, class_dir.name, label, "") for f in files)


def _walk(root: Path, filter: FilterConfig) -> _Walk:
    walk = _Walk(entries=[], excluded={}, warnings=[])
    stray = [p for p in _files(root) if p.name not in (VOLUMES_INDEX, SOURCE_LABELS)]
    if stray:
        walk.warnings.append(f"{root}: {len(stray)} file(s) directly in the root ignored")
    seen_classes: set[str] = set()
    for folder in _data_folders(root):
        for file in _files(folder):
            walk.entries.append(_Entry(file, folder.name, "", "", "not inside a class folder"))
        for class_dir in _subdirs(folder):
            seen_classes.add(class_dir.name)
            _walk_class(folder, class_dir, _label_of(class_dir.name, filter), walk)
    for name in (*filter.healthy_classes, *filter.anomaly_classes):
        if name not in seen_classes:
            walk.warnings.append(f"filter names class '{name}' but no folder under {root} has it")
    if not any(e.label for e in walk.entries):
        raise ValueError(
            f"{root}: no file belongs to a class of filter.healthy_classes/anomaly_classes; "
            f"classes found: {sorted(seen_classes)}"
        )
    return walk


# -------------------------------------------------------------------------------------- rows
def _empty_row(root: Path, entry: _Entry) -> dict:
    relative = entry.file.relative_to(root).as_posix()
    mask = root / MASKS_DIR / entry.folder / entry.class_name / f"{entry.file.stem}.png"
    mask_path = mask.relative_to(root).as_posix() if entry.class_name and mask.is_file() else ""
    return {
        "path": relative,
        "class_name": entry.class_name,
        "label": entry.label,
        "folder": entry.folder,
        "sha256": "",
        "bytes": 0,
        "width": 0,
        "height": 0,
        "channels": 0,
        "bit_depth": 0,
        "phash": "",
        "mask_path": mask_path,
        "error": entry.error,
        "subject": "",
        "slice": -1,
        "volume_sha256": "",
        **NO_LABELS._asdict(),
        "label_source": "none",
        "curation": "",
    }


def _file_problem(root: Path, file: Path) -> str:
    """Why ``file`` must not be read at all ("" if it may be)."""
    try:
        target = file.resolve(strict=True)
    except (OSError, RuntimeError):
        return "broken symlink or unresolvable path"
    if not target.is_relative_to(root.resolve()):
        return "symlink points outside the dataset"
    if not stat.S_ISREG(os.stat(target).st_mode):
        return "not a regular file"
    if file.suffix.lower() not in IMAGE_SUFFIXES:
        return (
            f"unsupported file type '{file.suffix}' (expected one of {', '.join(IMAGE_SUFFIXES)})"
        )
    return ""


def _read_row(root: Path, entry: _Entry, max_pixels: int) -> dict:
    row = _empty_row(root, entry)
    if row["error"]:
        return row
    row["error"] = _file_problem(root, entry.file)
    if row["error"]:
        return row
    try:
        data = entry.file.read_bytes()
    except OSError as exc:
        row["error"] = f"cannot be read ({exc.strerror or exc})"
        return row
    row["sha256"] = hashlib.sha256(data).hexdigest()
    row["bytes"] = len(data)
    try:
        image = read_image(entry.file, max_pixels, data=data)
    except ImageDecodeError as exc:
        row["error"] = exc.reason
        return row
    row.update(
        width=image.width,
        height=image.height,
        channels=image.channels,
        bit_depth=image.bit_depth,
        phash=perceptual_hash(image.gray),
    )
    return row


def build_manifest(root: Path, filter: FilterConfig, max_pixels: int) -> Manifest:
    """Walk ``root/<folder>/<class>/<file>`` and describe every file of a filtered class.

    Raises:
        ValueError: ``root`` is not in the expected layout, or no file matches the filter.
    """
    root = Path(root)
    _check_filter(filter)
    walk = _walk(root, filter)
    rows = [
        _read_row(root, entry, max_pixels)
        for entry in track(
            walk.entries, description="manifest", total=len(walk.entries), console=console()
        )
    ]
    rows.sort(key=lambda row: row["path"])
    _add_volume_index(root, rows)
    for warning in walk.warnings:
        log.warning(warning)
    n_errors = sum(1 for row in rows if row["error"])
    log.info(
        "manifest: %d files (%d with errors), excluded %s",
        len(rows),
        n_errors,
        walk.excluded or "none",
    )
    return Manifest(rows, dict(sorted(walk.excluded.items())), walk.warnings, fingerprint(rows))


def _add_volume_index(root: Path, rows: list[dict]) -> None:
    """``subject``, ``slice``, ``volume_sha256`` of slices listed in ``root/volumes.jsonl``."""
    index = root / VOLUMES_INDEX
    if not index.is_file():
        return
    known = {}
    for line in index.read_text(**ENCODING).splitlines():
        if line.strip():
            entry = json.loads(line)
            known[entry["path"]] = entry
    for row in rows:
        entry = known.get(row["path"])
        if entry is not None:
            row.update(
                subject=entry["subject"],
                slice=int(entry["slice"]),
                volume_sha256=entry["volume_sha256"],
            )


# ---------------------------------------------------------------------------------------- io
def write_manifest(path: Path, manifest: Manifest) -> None:
    """Atomically write the manifest rows as JSON Lines (one row per line, fields in order)."""
    lines = [json.dumps({k: row[k] for k in MANIFEST_FIELDS}) + "\n" for row in manifest.rows]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines), **ENCODING)


def read_manifest(path: Path) -> list[dict]:
    """Read a JSON Lines manifest; a broken line raises ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found; run the stage that builds it")
    rows = []
    for number, line in enumerate(path.read_text(**ENCODING).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}:{number}: not valid JSON ({exc}); rebuild the manifest"
            ) from None
        if not isinstance(row, dict) or set(row) != set(MANIFEST_FIELDS):
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(
                f"{path}:{number}: expected the fields {list(MANIFEST_FIELDS)}, got {got}; "
                "rebuild the manifest"
            )
        rows.append(row)
    return rows
