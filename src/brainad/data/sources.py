"""Acquire the raw images into a directory in the Kaggle layout (``Training/<class>/*.jpg`` …).

Four kinds of source (``source.kind`` in ``params.yaml``):

* ``synthetic`` — the embedded phantom (:mod:`brainad.data.phantom`), no network;
* ``archive`` — a zip/tar by local path, ``file://`` or ``http(s)://`` URL; downloads resume, are
  retried and are verified against ``source.sha256``; extraction refuses unsafe members;
* ``folder`` — a directory in the Kaggle layout, copied (the user's files are never modified);
* ``kaggle`` — ``kagglehub.dataset_download(slug)``, then as ``folder``;
* ``nifti`` — a local folder of NIfTI volumes, sliced into ``Volumes/<class>/`` by
  :mod:`brainad.data.volume_source`.

``dest`` is filled in a temporary sibling and swapped in only when complete, so a failure never
leaves a half-filled (or half-replaced) ``dest``. The provenance record never contains credentials:
URL user info and query strings are redacted, and the Kaggle key is never read by this module.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from brainad.config import PhantomConfig, SourceConfig, VolumeConfig
from brainad.data.archive import (  # noqa: F401 (safe_extract: part of this module's API)
    SPLITS,
    _count_files,
    _find_layout_root,
    _replace_dir,
    safe_extract,
)
from brainad.data.fetch import _fetch, fetch, redact_uri  # noqa: F401 (fetch: API)
from brainad.data.phantom import write_phantom_dataset
from brainad.data.volume_source import acquire_nifti

log = logging.getLogger("brainad")

EXPECTED_LAYOUT = (
    "Training/<class>/*.jpg and/or Testing/<class>/*.jpg "
    "(classes such as glioma, meningioma, notumor, pituitary)"
)
# Data that inflate to less than this are never refused by compression ratio: a small, highly
# compressible file (a blank slice, a text file) is harmless; source.max_total_bytes still applies.
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


# ------------------------------------------------------------------------------------- acquire
def acquire(
    source: SourceConfig,
    phantom: PhantomConfig,
    dest: Path,
    download_dir: Path,
    volume: VolumeConfig | None = None,
) -> AcquireResult:
    """Fill ``dest`` from ``source``; ``dest`` is replaced only once the new content is complete
    (``volume``: how the ``nifti`` source slices volumes; required for it).

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
        "nifti": lambda source, _, staged, __: _acquire_nifti(source, volume, staged),
    }
    if source.kind not in acquirers:
        raise ValueError(f"source.kind: {source.kind!r} is not one of {sorted(acquirers)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.acquire-", dir=dest.parent))
    try:
        staged = work / "data"
        details = acquirers[source.kind](source, phantom, staged, Path(download_dir))
        n_files = details.pop("n_files", None)
        if n_files is None:
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


def _acquire_nifti(source: SourceConfig, volume: VolumeConfig | None, staged: Path) -> dict:
    if volume is None:
        raise ValueError("source.kind 'nifti' needs the study's volume settings (acquire(volume=))")
    return acquire_nifti(source, volume, staged)


def _acquire_kaggle(
    source: SourceConfig, phantom: PhantomConfig, staged: Path, download_dir: Path
) -> dict:
    folder, version = _kaggle_download(source.uri)
    return {"kagglehub_version": version, "rejected": copy_layout(folder, staged)}


# --------------------------------------------------------------------------------------- layout
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
