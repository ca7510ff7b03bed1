"""Acquire the raw images into a directory in the Kaggle layout (``Training/<class>/*.jpg`` …).

Four kinds of source (``source.kind`` in ``params.yaml``):

* ``synthetic`` — the embedded phantom (:mod:`brainad.data.phantom`), no network;
* ``archive`` — a zip/tar by local path, ``file://`` or ``http(s)://`` URL; downloads resume, are
  retried and are verified against ``source.sha256``; extraction refuses unsafe members;
* ``folder`` — a directory in the Kaggle layout, copied (the user's files are never modified);
* ``kaggle`` — ``kagglehub.dataset_download(slug)``, then as ``folder``.

``dest`` is filled in a temporary sibling and swapped in only when complete, so a failure never
leaves a half-filled (or half-replaced) ``dest``. The provenance record never contains credentials:
URL user info and query strings are redacted, and the Kaggle key is never read by this module.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

from brainad.config import PhantomConfig, SourceConfig
from brainad.data.phantom import write_phantom_dataset

log = logging.getLogger("brainad")

SPLITS = ("Training", "Testing")
EXPECTED_LAYOUT = (
    "Training/<class>/*.jpg and/or Testing/<class>/*.jpg "
    "(classes such as glioma, meningioma, notumor, pituitary)"
)
_CHUNK = 1 << 20
# Data that inflate to less than this are never refused by compression ratio: a small, highly
# compressible file (a blank slice, a text file) is harmless; source.max_total_bytes still applies.
_RATIO_FLOOR_BYTES = 1 << 20
_TIMEOUT_S = 60.0
_BACKOFF_S = 1.0  # first retry delay; doubles per attempt
_IGNORED_TOP_LEVEL = ("__MACOSX",)
_KAGGLE_SLUG = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(/versions/\d+)?")


class AcquireResult(NamedTuple):
    """The acquired raw data.

    Args:
        root: directory containing ``Training/`` and/or ``Testing/`` (the ``dest`` passed in).
        record: JSON-ready provenance: ``kind``, redacted ``uri``, archive ``sha256`` (if any),
            ``n_files`` (files under Training/ and Testing/) and ``rejected`` ``[{member, reason}]``.
    """

    root: Path
    record: dict


class _Fetched(NamedTuple):
    path: Path
    sha256: str


class _Retryable(Exception):
    """A transient download failure (connection, timeout, HTTP 5xx/408/429)."""


# ------------------------------------------------------------------------------------- acquire
def acquire(
    source: SourceConfig, phantom: PhantomConfig, dest: Path, download_dir: Path
) -> AcquireResult:
    """Fill ``dest`` from ``source``; ``dest`` is replaced only once the new content is complete.

    Raises:
        ValueError: bad ``source`` values, a checksum mismatch, an unsafe archive or a folder that is
            not in the Kaggle layout (the message names the file or key and what to do).
    """
    dest = Path(dest)
    acquirers: dict[str, Callable[[SourceConfig, PhantomConfig, Path, Path], dict]] = {
        "synthetic": _acquire_synthetic,
        "archive": _acquire_archive,
        "folder": _acquire_folder,
        "kaggle": _acquire_kaggle,
    }
    if source.kind not in acquirers:
        raise ValueError(f"source.kind: {source.kind!r} is not one of {sorted(acquirers)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.acquire-", dir=dest.parent))
    try:
        staged = work / "data"
        details = acquirers[source.kind](source, phantom, staged, Path(download_dir))
        n_files = sum(_count_files(staged / split) for split in SPLITS)
        _replace_dir(staged, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {"kind": source.kind, "uri": redact_uri(source.uri), "rejected": [], **details}
    record["n_files"] = n_files
    log.info("acquired %d files (%s source) into %s", n_files, source.kind, dest)
    if record["rejected"]:
        log.warning(
            "%d entries were not copied; see 'rejected' in the record", len(record["rejected"])
        )
    return AcquireResult(root=dest, record=record)


def _acquire_synthetic(source: SourceConfig, phantom: PhantomConfig, staged: Path, _: Path) -> dict:
    return {"phantom": write_phantom_dataset(phantom, staged)}


def _acquire_archive(
    source: SourceConfig, phantom: PhantomConfig, staged: Path, download_dir: Path
) -> dict:
    if not source.uri:
        raise ValueError("source.uri: empty; set it to an archive path or URL in params.yaml")
    fetched = _fetch(source.uri, download_dir, source.sha256, retries=3)
    safe_extract(
        fetched.path,
        staged,
        source.max_members,
        source.max_total_bytes,
        max_ratio=source.max_compression_ratio,
    )
    _check_layout(staged, f"{redact_uri(source.uri)} (extracted)")
    return {
        "archive": fetched.path.name,
        "sha256": fetched.sha256,
        "sha256_pinned": bool(source.sha256),
    }


def _acquire_folder(
    source: SourceConfig, phantom: PhantomConfig, staged: Path, download_dir: Path
) -> dict:
    if not source.uri:
        raise ValueError("source.uri: empty; set it to the folder in the Kaggle layout")
    return {"rejected": copy_layout(Path(source.uri).expanduser(), staged)}


def _acquire_kaggle(
    source: SourceConfig, phantom: PhantomConfig, staged: Path, download_dir: Path
) -> dict:
    folder, version = _kaggle_download(source.uri)
    return {"kagglehub_version": version, "rejected": copy_layout(folder, staged)}


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


def _count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root)) if root.is_dir() else 0


def redact_uri(uri: str) -> str:
    """``uri`` without credentials: user info, query string and fragment are redacted."""
    parts = urlsplit(uri)
    if len(parts.scheme) <= 1:  # a local path (or a Windows drive letter)
        return uri
    try:
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return f"{parts.scheme}://<unparseable URL redacted>"
    host = f"[{host}]" if ":" in host else host
    netloc = ("<redacted>@" if "@" in parts.netloc else "") + host + (f":{port}" if port else "")
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


# --------------------------------------------------------------------------------------- layout
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


def _check_layout(root: Path, where: str) -> None:
    """Raise unless ``root`` has Training/ or Testing/ with at least one class subfolder."""
    splits = [root / s for s in SPLITS if (root / s).is_dir()]
    if not splits:
        raise ValueError(
            f"{where}: has neither a Training nor a Testing folder; expected {EXPECTED_LAYOUT}"
        )
    if not any(child.is_dir() for split in splits for child in split.iterdir()):
        raise ValueError(
            f"{where}: Training/Testing contain no class subfolders; expected {EXPECTED_LAYOUT}"
        )


# --------------------------------------------------------------------------------- folder source
def copy_layout(folder: Path, dest: Path) -> list[dict]:
    """Copy the Training/ and Testing/ trees of ``folder`` into ``dest`` (which must not exist).

    Symlinks are followed only when they resolve inside ``folder``; others, broken links, loops and
    special files are skipped and returned as ``[{member, reason}]``.

    Raises:
        ValueError: ``folder`` is missing or not in the Kaggle layout, or ``dest`` lies inside it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"{folder}: not a folder (source.uri); point it at a folder in the Kaggle layout"
        )
    real_root = folder.resolve()
    layout = _find_layout_root(real_root) or real_root
    _check_layout(layout, str(folder))
    dest_parent = dest.parent.resolve()
    if any(dest_parent.is_relative_to((layout / s).resolve()) for s in SPLITS):
        raise ValueError(
            f"{dest}: lies inside the source folder {folder}; choose another output path"
        )
    rejected: list[dict] = []
    dest.mkdir(parents=True)
    for split in SPLITS:
        if (layout / split).exists() or (layout / split).is_symlink():
            _copy_entry(layout / split, dest / split, split, real_root, {real_root}, rejected)
    for entry in rejected:
        log.warning("%s/%s: not copied: %s", folder, entry["member"], entry["reason"])
    return rejected


