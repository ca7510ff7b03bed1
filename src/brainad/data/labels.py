"""Per-slice labels: view plane, modality, MR sequence family and flags.

Labels come, in this order of precedence, from

1. a hand-annotated sample (``filter.annotations``, a committed CSV keyed by the raw file's sha256;
   see ``annotations/README.md``),
2. the source itself (``<root>/labels.csv``, written e.g. by the phantom generator, which knows what
   it drew),
3. a small scikit-learn classifier per label, fit on the annotated sample from image features
   (:mod:`brainad.data.features`) in the pipeline (never a pickled model), deterministic.

Accuracy is measured on a **held-out** part of the annotated sample: whole near-duplicate clusters
(the split's clusters) are held out, so a slice and its twin are never one in the fit and one in
the held-out part; the candidate models are compared by grouped cross-validation on the fit part
only, and the chosen one is scored once on the held-out part (:mod:`brainad.data.labelfit`).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

PLANES = ("axial", "coronal", "sagittal")
MODALITIES = ("MR", "CT")
SEQUENCES = ("T1", "T1CE", "T2", "FLAIR", "other")
FLAGS = ("not_brain", "strip_failed", "abnormal_in_healthy")
UNKNOWN = "unknown"
TARGETS = {"plane": PLANES, "modality": MODALITIES, "sequence": SEQUENCES}
LABEL_FIELDS = ("plane", "modality", "sequence", "flags", "label_source")
ANNOTATION_FIELDS = (
    "sha256",
    "path",
    "class_name",
    "sample",
    "plane",
    "modality",
    "sequence",
    "flags",
)
SAMPLES = ("random", "targeted")  # a seeded random draw, or picked to add rare cases
SOURCE_LABELS = "labels.csv"  # optional, in the dataset root: path,plane,modality,sequence,flags
SOURCE_FIELDS = ("path", "plane", "modality", "sequence", "flags")
_CSV = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}


class Labels(NamedTuple):
    """The labels of one image (``flags`` is a sorted ``;``-joined string, may be empty)."""

    plane: str
    modality: str
    sequence: str
    flags: str


NO_LABELS = Labels(UNKNOWN, UNKNOWN, UNKNOWN, "")


class Annotation(NamedTuple):
    """One hand-annotated image: its labels and which sample it came from (:data:`SAMPLES`)."""

    labels: Labels
    sample: str


def _check(where: str, row: dict) -> Labels:
    for field, allowed in TARGETS.items():
        if row[field] not in (*allowed, UNKNOWN):
            raise ValueError(
                f"{where}: {field} {row[field]!r} is not one of {[*allowed, UNKNOWN]}; fix the file"
            )
    flags = sorted(f for f in (row["flags"] or "").split(";") if f)
    bad = [f for f in flags if f not in FLAGS]
    if bad:
        raise ValueError(f"{where}: unknown flag(s) {bad}; allowed flags are {list(FLAGS)}")
    return Labels(row["plane"], row["modality"], row["sequence"], ";".join(flags))


def _read_csv(path: Path, fields: tuple[str, ...]) -> list[tuple[int, dict]]:
    with path.open("r", **_CSV) as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != fields:
            raise ValueError(
                f"{path}:1: header must be {','.join(fields)}, got {reader.fieldnames}"
            )
        return [(reader.line_num, row) for row in reader]


def read_annotations(path: Path) -> dict[str, Annotation]:
    """Hand annotations by sha256 (:data:`ANNOTATION_FIELDS`); a bad value names file and line.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: wrong header, unknown label, flag or sample, or byte-identical files (one
            sha256 at two paths) annotated differently.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found (filter.annotations)")
    out: dict[str, Annotation] = {}
    for line, row in _read_csv(path, ANNOTATION_FIELDS):
        if row["sample"] not in SAMPLES:
            raise ValueError(f"{path}:{line}: sample {row['sample']!r} is not one of {SAMPLES}")
        annotation = Annotation(_check(f"{path}:{line}", row), row["sample"])
        if out.get(row["sha256"], annotation).labels != annotation.labels:
            raise ValueError(
                f"{path}:{line}: sha256 {row['sha256'][:12]}… is annotated twice, differently"
            )
        out.setdefault(row["sha256"], annotation)
    return out


def read_source_labels(root: Path) -> dict[str, Labels]:
    """Labels a source ships in ``root/labels.csv`` by manifest path ({} if there is none)."""
    path = Path(root) / SOURCE_LABELS
    if not path.is_file():
        return {}
    return {
        row["path"]: _check(f"{path}:{line}", row) for line, row in _read_csv(path, SOURCE_FIELDS)
    }


def write_source_labels(root: Path, labels: dict[str, Labels]) -> None:
    """Write ``root/labels.csv`` (rows sorted by path) for :func:`read_source_labels`."""
    with (Path(root) / SOURCE_LABELS).open("w", **_CSV) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(SOURCE_FIELDS)
        for path in sorted(labels):
            writer.writerow([path, *labels[path]])


def flag_set(flags: str) -> set[str]:
    """The flags of a ``;``-joined flags string."""
    return {f for f in flags.split(";") if f}
