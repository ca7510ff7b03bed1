"""Safe archive extraction: every member checked (path traversal, links, devices), a member
count cap, a total size cap and a compression-ratio cap, nothing written outside the target."""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import uuid
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

log = logging.getLogger("brainad")


SPLITS = ("Training", "Testing")
_CHUNK = 1 << 20
_RATIO_FLOOR_BYTES = 1 << 20
_IGNORED_TOP_LEVEL = ("__MACOSX",)


_RATIO_HINT = "raise source.max_compression_ratio in params.yaml if the archive is genuine"


class _Budget:
    """Counts bytes actually written, so a member that lies about its size cannot bypass the caps.

    Two caps: the total (``max_total_bytes``) and the compression ratio (``max_ratio``, or None
    for no ratio check), per member where the archive stores each member's compressed size (zip)
    and for the whole archive (the bytes written so far against the archive file's size).
    """

    def __init__(self, archive: Path, max_total_bytes: int, max_ratio: float | None) -> None:
        self.archive, self.left, self.limit = archive, max_total_bytes, max_total_bytes
        self.ratio, self.archive_bytes, self.written = max_ratio, archive.stat().st_size, 0

    def spend(self, n_bytes: int, member: str) -> None:
        self.left -= n_bytes
        self.written += n_bytes
        if self.left < 0:
            raise ValueError(
                f"{self.archive}: member {member!r} takes the extracted data beyond "
                f"source.max_total_bytes={self.limit} (a size header understated it); refusing"
            )
        self.check_archive_ratio(self.written, member)

    def check_archive_ratio(self, inflated: int, member: str) -> None:
        """Refuse once ``inflated`` bytes (written or declared) exceed ratio x the archive size."""
        if self.ratio is None or inflated <= max(
            _RATIO_FLOOR_BYTES, self.ratio * self.archive_bytes
        ):
            return
        raise ValueError(
            f"{self.archive}: member {member!r} takes the extracted data beyond "
            f"source.max_compression_ratio={self.ratio:g} times the archive's "
            f"{self.archive_bytes} bytes (possible zip bomb); refusing; {_RATIO_HINT}"
        )

    def check_member_ratio(self, inflated: int, compressed: int, member: str) -> None:
        """Refuse a member whose ``inflated`` bytes exceed ratio x its ``compressed`` bytes."""
        if self.ratio is None or inflated <= max(_RATIO_FLOOR_BYTES, self.ratio * compressed):
            return
        raise ValueError(
            f"{self.archive}: member {member!r} inflates to more than "
            f"source.max_compression_ratio={self.ratio:g} times its {compressed} compressed bytes "
            f"(at least {inflated} bytes; possible zip bomb); refusing; {_RATIO_HINT}"
        )


