"""What ``brainad score`` is asked to score: the inputs checked up front, folders walked safely.

Rules (docs/scoring.md):

* every input must name an existing file or folder (an empty string is refused, never read as
  the current folder); a failure is a :class:`InputError` listing every bad input;
* a file named directly is always considered; its type is checked when it is scored (a GIF or a
  ``.txt`` becomes a quarantine row, nothing is skipped silently);
* a folder is searched recursively for the study's image types (:data:`IMAGE_SUFFIXES`), NIfTI
  volumes (``.nii``, ``.nii.gz``) and DICOM files (``.dcm``/``.dicom``/``.ima``, or no suffix and
  the ``DICM`` magic; grouped into series when they are scored); other
  files, hidden entries (``.name``) and macOS metadata (``__MACOSX``, ``._name``) are skipped and
  counted, folder symlinks are followed once (a loop or a second path to the same folder is
  reported and not walked again), an unreadable subfolder, a broken symlink or a fifo with an
  image suffix becomes a quarantine row;
* a path named twice (directly and inside a folder, or twice on the command line) is scored
  once; the same bytes under two different paths are recognised later by their sha256;
* results name the path as the user gave it (a symlink keeps its own name; its real target is
  recorded beside it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from brainad.data.dicom import looks_like_dicom
from brainad.data.imageio import IMAGE_SUFFIXES
from brainad.data.volumes import is_nifti

log = logging.getLogger("brainad")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
LIBRARY_ROOT = Path("/")  # library rows name each file by its real path relative to this root
MACOS_METADATA = "__MACOSX"


class InputError(ValueError):
    """Inputs that cannot be used; one line per problem, each naming the input and what to do."""


class Item(NamedTuple):
    """One file to score.

    Args:
        shown: the path as the user gave it (folder + relative path), printable (see :func:`shown`).
        path: the path to open (as given: relative paths are relative to the working folder).
        target: the real path when ``path`` goes through a symlink, else ``""``.
        problem: why the file cannot be scored, found while walking (``""`` if none yet).
        sha256: its sha256 if already computed (``--shard`` hashes every file first), else ``""``.
    """

    shown: str
    path: Path
    target: str
    problem: str = ""
    sha256: str = ""


class Collected(NamedTuple):
    """Everything found in the inputs.

    Args:
        items: files to score, in input order (folder contents sorted), each path once.
        skipped: entries not considered, by reason (``{"not an image type (.txt)": 3, ...}``).
        empty_folders: named folders in which no image file was found.
        repeated: paths named more than once (scored once).
        volumes: NIfTI files (``.nii``, ``.nii.gz``).
        dicom: DICOM files (grouped into series by ``SeriesInstanceUID`` when scored).
    """

    items: list[Item]
    skipped: Counter[str]
    empty_folders: list[str]
    repeated: int
    volumes: list[Item] = []
    dicom: list[Item] = []

    @property
    def count(self) -> int:
        """Files found: 2-D images, NIfTI files and DICOM files."""
        return len(self.items) + len(self.volumes) + len(self.dicom)


def shown(path: str | os.PathLike[str]) -> str:
    """``path`` as printable UTF-8 text: undecodable bytes as ``\\xNN``, control characters as
    ``\\xNN`` too (a newline in a name cannot break a CSV row or a log line)."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def check_inputs(inputs: Sequence[str]) -> None:
    """Refuse inputs that name nothing, before any work.

    Raises:
        InputError: one line per empty, missing or broken-symlink input.
    """
    problems = []
    for raw in inputs:
        if not raw.strip():
            problems.append(
                f"input {raw!r}: empty path; name a file or folder (use . for the current folder)"
            )
        elif not os.path.lexists(raw):
            problems.append(f"input {shown(raw)}: no such file or folder; check the path")
        elif not os.path.exists(raw):
            problems.append(
                f"input {shown(raw)}: broken symlink (points to {shown(os.readlink(raw))}); "
                "fix the link or name its target"
            )
    if problems:
        raise InputError("\n".join(problems))


