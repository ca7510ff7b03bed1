"""The brats case source: every naming scheme, checksums, rejections with reasons, slice rows."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.volumes import brats_case, write_nifti

from brainad.config import CasePatterns, CaseSourceConfig, SliceRulesConfig
from brainad.data import brats
from brainad.data.volumes import slice_image

CHANNELS = ("flair", "t1c")


def _source(root: Path, naming: str = "auto", checksums: str = "", **patterns) -> CaseSourceConfig:
    custom = CasePatterns(**{"flair": "", "t1c": "", "label": "", "brainmask": "", **patterns})
    return CaseSourceConfig("brats", str(root), naming, custom, checksums)


def _sums(root: Path) -> None:
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.relative_to(root).as_posix()}"
        for p in sorted(root.rglob("*.nii*"))
    ]
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("naming", ["brats2013", "brats2018", "brats2023"])
def test_each_naming_scheme_is_read_by_auto_and_by_name(tmp_path: Path, naming: str) -> None:
    written = brats_case(tmp_path, "case_a", naming)
    for setting in ("auto", naming):
        cases, rejected, unused = brats.read_cases(
            _source(tmp_path, setting), ("case_a",), CHANNELS
        )
        assert not rejected and not unused
        case = cases["case_a"]
        assert set(case.channels) == set(CHANNELS)
        label = np.asanyarray(nib.load(written["label"]).dataobj) > 0
        assert case.label.sum() == label.sum() > 0
        flair = np.asanyarray(nib.load(written["flair"]).dataobj)
        assert case.brain.sum() == (flair != 0).sum()  # mask file or non-zero voxels: the same
        assert case.files["label"] == written["label"].name
        assert ("brainmask" in case.files) == (naming == "brats2013")


def test_custom_patterns_read_another_layout(tmp_path: Path) -> None:
    written = brats_case(tmp_path, "c1", "brats2018")
    for role, path in written.items():
        path.rename(path.with_name(f"{role.upper()}.nii.gz"))
    source = _source(tmp_path, "custom", flair="FLAIR.nii*", t1c="T1C.nii*", label="LABEL.nii*")
    cases, rejected, _ = brats.read_cases(source, ("c1",), CHANNELS)
    assert not rejected and cases["c1"].label.any()


def test_checksums_verify_every_file_read(tmp_path: Path) -> None:
    brats_case(tmp_path, "good", "brats2018", seed=1)
    written = brats_case(tmp_path, "bad", "brats2018", seed=2)
    _sums(tmp_path)
    flair = written["flair"]
    data = np.asanyarray(nib.load(flair).dataobj).copy()
    data[0, 0, 0] += 1.0
    write_nifti(flair, data, np.diag([-1.0, -1.0, 1.0, 1.0]))
    cases, rejected, _ = brats.read_cases(
        _source(tmp_path, checksums="SHA256SUMS"), ("good", "bad"), CHANNELS
    )
    assert list(cases) == ["good"]
    assert rejected[0].case == "bad" and flair.name in rejected[0].reason
    assert "differs from the checksum file" in rejected[0].reason


def test_a_file_missing_from_the_checksums_is_not_trusted(tmp_path: Path) -> None:
    brats_case(tmp_path, "a", "brats2018")
    _sums(tmp_path)
    brats_case(tmp_path, "b", "brats2018", seed=3)  # written after the checksum file
    _, rejected, _ = brats.read_cases(
        _source(tmp_path, checksums="SHA256SUMS"), ("a", "b"), CHANNELS
    )
    assert [r.case for r in rejected] == ["b"] and "not listed" in rejected[0].reason


def test_a_named_checksum_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    brats_case(tmp_path, "a", "brats2018")
    with pytest.raises(ValueError, match="source.checksums"):
        brats.read_cases(_source(tmp_path, checksums="SUMS.txt"), ("a",), CHANNELS)


def test_bad_cases_are_rejected_with_the_file_and_reason(tmp_path: Path) -> None:
    brats_case(tmp_path, "ok", "brats2018")
    missing = brats_case(tmp_path, "no_label", "brats2018", seed=1)
    missing["label"].unlink()
    grid = brats_case(tmp_path, "other_grid", "brats2018", seed=2)
    write_nifti(grid["t1c"], np.zeros((16, 16, 8), np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]))
    broken = brats_case(tmp_path, "truncated", "brats2018", seed=3)
    broken["flair"].write_bytes(broken["flair"].read_bytes()[:200])
    twice = brats_case(tmp_path, "twice", "brats2018", seed=4)
    (twice["flair"].parent / "twice_flair.nii").write_bytes(b"x")
    subjects = ("ok", "no_label", "other_grid", "truncated", "twice")
    cases, rejected, _ = brats.read_cases(_source(tmp_path, "brats2018"), subjects, CHANNELS)
    assert list(cases) == ["ok"]
    reasons = {r.case: r.reason for r in rejected}
    assert "no file matches 'no_label_seg.nii*'" in reasons["no_label"]
    assert "other_grid_t1ce.nii.gz" in reasons["other_grid"] and "grid" in reasons["other_grid"]
    assert "not a readable NIfTI" in reasons["truncated"]
    assert "2 files match" in reasons["twice"]


def test_a_role_naming_an_absent_case_lists_the_cases_found(tmp_path: Path) -> None:
    brats_case(tmp_path, "here", "brats2018")
    with pytest.raises(ValueError, match=r"\['gone'\] not found.*\['here'\]"):
        brats.read_cases(_source(tmp_path), ("here", "gone"), CHANNELS)


def test_unknown_naming_with_auto_says_what_to_set(tmp_path: Path) -> None:
    (tmp_path / "odd").mkdir()
    write_nifti(tmp_path / "odd" / "scan.nii.gz", np.ones((8, 8, 4), np.float32))
    _, rejected, _ = brats.read_cases(_source(tmp_path), ("odd",), CHANNELS)
    assert "source.naming: custom" in rejected[0].reason


def test_slice_rows_classify_by_tumour_voxels(tmp_path: Path) -> None:
    brats_case(tmp_path, "a", "brats2018", size=32, depth=16)
    case = brats.read_cases(_source(tmp_path), ("a",), CHANNELS)[0]["a"]
    rules = SliceRulesConfig(min_brain_voxels=20, min_tumour_voxels=30)
    rows = brats.slice_rows(case, rules)
    brain = case.brain.sum(axis=(0, 1))
    tumour = (case.label & case.brain).sum(axis=(0, 1))
    assert [r.slice for r in rows] == [k for k in range(16) if brain[k] >= 20]
    for row in rows:
        t = tumour[row.slice]
        expected = "healthy" if t == 0 else "anomalous" if t >= 30 else "excluded"
        assert row.status == expected and row.tumour_voxels == t
    assert {"healthy", "anomalous"} <= {r.status for r in rows}
    assert rows[0].position == 0.0 and rows[-1].position == 1.0


def test_normalise_and_slice_stack(tmp_path: Path) -> None:
    brats_case(tmp_path, "a", "brats2018")
    case = brats.read_cases(_source(tmp_path), ("a",), CHANNELS)[0]["a"]
    flair, brain = case.channels["flair"], case.brain
    z = brats.normalise(flair, brain, "zscore")
    assert abs(z[brain].mean()) < 1e-4 and abs(z[brain].std() - 1) < 1e-3 and not z[~brain].any()
    eq = brats.normalise(flair, brain, "equalise")
    assert eq[brain].min() == 0.0 and eq[brain].max() == 1.0
    order = np.argsort(flair[brain], kind="stable")
    assert np.all(np.diff(eq[brain][order]) >= 0)  # ranks keep the intensity order
    with pytest.raises(ValueError, match="normalisation"):
        brats.normalise(flair, brain, "minmax")
    stack = brats.slice_stack(flair, [3, 5])
    assert stack.shape == (2, 1, flair.shape[1], flair.shape[0])
    assert np.array_equal(stack[1, 0], slice_image(flair, 5))
