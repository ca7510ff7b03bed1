"""``brainad score --shard I/N`` and ``brainad merge`` (issue 29): the shards of a folder merged
are the ``scores.csv`` of one unsharded run (same rows, same order), the assignment depends on
file contents only, and merge refuses sets of shards that are not one complete run.

The archive mixes 2-D images (one a copy of another, one truncated), a NIfTI volume and DICOM
series (one with a file without pixel data), so every kind of item and row is sharded.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import shutil
from pathlib import Path

import pytest
from helpers.scorer_bundle import write_bundle, write_scans
from helpers.volumes import phantom_volume, read_dicom, write_dicom_series, write_nifti

from brainad.cli import main
from brainad.cli.shard import parse_shard

N = 4


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundle") / "vqgan.pt")


def _archive(folder: Path) -> Path:
    """7 scans in two folders, a copy, a truncated PNG, a NIfTI file, two DICOM series and a
    DICOM file without pixel data (two head slices per volume)."""
    scans = write_scans(folder / "a", 5)
    write_scans(folder / "a" / "deeper", 2, seed=3)
    (folder / "a" / "zz_copy.png").write_bytes(scans[1].read_bytes())
    (folder / "a" / "broken.png").write_bytes(scans[2].read_bytes()[:60])
    write_nifti(folder / "vol" / "head.nii.gz", phantom_volume(4, seed=10)[0])
    write_dicom_series(folder / "dcm" / "s0", phantom_volume(4, seed=20)[0])
    files = write_dicom_series(folder / "dcm" / "s1", phantom_volume(4, seed=21)[0])
    report = read_dicom(files[0])
    del report.PixelData
    report.SOPInstanceUID = report.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7"
    report.save_as(str(folder / "dcm" / "s1" / "report.dcm"))
    return folder


def score(bundle: Path, inputs: list, out: Path, *extra: str) -> int:
    args = ["score", "--model", str(bundle), *map(str, inputs), "--out", str(out)]
    return main([*args, "--maps", "top-2", "--workers", "0", "--batch-size", "1", *extra])


def merge(out: Path, *shards: Path, extra: tuple[str, ...] = ()) -> int:
    return main(["merge", str(out), *map(str, shards), *extra])


def table(out: Path) -> list[dict[str, str]]:
    with open(out / "scores.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def errors(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


@pytest.fixture(scope="module")
def run(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One unsharded run and the same command in 4 shards (every file scored alone in its batch,
    so scores are bitwise the same: see docs/scoring.md)."""
    tmp = tmp_path_factory.mktemp("sharded")
    archive = _archive(tmp / "archive")
    codes = {"full": score(bundle, [archive], tmp / "full")}
    shards = [tmp / f"shard{i}" for i in range(N)]
    for i, out in enumerate(shards):
        codes[i] = score(bundle, [archive], out, "--shard", f"{i}/{N}")
    return {"tmp": tmp, "archive": archive, "codes": codes, "shards": shards}


def test_four_shards_merged_are_byte_for_byte_one_unsharded_run(run: dict) -> None:
    tmp, shards = run["tmp"], run["shards"]
    assert run["codes"]["full"] == 1  # the truncated PNG and the DICOM report are quarantined
    assert merge(tmp / "merged", *[shards[i] for i in (2, 0, 3, 1)]) == 0
    full, merged = tmp / "full" / "scores.csv", tmp / "merged" / "scores.csv"
    assert merged.read_bytes() == full.read_bytes()
    rows = table(tmp / "merged")
    assert {r["level"] for r in rows} == {"image", "slice", "volume"}
    assert {r["status"] for r in rows} == {"scored", "quarantined", "duplicate"}
    assert sorted(p.name for p in (tmp / "merged" / "maps").iterdir()) == sorted(
        p.name for p in (tmp / "full" / "maps").iterdir()
    )  # the volume maps named in the `map` column are all there
    record = json.loads((tmp / "merged" / "run.json").read_text())
    assert record["columns"] == json.loads((tmp / "full" / "run.json").read_text())["columns"]
    assert record["merged"]["rows"] == len(rows)


def test_each_shard_records_its_share_and_scores_only_its_items(run: dict) -> None:
    records = [json.loads((s / "run.json").read_text())["shard"] for s in run["shards"]]
    items = records[0]["items"]  # 7 scans + copy + broken + NIfTI + 2 series + report
    assert items == 13 and sum(records[0]["assigned"]) == items
    for i, (shard, record) in enumerate(zip(run["shards"], records, strict=True)):
        assert (record["index"], record["count"]) == (i, N)
        assert record["assigned"] == records[0]["assigned"]
        assert record["inputs"] == records[0]["inputs"]
        rows = table(shard)
        assert record["rows"] == len(rows)
        assert len({r["position"] for r in rows}) == record["assigned"][i]
        hashed = [r["sha256"] for r in rows if r["sha256"]]
        assert all(int(sha, 16) % N == i for sha in hashed)
        statuses = {r["status"] for r in rows if r["level"] != "slice"}
        expected = 1 if "quarantined" in statuses else 0
        assert run["codes"][i] == (2 if statuses == {"quarantined"} else expected)