def inside(child: str, parent: str) -> bool:
    """``child`` is ``parent`` or below it (both real, absolute paths)."""
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def _dir_key(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


class _Walker:
    """Collects items from the inputs; ``exclude`` are folders never entered (``--out``)."""

    def __init__(self, exclude: Sequence[Path]) -> None:
        self.items: list[Item] = []
        self.volumes: list[Item] = []
        self.dicom: list[Item] = []
        self.skipped: Counter[str] = Counter()
        self.seen_paths: set[str] = set()
        self.seen_dirs: dict[tuple[int, int], str] = {}
        self.excluded = {_dir_key(str(p)) for p in exclude if p.is_dir()}
        self.excluded_real = [os.path.realpath(p) for p in exclude]
        self.repeated = 0

    @property
    def found(self) -> int:
        return len(self.items) + len(self.volumes) + len(self.dicom)

    def add(self, shown_path: str, path: str, problem: str = "", kind: str = "") -> None:
        """Record a file; ``kind``: ``image``, ``nifti`` or ``dicom`` (``""``: by its name and,
        without a suffix, its first bytes)."""
        absolute = os.path.normpath(os.path.abspath(path))
        if absolute in self.seen_paths:
            self.repeated += 1
            return
        real = os.path.realpath(path)
        if any(inside(real, out) for out in self.excluded_real):  # a file symlink into --out
            self.skipped["the --out folder (never scored)"] += 1
            return
        self.seen_paths.add(absolute)
        item = Item(shown_path, Path(path), real if real != absolute else "", problem)
        kind = kind or _kind(Path(path))
        {"nifti": self.volumes, "dicom": self.dicom}.get(kind, self.items).append(item)

    def walk(self, top: str) -> None:
        """Depth first, files of a folder (sorted) before its subfolders (sorted)."""
        stack = [top]
        while stack:
            folder = stack.pop()
            key = _dir_key(folder)
            if key in self.excluded:
                self.skipped["the --out folder (never scored)"] += 1
                continue
            if key in self.seen_dirs:
                if os.path.islink(folder):
                    self._report_alias(folder, self.seen_dirs[key])
                else:  # a folder named on the command line and also inside another one
                    self.repeated += 1
                continue
            self.seen_dirs[key] = folder
            try:
                with os.scandir(folder) as scan:
                    entries = sorted(scan, key=lambda e: e.name)
            except OSError as exc:
                reason = f"folder cannot be read ({exc.strerror or exc}); its files were not scored"
                self.add(shown(folder), folder, reason)
                continue
            subfolders = [e.path for e in entries if self._consider(e)]
            stack.extend(reversed(subfolders))

    def _report_alias(self, folder: str, first: str) -> None:
        self.skipped["folder reached a second time (symlink loop or alias)"] += 1
        log.warning(
            "%s: same folder as %s (a symlink loop or a second path to it); not walked again",
            shown(folder),
            shown(first),
        )

    def _consider(self, entry: os.DirEntry[str]) -> bool:
        """Add ``entry`` if it is an image file; True if it is a folder to walk."""
        name = entry.name
        if name.startswith("._") or name == MACOS_METADATA:
            self.skipped["macOS metadata (._name, __MACOSX)"] += 1
            return False
        if name.startswith("."):
            self.skipped["hidden (name starts with '.'; name it directly to score it)"] += 1
            return False
        try:
            if entry.is_dir():
                return True
        except OSError:
            pass
        suffix = os.path.splitext(name)[1].lower()
        kind = "image" if suffix in IMAGE_SUFFIXES else _kind(Path(entry.path))
        if kind == "image" and suffix not in IMAGE_SUFFIXES:
            self.skipped[f"not an image type ({suffix or 'no suffix'})"] += 1
            return False
        self.add(shown(entry.path), entry.path, _entry_problem(entry), kind)
        return False


def _kind(path: Path) -> str:
    """``nifti``, ``dicom`` or ``image`` (everything else: its type is checked when scored)."""
    if is_nifti(path.name):
        return "nifti"
    return "dicom" if looks_like_dicom(path) else "image"


def _entry_problem(entry: os.DirEntry[str]) -> str:
    """Why an entry with an image suffix is not a readable regular file (``""`` if it is)."""
    try:
        mode = entry.stat().st_mode
    except FileNotFoundError:
        return "broken symlink (its target does not exist)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not stat.S_ISREG(mode):
        return f"not a regular file ({file_kind(mode)})"
    return ""


def file_kind(mode: int) -> str:
    """``fifo``, ``socket``, ``character device`` ... for a ``st_mode``."""
    kinds = {
        stat.S_IFIFO: "fifo",
        stat.S_IFSOCK: "socket",
        stat.S_IFCHR: "character device",
        stat.S_IFBLK: "block device",
        stat.S_IFDIR: "folder",
    }
    return kinds.get(stat.S_IFMT(mode), "special file")


def collect(inputs: Sequence[str], exclude: Sequence[Path] = ()) -> Collected:
    """Walk ``inputs`` (checked by :func:`check_inputs`) into the files to score.

    Raises:
        InputError: a named folder cannot be listed.
    """
    walker = _Walker(exclude)
    empty = []
    for raw in inputs:
        if not os.path.isdir(raw):
            walker.add(shown(raw), raw)
            continue
        try:
            os.scandir(raw).close()
        except OSError as exc:
            raise InputError(
                f"input {shown(raw)}: folder cannot be listed ({exc.strerror or exc}); "
                "check its permissions"
            ) from None
        before = walker.found
        walker.walk(raw)
        if walker.found == before:
            empty.append(shown(raw))
    return Collected(
        walker.items, walker.skipped, empty, walker.repeated, walker.volumes, walker.dicom
    )


# ------------------------------------------------------------------- per-file checks
class Inspected(NamedTuple):
    """A file after the checks that need no decoding (``key``: its row path for the library)."""

    item: Item
    sha256: str
    problem: str
    key: str


def inspect_file(item: Item, max_bytes: int) -> Inspected:
    """Type, kind, size and readability checks and the sha256 (the file is read once here)."""
    if item.problem:
        return Inspected(item, "", item.problem, "")
    suffix = item.path.suffix
    if suffix.lower() not in IMAGE_SUFFIXES:
        return Inspected(item, "", _unsupported(suffix), "")
    try:
        info = os.stat(item.path)
        if not stat.S_ISREG(info.st_mode):
            return Inspected(item, "", f"not a regular file ({file_kind(info.st_mode)})", "")
        if info.st_size > max_bytes:
            return Inspected(item, "", _too_large(info.st_size, max_bytes), "")
        digest = item.sha256 or _sha256(item.path)
    except OSError as exc:
        return Inspected(item, "", f"cannot be read ({exc.strerror or exc})", "")
    real = os.path.realpath(item.path)
    return Inspected(item, digest, "", os.path.relpath(real, LIBRARY_ROOT))


def _sha256(path: Path) -> str:
    """Hex sha256 of a file read into one small reused buffer (``read(1 MiB)`` per file would
    allocate and shrink a 1 MiB block each time, which fragments the heap over an archive)."""
    digest = hashlib.sha256()
    buffer = bytearray(1 << 16)
    view = memoryview(buffer)
    with open(path, "rb") as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def _unsupported(suffix: str) -> str:
    return (
        f"unsupported file type {suffix or '(no suffix)'!r} (brainad scores the study's formats: "
        f"{', '.join(IMAGE_SUFFIXES)}, NIfTI .nii/.nii.gz and DICOM); convert it to PNG to score it"
    )


def _too_large(size: int, max_bytes: int) -> str:
    return (
        f"file is {size} bytes, more than any image within the model's max_pixels can be "
        f"({max_bytes} bytes); downscale it to score it"
    )
