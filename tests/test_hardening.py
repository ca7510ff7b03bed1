"""Hardening: a generated hostile-input corpus run through the data stages (prepare, split,
preprocess) as library functions, plus archive safety, checksum, credential and crash tests.

The corpus (built in a temporary folder, never committed) is in the Kaggle layout and holds, besides
valid phantom slices: a truncated JPEG, a zero-byte file, a text file named ``.jpg``, 16-bit, RGBA
and grey+alpha PNGs, a decompression bomb (a tiny PNG declaring 30000x30000 pixels), a non-UTF-8
and a very long file name, symlinks (outside the dataset, broken), a fifo, an empty class folder, a
nested ``.zip``, a ``.DS_Store``, a stray file outside any class folder, a 1x1 image, exact
duplicates under different names and a file that is byte-identical in a healthy and an anomalous
class. Every file must be accounted for, each hostile one with a specific reason.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import stat
import struct
import sys
import tarfile
import time
import traceback
import types
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pytest
from PIL import Image

from brainad.config import StudyConfig, load_study
from brainad.data import split as split_lib
from brainad.data import stages as pipeline
from brainad.data.arrays import load_arrays
from brainad.data.manifest import read_manifest
from brainad.data.phantom import render_slice
from brainad.data.sources import acquire

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not hasattr(os, "mkfifo") or sys.platform == "win32", reason="needs POSIX symlinks and fifos"
)
MAX_PIXELS = 100_000  # 96 x 96 slices pass, the 30000 x 30000 bomb does not
BOMB_SIDE = 30_000
NON_UTF8 = os.fsdecode(b"Tr-no_caf\xe9_\xff\xfe.jpg")  # latin-1 bytes: not valid UTF-8
LONG = "Tr-no_" + "very-long-name_" * 13 + ".jpg"  # 206 characters, under the 255-byte limit
KEY = "kaggle-key-8d3e61b0c4"
USER = "kaggle-user-q7"

# hostile file -> words its reason must contain (reason from the manifest or the folder copy)
MANIFEST_REASONS = {
    "Training/notumor/truncated.jpg": "truncated jpeg",
    "Training/notumor/empty.jpg": "empty file (0 bytes)",
    "Training/notumor/notes.jpg": "not a readable image",
    "Training/notumor/bomb.png": f"{BOMB_SIDE}x{BOMB_SIDE} exceeds max_pixels={MAX_PIXELS}",
    "Training/notumor/nested.zip": "unsupported file type '.zip'",
    "Training/glioma/.DS_Store": "unsupported file type",
    "Training/README.txt": "not inside a class folder",
}
REJECTED_REASONS = {
    "Training/notumor/outside_link.jpg": "outside the source folder",
    "Training/notumor/broken_link.jpg": "broken or looping symlink",
    "Training/notumor/fifo.jpg": "not a regular file",
}
ODD_BUT_VALID = (
    "Training/notumor/deep16.png",
    "Training/notumor/rgba.png",
    "Training/notumor/grey_alpha.png",
    f"Training/notumor/{NON_UTF8}",
    f"Training/notumor/{LONG}",
    "Training/notumor/UPPER.JPG",
)
DUPLICATES = (
    "Training/notumor/dup_a.jpg",
    "Training/notumor/dup_b (copy).jpg",
    "Testing/notumor/dup_c.jpg",
)
CONFLICT = ("Training/notumor/twin.jpg", "Training/glioma/twin.jpg")
EXCLUDED = "Training/pituitary/p1.jpg"
EMPTY_CLASS = "Testing/glioma"
CHANGED = "Training/notumor/valid_00.jpg"  # overwritten in raw/ between split and preprocess
PREPROCESS_REASONS = {  # files that pass the manifest but are quarantined by preprocess
    "Training/notumor/tiny.png": "preprocessing failed: expected a 2-D grayscale slice of at least 2x2",
    CHANGED: "changed since manifest",
}


# ------------------------------------------------------------------------------------ builders
class _Slices:
    """Distinct phantom slices (96 px) from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def gray(self, tumour: bool = False) -> np.ndarray:
        contrast = ("t1", "t2", "flair")[self.count % 3]
        self.count += 1
        return render_slice(self.rng, 96, contrast, tumour).image

    def jpeg(self, tumour: bool = False) -> bytes:
        ok, data = cv2.imencode(".jpg", self.gray(tumour), [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        return data.tobytes()


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    if mode is not None:  # PIL for modes OpenCV cannot write (grey + alpha)
        buffer = io.BytesIO()
        Image.fromarray(array, mode=mode).save(buffer, format="PNG")
        return buffer.getvalue()
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def _bomb_png(side: int) -> bytes:
    """A tiny valid PNG whose IHDR declares ``side`` x ``side`` pixels (CRC fixed up)."""
    data = bytearray(_png(np.zeros((8, 8), np.uint8)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _write(root: Path, relative: str, data: bytes) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _valid_files(slices: _Slices) -> dict[str, bytes]:
    files = {f"Training/notumor/valid_{i:02d}.jpg": slices.jpeg() for i in range(12)}
    files |= {f"Testing/notumor/valid_{i:02d}.jpg": slices.jpeg() for i in range(4)}
    files |= {f"Training/glioma/valid_{i:02d}.jpg": slices.jpeg(tumour=True) for i in range(6)}
    files[EXCLUDED] = slices.jpeg(tumour=True)
    return files


def _odd_files(slices: _Slices) -> dict[str, bytes]:
    deep = slices.gray().astype(np.uint16) * 257 + 128  # uses the 16-bit range
    rgb = cv2.cvtColor(slices.gray(), cv2.COLOR_GRAY2BGR)
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    grey = slices.gray()
    odd = {
        "Training/notumor/deep16.png": _png(deep),
        "Training/notumor/rgba.png": _png(np.dstack([rgb, alpha])),
        "Training/notumor/grey_alpha.png": _png(np.dstack([grey, alpha]), mode="LA"),
        f"Training/notumor/{NON_UTF8}": slices.jpeg(),
        f"Training/notumor/{LONG}": slices.jpeg(),
        "Training/notumor/UPPER.JPG": slices.jpeg(),
        "Training/notumor/tiny.png": _png(np.full((1, 1), 128, np.uint8)),
    }
    duplicate, twin = slices.jpeg(), slices.jpeg()
    odd |= {name: duplicate for name in DUPLICATES} | {name: twin for name in CONFLICT}
    return odd


def _broken_files(slices: _Slices) -> dict[str, bytes]:
    whole = slices.jpeg()
    return {
        "Training/notumor/truncated.jpg": whole[: len(whole) // 2],
        "Training/notumor/empty.jpg": b"",
        "Training/notumor/notes.jpg": b"these are my notes, not an image\n",
        "Training/notumor/bomb.png": _bomb_png(BOMB_SIDE),
        "Training/notumor/nested.zip": _zip({"Training/notumor/inner.jpg": slices.jpeg()}),
        "Training/glioma/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "Training/README.txt": b"stray file outside any class folder\n",
    }


def build_corpus(root: Path, outside: Path) -> dict[str, bytes]:
    """Write the hostile corpus under ``root``; return the regular files written (relative)."""
    slices = _Slices(seed=11)
    files = _valid_files(slices) | _odd_files(slices) | _broken_files(slices)
    for relative, data in files.items():
        _write(root, relative, data)
    (root / EMPTY_CLASS).mkdir(parents=True)
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(slices.jpeg())
    (root / "Training/notumor/outside_link.jpg").symlink_to(outside)
    (root / "Training/notumor/broken_link.jpg").symlink_to(root / "Training/notumor/gone.jpg")
    os.mkfifo(root / "Training/notumor/fifo.jpg")
    return files


def corpus_entries(root: Path) -> set[str]:
    """Every non-directory entry (files, symlinks, fifos) under ``root``, relative."""
    entries = set()
    for folder, _, names in os.walk(root):
        entries |= {(Path(folder) / n).relative_to(root).as_posix() for n in names}
    return entries


def folder_study(corpus: Path, kind: str = "folder", uri: str | None = None) -> StudyConfig:
    demo = load_study("demo", ROOT / "params.yaml")
    return dataclasses.replace(
        demo,
        source=dataclasses.replace(demo.source, kind=kind, uri=uri or str(corpus)),
        preprocess=dataclasses.replace(demo.preprocess, image_size=32, max_pixels=MAX_PIXELS),
    )


# ---------------------------------------------------------------------------- the hostile run
class Run(NamedTuple):
    config: StudyConfig
    corpus: Path
    raw: Path
    out: Path
    prepare: dict
    split: dict
    preprocess: dict
    manifest: list[dict]
    assignment: list[dict]

    @property
    def by_path(self) -> dict[str, dict]:
        return {row["path"]: row for row in self.assignment}


def run_data_stages(config: StudyConfig, work: Path, tamper: bool = False) -> Run:
    """prepare -> split -> (optionally edit one raw file) -> preprocess, all under ``work``."""
    raw, out = work / "raw", work / "out"
    prepare = pipeline.run_prepare(
        config, raw, work / "downloads", out / "manifest.jsonl", out / "prepare.json"
    )
    split = pipeline.run_split(config, raw, out / "manifest.jsonl", out / "split.csv", out)
    if tamper:  # a user edits a raw file after the manifest was written
        (raw / CHANGED).write_bytes(_Slices(seed=99).jpeg())
    preprocess = pipeline.run_preprocess(
        config, raw, out / "manifest.jsonl", out / "split.csv", out / "arrays", out
    )
    return Run(
        config,
        Path(config.source.uri),
        raw,
        out,
        prepare,
        split,
        preprocess,
        read_manifest(out / "manifest.jsonl"),
        split_lib.read_split(out / "split.csv"),
    )


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("hostile")
    build_corpus(base / "corpus", base / "elsewhere" / "secret.jpg")
    return run_data_stages(folder_study(base / "corpus"), base / "work", tamper=True)


# ------------------------------------------------------------------------- accounting, reasons
def test_every_corpus_file_is_accounted_for_once(hostile: Run) -> None:
    manifest_paths = {row["path"] for row in hostile.manifest}
    rejected = {entry["member"] for entry in hostile.prepare["source"]["rejected"]}
    entries = corpus_entries(hostile.corpus)
    assert len(manifest_paths) == len(hostile.manifest)  # no path listed twice
    assert not manifest_paths & rejected
    assert entries - manifest_paths - rejected == {EXCLUDED}  # counted per class, not listed
    assert hostile.prepare["excluded_by_class"] == {"pituitary": 1}
    assert (manifest_paths | rejected) - entries == set()  # nothing invented
    assert rejected == set(REJECTED_REASONS)
    assert hostile.prepare["files"] == len(hostile.manifest) == len(hostile.assignment)
    assert hostile.prepare["source"]["n_files"] == len(entries) - len(rejected)
    assert hostile.prepare["warnings"] == [f"{EMPTY_CLASS}: class folder is empty"]


def test_each_hostile_file_has_a_specific_readable_reason(hostile: Run) -> None:
    errors = {row["path"]: row["error"] for row in hostile.manifest if row["error"]}
    assert set(errors) == set(MANIFEST_REASONS)
    for path, words in MANIFEST_REASONS.items():
        assert words.lower() in errors[path].lower(), (path, errors[path])
        assert " at 0x" not in errors[path]  # no object addresses: reasons are reproducible
    split_reasons = {q["path"]: q["reason"] for q in hostile.split["quarantined"]}
    assert split_reasons == errors
    assert "decompression bomb" in errors["Training/notumor/bomb.png"]
    rejected = {e["member"]: e["reason"] for e in hostile.prepare["source"]["rejected"]}
    for path, words in REJECTED_REASONS.items():
        assert words in rejected[path], (path, rejected[path])
    assert sum(hostile.prepare["unreadable_reasons"].values()) == len(MANIFEST_REASONS)


def test_preprocess_accounts_for_every_manifest_file(hostile: Run) -> None:
    report = hostile.preprocess
    n_rows = len(hostile.manifest)
    # by hand: 7 unusable files, dup_b and dup_c, the two conflict twins; tiny.png and the edited
    # file fail in preprocess; everything else (1 per other cluster) is accepted
    assert report["not_selected"] == {"quarantined": 7, "duplicate": 2, "conflict": 2}
    quarantined = {
        q["path"]: q["reason"] for q in report["quarantined"] if q["stage"] == "preprocess"
    }
    from_prepare = {q["path"] for q in report["quarantined"] if q["stage"] == "prepare"}
    assert from_prepare == {q["path"] for q in hostile.split["quarantined"]}
    assert set(quarantined) == set(PREPROCESS_REASONS)
    for path, words in PREPROCESS_REASONS.items():
        assert words in quarantined[path], (path, quarantined[path])
    assert "re-run the prepare stage" in quarantined[CHANGED]  # says what to do
    accepted = sum(s["accepted"] for s in report["splits"].values())
    assert accepted == n_rows - 7 - 2 - 2 - 2
    assert report["files_in"] == n_rows == report["accounted"]
    assert report["files_in"] == accepted + len(quarantined) + sum(report["not_selected"].values())
    for split, numbers in report["splits"].items():
        arrays = load_arrays(hostile.out / "arrays" / f"{split}.npz")
        assert numbers["accepted"] == len(arrays)
        assert numbers["files_in"] == numbers["accepted"] + numbers["quarantined"]
        assert numbers["files_in"] == sum(row["split"] == split for row in hostile.assignment)


def _accepted_paths(run: Run) -> dict[str, str]:
    paths = {}
    for split in split_lib.SPLITS:
        arrays = load_arrays(run.out / "arrays" / f"{split}.npz")
        paths |= {str(p): split for p in arrays.paths}
    return paths


def test_deep_alpha_and_oddly_named_images_are_accepted(hostile: Run) -> None:
    accepted = _accepted_paths(hostile)
    for path in ODD_BUT_VALID:
        assert path in accepted, path
        assert hostile.by_path[path]["split"] == accepted[path]
    rows = {row["path"]: row for row in hostile.manifest}
    assert rows["Training/notumor/deep16.png"]["bit_depth"] == 16
    assert rows["Training/notumor/rgba.png"]["channels"] == 4
    assert rows["Training/notumor/grey_alpha.png"]["channels"] == 2
    assert rows[f"Training/notumor/{NON_UTF8}"]["bit_depth"] == 8
    arrays = load_arrays(hostile.out / "arrays" / f"{accepted['Training/notumor/deep16.png']}.npz")
    image = arrays.images[list(arrays.paths).index("Training/notumor/deep16.png"), 0]
    assert image.min() == -1.0 and image.max() > 0.9  # normalised like an 8-bit slice


def test_exact_duplicates_form_one_cluster_in_one_split(hostile: Run, tmp_path: Path) -> None:
    rows = [hostile.by_path[p] for p in DUPLICATES]
    assert len({row["cluster"] for row in rows}) == 1
    assert len({row["sha256"] for row in rows}) == 1
    kept = [row["split"] for row in rows if row["split"] in split_lib.SPLITS]
    assert len(kept) == 1 and sorted(r["split"] for r in rows).count("duplicate") == 2
    twins = [hostile.by_path[p] for p in CONFLICT]
    assert {r["split"] for r in twins} == {"conflict"} and twins[0]["cluster"] == twins[1][
        "cluster"
    ]
    assert hostile.split["cross_split_near_duplicate_pairs"] == 0
    assert hostile.split["cluster_size_histogram"]["3"] == 1
    keep_all = dataclasses.replace(
        hostile.config, split=dataclasses.replace(hostile.config.split, keep="all")
    )
    manifest = hostile.out / "manifest.jsonl"
    pipeline.run_split(keep_all, hostile.raw, manifest, tmp_path / "split.csv", tmp_path)
    again = {r["path"]: r["split"] for r in split_lib.read_split(tmp_path / "split.csv")}
    assert {again[p] for p in DUPLICATES} == {kept[0]}


def test_prepare_is_reproducible_on_the_hostile_corpus(hostile: Run, tmp_path: Path) -> None:
    manifest, report = tmp_path / "manifest.jsonl", tmp_path / "prepare.json"
    again = pipeline.run_prepare(
        hostile.config, tmp_path / "raw", tmp_path / "dl", manifest, report
    )
    assert manifest.read_bytes() == (hostile.out / "manifest.jsonl").read_bytes()
    assert again["unreadable_reasons"] == hostile.prepare["unreadable_reasons"]


# ------------------------------------------------------------------------------------- layout
def test_folder_without_class_subfolders_fails_naming_it(tmp_path: Path) -> None:
    flat = tmp_path / "flat dataset"
    _write(flat, "Training/a.jpg", _Slices(seed=1).jpeg())
    _write(flat, "Testing/b.jpg", _Slices(seed=2).jpeg())
    out = tmp_path / "out"
    with pytest.raises(ValueError) as info:
        pipeline.run_prepare(
            folder_study(flat), tmp_path / "raw", tmp_path / "dl", out / "m.jsonl", out / "p.json"
        )
    message = str(info.value)
    assert str(flat) in message and "no class subfolders" in message
    assert "Training/<class>" in message  # says what layout is expected
    assert not (tmp_path / "raw").exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat dataset"]  # no temp leftovers


# ----------------------------------------------------------------------------- archive source
GOOD = {
    "Training/notumor/a.jpg": b"healthy-a",
    "Training/glioma/b.jpg": b"tumour-b",
    "Testing/notumor/c.jpg": b"healthy-c",
}
BIG = 10**9


def _archive_study(
    archive: Path, sha256: str = "", max_members: int = 100, max_bytes: int = BIG
) -> StudyConfig:
    config = folder_study(archive, kind="archive", uri=str(archive))
    source = dataclasses.replace(
        config.source, sha256=sha256, max_members=max_members, max_total_bytes=max_bytes
    )
    return dataclasses.replace(config, source=source)


def _zip_with(path: Path, name: str, mode: int | None = None) -> Path:
    """A zip of GOOD then one member ``name`` (a symlink / special file if ``mode`` is given)."""
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in GOOD.items():
            zf.writestr(member, data)
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.create_system = 3
            info.external_attr = mode << 16
        zf.writestr(info, b"/etc/passwd" if mode is not None else b"evil")
    return path


def _tar_with(path: Path, name: str, kind: bytes = tarfile.REGTYPE) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for member, data in GOOD.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.REGTYPE:
            info.size = 4
            tf.addfile(info, io.BytesIO(b"evil"))
        else:
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            info.devmajor, info.devminor = 1, 3  # /dev/null
            tf.addfile(info)
    return path


def _previous_raw(work: Path) -> Path:
    raw = work / "data" / "raw"
    _write(raw, "Training/notumor/previous.jpg", b"from the last good run")
    return raw


def _assert_untouched(raw: Path) -> None:
    files = {p.relative_to(raw).as_posix(): p.read_bytes() for p in raw.rglob("*") if p.is_file()}
    assert files == {"Training/notumor/previous.jpg": b"from the last good run"}
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw"]  # no temporary siblings


UNSAFE = [
    ("zip", "../evil.jpg", None, "'..' path component"),
    ("zip", "Training/notumor/../../../evil.jpg", None, "'..' path component"),
    ("zip", "/ABS/evil.jpg", None, "absolute path"),
    ("zip", "Training/notumor/link.jpg", stat.S_IFLNK | 0o777, "symbolic link"),
    ("tar", "../evil.jpg", tarfile.REGTYPE, "'..' path component"),
    ("tar", "/ABS/evil.jpg", tarfile.REGTYPE, "absolute path"),
    ("tar", "Training/notumor/link.jpg", tarfile.SYMTYPE, "symbolic or hard link"),
    ("tar", "Training/notumor/null.jpg", tarfile.CHRTYPE, "device file"),
    ("tar", "Training/notumor/disk.jpg", tarfile.BLKTYPE, "device file"),
]


@pytest.mark.parametrize(("fmt", "name", "kind", "reason"), UNSAFE)
def test_unsafe_archive_member_is_refused_by_name(
    fmt: str, name: str, kind: object, reason: str, tmp_path: Path
) -> None:
    name = name.replace("/ABS", str(tmp_path / "abs"))  # an absolute path we can check
    archive = tmp_path / "downloads" / f"bad.{'zip' if fmt == 'zip' else 'tar.gz'}"
    archive.parent.mkdir()
    if fmt == "zip":
        _zip_with(archive, name, kind)  # type: ignore[arg-type]
    else:
        _tar_with(archive, name, kind)  # type: ignore[arg-type]
    raw = _previous_raw(tmp_path / "work")
    config = _archive_study(archive)
    with pytest.raises(ValueError) as info:
        acquire(config.source, config.phantom, raw, tmp_path / "downloads")
    assert f"refusing member {name!r}: {reason}" in str(info.value)
    assert str(archive) in str(info.value)
    _assert_untouched(raw)
    assert not [p for p in tmp_path.rglob("*evil*")] and not (tmp_path / "abs").exists()


def _bomb_zip(path: Path, members: int, member_bytes: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(members):
            zf.writestr(f"Training/notumor/{i:04d}.jpg", b"\0" * member_bytes)
    return path


def test_zip_and_tar_bombs_are_refused_before_extraction(tmp_path: Path) -> None:
    heavy = _bomb_zip(tmp_path / "heavy.zip", 3, 4_000_000)  # 12 MB declared
    many = _bomb_zip(tmp_path / "many.zip", 60, 10)
    tar = tmp_path / "heavy.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        for i in range(3):
            info = tarfile.TarInfo(f"Training/notumor/{i}.jpg")
            info.size = 4_000_000
            tf.addfile(info, io.BytesIO(b"\0" * info.size))
    assert max(p.stat().st_size for p in (heavy, many, tar)) < 100_000  # tiny on disk
    raw = _previous_raw(tmp_path / "work")
    cases = [(heavy, "max_total_bytes=1000000"), (many, "max_members=50"), (tar, "max_total_bytes")]
    for archive, words in cases:
        config = _archive_study(archive, max_members=50, max_bytes=1_000_000)
        with pytest.raises(ValueError, match="possible zip bomb") as info:
            acquire(config.source, config.phantom, raw, tmp_path)
        assert words in str(info.value) and str(archive) in str(info.value)
        _assert_untouched(raw)


def test_checksum_mismatch_is_an_error_and_leaves_dest_untouched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = tmp_path / "dl" / "brain.zip"
    archive.parent.mkdir()
    archive.write_bytes(_zip(GOOD))
    raw = _previous_raw(tmp_path / "work")
    out = tmp_path / "work" / "out"
    wrong = "0" * 64
    with caplog.at_level(logging.WARNING, logger="brainad"), pytest.raises(ValueError) as info:
        pipeline.run_prepare(
            _archive_study(archive, sha256=wrong), raw, tmp_path / "dl", out / "m", out / "p"
        )
    assert "sha256 mismatch" in str(info.value) and wrong in str(info.value)
    assert "brain.zip" in str(info.value)
    assert not [r for r in caplog.records if "not pinned" in r.getMessage()]
    _assert_untouched(raw)
    assert archive.read_bytes() == _zip(GOOD)  # the user's archive is kept
    assert not out.exists()  # no manifest or report either
    config = _archive_study(archive, sha256="abc")
    with pytest.raises(ValueError, match="source.sha256: 'abc' is not 64 hex digits"):
        acquire(config.source, config.phantom, raw, tmp_path)
    _assert_untouched(raw)


# ------------------------------------------------------------------------------------ kaggle
def _fake_kagglehub(download: object) -> types.ModuleType:
    module = types.ModuleType("kagglehub")
    module.dataset_download = download  # type: ignore[attr-defined]
    module.__version__ = "0.0-test"  # type: ignore[attr-defined]
    return module


def test_kaggle_credentials_never_leak(
    hostile: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    calls: list[str] = []

    def download(slug: str) -> str:
        calls.append(slug)
        return str(hostile.corpus)

    monkeypatch.setitem(sys.modules, "kagglehub", _fake_kagglehub(download))
    slug = "masoudnickparvar/brain-tumor-mri-dataset"
    config = folder_study(hostile.corpus, kind="kaggle", uri=slug)
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG, logger="brainad"):
        report = pipeline.run_prepare(
            config, tmp_path / "raw", tmp_path / "dl", out / "manifest.jsonl", out / "prepare.json"
        )
    assert calls == [slug] and report["files"] == len(hostile.manifest)
    texts = {
        "report": (out / "prepare.json").read_text(),
        "manifest": (out / "manifest.jsonl").read_text(encoding="utf-8", errors="replace"),
        "logs": caplog.text,
    }
    for where, text in texts.items():
        assert KEY not in text and USER not in text, where

    def failing(slug: str) -> str:
        raise PermissionError(f"401 Unauthorized for {USER}:{KEY} at https://www.kaggle.com")

    monkeypatch.setitem(sys.modules, "kagglehub", _fake_kagglehub(failing))
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="brainad"), pytest.raises(RuntimeError) as info:
        pipeline.run_prepare(config, tmp_path / "raw2", tmp_path / "dl", out / "m2", out / "p2")
    shown = "".join(traceback.format_exception(info.value))  # what a crashing stage prints
    assert "PermissionError" in shown and "KAGGLE_USERNAME/KAGGLE_KEY" in shown
    assert KEY not in shown and KEY not in caplog.text
    assert not (tmp_path / "raw2").exists() and not (out / "p2").exists()


# ----------------------------------------------------------------------- crash during a write
def _tmp_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


def test_crash_while_writing_the_split_keeps_the_previous_file(
    hostile: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    split_csv, manifest = tmp_path / "split.csv", hostile.out / "manifest.jsonl"
    pipeline.run_split(hostile.config, hostile.raw, manifest, split_csv, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    written: list[dict] = []

    class CrashingWriter(split_lib.csv.DictWriter):  # type: ignore[name-defined]
        def writerow(self, row: dict) -> object:
            if len(written) == 5:
                raise OSError(28, "No space left on device")
            written.append(row)
            return super().writerow(row)

    monkeypatch.setattr(split_lib.csv, "DictWriter", CrashingWriter)
    with pytest.raises(OSError, match="No space left"):
        pipeline.run_split(hostile.config, hostile.raw, manifest, split_csv, tmp_path)
    assert len(written) == 5  # the crash happened midway through the rows
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert _tmp_leftovers(tmp_path) == []


def test_crash_while_writing_arrays_keeps_the_previous_file(
    hostile: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    for split in split_lib.SPLITS:
        (arrays / f"{split}.npz").write_bytes(
            (hostile.out / "arrays" / f"{split}.npz").read_bytes()
        )
    before = {p.name: p.read_bytes() for p in arrays.iterdir()}
    real_savez = np.savez

    def crashing_savez(file: object, **payload: np.ndarray) -> None:
        real_savez(file, **dict(list(payload.items())[:3]))  # part of the arrays ...
        raise OSError(28, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(np, "savez", crashing_savez)
    with pytest.raises(OSError, match="No space left"):
        pipeline.run_preprocess(
            hostile.config,
            hostile.raw,
            hostile.out / "manifest.jsonl",
            hostile.out / "split.csv",
            arrays,
            tmp_path,
        )
    assert {p.name: p.read_bytes() for p in arrays.iterdir()} == before
    assert _tmp_leftovers(tmp_path) == [] and not (tmp_path / "preprocess.json").exists()
    assert (
        len(load_arrays(arrays / "train.npz")) == hostile.preprocess["splits"]["train"]["accepted"]
    )


# ------------------------------------------------------------------------------- determinism
def test_data_stages_are_byte_identical_across_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = load_study("demo", ROOT / "params.yaml")
    config = dataclasses.replace(
        demo,
        phantom=dataclasses.replace(demo.phantom, n_healthy=40, n_anomalous=12, image_size=96),
        preprocess=dataclasses.replace(demo.preprocess, image_size=32),
    )
    first = run_data_stages(config, tmp_path / "first")
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3 * 86400)  # "three days later"
    second = run_data_stages(config, tmp_path / "second")
    names = ["manifest.jsonl", "split.csv", *(f"arrays/{s}.npz" for s in split_lib.SPLITS)]
    names += ["prepare.json", "split.json", "preprocess.json"]
    for name in names:
        assert (first.out / name).read_bytes() == (second.out / name).read_bytes(), name
    assert first.prepare["files"] >= 52 and Counter(r["split"] for r in first.assignment)["train"]
