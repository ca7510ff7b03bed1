"""Duplicate clusters and the cluster-level split: no leak, stable, anomalies never in train."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_manifest import ERRORS, FILTER, GROUPS, MAX_PIXELS, SINGLES, write_dataset

from brainad.config import SplitConfig
from brainad.data.manifest import build_manifest
from brainad.data.qa import plot_duplicate_clusters
from brainad.data.split import (
    SPLITS,
    Clusters,
    LeakError,
    SplitResult,
    cluster_duplicates,
    cross_split_pairs,
    read_split,
    split_by_cluster,
    split_report,
    write_split,
)

CONFIG = SplitConfig(
    hash_distance=4,
    keep="representative",
    val_fraction=0.15,
    test_fraction=0.25,
    anomaly_val_fraction=0.3,
    seed=42,
)
ALL = replace(CONFIG, keep="all")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("split") / "raw")


@pytest.fixture(scope="module")
def rows(dataset: Path) -> list[dict]:
    return build_manifest(dataset, FILTER, MAX_PIXELS).rows


@pytest.fixture(scope="module")
def clusters(rows: list[dict]) -> Clusters:
    return cluster_duplicates(rows, CONFIG.hash_distance)


def fake_rows(n: int, label: str, seed: int, prefix: str = "") -> list[dict]:
    """Rows of ``n`` distinct images (random 64-bit hashes are ~32 bits apart)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        phash = f"{int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2)):016x}"
        sha = hashlib.sha256(f"{prefix}{label}{seed}-{k}".encode()).hexdigest()
        rows.append(
            {"path": f"{prefix}{label}/{k}.png", "sha256": sha, "phash": phash, "error": ""}
            | {"label": label, "class_name": label, "folder": "Training", "width": 8, "height": 8}
        )
    return rows


def _cluster_of(rows: list[dict], clusters: Clusters) -> dict[str, int]:
    return {row["path"]: int(c) for row, c in zip(rows, clusters.ids, strict=True)}


# --------------------------------------------------------------------------------- clustering
def test_constructed_duplicates_cluster_together_and_apart(rows, clusters) -> None:
    cluster = _cluster_of(rows, clusters)
    group_ids = [{cluster[p] for p in group} for group in GROUPS]
    assert all(len(ids) == 1 for ids in group_ids)
    distinct = [ids.pop() for ids in group_ids] + [cluster[p] for p in SINGLES + ERRORS]
    assert len(set(distinct)) == len(distinct) == len(GROUPS) + len(SINGLES) + len(ERRORS)
    assert sorted(set(clusters.ids.tolist())) == list(range(len(distinct)))
    assert clusters.pairs == sum(len(g) * (len(g) - 1) // 2 for g in GROUPS)  # 3 + 5 * 1


def test_same_sha_clusters_even_at_distance_zero() -> None:
    rows = fake_rows(3, "healthy", seed=0)
    rows[2]["sha256"] = rows[0]["sha256"]
    rows[1]["phash"] = f"{int(rows[0]['phash'], 16) ^ 1:016x}"  # one bit away
    clusters = cluster_duplicates(rows, hash_distance=0)
    assert clusters.ids.tolist() == [0, 1, 0] and clusters.pairs == 1
    assert cluster_duplicates(rows, hash_distance=1).ids.tolist() == [0, 0, 0]


def test_chaining_threshold_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    rows = fake_rows(60, "healthy", seed=6)
    for k, row in enumerate(rows):  # a chain: each hash is one bit from the next
        row["phash"] = f"{(1 << (k + 2)) - 1:016x}"
    with caplog.at_level("WARNING", logger="brainad"):
        assert cluster_duplicates(rows, 2).ids.max() == 0
    assert "chains distinct slices" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="brainad"):
        cluster_duplicates(rows, 0)
    assert "chains" not in caplog.text