def safe_extract(
    archive: Path,
    dest: Path,
    max_members: int,
    max_total_bytes: int,
    max_ratio: float | None = None,
) -> int:
    """Extract a zip or tar (optionally gz/bz2/xz) archive safely; return the number of files.

    Members with ``..``, absolute paths or drive letters, links, devices and fifos are refused;
    nested archives are written as plain files. A single wrapping top-level folder around
    Training/Testing is removed. Extraction happens in a temporary sibling of ``dest`` that
    replaces ``dest`` only when complete.

    Args:
        archive: the zip or tar file.
        dest: folder to create (replaced only once extraction is complete).
        max_members: refuse archives with more members.
        max_total_bytes: refuse archives whose members (declared or actually written) add up to
            more bytes.
        max_ratio: refuse a zip member that inflates to more than this many times its compressed
            size, and any archive whose extracted bytes exceed this many times the archive's size
            (``source.max_compression_ratio``; None: no ratio check). Data under 1 MiB are
            never refused by ratio.

    Raises:
        ValueError: not a zip/tar, an unsafe member (named), too many members, too many bytes, or
            a compression ratio above ``max_ratio`` (named member, and how to raise the limit).
    """
    archive, dest = Path(archive), Path(dest)
    if max_members < 1 or max_total_bytes < 1:
        raise ValueError("source.max_members / source.max_total_bytes: must be positive")
    if max_ratio is not None and not max_ratio >= 1:
        raise ValueError(
            f"source.max_compression_ratio: must be >= 1, got {max_ratio}; fix it in params.yaml"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        budget = _Budget(archive, max_total_bytes, max_ratio)
        try:
            if _is_zip(archive):
                _extract_zip(archive, tmp, max_members, budget)
            elif tarfile.is_tarfile(archive):
                _extract_tar(archive, tmp, max_members, budget)
            else:
                raise ValueError(
                    f"{archive}: not a zip or tar archive (supported: .zip, .tar, .tar.gz, .tgz); "
                    "check source.uri"
                )
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
            raise ValueError(f"{archive}: corrupt archive ({exc}); download it again") from None
        root = _find_layout_root(tmp) or tmp
        if root != tmp:
            log.info("%s: removed the wrapping folder %s/", archive.name, root.relative_to(tmp))
        n_files = _count_files(root)
        _replace_dir(root, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: extracted %d files", archive.name, n_files)
    return n_files


def _is_zip(archive: Path) -> bool:
    """Zip by its leading signature (a tar ending in a zip member must not be read as a zip)."""
    with open(archive, "rb") as handle:
        return handle.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


def _refuse(archive: Path, member: str, reason: str) -> ValueError:
    return ValueError(
        f"{archive}: refusing member {member!r}: {reason}; the archive is unsafe or damaged, "
        "do not use it (or repack it without that member)"
    )


def _member_path(archive: Path, name: str) -> PurePosixPath:
    """The member's relative path, refusing traversal, absolute paths and drive letters."""
    if "\x00" in name:
        raise _refuse(archive, name, "NUL byte in the name")
    if name.startswith(("/", "\\")):
        raise _refuse(archive, name, "absolute path")
    if re.match(r"[A-Za-z]:", name):
        raise _refuse(archive, name, "drive letter")
    parts = re.split(r"[\\/]+", name)
    if ".." in parts:
        raise _refuse(archive, name, "'..' path component")
    clean = [p for p in parts if p not in ("", ".")]
    if not clean:
        raise _refuse(archive, name, "empty path")
    return PurePosixPath(*clean)


def _check_count(archive: Path, count: int, max_members: int) -> None:
    if count > max_members:
        raise ValueError(
            f"{archive}: more than source.max_members={max_members} members (possible zip bomb); "
            "raise source.max_members in params.yaml if the archive is genuine"
        )


def _check_declared(archive: Path, declared: int, budget: _Budget) -> None:
    if declared > budget.limit:
        raise ValueError(
            f"{archive}: members declare {declared} bytes, more than source.max_total_bytes="
            f"{budget.limit} (possible zip bomb); raise it in params.yaml if the archive is genuine"
        )


def _write_member(
    archive: Path,
    root: Path,
    rel: PurePosixPath,
    source: IO[bytes],
    budget: _Budget,
    name: str,
    compressed: int | None = None,
) -> None:
    """Stream one member into ``root/rel``, counting the bytes actually written (and checking
    them against ``compressed``, the member's compressed size, where the archive stores it)."""
    target = root.joinpath(*rel.parts)
    written = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if compressed is not None:
                    budget.check_member_ratio(written, compressed, name)
                budget.spend(len(chunk), name)
                out.write(chunk)
    except (NotADirectoryError, IsADirectoryError, FileExistsError):
        raise _refuse(archive, name, "a file and a folder share this path") from None


def _extract_zip(archive: Path, root: Path, max_members: int, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        _check_count(archive, len(infos), max_members)
        _check_declared(archive, sum(i.file_size for i in infos), budget)
        declared = 0
        for info in infos:  # declared ratios first: refuse an honest bomb before writing
            budget.check_member_ratio(info.file_size, info.compress_size, info.filename)
            declared += info.file_size
            budget.check_archive_ratio(declared, info.filename)
        for info in infos:
            rel = _member_path(archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise _refuse(archive, info.filename, "symbolic link")
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _refuse(archive, info.filename, "device file, fifo or socket")
            if info.is_dir():
                root.joinpath(*rel.parts).mkdir(parents=True, exist_ok=True)
                continue
            if info.flag_bits & 0x1:
                raise _refuse(archive, info.filename, "encrypted member")
            with zf.open(info) as source:
                _write_member(archive, root, rel, source, budget, info.filename, info.compress_size)


def _extract_tar(archive: Path, root: Path, max_members: int, budget: _Budget) -> None:
    declared = 0
    with tarfile.open(archive, mode="r:*") as tf:
        for count, member in enumerate(tf, start=1):
            _check_count(archive, count, max_members)
            rel = _member_path(archive, member.name)
            if member.issym() or member.islnk():
                raise _refuse(archive, member.name, "symbolic or hard link")
            if member.ischr() or member.isblk() or member.isfifo():
                raise _refuse(archive, member.name, "device file or fifo")
            if member.isdir():
                root.joinpath(*rel.parts).mkdir(parents=True, exist_ok=True)
                continue
            if not member.isreg():
                raise _refuse(archive, member.name, f"unsupported member type {member.type!r}")
            declared += member.size
            _check_declared(archive, declared, budget)
            budget.check_archive_ratio(declared, member.name)
            source = tf.extractfile(member)
            if source is None:
                raise _refuse(archive, member.name, "unreadable member")
            with source:
                _write_member(archive, root, rel, source, budget, member.name)


def _find_layout_root(root: Path, max_depth: int = 3) -> Path | None:
    """``root`` or the folder inside single wrapping folders that holds Training/ or Testing/."""
    for _ in range(max_depth + 1):
        if any((root / split).is_dir() for split in SPLITS):
            return root
        children = [
            c
            for c in root.iterdir()
            if c.name not in _IGNORED_TOP_LEVEL and not c.name.startswith(".")
        ]
        if len(children) != 1 or not children[0].is_dir():
            return None
        root = children[0]
    return None


def _count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root)) if root.is_dir() else 0


def _replace_dir(new: Path, dest: Path) -> None:
    """Move the complete directory ``new`` onto ``dest``, removing the previous ``dest`` after."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
    try:
        os.replace(new, dest)
    except OSError:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
