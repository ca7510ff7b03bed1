"""Fetching an archive: a local path, a ``file://`` URL or an ``http(s)://`` download (resumed,
retried with backoff, progress bar), verified against its pinned sha256."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

log = logging.getLogger("brainad")


_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_BACKOFF_S = 1.0  # first retry delay; doubles per attempt


class _Fetched(NamedTuple):
    path: Path
    sha256: str


class _Retryable(Exception):
    """A transient download failure (retried with backoff)."""


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
