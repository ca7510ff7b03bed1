"""The results folder of ``brainad score``: ``scores.csv`` written incrementally, ``run.json``.

``scores.csv`` has a fixed header (:func:`columns`); complete rows are appended per batch and
flushed to disk (``fsync``) before the next batch, so a killed run keeps every batch it finished.
``run.json`` (written atomically) records which model wrote the rows, with which settings, and the
counts of the last run. ``--resume`` re-opens both: it refuses results of another model or
another column layout, drops an incomplete last line (the only thing a kill can leave), and
skips every file whose sha256 is already recorded under the same path.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

from brainad.utils import write_json, write_text

log = logging.getLogger("brainad")

RUN_FORMAT = "brainad-score-run/1"
CSV_NAME = "scores.csv"
RUN_NAME = "run.json"
MAPS_NAME = "heatmaps"
VOLUME_MAPS_NAME = "maps"  # NIfTI maps and top-slice PNGs of volumes
STATUSES = ("scored", "quarantined", "duplicate")
LEVELS = ("image", "slice", "volume")
VOLUME_COLUMNS = ("level", "volume", "slice", "top_k_mean", "map")
_OURS = (CSV_NAME, RUN_NAME, MAPS_NAME, VOLUME_MAPS_NAME)


class ResultsError(ValueError):
    """The results folder cannot be used as asked; the message says what to do."""


def columns(components: Sequence[str]) -> list[str]:
    """The header of ``scores.csv`` for a model with these score ``components``: the 2-D columns,
    then :data:`VOLUME_COLUMNS` (``level``: image | slice | volume; see docs/scoring.md)."""
    return [
        "path",
        "target",
        "sha256",
        "status",
        "reason",
        "score",
        "threshold",
        "prediction",
        "fallback",
        *[f"component_{c}" for c in components],
        "duplicate_of",
        *VOLUME_COLUMNS,
    ]


def score_fields(header: Sequence[str]) -> list[str]:
    """The columns a ``duplicate`` row copies from the row of the same bytes (score ... the
    last component)."""
    return list(header[header.index("score") : header.index("duplicate_of")])


class Known(NamedTuple):
    """The first row recorded for some bytes (what a later copy of them refers to).

    Args:
        path: its ``path``.
        status: ``scored`` or ``quarantined``.
        cells: its :func:`score_fields` values as written (``None`` while being scored).
        reason: its reason (quarantined).
    """

    path: str
    status: str
    cells: tuple[str, ...] | None
    reason: str


class Previous(NamedTuple):
    """What an earlier run already recorded (empty for a fresh folder).

    Args:
        first_path: sha256 → the first row with those bytes.
        pairs: every (path, sha256) already recorded: those files are skipped.
        rows: number of complete rows.
    """

    first_path: dict[str, Known]
    pairs: set[tuple[str, str]]
    rows: int


def empty_previous() -> Previous:
    """Nothing recorded yet."""
    return Previous({}, set(), 0)


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------ the folder
def _is_leftover(name: str) -> bool:
    """A temporary file of an atomic write that a killed run left (``.scores.csv.abc.tmp``)."""
    return name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in _OURS)


def folder_state(out: Path) -> str:
    """``absent``, ``empty``, ``ours`` (only our files), ``foreign`` (anything else) or ``file``."""
    if not out.exists():
        return "file" if out.is_symlink() else "absent"
    if not out.is_dir():
        return "file"
    names = {p.name for p in out.iterdir()}
    if not names:
        return "empty"
    ours = {n for n in names if not _is_leftover(n)} <= set(_OURS) and CSV_NAME in names
    return "ours" if ours else "foreign"


def clear_ours(out: Path) -> None:
    """Delete a previous run's ``scores.csv``, ``run.json`` and ``heatmaps/`` (``--overwrite``);
    refuses if ``heatmaps/`` or ``maps/`` hold anything but PNG (and NIfTI map) files, so no user
    file is ever deleted."""
    for name, suffixes in ((MAPS_NAME, (".png",)), (VOLUME_MAPS_NAME, (".png", "_map.nii.gz"))):
        maps = out / name
        if not maps.is_dir():
            continue
        strays = [p.name for p in maps.iterdir() if not (p.is_file() and p.name.endswith(suffixes))]
        if strays:
            raise ResultsError(
                f"--out {out}: {maps} holds files brainad did not write ({strays[:3]}); "
                "move them away or choose a new --out"
            )
        for picture in maps.iterdir():
            picture.unlink()
        maps.rmdir()
    for name in (CSV_NAME, RUN_NAME):
        (out / name).unlink(missing_ok=True)
    for leftover in out.iterdir():
        if _is_leftover(leftover.name):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()


# ------------------------------------------------------------------------------ run.json
def run_record(model: Path, model_sha256: str, meta: dict, header: list[str], maps: str) -> dict:
    """The ``run.json`` of a new results folder."""
    return {
        "format": RUN_FORMAT,
        "model": str(model),
        "model_sha256": model_sha256,
        "model_meta": meta,
        "columns": header,
        "maps": maps,
        "started": now(),
        "runs": [],
    }


def read_run(out: Path) -> dict:
    """``run.json`` of a results folder.

    Raises:
        ResultsError: missing or unreadable.
    """
    path = out / RUN_NAME
    hint = "pass --overwrite to start again in this folder, or choose a new --out"
    if not path.is_file():
        raise ResultsError(
            f"--resume: {out / CSV_NAME} has no {RUN_NAME} beside it, so the model that wrote it "
            f"is unknown; {hint}"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsError(f"--resume: {path} cannot be read ({exc}); {hint}") from None
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        raise ResultsError(f"--resume: {path} is not a brainad score record; {hint}")
    return record


def check_resumable(record: dict, model: Path, model_sha256: str, header: list, maps: str) -> None:
    """Refuse to append to results of another model, column layout or heat-map mode."""
    hint = "choose a new --out, or pass --overwrite to replace those results"
    if record.get("model_sha256") != model_sha256:
        raise ResultsError(
            f"--resume: the results were written by model {record.get('model')} "
            f"(sha256 {str(record.get('model_sha256'))[:12]}...), not by {model} "
            f"(sha256 {model_sha256[:12]}...); pass that model to resume, or {hint}"
        )
    if record.get("columns") != header:
        raise ResultsError(f"--resume: the results have other columns than this model; {hint}")
    if record.get("maps") != maps:
        raise ResultsError(
            f"--resume: the results were started with --maps {record.get('maps')}; resume with "
            f"the same --maps, or {hint}"
        )


def save_run(out: Path, record: dict) -> None:
    """Write ``run.json`` atomically."""
    write_json(out / RUN_NAME, record)


# ------------------------------------------------------------------------------ scores.csv
def _drop_partial_line(path: Path) -> int:
    """Truncate an incomplete last line (a run killed mid-write); return the bytes dropped."""
    size = path.stat().st_size
    with open(path, "rb+") as handle:
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        start = max(0, size - (1 << 20))
        handle.seek(start)
        tail = handle.read()
        cut = tail.rfind(b"\n")
        keep = start + cut + 1 if cut >= 0 else 0
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    return size - keep


def read_previous(out: Path, header: list[str]) -> Previous:
    """Rows already in ``out/scores.csv`` (after dropping an incomplete last line); call it while
    holding the :class:`ResultsWriter` lock.

    Raises:
        ResultsError: the header differs from ``header`` or a row is malformed.
    """
    path = out / CSV_NAME
    dropped = _drop_partial_line(path)
    if dropped:
        log.warning("%s: dropped an incomplete last line (%d bytes; a killed run)", path, dropped)
    previous = empty_previous()
    count = 0
    fields = [header.index(c) for c in score_fields(header)]
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        first = next(reader, None)
        if first is None:  # killed before the header was complete
            return previous
        if first != header:
            raise ResultsError(
                f"--resume: {path} has other columns than this model writes; choose a new --out"
            )
        for number, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ResultsError(
                    f"--resume: {path} line {number} has {len(row)} fields, not {len(header)}; "
                    "the file was edited or damaged - choose a new --out"
                )
            _remember(previous, row, fields)
            count += 1
    return previous._replace(rows=count)


def _remember(previous: Previous, row: list[str], fields: list[int]) -> None:
    path, sha256, status, reason = row[0], row[2], row[3], row[4]
    if not sha256:  # a file that could not be read has no sha256: it is tried again
        return
    previous.pairs.add((path, sha256))
    if status != "duplicate" and sha256 not in previous.first_path:
        cells = tuple(row[i] for i in fields)
        previous.first_path[sha256] = Known(path, status, cells, reason)


class ResultsWriter:
    """Appends complete rows to ``scores.csv`` and flushes them to disk after every batch.

    Args:
        path: the CSV file; created with its header (atomically) if absent.
        header: the columns.
    """

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path, self.header = path, header
        self.extra: Callable[[dict], dict] | None = None  # more cells per row (a shard's position)
        if not path.exists() or path.stat().st_size == 0:
            write_text(path, self._format([header]))
        self._handle: IO[str] = open(path, "a", encoding="utf-8", newline="")
        try:  # held for the whole run: two commands never append to (or resume) one file
            _lock(self._handle, path)
        except ResultsError:
            self._handle.close()
            raise

    def _format(self, rows: Sequence[Sequence[Any]]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue()

    def write(self, rows: Sequence[dict]) -> None:
        """Append ``rows`` (dicts keyed by column; missing keys are empty) and fsync."""
        if not rows:
            return
        if self.extra is not None:
            rows = [{**row, **self.extra(row)} for row in rows]
        text = self._format([[cell(row.get(c, "")) for c in self.header] for row in rows])
        try:
            self._handle.write(text)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise ResultsError(
                f"{self.path}: cannot append rows ({exc.strerror or exc}); every earlier batch is "
                "kept - fix the cause (disk full?) and run the same command with --resume"
            ) from None

    def close(self) -> None:
        """Close the file (every written row is already on disk)."""
        self._handle.close()


def _lock(handle: IO[str], path: Path) -> None:
    """An exclusive advisory lock on ``handle`` (POSIX ``flock``; no lock elsewhere).

    Raises:
        ResultsError: another process holds it.
    """
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise ResultsError(
            f"--out {path.parent}: another brainad score is writing {path.name}; wait for it to "
            "finish, or choose another --out"
        ) from None


def ensure_unlocked(path: Path) -> None:
    """Refuse (:class:`ResultsError`) if another run holds ``path``'s lock."""
    if path.exists():
        with open(path, "a", encoding="utf-8") as handle:
            _lock(handle, path)


def cell(value: Any) -> str:
    """A value as written in ``scores.csv``."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def iter_scored(path: Path, limit: int) -> Iterator[dict[str, str]]:
    """Rows of 2-D images with status ``scored`` among the first ``limit`` rows of
    ``scores.csv`` (streamed; slice and volume rows have their own maps)."""
    with open(path, encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle)):
            if number >= limit:
                return
            if row.get("status") == "scored" and row.get("level", "image") == "image":
                yield row
