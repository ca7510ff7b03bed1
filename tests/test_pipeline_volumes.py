"""End to end on volumes: a ``nifti``-source study through the real dvc.yaml and stages (micro
sizes, as tests/test_pipeline.py), split by subject, then ``brainad score`` with its scorer on a
NIfTI volume gives a map in the volume's grid."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.volumes import phantom_volume, write_nifti
from test_pipeline import MICRO, run, scratch_repo

from brainad.cli import main as cli_main
from brainad.data.manifest import read_manifest

pytestmark = pytest.mark.slow
STUDY = "vols"
AFFINE = np.diag([1.2, 1.2, 3.0, 1.0])


def _volumes(folder: Path) -> None:
    """16 healthy and 6 anomalous subjects (with masks), 6 slices of 64 px each."""
    for i in range(16):
        write_nifti(folder / "healthy" / f"h{i:02d}.nii.gz", phantom_volume(6, seed=i)[0], AFFINE)
    for i in range(6):
        data, seg = phantom_volume(6, seed=100 + i, tumour=True)
        write_nifti(folder / "anomalous" / f"a{i:02d}.nii.gz", data, AFFINE)
        write_nifti(folder / "anomalous" / f"a{i:02d}_seg.nii.gz", seg, AFFINE)


@pytest.fixture(scope="module")
def volume_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    repo = tmp_path_factory.mktemp("vols")
    scans = tmp_path_factory.mktemp("scans")
    _volumes(scans)
    source = {"kind": "nifti", "uri": str(scans)}
    labels = {"healthy_classes": ["healthy"], "anomaly_classes": ["anomalous"]}
    study = {**MICRO, "source": source, "filter": labels, "split": {"keep": "all"}}
    env = scratch_repo(repo, {STUDY: study})
    run([sys.executable, "-m", "dvc", "repro", f"evaluate@{STUDY}"], repo, env)
    return repo, scans


def test_nifti_study_runs_and_splits_by_subject(volume_repo) -> None:
    repo, _ = volume_repo
    reports = repo / "reports" / STUDY
    rows = read_manifest(repo / "data" / STUDY / "manifest.jsonl")
    assert {r["subject"] for r in rows} == {f"h{i:02d}" for i in range(16)} | {
        f"a{i:02d}" for i in range(6)
    }
    split = json.loads((reports / "split" / "split.json").read_text())
    assert split["subjects"] == 22 and split["cross_split_subjects"] == 0
    assert split["cross_split_near_duplicate_pairs"] == 0
    preprocess = json.loads((reports / "preprocess" / "preprocess.json").read_text())
    assert preprocess["accounted"] == len(rows)
    metrics = json.loads((reports / "evaluate" / "metrics.json").read_text())
    assert 0.0 <= metrics["vqgan"]["real"]["roc_auc"] <= 1.0


def test_the_study_s_scorer_maps_a_volume_in_its_grid(volume_repo, tmp_path: Path) -> None:
    repo, scans = volume_repo
    scan = scans / "anomalous" / "a00.nii.gz"
    model = repo / "models" / STUDY / "scorers" / "vqgan.pt"
    out = tmp_path / "out"
    assert cli_main(["score", "--model", str(model), str(scan), "--out", str(out)]) == 0
    (volume_map,) = (out / "maps").glob("*_map.nii.gz")
    loaded = nib.load(str(volume_map))
    assert loaded.shape == (64, 64, 6) and np.allclose(loaded.affine, AFFINE)
