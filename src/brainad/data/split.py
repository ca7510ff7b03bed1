"""Near-duplicate clusters and the leak-free, cluster-level train/val/test split.

Two files are near-duplicates when their bytes are equal (sha256) or their 64-bit perceptual
hashes differ in at most ``hash_distance`` bits; clusters are the connected components of that
relation. Whole clusters are assigned to a split, so no image in test has a twin in train (the
official Training/Testing folders of the real dataset leak exactly this way). Slices of one
subject (manifest ``subject``, e.g. the axial slices of one NIfTI volume: adjacent slices are
near-duplicates) form one *group* with every cluster they touch: groups, not slices, are assigned,
so no subject is in two splits (checked and reported: ``cross_split_subjects``).

The assignment of a cluster depends only on the split seed and the smallest sha256 of its members,
hashed to [0, 1): adding files to the dataset does not move existing clusters to another split.
Healthy clusters go to train/val/test; anomalous clusters only to val/test (the models are
unsupervised and never see an anomaly in training); clusters mixing healthy and anomalous files are
excluded as conflicts, and files that could not be decoded are quarantined.

Of each cluster, ``split.keep`` decides what is kept (:data:`KEEP`): ``representative`` (its
largest member; the others are ``duplicate``), ``all`` (every member: slices of volumes), or
``train_all`` (every member in train — near-duplicates of each other, never of another split, so
using them as extra training views is leak-free — and the representative in val and test, so
every evaluated image is distinct).
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from brainad.config import SplitConfig
from brainad.utils import atomic_path

log = logging.getLogger("brainad")

SPLITS = ("train", "val", "test")
KEEP = ("representative", "all", "train_all")
EXCLUDED = ("duplicate", "conflict", "quarantined", "curated")
SPLIT_FIELDS = ("path", "sha256", "label", "class_name", "folder", "cluster", "split")
_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}
CHAIN_WARN_MIN, CHAIN_WARN_FRACTION = 50, 0.05  # a cluster above both sizes is suspicious
_CHUNK = 512  # rows per block of the pairwise hash comparison (512 x 7,000 uint64 = 29 MB)


class LeakError(ValueError):
    """Near-duplicate images ended up in different splits."""


class Clusters(NamedTuple):
    """Near-duplicate clusters of manifest rows.

    Args:
        ids: int cluster id per row (in row order), numbered 0..K-1 by first appearance.
        pairs: number of near-duplicate pairs (hamming <= hash_distance or same sha256).
        groups: int split-group id per row: clusters joined through shared subjects (``None``:
            the clusters themselves).
    """

    ids: np.ndarray
    pairs: int
    groups: np.ndarray | None = None


class SplitResult(NamedTuple):
    """Per-row outcome of :func:`split_by_cluster`.

    Args:
        assignment: ``train``/``val``/``test``, or ``duplicate`` (a non-representative member when
            keep is ``representative``), ``conflict`` (cluster mixes healthy and anomalous files),
            ``quarantined`` (the file could not be decoded) or ``curated`` (the curation filter
            dropped it: the manifest's ``curation`` reason); clusters are split by their
            remaining members.
        representative: True for exactly one member of every cluster of decodable files.
    """

    assignment: list[str]
    representative: list[bool]


# --------------------------------------------------------------------------------- near pairs
class _Hashes(NamedTuple):
    """Rows prepared for vectorised comparison."""

    index: np.ndarray  # row indices
    phash: np.ndarray  # uint64 pHash per row
    sha: np.ndarray  # int code per distinct sha256


def _hashes(rows: list[dict], index: np.ndarray, sha_codes: dict[str, int]) -> _Hashes:
    phash = np.array([int(rows[i]["phash"], 16) for i in index], dtype=np.uint64)
    sha = np.array([sha_codes.setdefault(rows[i]["sha256"], len(sha_codes)) for i in index])
    return _Hashes(index.astype(np.int64), phash, sha.astype(np.int64))


def _usable(rows: list[dict]) -> np.ndarray:
    """Indices of rows that decoded (no error, a perceptual hash)."""
    return np.array(
        [i for i, r in enumerate(rows) if not r["error"] and r["phash"]], dtype=np.int64
    )


def _near_pairs(a: _Hashes, b: _Hashes, distance: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield blocks of row-index pairs (from ``a``, from ``b``) that are near-duplicates."""
    if not 0 <= distance <= 64:
        raise ValueError(f"split.hash_distance must be in 0..64 bits, got {distance}")
    for start in range(0, len(a.index), _CHUNK):
        stop = start + _CHUNK
        bits = np.bitwise_count(a.phash[start:stop, None] ^ b.phash[None, :])
        near = (bits <= distance) | (a.sha[start:stop, None] == b.sha[None, :])
        i, j = np.nonzero(near)
        yield a.index[start:stop][i], b.index[j]


def _self_pairs(rows: list[dict], index: np.ndarray, distance: int) -> np.ndarray:
    """All unordered near-duplicate pairs (i < j) among ``rows[index]``, shape (P, 2)."""
    hashes = _hashes(rows, index, {})
    blocks = [np.stack([i, j], 1) for i, j in _near_pairs(hashes, hashes, distance)]
    pairs = np.concatenate(blocks) if blocks else np.empty((0, 2), np.int64)
    return pairs[pairs[:, 0] < pairs[:, 1]]


# --------------------------------------------------------------------------------- clustering
def _find(parent: list[int], i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


def cluster_duplicates(rows: list[dict], hash_distance: int) -> Clusters:
    """Connected components (union-find) of near-duplicate pairs among decodable rows.

    Rows with an error get a singleton cluster each.
    """
    pairs = _self_pairs(rows, _usable(rows), hash_distance)
    parent = list(range(len(rows)))
    for i, j in pairs.tolist():
        root_i, root_j = _find(parent, i), _find(parent, j)
        if root_i != root_j:
            parent[max(root_i, root_j)] = min(root_i, root_j)
    # the root of a component is its smallest row, so sorted roots number clusters by first row
    roots = np.array([_find(parent, i) for i in range(len(rows))], dtype=np.int64)
    unique, ids = np.unique(roots, return_inverse=True)
    log.info(
        "clusters: %d rows, %d near-duplicate pairs, %d clusters",
        len(rows),
        len(pairs),
        len(unique),
    )
    _warn_if_chained(np.bincount(ids) if len(rows) else np.zeros(1, np.int64), hash_distance)
    ids = ids.astype(np.int64)
    return Clusters(ids=ids, pairs=int(len(pairs)), groups=subject_groups(rows, ids))


def subject_groups(rows: list[dict], ids: np.ndarray) -> np.ndarray:
    """Split groups: duplicate clusters ``ids`` joined when they share a (non-empty) ``subject``,
    numbered 0..G-1 by first row."""
    parent = list(range(len(rows)))
    first: dict[tuple[str, object], int] = {}
    for i, row in enumerate(rows):
        keys = [("cluster", int(ids[i]))]
        if row.get("subject"):
            keys.append(("subject", row["subject"]))
        for key in keys:
            root_i, root_j = _find(parent, i), _find(parent, first.setdefault(key, i))
            if root_i != root_j:
                parent[max(root_i, root_j)] = min(root_i, root_j)
    roots = np.array([_find(parent, i) for i in range(len(rows))], dtype=np.int64)
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)


def _warn_if_chained(sizes: np.ndarray, hash_distance: int) -> None:
    """Warn when one cluster swallows much of the data: the threshold chains distinct slices."""
    largest, total = int(sizes.max()), int(sizes.sum())
    if largest > max(CHAIN_WARN_MIN, CHAIN_WARN_FRACTION * total):
        log.warning(
            "one duplicate cluster holds %d of %d files: split.hash_distance=%d chains distinct "
            "slices together (measured: 4 suits the real data and the phantom; 10 puts 5,385 of "
            "7,023 real images in one cluster); lower it in params.yaml",
            largest,
            total,
            hash_distance,
        )


def cluster_members(clusters: Clusters) -> list[list[int]]:
    """Row indices of every cluster, indexed by cluster id."""
    return _members(clusters.ids)


def group_members(clusters: Clusters) -> list[list[int]]:
    """Row indices of every split group (clusters joined by subject), indexed by group id."""
    return _members(clusters.ids if clusters.groups is None else clusters.groups)


def _members(ids: np.ndarray) -> list[list[int]]:
    members: list[list[int]] = [[] for _ in range(int(ids.max(initial=-1)) + 1)]
    for row, cluster in enumerate(ids):
        members[int(cluster)].append(row)
    return members


# -------------------------------------------------------------------------------------- split
def _check_config(config: SplitConfig) -> None:
    fractions = {
        "val_fraction": config.val_fraction,
        "test_fraction": config.test_fraction,
        "anomaly_val_fraction": config.anomaly_val_fraction,
    }
    for key, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"split.{key} must be in [0, 1], got {value}")
    if config.val_fraction + config.test_fraction >= 1.0:
        raise ValueError(
            "split.val_fraction + split.test_fraction must be < 1 (train needs healthy clusters), "
            f"got {config.val_fraction} + {config.test_fraction}"
        )
    if config.keep not in KEEP:
        raise ValueError(f"split.keep must be one of {list(KEEP)}, got {config.keep!r}")


