"""The archive-scale row of the benchmarks (``benchmarks/archive.py``): distinct synthetic files,
the real command in a subprocess, images/s and the kernel's peak RSS at two sizes."""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # spawns `brainad score` twice


@pytest.fixture(scope="module")
def archive() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        yield importlib.import_module("benchmarks.archive")


def test_archive_files_are_distinct_jpegs(archive: ModuleType, tmp_path: Path) -> None:
    archive.write_archive(tmp_path, 1_003, 32)
    files = sorted(tmp_path.rglob("*.jpg"))
    assert len(files) == 1_003 and len({p.parent for p in files}) == 2  # 1,000 per subfolder
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in files}) == 1_003


def test_archive_row_scores_every_file_at_both_sizes(tmp_path: Path) -> None:
    out = tmp_path / "archive.json"
    command = [sys.executable, "-m", "benchmarks.archive", "--files", "24", "8"]
    proc = subprocess.run(
        [*command, "--threads", "1", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = json.loads(out.read_text(encoding="utf-8"))
    assert [r["files"] for r in entry["runs"]] == [8, 24]  # ascending whatever the order given
    for run in entry["runs"]:
        assert run["scored"] == run["files"] and run["seconds"] > 0 and run["rss_peak_mb"] > 50
        assert run["images_per_s"] == pytest.approx(run["scored"] / run["seconds"])
    assert entry["files"] == 24 and entry["image_size"] == 32 and entry["precision"] == "fp32"
    big, small = entry["runs"][1], entry["runs"][0]
    assert entry["rss_peak_increase_mb"] == pytest.approx(big["rss_peak_mb"] - small["rss_peak_mb"])
    assert "vqgan" in entry["model"] and "ru_maxrss" in entry["memory_method"]
    assert proc.stdout.count("files/s") == 2