# -------------------------------------------------------------------------------------- split
def test_split_keeps_clusters_whole_and_excludes_conflicts(rows, clusters) -> None:
    result = split_by_cluster(rows, clusters, ALL)
    by_cluster = defaultdict(set)
    for c, split in zip(clusters.ids, result.assignment, strict=True):
        by_cluster[int(c)].add(split)
    assert all(len(splits) == 1 for splits in by_cluster.values())
    assignment = dict(zip([r["path"] for r in rows], result.assignment, strict=True))
    assert {p for p, s in assignment.items() if s == "conflict"} == GROUPS[5]
    assert {p for p, s in assignment.items() if s == "quarantined"} == set(ERRORS)
    assert cross_split_pairs(rows, result.assignment, CONFIG.hash_distance) == 0


def test_representative_is_largest_and_others_are_duplicates(rows, clusters) -> None:
    result = split_by_cluster(rows, clusters, CONFIG)
    assignment = dict(zip([r["path"] for r in rows], result.assignment, strict=True))
    assert assignment["Training/notumor/a_big.png"] in SPLITS  # 96 px beats the 48 px copies
    assert assignment["Training/notumor/a.png"] == assignment["Training/notumor/a_gamma.png"]
    assert assignment["Training/notumor/a.png"] == "duplicate"
    assert assignment["Training/notumor/b.png"] in SPLITS  # same size: smallest path wins
    assert assignment["Training/notumor/b_copy.png"] == "duplicate"
    kept = Counter(
        int(c) for c, s in zip(clusters.ids, result.assignment, strict=True) if s in SPLITS
    )
    assert set(kept.values()) == {1}
    n_usable = len({int(c) for r, c in zip(rows, clusters.ids, strict=True) if not r["error"]})
    assert sum(result.representative) == n_usable


def test_train_all_keeps_every_train_member_and_one_per_cluster_elsewhere(rows, clusters) -> None:
    result = split_by_cluster(rows, clusters, replace(CONFIG, keep="train_all"))
    kept: dict[str, Counter] = defaultdict(Counter)
    sizes = Counter(int(c) for r, c in zip(rows, clusters.ids, strict=True) if not r["error"])
    for c, split in zip(clusters.ids, result.assignment, strict=True):
        if split in SPLITS:
            kept[split][int(c)] += 1
    assert kept["train"] and all(n == sizes[c] for c, n in kept["train"].items())
    assert any(n > 1 for n in kept["train"].values())  # the fixture has train duplicates
    for split in ("val", "test"):
        assert set(kept[split].values()) == {1}
    assert cross_split_pairs(rows, result.assignment, CONFIG.hash_distance) == 0
    with pytest.raises(ValueError, match="split.keep must be one of"):
        split_by_cluster(rows, clusters, replace(CONFIG, keep="everything"))


def test_fractions_anomalies_never_train() -> None:
    rows = fake_rows(2000, "healthy", seed=1) + fake_rows(1000, "anomaly", seed=2)
    result = split_by_cluster(rows, cluster_duplicates(rows, 10), CONFIG)
    healthy = Counter(result.assignment[:2000])
    anomaly = Counter(result.assignment[2000:])
    assert anomaly["train"] == 0 and anomaly["val"] + anomaly["test"] == 1000
    assert abs(anomaly["val"] / 1000 - CONFIG.anomaly_val_fraction) < 0.05
    assert abs(healthy["test"] / 2000 - CONFIG.test_fraction) < 0.04
    assert abs(healthy["val"] / 2000 - CONFIG.val_fraction) < 0.04
    assert healthy["train"] + healthy["val"] + healthy["test"] == 2000


def test_split_is_stable_when_files_are_added_and_depends_on_seed() -> None:
    rows = fake_rows(300, "healthy", seed=3) + fake_rows(100, "anomaly", seed=4)
    before = split_by_cluster(rows, cluster_duplicates(rows, 10), ALL).assignment
    grown = fake_rows(50, "healthy", seed=5, prefix="new") + rows  # new files sort first
    after = split_by_cluster(grown, cluster_duplicates(grown, 10), ALL).assignment
    assert after[50:] == before
    other_seed = split_by_cluster(rows, cluster_duplicates(rows, 10), replace(ALL, seed=7))
    assert other_seed.assignment != before