def _copy_entry(
    path: Path, target: Path, member: str, root: Path, ancestors: set[Path], rejected: list[dict]
) -> None:
    """Copy one file or directory (recursively), following only symlinks that stay in ``root``."""
    real = path
    if path.is_symlink():
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            rejected.append({"member": member, "reason": "broken or looping symlink; not followed"})
            return
        if not real.is_relative_to(root):
            reason = "symlink points outside the source folder; not followed"
            rejected.append({"member": member, "reason": reason})
            return
    mode = real.stat().st_mode
    if stat.S_ISDIR(mode):
        if real in ancestors:
            rejected.append({"member": member, "reason": "symlink loop; not followed"})
            return
        target.mkdir()
        for child in sorted(real.iterdir()):
            child_member = f"{member}/{child.name}"
            _copy_entry(
                child, target / child.name, child_member, root, ancestors | {real}, rejected
            )
    elif stat.S_ISREG(mode):
        shutil.copyfile(real, target)
    else:
        rejected.append({"member": member, "reason": "not a regular file (device, fifo or socket)"})


# --------------------------------------------------------------------------------- kaggle source
def _kaggle_download(slug: str) -> tuple[Path, str]:
    """Download with kagglehub (credentials from its usual env vars or ~/.kaggle/kaggle.json)."""
    if not _KAGGLE_SLUG.fullmatch(slug):
        raise ValueError(
            f"source.uri: {slug!r} is not a Kaggle dataset slug like "
            "'masoudnickparvar/brain-tumor-mri-dataset'; fix it in params.yaml"
        )
    try:
        import kagglehub
    except ImportError:
        raise ImportError(
            "source.kind 'kaggle' needs the kagglehub package: pip install kagglehub "
            "(or pip install 'brainad[kaggle]')"
        ) from None
    log.info("kaggle: downloading %s with kagglehub", slug)
    try:
        path = kagglehub.dataset_download(slug)
    except (
        Exception
    ) as exc:  # kagglehub raises many types; never chain (messages may carry secrets)
        raise RuntimeError(
            f"kaggle: downloading {slug} failed ({type(exc).__name__}: {_scrub(str(exc))}); check "
            "KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json and that you accepted the "
            "dataset's terms on kaggle.com"
        ) from None
    return Path(path), str(getattr(kagglehub, "__version__", "unknown"))


