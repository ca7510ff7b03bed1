"""Checks ``brainad score`` runs before any work: device, model file, results folder.

Each failure is a :class:`ScoreError` whose message is one line naming the thing (the flag and
its value) and what to do; the command exits 2 without a traceback (``--debug`` shows one).
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brainad.cli.inputs import file_kind, inside, shown
from brainad.cli.results import CSV_NAME, folder_state
from brainad.utils import file_sha256

BUNDLE_HINT = "pass the scorer bundle the evaluate stage writes (models/<study>/scorers/<model>.pt)"
MISSING_HINT = "run `dvc pull` or `dvc repro evaluate@<study>` to make it, or check the path"


class ScoreError(ValueError):
    """A problem found before scoring (bad flag, model, device or folder): exit status 2."""


# ------------------------------------------------------------------------------------ device
def parse_device(text: str) -> Any:
    """The torch device for ``--device`` (``auto``: CUDA, then MPS, then CPU), checked usable.

    Raises:
        ScoreError: not a device name, or no such device on this machine.
    """
    import torch

    from brainad.utils import select_device

    if text == "auto":
        return select_device("auto")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ScoreError(
            f"--device {text}: not a device name; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        _check_cuda(text, device)
    elif device.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ScoreError(f"--device {text}: Apple MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ScoreError(f"--device {text}: brainad scores on cpu, cuda or mps; use one of those")
    return device


def _check_cuda(text: str, device: Any) -> None:
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
        raise ScoreError(
            f"--device {text}: no CUDA GPU is available on this machine (PyTorch "
            f"{torch.__version__}, built {build}); use --device cpu or --device auto"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ScoreError(
            f"--device {text}: this machine has {count} CUDA device(s) (cuda:0 to "
            f"cuda:{count - 1}); pick one of those"
        )


# ------------------------------------------------------------------------------------- model
def check_model_file(path: Path) -> str:
    """Refuse a ``--model`` that cannot be a scorer bundle before loading it; returns its sha256.

    A bundle is a PyTorch checkpoint archive (a zip holding ``data.pkl``); random bytes, a
    truncated download or another kind of file are reported as such (not as a security risk).

    Raises:
        ScoreError: missing, a folder, unreadable, empty, or not a PyTorch checkpoint archive.
    """
    where = f"--model {shown(path)}"
    if not path.exists():
        raise ScoreError(f"{where}: no such file; {MISSING_HINT}")
    if path.is_dir():
        raise ScoreError(f"{where}: is a folder; {BUNDLE_HINT}")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):  # a fifo or /dev/zero would block or never end
        raise ScoreError(f"{where}: not a regular file ({file_kind(mode)}); {BUNDLE_HINT}")
    try:
        digest = file_sha256(path)
        is_archive = zipfile.is_zipfile(path)
        names = zipfile.ZipFile(path).namelist() if is_archive else []
    except (OSError, zipfile.BadZipFile) as exc:
        raise ScoreError(
            f"{where}: cannot be read ({getattr(exc, 'strerror', None) or exc}); check the "
            "file's permissions"
        ) from None
    if path.stat().st_size == 0:
        raise ScoreError(f"{where}: empty file (0 bytes); {BUNDLE_HINT}")
    if not names and _is_lfs_pointer(path):
        raise ScoreError(f"{where}: a Git LFS pointer, not the model; run `git lfs pull`")
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        raise ScoreError(
            f"{where}: not a brainad scorer bundle (not a PyTorch checkpoint archive: the file is "
            f"corrupt, truncated or another kind of file); {BUNDLE_HINT}"
        )
    return digest


def _is_lfs_pointer(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(64).startswith(b"version https://git-lfs")


def explain_model_error(path: Path, exc: BaseException) -> str:
    """One line for a bundle that passed :func:`check_model_file` but does not load."""
    where = f"--model {shown(path)}"
    text = str(exc)
    detail = text.split("Detail:", 1)[1] if "Detail:" in text else ""
    culprit = re.search(r"GLOBAL [\w.]+", detail)
    if culprit:  # a pickle that would run code: refused before anything ran
        return (
            f"{where}: refused: it would execute code when loaded ({culprit.group()}); brainad "
            "never runs code from model files - do not use this file"
        )
    if "would execute code" in text or "Weights only load failed" in text:
        return f"{where}: not a readable scorer bundle (its data are corrupt); {BUNDLE_HINT}"
    first = text.replace(f"{path}: ", "").split("\n")[0]
    first = re.sub(r"; (it is truncated or corrupt - )?re-run the training stage.*", "", first)
    if first.startswith("not a readable checkpoint"):
        detail = first.removeprefix("not a readable checkpoint").strip(" ()")
        return (
            f"{where}: not a readable scorer bundle: the file is truncated or corrupt "
            f"({detail[:200]}); {BUNDLE_HINT}"
        )
    return f"{where}: cannot be used ({first[:300]}); {BUNDLE_HINT}"


# --------------------------------------------------------------------------------------- out
def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_out(out: Path, inputs: Sequence[str], resume: bool, overwrite: bool) -> None:
    """Refuse an ``--out`` that cannot hold these results, before any work.

    Raises:
        ScoreError: ``out`` is a file, not writable, not creatable, not empty (and not our
            results), our results without ``--resume``/``--overwrite``, inside an input folder,
            or holding an input.
    """
    where = f"--out {shown(out)}"
    state = folder_state(out)
    if state == "file":
        raise ScoreError(f"{where}: is a file; --out names a folder (for {CSV_NAME} and heatmaps/)")
    if state == "foreign":
        raise ScoreError(
            f"{where}: folder is not empty and holds no brainad results; choose a new or empty "
            "folder (brainad does not mix its results with other files)"
        )
    if state == "ours" and not (resume or overwrite):
        raise ScoreError(
            f"{where}: already holds results ({CSV_NAME}); pass --resume to continue them, "
            "--overwrite to replace them, or choose a new --out"
        )
    existing = _nearest_existing(out)
    if not existing.is_dir():
        raise ScoreError(f"{where}: cannot be created: {shown(existing)} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ScoreError(
            f"{where}: no permission to write in {shown(existing)}; choose a folder you can "
            "write to"
        )
    _check_not_nested(out, inputs)


def _check_not_nested(out: Path, inputs: Sequence[str]) -> None:
    real_out = os.path.realpath(out)
    for raw in inputs:
        real_in = os.path.realpath(raw)
        if os.path.isdir(raw) and inside(real_out, real_in):
            raise ScoreError(
                f"--out {shown(out)}: is inside the input folder {shown(raw)}, so a later run "
                "would score its own heat maps; choose an --out outside the inputs"
            )
        if inside(real_in, real_out):
            raise ScoreError(
                f"input {shown(raw)}: is inside --out {shown(out)} (brainad's own results are "
                "never scored); choose another --out"
            )