def test_bad_split_config_is_rejected(rows, clusters) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_cluster(rows, clusters, replace(CONFIG, val_fraction=0.5, test_fraction=0.5))
    with pytest.raises(ValueError, match="hash_distance"):
        cluster_duplicates(rows, 65)


def test_file_level_split_leaks_and_report_refuses_it(rows, clusters) -> None:
    leaky = ["quarantined" if r["error"] else SPLITS[k % 3] for k, r in enumerate(rows)]
    assert cross_split_pairs(rows, leaky, CONFIG.hash_distance) > 0
    result = SplitResult(leaky, [False] * len(rows))
    with pytest.raises(LeakError, match="different splits"):
        split_report(rows, clusters, result, CONFIG.hash_distance)


# ------------------------------------------------------------------------------ report and io
def _leaves(tree: dict) -> int:
    return sum(_leaves(v) if isinstance(v, dict) else v for v in tree.values())


def test_report_accounts_for_every_row(rows, clusters) -> None:
    result = split_by_cluster(rows, clusters, CONFIG)
    report = split_report(rows, clusters, result, CONFIG.hash_distance)
    assert report["n_rows"] == len(rows) == _leaves(report["counts"])
    assert sum(report["assignment_totals"].values()) == len(rows)
    assert report["assignment_totals"]["duplicate"] == sum(len(g) - 1 for g in GROUPS[:5])
    assert report["cross_split_near_duplicate_pairs"] == 0
    histogram = {int(k): v for k, v in report["cluster_size_histogram"].items()}
    assert sum(histogram.values()) == report["n_clusters"]
    assert sum(size * n for size, n in histogram.items()) == len(rows)
    assert report["duplicate_files"] == sum(len(g) - 1 for g in GROUPS)
    assert [set(c["paths"]) for c in report["conflict_clusters"]] == [GROUPS[5]]
    assert {q["path"] for q in report["quarantined"]} == set(ERRORS)
    assert all(q["reason"] for q in report["quarantined"])
    leak = report["official_split_leak"]["per_class"]
    # Testing/notumor: c_small has a twin in Training, d and d16 do not; Testing/glioma: none.
    assert leak["notumor"] == {"testing": 3, "with_twin_in_training": 1, "fraction": 1 / 3}
    assert leak["glioma"]["with_twin_in_training"] == 0


def test_split_csv_round_trip(tmp_path: Path, rows, clusters) -> None:
    result = split_by_cluster(rows, clusters, CONFIG)
    path = tmp_path / "split.csv"
    write_split(path, rows, clusters, result)
    back = read_split(path)
    assert [r["path"] for r in back] == [r["path"] for r in rows]
    assert [r["split"] for r in back] == result.assignment
    assert [r["cluster"] for r in back] == clusters.ids.tolist()
    path.write_text(path.read_text().replace(",cluster,", ",group,", 1))
    with pytest.raises(ValueError, match="header"):
        read_split(path)


def test_duplicate_figure_is_written(tmp_path: Path, dataset: Path, rows, clusters) -> None:
    out = tmp_path / "fig" / "duplicates.png"
    plot_duplicate_clusters(dataset, rows, clusters, out, n_clusters=3)
    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    assert [p.name for p in out.parent.iterdir()] == ["duplicates.png"]  # no temp file left


def test_split_csv_keeps_non_utf8_names(tmp_path: Path) -> None:
    rows = fake_rows(3, "healthy", seed=8)
    rows[1]["path"] = "Training/notumor/\udcff\udcfe,odd name.png"
    clusters = cluster_duplicates(rows, 4)
    write_split(tmp_path / "s.csv", rows, clusters, split_by_cluster(rows, clusters, CONFIG))
    assert [r["path"] for r in read_split(tmp_path / "s.csv")] == [r["path"] for r in rows]