def _scrub(text: str) -> str:
    """Remove the Kaggle key (if set in the environment) from a message."""
    key = os.environ.get("KAGGLE_KEY", "")
    return text.replace(key, "<redacted>") if len(key) >= 4 else text


# -------------------------------------------------------------------------------------- fetching
def fetch(uri: str, download_dir: Path, expected_sha256: str, retries: int = 3) -> Path:
    """Local path of the verified archive: a local path or ``file://`` URL is used in place, an
    ``http(s)://`` URL is downloaded into ``download_dir`` (resumed, retried ``retries`` times).

    Raises:
        ValueError: unsupported URI, malformed ``expected_sha256`` or a checksum mismatch (a bad
            download is deleted, never left under the final name).
        FileNotFoundError: a local archive that does not exist.
        OSError: the download still fails after the retries.
    """
    return _fetch(uri, Path(download_dir), expected_sha256, retries).path


def _fetch(uri: str, download_dir: Path, expected: str, retries: int) -> _Fetched:
    expected = expected.strip().lower()
    if expected and not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise ValueError(
            f"source.sha256: {expected!r} is not 64 hex digits; fix it or set it to ''"
        )
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        return _download(uri, download_dir, expected, retries)
    if scheme == "file":
        path = _file_url_path(uri)
    elif len(scheme) <= 1:  # a plain path (a one-letter "scheme" is a Windows drive)
        path = Path(uri).expanduser()
    else:
        raise ValueError(
            f"source.uri: unsupported scheme {scheme!r} in {redact_uri(uri)}; "
            "use a local path, a file:// URL or an http(s):// URL"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: archive not found (source.uri; relative paths start at {Path.cwd()})"
        )
    digest = sha256_file(path)
    _verify(path.name, digest, expected)
    return _Fetched(path, digest)


