"""Tests for data acquisition: URL download (127.0.0.1 only), archive safety, folder and Kaggle."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import random
import re
import stat
import sys
import tarfile
import threading
import types
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from brainad.config import PhantomConfig, SourceConfig
from brainad.data import archive as archive_lib
from brainad.data import fetch as fetch_lib
from brainad.data.sources import acquire, fetch, redact_uri, safe_extract

PHANTOM = PhantomConfig(n_healthy=6, n_anomalous=4, image_size=32, duplicate_fraction=0.0, seed=1)
BIG = 10**9
LAYOUT = {
    "Training/notumor/Tr-no_0001.jpg": b"healthy-1",
    "Training/glioma/Tr-gl_0001.jpg": b"tumour-1",
    "Testing/notumor/Te-no_0001.jpg": b"healthy-2",
}


# ------------------------------------------------------------------------------------- helpers
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _zip_bytes(members: dict[str, bytes], prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(prefix + name, data)
    return buffer.getvalue()


def _write_tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tf:
        for info in members:
            payload = data.get(info.name)
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _tar_file(name: str, data: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _source(kind: str, uri: str = "", sha256: str = "") -> SourceConfig:
    return SourceConfig(
        kind=kind,
        uri=uri,
        sha256=sha256,
        max_members=1000,
        max_total_bytes=BIG,
        max_compression_ratio=100,
    )


# --------------------------------------------------------------------------------- HTTP server
class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        server = self.server
        server.seen.append(
            {"range": self.headers.get("Range"), "auth": self.headers.get("Authorization")}
        )
        if server.fail_first > 0:
            server.fail_first -= 1
            self.send_error(503, "try again")
            return
        body = server.files.get(urlsplit(self.path).path)
        if body is None:
            self.send_error(404, "no such file")
            return
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and server.honour_range:
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.seen: list[dict] = []
        self.fail_first = 0
        self.honour_range = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(fetch_lib, "_BACKOFF_S", 0.0)
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def payload() -> bytes:
    noise = random.Random(0).randbytes(20_000)  # incompressible, so the archive is ~20 kB
    return _zip_bytes({**LAYOUT, "Training/notumor/Tr-no_0002.jpg": noise})


# -------------------------------------------------------------------------------------- fetch
def test_http_download_is_verified_and_renamed(
    server: _Server, payload: bytes, tmp_path: Path
) -> None:
    server.files["/data/brain.zip"] = payload
    path = fetch(server.url("/data/brain.zip"), tmp_path / "dl", _sha(payload))
    assert path == tmp_path / "dl" / "brain.zip"
    assert path.read_bytes() == payload
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["brain.zip"]


def test_http_resume_uses_range(server: _Server, payload: bytes, tmp_path: Path) -> None:
    server.files["/brain.zip"] = payload
    (tmp_path / "brain.zip.part").write_bytes(payload[:1000])
    path = fetch(server.url("/brain.zip"), tmp_path, _sha(payload))
    assert _sha(path.read_bytes()) == _sha(payload)
    assert server.seen[0]["range"] == "bytes=1000-"
    assert not (tmp_path / "brain.zip.part").exists()


def test_http_restarts_when_server_ignores_range(
    server: _Server, payload: bytes, tmp_path: Path
) -> None:
    server.files["/brain.zip"] = payload
    server.honour_range = False
    (tmp_path / "brain.zip.part").write_bytes(b"stale bytes that must not be kept")
    path = fetch(server.url("/brain.zip"), tmp_path, _sha(payload))
    assert path.read_bytes() == payload
    assert server.seen[0]["range"] is not None  # it asked to resume, the server answered 200


def test_http_retries_transient_errors(server: _Server, payload: bytes, tmp_path: Path) -> None:
    server.files["/brain.zip"] = payload
    server.fail_first = 2
    path = fetch(server.url("/brain.zip"), tmp_path, _sha(payload), retries=3)
    assert path.read_bytes() == payload
    assert len(server.seen) == 3


def test_http_gives_up_after_retries_and_on_404(server: _Server, tmp_path: Path) -> None:
    server.files["/brain.zip"] = b"x"
    server.fail_first = 10
    with pytest.raises(OSError, match="after 2 attempts"):
        fetch(server.url("/brain.zip"), tmp_path, "", retries=1)
    assert len(server.seen) == 2
    server.seen.clear()
    server.fail_first = 0
    with pytest.raises(OSError, match="404"):
        fetch(server.url("/missing.zip"), tmp_path, "")
    assert len(server.seen) == 1  # a 404 is not retried


def test_checksum_mismatch_raises_and_leaves_no_file(
    server: _Server, payload: bytes, tmp_path: Path
) -> None:
    server.files["/brain.zip"] = payload
    wrong = "0" * 64
    with pytest.raises(ValueError) as info:
        fetch(server.url("/brain.zip"), tmp_path, wrong)
    message = str(info.value)
    assert "brain.zip" in message and wrong in message and _sha(payload) in message
    assert "source.sha256" in message  # says what to do
    assert list(tmp_path.iterdir()) == []


def test_unpinned_download_warns_with_hash(
    server: _Server, payload: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.files["/brain.zip"] = payload
    with caplog.at_level(logging.WARNING, logger="brainad"):
        fetch(server.url("/brain.zip"), tmp_path, "")
    assert _sha(payload) in caplog.text


def test_credentials_in_url_are_sent_but_never_recorded(
    server: _Server, payload: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.files["/brain.zip"] = payload
    port = server.server_address[1]
    uri = f"http://alice:pa55word@127.0.0.1:{port}/brain.zip?token=t0ken"
    with caplog.at_level(logging.DEBUG, logger="brainad"):
        result = acquire(_source("archive", uri), PHANTOM, tmp_path / "raw", tmp_path / "dl")
    assert server.seen[0]["auth"] == "Basic " + base64.b64encode(b"alice:pa55word").decode()
    text = json.dumps(result.record) + caplog.text
    assert "pa55word" not in text and "alice" not in text and "t0ken" not in text
    assert result.record["uri"] == f"http://<redacted>@127.0.0.1:{port}/brain.zip?<redacted>"


def test_local_path_and_file_url_are_used_in_place(payload: bytes, tmp_path: Path) -> None:
    archive = tmp_path / "my data.zip"
    archive.write_bytes(payload)
    downloads = tmp_path / "dl"
    assert fetch(str(archive), downloads, _sha(payload)) == archive
    assert fetch(archive.as_uri(), downloads, _sha(payload)) == archive
    assert not downloads.exists()
    with pytest.raises(ValueError, match="sha256 mismatch"):
        fetch(str(archive), downloads, "f" * 64)
    assert archive.read_bytes() == payload  # the user's file is never deleted
    with pytest.raises(FileNotFoundError, match="missing.zip"):
        fetch(str(tmp_path / "missing.zip"), downloads, "")
    with pytest.raises(ValueError, match="scheme"):
        fetch("ftp://example.invalid/a.zip", downloads, "")


def test_redact_uri() -> None:
    assert redact_uri("https://u:p@host.org:8443/a/b.zip?sig=1#x") == (
        "https://<redacted>@host.org:8443/a/b.zip?<redacted>"
    )
    assert redact_uri("https://host.org/b.zip") == "https://host.org/b.zip"
    assert redact_uri("../shared/data.zip") == "../shared/data.zip"


# ------------------------------------------------------------------------------ archive safety
BAD_NAMES = [
    "../evil.txt",
    "Training/../../evil.txt",
    "/tmp/evil.txt",
    "C:/evil.txt",
    "..\\evil.txt",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_zip_with_unsafe_path_is_refused(name: str, tmp_path: Path) -> None:
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_zip_bytes({"Training/notumor/a.jpg": b"ok", name: b"evil"}))
    dest = tmp_path / "a" / "b" / "out"
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        safe_extract(archive, dest, 100, BIG)
    assert not dest.exists()
    assert not [p for p in tmp_path.rglob("*evil*")]
    assert list((tmp_path / "a" / "b").iterdir()) == []  # no temporary leftovers


@pytest.mark.parametrize("name", BAD_NAMES)
def test_tar_with_unsafe_path_is_refused(name: str, tmp_path: Path) -> None:
    archive = _write_tar(tmp_path / "bad.tar", [_tar_file(name, b"evil")], {name: b"evil"})
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        safe_extract(archive, tmp_path / "x" / "out", 100, BIG)
    assert not [p for p in tmp_path.rglob("*evil*")]


@pytest.mark.parametrize("mode", [stat.S_IFLNK | 0o777, stat.S_IFIFO | 0o644])
def test_zip_link_or_fifo_member_is_refused(mode: int, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("Training/notumor/a.jpg", b"ok")
        info = zipfile.ZipInfo("Training/notumor/link.jpg")
        info.create_system = 3
        info.external_attr = mode << 16
        zf.writestr(info, "/etc/passwd")
    archive = tmp_path / "links.zip"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="link.jpg"):
        safe_extract(archive, tmp_path / "out", 100, BIG)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE]
)
def test_tar_link_device_or_fifo_member_is_refused(kind: bytes, tmp_path: Path) -> None:
    special = tarfile.TarInfo("Training/notumor/special.jpg")
    special.type = kind
    special.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    first = _tar_file("Training/notumor/a.jpg", b"ok")
    archive = _write_tar(tmp_path / "special.tar", [first, special], {first.name: b"ok"})
    with pytest.raises(ValueError, match="special.jpg"):
        safe_extract(archive, tmp_path / "out", 100, BIG)
    assert not (tmp_path / "out").exists()


def test_member_and_byte_limits(tmp_path: Path) -> None:
    members = {f"Training/notumor/{i}.jpg": b"x" * 100 for i in range(5)}
    archive = tmp_path / "five.zip"
    archive.write_bytes(_zip_bytes(members))
    tar = _write_tar(
        tmp_path / "five.tar.gz", [_tar_file(n, d) for n, d in members.items()], members
    )
    for path in (archive, tar):
        with pytest.raises(ValueError, match="max_members=4"):
            safe_extract(path, tmp_path / "out", 4, BIG)
        with pytest.raises(ValueError, match="max_total_bytes=450"):
            safe_extract(path, tmp_path / "out", 100, 450)
        assert safe_extract(path, tmp_path / "out", 5, 500) == 5


def test_written_bytes_are_counted_even_if_headers_lie(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "big.zip"
    archive.write_bytes(_zip_bytes({"Training/notumor/a.jpg": b"x" * 5000}))
    monkeypatch.setattr(archive_lib, "_check_declared", lambda *args: None)  # fooled declared check
    with pytest.raises(ValueError, match="a.jpg.*max_total_bytes=1000"):
        safe_extract(archive, tmp_path / "out", 10, 1000)
    assert not (tmp_path / "out").exists()


def test_wrapping_folder_is_flattened_and_nested_archive_kept(tmp_path: Path) -> None:
    inner = _zip_bytes({"Training/notumor/hidden.jpg": b"inner"})
    members = {**LAYOUT, "Training/notumor/nested.zip": inner}
    data = _zip_bytes(members, prefix="brain-tumor-mri-dataset/")
    buffer = io.BytesIO(data)
    with zipfile.ZipFile(buffer, "a") as zf:
        zf.writestr("__MACOSX/brain-tumor-mri-dataset/._x", b"mac")
    archive = tmp_path / "wrapped.zip"
    archive.write_bytes(buffer.getvalue())
    dest = tmp_path / "out"
    assert safe_extract(archive, dest, 100, BIG) == 4
    assert _tree(dest) == members  # nested.zip is a plain file, not extracted
    assert sorted(p.name for p in dest.iterdir()) == ["Testing", "Training"]


def test_failed_extraction_keeps_previous_dest(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("previous run")
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_zip_bytes({"Training/notumor/a.jpg": b"ok", "../evil": b"x"}))
    with pytest.raises(ValueError, match="evil"):
        safe_extract(archive, dest, 100, BIG)
    assert _tree(dest) == {"old.txt": b"previous run"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    not_archive = tmp_path / "notes.zip"
    not_archive.write_bytes(b"plain text")
    with pytest.raises(ValueError, match="not a zip or tar"):
        safe_extract(not_archive, dest, 100, BIG)


# ------------------------------------------------------------------------------------ acquire
def test_acquire_synthetic_replaces_dest(tmp_path: Path) -> None:
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "stale.jpg").write_bytes(b"old")
    result = acquire(_source("synthetic"), PHANTOM, dest, tmp_path / "dl")
    assert result.root == dest and not (dest / "stale.jpg").exists()
    assert result.record["kind"] == "synthetic"
    assert result.record["n_files"] == 10 == len(list(dest.glob("*/*/*.jpg")))
    assert json.loads(json.dumps(result.record)) == result.record
    with pytest.raises(ValueError, match="source.kind"):
        acquire(_source("s3"), PHANTOM, dest, tmp_path / "dl")  # type: ignore[arg-type]
    assert result.record["n_files"] == len(list(dest.glob("*/*/*.jpg")))  # dest kept


def test_acquire_archive_records_hash(payload: bytes, tmp_path: Path) -> None:
    archive = tmp_path / "brain.tar.gz"
    members = {n: d for n, d in LAYOUT.items()}
    _write_tar(archive, [_tar_file(n, d) for n, d in members.items()], members)
    digest = _sha(archive.read_bytes())
    result = acquire(_source("archive", str(archive), digest), PHANTOM, tmp_path / "raw", tmp_path)
    assert result.record["sha256"] == digest and result.record["n_files"] == 3
    assert _tree(tmp_path / "raw") == LAYOUT
    flat = tmp_path / "flat.zip"
    flat.write_bytes(_zip_bytes({"a.jpg": b"1", "b.jpg": b"2"}))
    with pytest.raises(ValueError, match="neither a Training nor a Testing"):
        acquire(_source("archive", str(flat)), PHANTOM, tmp_path / "raw", tmp_path)
    assert _tree(tmp_path / "raw") == LAYOUT  # the previous content survives the failure


def _make_folder(root: Path, outside: Path) -> None:
    for name, data in LAYOUT.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(b"secret")
    (root / "Training/notumor/inside.jpg").symlink_to(root / "Training/notumor/Tr-no_0001.jpg")
    (root / "Training/notumor/outside.jpg").symlink_to(outside)


def test_acquire_folder_copies_and_rejects_outside_symlinks(tmp_path: Path) -> None:
    folder = tmp_path / "user"
    _make_folder(folder, tmp_path / "elsewhere" / "secret.jpg")
    before = {p: (p.is_symlink(), p.read_bytes()) for p in folder.rglob("*") if p.is_file()}
    result = acquire(_source("folder", str(folder)), PHANTOM, tmp_path / "raw", tmp_path)
    copied = _tree(tmp_path / "raw")
    assert copied == {**LAYOUT, "Training/notumor/inside.jpg": b"healthy-1"}
    assert not (tmp_path / "raw/Training/notumor/inside.jpg").is_symlink()
    assert [r["member"] for r in result.record["rejected"]] == ["Training/notumor/outside.jpg"]
    assert "outside the source folder" in result.record["rejected"][0]["reason"]
    after = {p: (p.is_symlink(), p.read_bytes()) for p in folder.rglob("*") if p.is_file()}
    assert after == before  # the user's folder is untouched


def test_acquire_folder_without_layout_raises(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(b"1")
    with pytest.raises(ValueError, match=rf"{re.escape(str(flat))}.*Training/<class>"):
        acquire(_source("folder", str(flat)), PHANTOM, tmp_path / "raw", tmp_path)
    no_classes = tmp_path / "noclasses"
    (no_classes / "Training").mkdir(parents=True)
    (no_classes / "Training" / "a.jpg").write_bytes(b"1")
    with pytest.raises(ValueError, match="no class subfolders"):
        acquire(_source("folder", str(no_classes)), PHANTOM, tmp_path / "raw", tmp_path)
    assert not (tmp_path / "raw").exists()


KEY = "kaggle-key-3f9a7c1d"


def _fake_kagglehub(download: object) -> types.ModuleType:
    module = types.ModuleType("kagglehub")
    module.dataset_download = download  # type: ignore[attr-defined]
    module.__version__ = "0.0-test"  # type: ignore[attr-defined]
    return module


def test_acquire_kaggle_never_exposes_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "cache" / "versions" / "1"
    _make_folder(folder, tmp_path / "elsewhere" / "secret.jpg")
    calls: list[str] = []

    def download(slug: str) -> str:
        calls.append(slug)
        return str(folder)

    monkeypatch.setitem(sys.modules, "kagglehub", _fake_kagglehub(download))
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    slug = "masoudnickparvar/brain-tumor-mri-dataset"
    with caplog.at_level(logging.DEBUG, logger="brainad"):
        result = acquire(_source("kaggle", slug), PHANTOM, tmp_path / "raw", tmp_path)
    assert calls == [slug]
    assert result.record["uri"] == slug and result.record["n_files"] == 4
    assert KEY not in json.dumps(result.record) and KEY not in caplog.text


def test_kaggle_errors_hide_the_key_and_missing_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(slug: str) -> str:
        raise PermissionError(f"401 for key {KEY}")

    monkeypatch.setenv("KAGGLE_KEY", KEY)
    monkeypatch.setitem(sys.modules, "kagglehub", _fake_kagglehub(failing))
    with pytest.raises(RuntimeError, match="PermissionError") as info:
        acquire(_source("kaggle", "owner/data"), PHANTOM, tmp_path / "raw", tmp_path)
    assert KEY not in str(info.value) and info.value.__cause__ is None
    assert info.value.__suppress_context__
    with pytest.raises(ValueError, match="slug"):
        acquire(_source("kaggle", "not a slug"), PHANTOM, tmp_path / "raw", tmp_path)
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # makes `import kagglehub` fail
    with pytest.raises(ImportError, match="pip install kagglehub"):
        acquire(_source("kaggle", "owner/data"), PHANTOM, tmp_path / "raw", tmp_path)
