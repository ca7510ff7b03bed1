"""``brainad score`` over the hostile-input corpus (``tests/hostile/corpus.py``): every case gets
exactly the outcome the corpus states, the batch around the bad files is scored, nothing is
executed, and the results stay valid UTF-8 CSV."""

from __future__ import annotations

import csv
import logging
import os
import sys
from pathlib import Path

import pytest
from helpers.scorer_bundle import write_bundle
from hostile.corpus import Case, build

from brainad.cli import main

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not hasattr(os, "mkfifo"), reason="needs POSIX symlinks and fifos"
)
PICKLE_MARKER = Path("/tmp/brainad-hostile-pickle-ran")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundle") / "vqgan.pt")


def _rows(out: Path) -> dict[str, dict[str, str]]:
    data = (out / "scores.csv").read_bytes()
    data.decode("utf-8")  # strict: the CSV is valid UTF-8 whatever the file names
    with open(out / "scores.csv", encoding="utf-8", newline="") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


def _check_case(case: Case, row: dict[str, str] | None, log_text: str) -> None:
    if case.outcome == "skipped":
        assert row is None, case
        assert case.reason in log_text, case
        return
    assert row is not None, f"no row for {case}"
    assert row["status"] == case.outcome, (case, row)
    for word in case.reason.lower().split():
        assert word in row["reason"].lower(), (case, row["reason"])
    if case.outcome in ("scored", "duplicate"):  # a duplicate copies its original's score
        assert float(row["score"]) > 0 and row["prediction"] in ("0", "1"), row
    else:
        assert row["score"] == "", row
    assert row["target"].endswith(case.target) if case.target else not row["target"], row


def test_every_corpus_case_gets_its_outcome(
    bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    PICKLE_MARKER.unlink(missing_ok=True)
    corpus = tmp_path / "corpus"
    cases = build(corpus)
    out = tmp_path / "out"
    args = ["score", "--model", str(bundle), f"{corpus}/", "--out", str(out), "--maps", "all"]
    with caplog.at_level(logging.INFO, logger="brainad"):
        code = main([*args, "--workers", "2", "--batch-size", "8"])
    assert code == 1  # some quarantined, the rest scored
    rows = _rows(out)
    prefix = f"{corpus}/"
    assert all(path.startswith(prefix) for path in rows)  # the name the user gave
    by_name = {path[len(prefix) :]: row for path, row in rows.items()}
    expected = {c.name for c in cases if c.outcome != "skipped"}
    assert set(by_name) == expected
    for case in cases:
        _check_case(case, by_name.get(case.name), caplog.text)
    assert "raise preprocess.max_pixels" not in by_name["bomb.png"]["reason"]
    copy, original = by_name["valid_00_copy.png"], by_name["valid_00.png"]
    assert copy["duplicate_of"] == f"{prefix}valid_00.png"
    assert (copy["score"], copy["prediction"]) == (original["score"], original["prediction"])
    assert not PICKLE_MARKER.exists()
    scored = [r for r in rows.values() if r["status"] == "scored"]
    assert len(list((out / "heatmaps").glob("*.png"))) == len(scored)


def test_corpus_rows_are_the_same_with_and_without_decoding_threads(
    bundle: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    build(corpus)
    tables = []
    for workers in ("0", "3"):
        out = tmp_path / f"out{workers}"
        args = ["score", "--model", str(bundle), str(corpus), "--out", str(out), "--maps", "none"]
        assert main([*args, "--workers", workers, "--batch-size", "5"]) == 1
        tables.append((out / "scores.csv").read_bytes())
    assert tables[0] == tables[1]