def stable_unit(seed: int, key: str) -> float:
    """A number in [0, 1) that depends only on ``seed`` and ``key`` (sha256-based)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _cluster_split(labels: set[str], unit: float, config: SplitConfig) -> str:
    unknown = labels - {"healthy", "anomaly"}
    if unknown:
        raise ValueError(
            f"manifest labels {sorted(unknown)} are not 'healthy'/'anomaly'; rebuild it"
        )
    if labels == {"healthy"}:
        if unit < config.test_fraction:
            return "test"
        return "val" if unit < config.test_fraction + config.val_fraction else "train"
    if labels == {"anomaly"}:
        return "val" if unit < config.anomaly_val_fraction else "test"
    return "conflict"


def _keeps_all(keep: str, split: str) -> bool:
    """Whether every member of a cluster assigned to ``split`` is kept (else its representative)."""
    return keep == "all" or (keep == "train_all" and split == "train")


def _representative(rows: list[dict], members: list[int]) -> int:
    """The member with the most pixels; ties go to the smallest path."""
    return min(members, key=lambda i: (-rows[i]["width"] * rows[i]["height"], rows[i]["path"]))


def split_by_cluster(rows: list[dict], clusters: Clusters, config: SplitConfig) -> SplitResult:
    """Assign whole clusters to train/val/test (see the module docstring for the rules)."""
    _check_config(config)
    if len(clusters.ids) != len(rows):
        raise ValueError(f"clusters cover {len(clusters.ids)} rows but there are {len(rows)} rows")
    assignment = ["quarantined"] * len(rows)
    representative = [False] * len(rows)
    for members in group_members(clusters):
        curated = [i for i in members if not rows[i]["error"] and rows[i].get("curation")]
        for i in curated:
            assignment[i] = "curated"
        usable = [i for i in members if not rows[i]["error"] and i not in curated]
        if not usable:
            continue
        labels = {rows[i]["label"] for i in usable}
        key = min(rows[i]["sha256"] for i in usable)
        split = _cluster_split(labels, stable_unit(config.seed, key), config)
        by_cluster: dict[int, list[int]] = defaultdict(list)
        for i in usable:
            by_cluster[int(clusters.ids[i])].append(i)
        for cluster in by_cluster.values():
            chosen = _representative(rows, cluster)
            representative[chosen] = True
            for i in cluster:
                keep = split == "conflict" or i == chosen or _keeps_all(config.keep, split)
                assignment[i] = split if keep else "duplicate"
    log.info("split: %s", dict(sorted(Counter(assignment).items())))
    return SplitResult(assignment, representative)


def cross_split_pairs(rows: list[dict], assignment: list[str], hash_distance: int) -> int:
    """Near-duplicate pairs whose two files are kept in different splits (0 means no leak)."""
    if len(assignment) != len(rows):
        raise ValueError(f"{len(assignment)} assignments for {len(rows)} rows")
    kept = np.array(
        [i for i, split in enumerate(assignment) if split in SPLITS and not rows[i]["error"]],
        dtype=np.int64,
    )
    pairs = _self_pairs(rows, kept, hash_distance)
    return int(sum(assignment[i] != assignment[j] for i, j in pairs))


def cross_split_subjects(rows: list[dict], assignment: list[str]) -> int:
    """Subjects with kept slices in more than one split (0 means no subject leaks)."""
    splits: dict[str, set[str]] = defaultdict(set)
    for row, split in zip(rows, assignment, strict=True):
        if row.get("subject") and split in SPLITS:
            splits[row["subject"]].add(split)
    return sum(len(s) > 1 for s in splits.values())


# ------------------------------------------------------------------------------------- report
def official_split_leak(rows: list[dict], hash_distance: int) -> dict:
    """How many decodable ``Testing`` files per class have a near-duplicate in ``Training``.

    Folders are matched case-insensitively by their prefix (``train*`` / ``test*``); an empty dict
    means the dataset has no such pair of folders.
    """
    usable = _usable(rows)
    train = np.array([i for i in usable if rows[i]["folder"].lower().startswith("train")], np.int64)
    test = np.array([i for i in usable if rows[i]["folder"].lower().startswith("test")], np.int64)
    if not len(train) or not len(test):
        return {}
    codes: dict[str, int] = {}
    test_hashes, train_hashes = _hashes(rows, test, codes), _hashes(rows, train, codes)
    twinned: set[int] = set()
    for i, _ in _near_pairs(test_hashes, train_hashes, hash_distance):
        twinned.update(i.tolist())
    per_class: dict[str, dict] = {}
    for class_name in sorted({rows[i]["class_name"] for i in test}):
        members = [i for i in test if rows[i]["class_name"] == class_name]
        n_twin = sum(i in twinned for i in members)
        per_class[class_name] = {
            "testing": len(members),
            "with_twin_in_training": n_twin,
            "fraction": n_twin / len(members),
        }
    total = {"testing": len(test), "with_twin_in_training": len(twinned)}
    return {"per_class": per_class, "total": {**total, "fraction": len(twinned) / len(test)}}


def _nested_counts(rows: list[dict], assignment: list[str]) -> dict:
    """Counts per split (or exclusion reason) x label x class x official folder."""
    counts: dict = {}
    for row, split in zip(rows, assignment, strict=True):
        label = counts.setdefault(split, {}).setdefault(row["label"] or "unlabelled", {})
        folder = label.setdefault(row["class_name"] or "no_class", {})
        folder[row["folder"]] = folder.get(row["folder"], 0) + 1
    return counts


def _duplicate_summary(rows: list[dict], clusters: Clusters) -> dict:
    members = cluster_members(clusters)
    sizes = [len(m) for m in members]
    histogram = Counter(sizes)
    return {
        "n_clusters": len(members),
        "near_duplicate_pairs": clusters.pairs,
        "cluster_size_histogram": {str(size): histogram[size] for size in sorted(histogram)},
        "clusters_with_duplicates": sum(size > 1 for size in sizes),
        "duplicate_files": sum(size - 1 for size in sizes),
        "files_in_duplicate_clusters": sum(size for size in sizes if size > 1),
    }


def split_report(
    rows: list[dict], clusters: Clusters, result: SplitResult, hash_distance: int
) -> dict:
    """A JSON-ready account of the split: every input row is counted exactly once.

    Raises:
        LeakError: near-duplicates were assigned to different splits.
    """
    leak = cross_split_pairs(rows, result.assignment, hash_distance)
    if leak:
        raise LeakError(
            f"{leak} near-duplicate pair(s) are in different splits; split whole clusters "
            "(split_by_cluster) instead of editing the assignment"
        )
    subjects_leaking = cross_split_subjects(rows, result.assignment)
    if subjects_leaking:
        raise LeakError(
            f"{subjects_leaking} subject(s) have slices in different splits; split whole subject "
            "groups (split_by_cluster) instead of editing the assignment"
        )
    groups = clusters.ids if clusters.groups is None else clusters.groups
    conflicts: dict[int, list[int]] = defaultdict(list)
    for i, split in enumerate(result.assignment):
        if split == "conflict":
            conflicts[int(groups[i])].append(i)
    totals = Counter(result.assignment)
    return {
        "n_rows": len(rows),
        "hash_distance": hash_distance,
        "assignment_totals": {name: totals.get(name, 0) for name in (*SPLITS, *EXCLUDED)},
        "counts": _nested_counts(rows, result.assignment),
        **_duplicate_summary(rows, clusters),
        "conflict_clusters": [
            {"cluster": cid, "paths": [rows[i]["path"] for i in members]}
            for cid, members in sorted(conflicts.items())
        ],
        "quarantined": [
            {"path": row["path"], "reason": row["error"]}
            for row, split in zip(rows, result.assignment, strict=True)
            if split == "quarantined"
        ],
        "curated": [
            {"path": row["path"], "reason": row.get("curation", "")}
            for row, split in zip(rows, result.assignment, strict=True)
            if split == "curated"
        ],
        "cross_split_near_duplicate_pairs": leak,
        "subjects": len({row["subject"] for row in rows if row.get("subject")}),
        "cross_split_subjects": subjects_leaking,
        "official_split_leak": official_split_leak(rows, hash_distance),
    }


# ----------------------------------------------------------------------------------------- io
def write_split(path: Path, rows: list[dict], clusters: Clusters, result: SplitResult) -> None:
    """Atomically write one CSV line per row: ``path,sha256,label,class_name,folder,cluster,split``."""
    if not len(rows) == len(clusters.ids) == len(result.assignment):
        raise ValueError("write_split: rows, clusters and assignment must have the same length")
    with atomic_path(path) as tmp, tmp.open("w", **_ENCODING) as handle:
        writer = csv.DictWriter(handle, fieldnames=SPLIT_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row, cluster, split in zip(rows, clusters.ids, result.assignment, strict=True):
            writer.writerow(
                {**{k: row[k] for k in SPLIT_FIELDS[:5]}, "cluster": int(cluster), "split": split}
            )


def read_split(path: Path) -> list[dict]:
    """Read a split CSV written by :func:`write_split` (``cluster`` as int)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found; run the split stage")
    with path.open("r", **_ENCODING) as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != SPLIT_FIELDS:
            raise ValueError(
                f"{path}:1: header must be {','.join(SPLIT_FIELDS)}, got {reader.fieldnames}; "
                "re-run the split stage"
            )
        rows = []
        for row in reader:
            try:
                row["cluster"] = int(row["cluster"])
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}:{reader.line_num}: bad cluster {row['cluster']!r}; re-run the split stage"
                ) from None
            if row["split"] not in (*SPLITS, *EXCLUDED):
                raise ValueError(f"{path}:{reader.line_num}: unknown split {row['split']!r}")
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------- figure
