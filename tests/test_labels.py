"""Slice labels, the labeler's held-out protocol and the curation filter, on tiny phantoms."""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from brainad.config import load_study
from brainad.data import curation, labelfit
from brainad.data.features import FEATURE_SETS, image_features, shape_features
from brainad.data.labels import (
    ANNOTATION_FIELDS,
    SOURCE_LABELS,
    read_annotations,
    read_source_labels,
)
from brainad.data.manifest import build_manifest
from brainad.data.phantom import write_phantom_dataset
from brainad.data.split import cluster_duplicates, split_by_cluster, split_report

ROOT = Path(__file__).resolve().parents[1]
DEMO = load_study("demo", ROOT / "params.yaml")
PHANTOM = dataclasses.replace(
    DEMO.phantom, n_healthy=40, n_anomalous=12, image_size=48, duplicate_fraction=0.2, seed=5
)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labels") / "raw"
    write_phantom_dataset(PHANTOM, root)
    return root


def _rows(root: Path, filter=DEMO.filter) -> list[dict]:
    return build_manifest(root, filter, DEMO.preprocess.max_pixels).rows


def _write_annotations(path: Path, rows: list[dict], source: dict, every: int) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(ANNOTATION_FIELDS)
        for row in rows[::every]:
            label = source[row["path"]]
            writer.writerow([row["sha256"], row["path"], row["class_name"], "random", *label])
    return path


def test_phantom_emits_labels_and_the_manifest_uses_them(phantom: Path) -> None:
    source = read_source_labels(phantom)
    images = sorted(p.relative_to(phantom).as_posix() for p in phantom.glob("*/*/*.jpg"))
    assert sorted(source) == images
    assert {(lab.plane, lab.modality) for lab in source.values()} == {("axial", "MR")}
    assert {lab.sequence for lab in source.values()} == {"T1", "T2", "FLAIR"}
    rows = _rows(phantom)
    report = labelfit.label_rows(rows, phantom, np.arange(len(rows)), DEMO.filter, 10**7)
    assert report["label_source_counts"] == {"source": len(rows)}
    assert all(r["sequence"] == source[r["path"]].sequence for r in rows)
    assert not (phantom / SOURCE_LABELS).read_text().count("unknown")


def test_annotation_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    header = ",".join(ANNOTATION_FIELDS)
    path.write_text(f"{header}\nabc,x.jpg,notumor,random,oblique,MR,T1,\n")
    with pytest.raises(ValueError, match="plane 'oblique'"):
        read_annotations(path)
    path.write_text(f"{header}\nabc,x.jpg,notumor,random,axial,MR,T1,shiny\n")
    with pytest.raises(ValueError, match="unknown flag"):
        read_annotations(path)
    path.write_text(f"{header}\nabc,x.jpg,n,random,axial,MR,T1,\nabc,y.jpg,n,random,axial,MR,T2,\n")
    with pytest.raises(ValueError, match="annotated twice, differently"):
        read_annotations(path)
    path.write_text(f"{header}\nabc,x.jpg,n,random,axial,MR,T1,\nabc,y.jpg,n,random,axial,MR,T1,\n")
    assert read_annotations(path)["abc"].labels.sequence == "T1"
    path.write_text(f"{header}\nabc,x.jpg,n,picked,axial,MR,T1,\n")
    with pytest.raises(ValueError, match="sample 'picked'"):
        read_annotations(path)
    path.write_text("sha,path\n")
    with pytest.raises(ValueError, match="header"):
        read_annotations(path)


def test_features_see_mirror_symmetry_and_have_fixed_width() -> None:
    yy, xx = np.mgrid[:64, :64]
    ellipse = (((yy - 32) / 26.0) ** 2 + ((xx - 32) / 20.0) ** 2 <= 1).astype(np.float32)
    lopsided = ellipse.copy()
    lopsided[:, :24] *= 0.2
    lopsided[40:, 32:] = 1.0  # a "neck" to one side
    header = {"channels": 1, "width": 64, "height": 64, "bytes": 2000}
    sym, asym = shape_features(ellipse, header), shape_features(lopsided, header)
    assert sym[5] > 0.95 > asym[5]  # left-right intensity symmetry
    widths = {name: len(f) for name, f in image_features(ellipse, header).items()}
    assert list(widths) == list(FEATURE_SETS) and widths["shape"] < widths["shape+hog"]