def test_demo_hash_distance_finds_every_planted_phantom_duplicate(tmp_path: Path) -> None:
    """Ground truth from the phantom generator: each planted near-duplicate shares a cluster."""
    from brainad.config import load_study
    from brainad.data.manifest import build_manifest
    from brainad.data.phantom import write_phantom_dataset

    root_dir = Path(__file__).resolve().parents[1]
    demo = load_study("demo", root_dir / "params.yaml")
    phantom = replace(demo.phantom, n_healthy=60, n_anomalous=10, image_size=160)
    summary = write_phantom_dataset(phantom, tmp_path / "raw")
    manifest = build_manifest(tmp_path / "raw", replace(FILTER, anomaly_classes=("glioma",)), 10**7)
    clusters = cluster_duplicates(manifest.rows, demo.split.hash_distance)
    index = {row["path"]: i for i, row in enumerate(manifest.rows)}
    pairs = summary["duplicates"]
    assert pairs, "the phantom should plant near-duplicates"
    for pair in pairs:
        assert clusters.ids[index[pair["source"]]] == clusters.ids[index[pair["copy"]]], pair
    assert len(set(clusters.ids.tolist())) == len(manifest.rows) - len(pairs)


# ------------------------------------------------------------------------------- subjects
def subject_rows(n_subjects: int, n_slices: int, label: str, seed: int) -> list[dict]:
    """``n_slices`` distinct slices (random hashes) of each of ``n_subjects`` subjects."""
    rows = fake_rows(n_subjects * n_slices, label, seed, prefix="Volumes/")
    for i, row in enumerate(rows):
        row.update(subject=f"{label}-{i // n_slices}", slice=i % n_slices)
    return rows


def test_slices_of_a_subject_never_cross_splits_and_are_all_kept() -> None:
    rows = subject_rows(12, 5, "healthy", seed=21) + subject_rows(4, 5, "anomaly", seed=22)
    clusters = cluster_duplicates(rows, CONFIG.hash_distance)
    assert len(set(clusters.ids.tolist())) == len(rows)  # distinct slices: singleton clusters
    result = split_by_cluster(rows, clusters, CONFIG)  # keep: representative
    splits: dict[str, set[str]] = defaultdict(set)
    for row, split in zip(rows, result.assignment, strict=True):
        splits[row["subject"]].add(split)
    assert all(len(s) == 1 for s in splits.values())
    assert {s for v in splits.values() for s in v} >= {"train", "test"}
    assert "duplicate" not in result.assignment  # one per duplicate cluster, not per subject
    report = split_report(rows, clusters, result, CONFIG.hash_distance)
    assert report["subjects"] == 16 and report["cross_split_subjects"] == 0


def test_subjects_joined_by_a_near_duplicate_share_a_split() -> None:
    rows = subject_rows(2, 3, "healthy", seed=23)
    rows[4]["phash"] = rows[0]["phash"]  # a slice of subject 1 duplicates one of subject 0
    clusters = cluster_duplicates(rows, CONFIG.hash_distance)
    assert len(set(clusters.groups.tolist())) == 1
    result = split_by_cluster(rows, clusters, ALL)
    assert len(set(result.assignment)) == 1


def test_a_subject_in_two_splits_is_refused_by_the_report() -> None:
    rows = subject_rows(3, 2, "healthy", seed=24)
    clusters = cluster_duplicates(rows, CONFIG.hash_distance)
    result = split_by_cluster(rows, clusters, ALL)
    moved = list(result.assignment)
    moved[1] = next(s for s in ("train", "val", "test") if s != moved[0])
    with pytest.raises(LeakError, match="subject"):
        split_report(rows, clusters, result._replace(assignment=moved), CONFIG.hash_distance)
