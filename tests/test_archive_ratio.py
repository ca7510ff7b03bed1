"""Archive extraction refuses compression bombs by ratio (``source.max_compression_ratio``), not
only by the total cap: per zip member (declared and actually written sizes) and for the whole
archive (many small members, tar streams). The message names the member and the param to raise;
nothing is left behind in the destination's folder."""

from __future__ import annotations

import dataclasses
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from brainad.config import load_study
from brainad.data import archive as archive_lib
from brainad.data.sources import acquire, safe_extract

ROOT = Path(__file__).resolve().parents[1]
BIG = 10**12  # the total cap is not what these tests exercise
MB = 1 << 20


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _assert_nothing_extracted(parent: Path, dest: Path) -> None:
    assert not dest.exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{dest.name}.")]


def test_default_ratio_is_a_param_of_every_study() -> None:
    for study in ("demo", "brain-tumor-mri"):
        assert load_study(study, ROOT / "params.yaml").source.max_compression_ratio == 100


def test_zip_member_above_the_ratio_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """The issue's bomb, scaled down: 64 MiB of zeros in a ~64 KiB zip, under the total cap."""
    archive = _zip(
        tmp_path / "bomb.zip",
        {"Training/notumor/ok.jpg": b"jpeg-ish", "Training/notumor/bomb.jpg": bytes(64 * MB)},
    )
    assert archive.stat().st_size < 200_000
    dest = tmp_path / "out"
    with pytest.raises(ValueError) as info:
        safe_extract(archive, dest, 100, BIG, max_ratio=100)
    message = str(info.value)
    assert "'Training/notumor/bomb.jpg'" in message and str(archive) in message
    assert "source.max_compression_ratio=100" in message and "raise" in message
    _assert_nothing_extracted(tmp_path, dest)


def test_many_small_members_are_refused_by_the_archive_ratio(tmp_path: Path) -> None:
    """Each member is under the 1 MiB floor, together they inflate ~1000x the archive."""
    members = {f"Training/notumor/{i:03d}.bmp": bytes(512 * 1024) for i in range(8)}
    archive = _zip(tmp_path / "many.zip", members)
    with pytest.raises(ValueError, match="times the archive's") as info:
        safe_extract(archive, tmp_path / "out", 100, BIG, max_ratio=100)
    assert "Training/notumor/" in str(info.value)
    assert "max_compression_ratio" in str(info.value)
    _assert_nothing_extracted(tmp_path, tmp_path / "out")


def test_tar_gz_stream_above_the_ratio_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("Training/notumor/bomb.jpg")
        info.size = 16 * MB
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    with pytest.raises(ValueError, match="'Training/notumor/bomb.jpg'.*max_compression_ratio"):
        safe_extract(archive, tmp_path / "out", 100, BIG, max_ratio=100)
    _assert_nothing_extracted(tmp_path, tmp_path / "out")


def test_written_bytes_are_checked_even_when_sizes_are_understated(tmp_path: Path) -> None:
    """The budget counts what is written: a member that inflates beyond ratio x its compressed
    size is stopped while being written (a zip whose headers lie is caught the same way)."""
    archive = tmp_path / "a.zip"
    archive.write_bytes(bytes(1000))
    budget = archive_lib._Budget(archive, BIG, 10.0)
    budget.check_member_ratio(MB, 1, "small.jpg")  # at the floor: never refused by ratio
    with pytest.raises(ValueError, match="'big.jpg' inflates to more than"):
        budget.check_member_ratio(2 * MB, 1000, "big.jpg")
    budget.spend(MB, "first.jpg")
    with pytest.raises(ValueError, match="'second.jpg'.*10 times the archive's 1000 bytes"):
        budget.spend(MB, "second.jpg")


def test_genuine_archives_pass_and_a_raised_limit_lets_a_dense_one_through(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, 2 * MB, dtype=np.uint8).tobytes()  # incompressible, ratio ~1
    dense = bytes(4 * MB)  # ratio ~1000
    archive = _zip(tmp_path / "a.zip", {"Training/notumor/n.bmp": noisy})
    assert safe_extract(archive, tmp_path / "ok", 10, BIG, max_ratio=100) == 1
    archive = _zip(tmp_path / "b.zip", {"Training/notumor/d.bmp": dense})
    with pytest.raises(ValueError, match="max_compression_ratio"):
        safe_extract(archive, tmp_path / "refused", 10, BIG, max_ratio=100)
    assert safe_extract(archive, tmp_path / "raised", 10, BIG, max_ratio=5000) == 1
    assert (tmp_path / "raised" / "Training/notumor/d.bmp").stat().st_size == 4 * MB


def test_invalid_ratio_is_refused_with_the_param_name(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", {"Training/notumor/a.jpg": b"x"})
    with pytest.raises(ValueError, match="source.max_compression_ratio: must be >= 1"):
        safe_extract(archive, tmp_path / "out", 10, BIG, max_ratio=0.5)


def test_acquire_applies_the_param_and_leaves_dest_untouched(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bomb.zip", {"Training/notumor/bomb.jpg": bytes(8 * MB)})
    config = load_study("demo", ROOT / "params.yaml")
    source = dataclasses.replace(
        config.source, kind="archive", uri=str(archive), max_compression_ratio=100
    )
    dest = tmp_path / "raw"
    (dest / "Training" / "notumor").mkdir(parents=True)
    (dest / "Training" / "notumor" / "old.jpg").write_bytes(b"previous")
    with pytest.raises(ValueError, match="bomb.jpg.*source.max_compression_ratio=100"):
        acquire(source, config.phantom, dest, tmp_path / "downloads")
    assert [p.name for p in dest.rglob("*") if p.is_file()] == ["old.jpg"]