def _file_url_path(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"source.uri: {redact_uri(uri)} names a remote host; use file:///path")
    return Path(urllib.request.url2pathname(unquote(parts.path)))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(name: str, actual: str, expected: str) -> None:
    """Raise on a mismatch with a pinned hash; warn with the hash when nothing is pinned."""
    if not expected:
        log.warning(
            "%s: checksum not pinned; its sha256 is %s; set source.sha256 to it in params.yaml",
            name,
            actual,
        )
        return
    if actual != expected:
        raise ValueError(
            f"{name}: sha256 mismatch: expected {expected}, got {actual}. The file is corrupt, "
            "incomplete or a different version: download it again; if you trust this file, set "
            f"source.sha256 to {actual} in params.yaml"
        )


def _download(url: str, download_dir: Path, expected: str, retries: int) -> _Fetched:
    """Download ``url`` to ``download_dir/<name>`` via ``<name>.part`` (resumed, retried)."""
    shown = redact_uri(url)
    name = re.sub(r"[^\w.-]", "_", Path(unquote(urlsplit(url).path)).name).lstrip(".") or "download"
    final, part = download_dir / name, download_dir / f"{name}.part"
    download_dir.mkdir(parents=True, exist_ok=True)
    if expected and final.is_file():
        if sha256_file(final) == expected:
            log.info("%s: already downloaded and verified", final)
            return _Fetched(final, expected)
        log.warning("%s: does not match source.sha256; downloading it again", final)
        final.unlink()
    for attempt in range(retries + 1):
        try:
            _download_once(url, part, shown)
            break
        except _Retryable as exc:
            if attempt == retries:
                resume = f" ({part} is resumed next time)" if part.is_file() else ""
                raise OSError(
                    f"{shown}: download failed after {retries + 1} attempts ({exc}); check the URL "
                    f"and the connection, then re-run{resume}"
                ) from None
            delay = _BACKOFF_S * 2**attempt
            log.warning("%s: %s; retrying in %.0f s", shown, exc, delay)
            time.sleep(delay)
    digest = sha256_file(part)
    if expected and digest != expected:
        part.unlink()
    _verify(name, digest, expected)
    os.replace(part, final)
    return _Fetched(final, digest)


def _request(url: str, offset: int) -> urllib.request.Request:
    """A GET request; URL user info becomes a Basic header that is never sent on to a redirect."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=netloc)))
    if parts.username is not None:
        user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        token = base64.b64encode(user_pass.encode()).decode()
        request.add_unredirected_header("Authorization", f"Basic {token}")
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return request


def _download_once(url: str, part: Path, shown: str) -> None:
    """One attempt: resume ``part`` with a Range request, or restart if the server ignores it."""
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = urllib.request.urlopen(_request(url, offset), timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            part.unlink()
            raise _Retryable("server refused the resume range; restarting") from None
        if exc.code in (408, 429) or exc.code >= 500:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise OSError(f"{shown}: HTTP {exc.code} {exc.reason}; check source.uri") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retryable(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None
    with response:
        if offset and not (response.status == 206 and _range_start(response) == offset):
            log.info("%s: server ignored the resume request; downloading from the start", shown)
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        try:
            with (
                open(part, "ab" if offset else "wb") as out,
                _progress(part.name, total, offset) as bar,
            ):
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(f"connection lost ({type(exc).__name__})") from None
    if total is not None and part.stat().st_size != total:
        raise _Retryable(f"connection closed early ({part.stat().st_size} of {total} bytes)")


def _range_start(response: http.client.HTTPResponse) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def _progress(name: str, total: int | None, completed: int) -> Iterator[Callable[[int], None]]:
    """A rich download bar on stderr; yields ``advance(n_bytes)``."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from brainad.utils import console

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console()) as progress:
        task = progress.add_task(name, total=total, completed=completed)
        yield lambda n: progress.advance(task, n)


# ------------------------------------------------------------------------------------ extracting
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