def test_a_copy_lands_in_the_shard_of_its_original_and_stays_a_duplicate_row(run: dict) -> None:
    owner = [s for s in run["shards"] if any(r["status"] == "duplicate" for r in table(s))]
    assert len(owner) == 1
    (copy,) = [r for r in table(owner[0]) if r["status"] == "duplicate"]
    assert copy["path"].endswith("zz_copy.png") and copy["duplicate_of"].endswith("scan_001.png")


def _scored(shard: Path) -> set[tuple[str, str]]:
    return {(Path(r["path"]).name, r["sha256"]) for r in table(shard)}


def test_assignment_is_stable_across_input_order_and_how_files_are_named(
    bundle: Path, tmp_path: Path
) -> None:
    write_scans(tmp_path / "x", 6)
    write_scans(tmp_path / "y", 6, seed=9)
    files = sorted((tmp_path / "y").iterdir(), reverse=True)
    orders = {
        "xy": [tmp_path / "x", tmp_path / "y"],
        "yx": [tmp_path / "y", tmp_path / "x"],
        "files": [*files, tmp_path / "x"],
    }
    got = {}
    for name, inputs in orders.items():
        assert score(bundle, inputs, tmp_path / name, "--shard", "1/3", "--maps", "none") in (0, 1)
        got[name] = _scored(tmp_path / name)
    assert got["xy"] == got["yx"] == got["files"]
    expected = {
        (p.name, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in [*(tmp_path / "x").iterdir(), *(tmp_path / "y").iterdir()]
    }
    assert got["xy"] == {(n, h) for n, h in expected if int(h, 16) % 3 == 1}


@pytest.mark.parametrize("bad", ["4/4", "-1/4", "1/0", "a/b", "2", "1/2/3", ""])
def test_bad_shard_values_are_usage_errors_naming_the_flag(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture, bad: str
) -> None:
    write_scans(tmp_path / "x", 1)
    with pytest.raises(SystemExit) as exit_info:
        score(bundle, [tmp_path / "x"], tmp_path / "out", "--shard", bad)
    assert exit_info.value.code == 2
    assert "argument --shard" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_parse_shard_accepts_zero_based_indices() -> None:
    assert tuple(parse_shard("0/1")) == (0, 1) and tuple(parse_shard("3/4")) == (3, 4)
    with pytest.raises(Exception, match="0-based, 0 to 3"):
        parse_shard("4/4")


def test_a_missing_shard_is_named(run: dict, tmp_path: Path, caplog) -> None:
    shards = run["shards"]
    assert merge(tmp_path / "out", shards[0], shards[3]) == 2
    text = errors(caplog)
    assert "shard 1/4 missing: pass its output folder" in text
    assert "shard 2/4 missing: pass its output folder" in text
    assert not (tmp_path / "out" / "scores.csv").exists()


def test_a_shard_given_twice_is_refused(run: dict, tmp_path: Path, caplog) -> None:
    shards = run["shards"]
    assert merge(tmp_path / "out", *shards, shards[1]) == 2
    assert "shard 1/4 given twice" in errors(caplog)
    shutil.copytree(shards[2], tmp_path / "again")
    caplog.clear()
    assert merge(tmp_path / "out", *shards, tmp_path / "again") == 2
    assert "shard 2/4 given twice" in errors(caplog)
    assert not (tmp_path / "out").exists()


def test_mismatched_n_is_refused(bundle: Path, run: dict, tmp_path: Path, caplog) -> None:
    other = tmp_path / "half1"
    assert score(bundle, [run["archive"]], other, "--shard", "1/2") in (0, 1)
    assert merge(tmp_path / "out", *run["shards"][:3], other) == 2
    assert "is shard 1/2" in errors(caplog) and "numbers of shards differ" in errors(caplog)


def test_shards_of_another_model_or_other_inputs_are_refused(
    run: dict, tmp_path: Path, caplog
) -> None:
    shards = [shutil.copytree(s, tmp_path / s.name) for s in run["shards"]]
    path = shards[3] / "run.json"
    original = json.loads(path.read_text())
    path.write_text(json.dumps({**original, "model_sha256": "0" * 64}))
    assert merge(tmp_path / "out", *shards) == 2
    assert "differ in the model" in errors(caplog)
    other = {**original, "shard": {**original["shard"], "inputs": "f" * 64}}
    path.write_text(json.dumps(other))
    caplog.clear()
    assert merge(tmp_path / "out", *shards) == 2
    assert "differ in their inputs" in errors(caplog)


def test_a_shard_whose_rows_do_not_match_its_record_is_refused(
    run: dict, tmp_path: Path, caplog
) -> None:
    shards = [shutil.copytree(s, tmp_path / s.name) for s in run["shards"]]
    biggest = max(shards, key=lambda s: len(table(s)))
    lines = (biggest / "scores.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (biggest / "scores.csv").write_text("".join(lines[:-1]), encoding="utf-8")
    assert merge(tmp_path / "out", *shards) == 2
    assert f"{len(lines) - 2} rows, but its run.json records {len(lines) - 1}" in errors(caplog)


def test_an_unfinished_or_unsharded_folder_is_refused(run: dict, tmp_path: Path, caplog) -> None:
    shards = [shutil.copytree(s, tmp_path / s.name) for s in run["shards"]]
    record = json.loads((shards[0] / "run.json").read_text())
    record["runs"][-1]["interrupted"] = True
    (shards[0] / "run.json").write_text(json.dumps(record))
    assert merge(tmp_path / "out", *shards) == 2
    assert "shard 0/4 did not finish" in errors(caplog) and "--resume" in errors(caplog)
    caplog.clear()
    assert merge(tmp_path / "out", run["tmp"] / "full", *shards[1:]) == 2
    assert "scored without --shard" in errors(caplog)


def test_an_existing_merge_is_replaced_only_with_overwrite(run: dict, tmp_path: Path, caplog):
    out = tmp_path / "out"
    assert merge(out, *run["shards"]) == 0
    first = (out / "scores.csv").read_bytes()
    (out / "scores.csv").write_bytes(first + b"edited\n")
    assert merge(out, *run["shards"]) == 2
    assert "already holds results" in errors(caplog) and "--overwrite" in errors(caplog)
    assert (out / "scores.csv").read_bytes().endswith(b"edited\n")
    assert merge(out, *run["shards"], extra=("--overwrite",)) == 0
    assert (out / "scores.csv").read_bytes() == first
    caplog.clear()
    assert merge(run["shards"][0], *run["shards"], extra=("--overwrite",)) == 2
    assert "shard folder" in errors(caplog)


def test_resume_continues_only_the_same_shard(bundle: Path, tmp_path: Path, caplog) -> None:
    write_scans(tmp_path / "x", 4)
    out = tmp_path / "out"
    assert score(bundle, [tmp_path / "x"], out, "--shard", "0/2") in (0, 1)
    before = (out / "scores.csv").read_bytes()
    assert score(bundle, [tmp_path / "x"], out, "--shard", "1/2", "--resume") == 2
    assert "holds shard 0/2, not 1/2" in errors(caplog)
    caplog.clear()
    assert score(bundle, [tmp_path / "x"], out, "--resume") == 2
    assert "pass --shard 0/2 to resume it" in errors(caplog)
    assert score(bundle, [tmp_path / "x"], out, "--shard", "0/2", "--resume") in (0, 1)
    assert (out / "scores.csv").read_bytes() == before  # nothing new: every file recorded


def test_default_batches_give_the_same_rows_to_float32_rounding(
    bundle: Path, tmp_path: Path
) -> None:
    """With --batch-size > 1 a shard's batches hold other files than an unsharded run's; the
    model's float32 arithmetic then differs in the last bits (as with another --batch-size)."""
    write_scans(tmp_path / "x", 10)
    base = ["score", "--model", str(bundle), str(tmp_path / "x"), "--maps", "none"]
    assert main([*base, "--out", str(tmp_path / "full")]) == 0
    for i in range(3):
        assert main([*base, "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/3"]) == 0
    assert merge(tmp_path / "merged", *[tmp_path / f"s{i}" for i in range(3)]) == 0
    full, merged = table(tmp_path / "full"), table(tmp_path / "merged")
    assert [r["path"] for r in merged] == [r["path"] for r in full]
    numeric = [c for c in full[0] if c == "score" or c.startswith("component_")]
    for a, b in zip(full, merged, strict=True):
        assert {k: v for k, v in a.items() if k not in numeric} == {
            k: v for k, v in b.items() if k not in numeric
        }
        for column in numeric:
            assert math.isclose(float(a[column]), float(b[column]), rel_tol=1e-6)