def test_classifier_is_held_out_by_cluster_learns_and_is_deterministic(
    phantom: Path, tmp_path: Path
) -> None:
    unlabelled = tmp_path / "unlabelled"  # the same images without the source's labels.csv
    shutil.copytree(phantom, unlabelled, ignore=shutil.ignore_patterns(SOURCE_LABELS))
    rows = _rows(unlabelled)
    source = read_source_labels(phantom)
    annotations = _write_annotations(tmp_path / "ann.csv", rows, source, every=2)
    config = dataclasses.replace(DEMO.filter, annotations=str(annotations), label_holdout=0.4)
    clusters = cluster_duplicates(rows, DEMO.split.hash_distance)
    first = labelfit.label_rows(rows, unlabelled, clusters.ids, config, 10**7)
    again = _rows(unlabelled)
    assert labelfit.label_rows(again, unlabelled, clusters.ids, config, 10**7) == first
    assert again == rows
    assert first["holdout"]["cross_clusters"] == 0 and first["holdout"]["n_held_out"] > 5
    sequence = first["targets"]["sequence"]
    assert sequence["held_out"]["accuracy"] > 0.5  # three phantom contrasts (chance: 1/3)
    assert len(sequence["attempts"]) == len(FEATURE_SETS) * len(labelfit.CANDIDATES)
    assert first["targets"]["plane"]["held_out"]["accuracy"] == 1.0  # one class: all axial
    counts = first["label_source_counts"]
    assert counts["annotation"] >= len(rows[::2]) and counts["classifier"] > 0
    assert counts["annotation"] + counts["classifier"] == len(rows)
    predicted = [
        r for r in rows if r["label_source"] == "classifier" and r["sequence"] != "unknown"
    ]
    hits = sum(r["sequence"] == source[r["path"]].sequence for r in predicted)
    assert predicted and hits >= 0.6 * len(predicted)  # confident predictions beat chance


def test_curation_filter_marks_lists_and_counts(phantom: Path) -> None:
    config = dataclasses.replace(DEMO.filter, sequences=("T1",), exclude_flags=("not_brain",))
    rows = _rows(phantom)
    labelfit.label_rows(rows, phantom, np.arange(len(rows)), config, 10**7)
    dropped = curation.apply_filter(rows, config)
    assert sum(dropped.values()) == sum(r["sequence"] != "T1" for r in rows) > 0
    assert all(("sequence=" in r["curation"]) == (r["sequence"] != "T1") for r in rows)
    clusters = cluster_duplicates(rows, DEMO.split.hash_distance)
    result = split_by_cluster(rows, clusters, DEMO.split)
    assert {s for r, s in zip(rows, result.assignment, strict=True) if r["curation"]} == {"curated"}
    report = split_report(rows, clusters, result, DEMO.split.hash_distance)
    assert len(report["curated"]) == sum(dropped.values())
    strata = curation.strata_counts(rows, result.assignment)
    total = {c: sum(r[c] for r in strata["rows"]) for c in strata["columns"]}
    assert total["all"] == len(rows) and total["after_curation"] == len(rows) - len(
        report["curated"]
    )
    kept_sequences = {r["sequence"] for r in strata["rows"] if r["train"] + r["val"] + r["test"]}
    assert kept_sequences == {"T1"}
    assert "| notumor | axial | T1 |" in curation.strata_markdown(strata, "t")


def test_filter_values_are_checked() -> None:
    with pytest.raises(ValueError, match="filter.planes"):
        curation.check_filter(dataclasses.replace(DEMO.filter, planes=("axial", "oblique")))
    with pytest.raises(ValueError, match="exclude_flags"):
        curation.check_filter(dataclasses.replace(DEMO.filter, exclude_flags=("blurry",)))
