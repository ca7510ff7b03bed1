"""One batch of ``brainad score``: read and hash each file, decode it through the evaluate stage's
code (``Engine.prepare``), score it (``Engine.score``), turn every outcome into a row.

Per file, in this order: a problem found while walking (broken symlink, fifo, unreadable folder)
→ an unsupported file type → not a regular file → larger than any image the model accepts →
unreadable (permission, I/O error) → already recorded under this path with this sha256
(``--resume``: skipped) → the same bytes as an earlier file (a ``duplicate`` row naming it, not
scored twice) → decoded and preprocessed, or quarantined with the decoder's reason → scored.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from brainad.cli.checks import ScoreError
from brainad.cli.inputs import LIBRARY_ROOT, Inspected, Item, inspect_file, shown
from brainad.cli.maps import MapsMode, TopK, draw, map_name, swap_folder
from brainad.cli.results import (
    CSV_NAME,
    MAPS_NAME,
    Known,
    Previous,
    ResultsWriter,
    cell,
    check_resumable,
    clear_ours,
    columns,
    empty_previous,
    ensure_unlocked,
    folder_state,
    iter_scored,
    now,
    read_previous,
    read_run,
    run_record,
    save_run,
    score_fields,
)

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from brainad.cli.score import Engine
    from brainad.data.arrays import PreprocessOutput

log = logging.getLogger("brainad")

BYTES_PER_PIXEL = 8  # 16-bit RGBA, uncompressed: no image within max_pixels is larger
HEADER_SLACK = 1 << 20
LOGGED_QUARANTINES = 20
_REWORDED = {
    "raise preprocess.max_pixels if it is genuine": (
        "the model's study fixed max_pixels; downscale the image to score it"
    ),
}


class Options(NamedTuple):
    """Run settings: ``maps`` mode, decoding ``workers`` threads, files per ``batch_size``,
    ``extra_columns`` after the usual ones (``--shard``: ``position``)."""

    maps: MapsMode
    workers: int
    batch_size: int
    extra_columns: tuple[str, ...] = ()


@dataclass
class Session:
    """An open results folder and what this run has seen so far."""

    out: Path
    options: Options
    writer: ResultsWriter
    previous: Previous
    record: dict
    threshold: float
    max_bytes: int
    started: str = field(default_factory=now)
    seen: dict[str, Known] = field(default_factory=dict)
    top: TopK | None = None
    logged: int = 0
    fields: list[str] = field(default_factory=list)


class Batch(NamedTuple):
    """Inspected files (input order), the library's output for those that were decoded, and
    ``failed``: key → reason for files on which the decoder itself raised."""

    files: list[Inspected]
    outputs: list[PreprocessOutput]
    failed: dict[str, str]


# ---------------------------------------------------------------------------------- session
def open_session(
    out: Path, engine: Engine, model: Path, model_sha256: str, options: Options, args: Any
) -> Session:
    """Create (or re-open with ``--resume``) the results folder; refuses unusable ones.

    Raises:
        ScoreError: the folder cannot be created or written, or its results are not resumable.
    """
    header = [*columns(engine.components), *options.extra_columns]
    _prepare_folder(out, args.overwrite)
    resuming = args.resume and (out / CSV_NAME).exists()
    record = read_run(out) if resuming else None
    if record is not None:
        check_resumable(record, model, model_sha256, header, str(options.maps))
    elif args.resume:
        log.info("--resume: no results in %s yet; starting", out)
    writer = ResultsWriter(out / CSV_NAME, header)  # locked from here on
    try:
        previous = read_previous(out, header) if resuming else empty_previous()
    except Exception:
        writer.close()
        raise
    if resuming:
        log.info("resuming %s: %d rows already recorded", out / CSV_NAME, previous.rows)
    if record is None:
        record = run_record(model, model_sha256, engine.bundle.meta, header, str(options.maps))
    save_run(out, record)
    bytes_limit = engine.bundle.preprocess.max_pixels * BYTES_PER_PIXEL + HEADER_SLACK
    threshold = float(engine.bundle.calibration.threshold)
    session = Session(out, options, writer, previous, record, threshold, bytes_limit)
    session.top = TopK(options.maps.k) if options.maps.kind == "top" else None
    session.fields = score_fields(header)
    return session


def _prepare_folder(out: Path, overwrite: bool) -> None:
    """``--overwrite``: remove the previous results (unless a run is writing them); create
    ``out`` and prove it is writable."""
    try:
        if overwrite and folder_state(out) == "ours":
            ensure_unlocked(out / CSV_NAME)
            clear_ours(out)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ScoreError(
            f"--out {shown(out)}: cannot write there ({exc.strerror or exc}); choose a folder "
            "you can write to"
        ) from None


def close_session(
    session: Session, outcomes: Counter[str], interrupted: bool, status: int | None = None
) -> None:
    """Close ``scores.csv`` and record this run (counts, exit status) in ``run.json``."""
    session.writer.close()
    session.record["runs"].append(
        {
            "started": session.started,
            "finished": now(),
            "interrupted": interrupted,
            "counts": dict(sorted(outcomes.items())),
            "exit_status": status,
        }
    )
    save_run(session.out, session.record)


# ---------------------------------------------------------------------- reading (threads)
def decode_chunk(
    engine: Engine, session: Session, items: Sequence[Item], skip_known: bool = True
) -> Batch:
    """Inspect ``items`` and decode those not yet known (runs in a decoding thread)."""
    files = [inspect_file(item, session.max_bytes) for item in items]
    rows, keys = [], set()
    for f in files:
        known = (f.item.shown, f.sha256) in session.previous.pairs or (
            f.sha256 in session.previous.first_path
        )
        if f.problem or f.key in keys or (skip_known and known):
            continue
        keys.add(f.key)
        rows.append(_library_row(f))
    outputs, failed = _prepare(engine, rows)
    return Batch(files, outputs, failed)


def _prepare(engine: Engine, rows: list[dict]) -> tuple[list[PreprocessOutput], dict[str, str]]:
    """Decode ``rows`` in one call; if the decoder raises (a bug, or memory exhausted by one
    file), decode them one by one so only the file that raises is quarantined."""
    if not rows:
        return [], {}
    try:
        return [engine.prepare(LIBRARY_ROOT, rows)], {}
    except Exception:
        log.debug("decoding a chunk raised; decoding its files one by one", exc_info=True)
    outputs, failed = [], {}
    for row in rows:
        try:
            outputs.append(engine.prepare(LIBRARY_ROOT, [row]))
        except Exception as exc:
            detail = str(exc).splitlines()[0][:200] if str(exc) else "no detail"
            failed[row["path"]] = f"the decoder failed ({type(exc).__name__}: {detail})"
    return outputs, failed


def _library_row(f: Inspected) -> dict:
    return {
        "path": f.key,
        "label": "healthy",
        "class_name": "",
        "folder": "",
        "sha256": f.sha256,
        "mask_path": "",
    }


def merge(batches: Sequence[Batch]) -> Batch:
    """The chunks of one batch, in order."""
    files = [f for b in batches for f in b.files]
    failed = {k: v for b in batches for k, v in b.failed.items()}
    return Batch(files, [o for b in batches for o in b.outputs], failed)


# ------------------------------------------------------------------------ scoring (main)
def _index(batch: Batch) -> tuple[dict, dict]:
    """Where each decoded key is (output, index), and the reason of each rejected key."""
    accepted, reasons = {}, dict(batch.failed)
    for o, output in enumerate(batch.outputs):
        for i, key in enumerate(output.arrays.paths.tolist()):
            accepted[key] = (o, i)
        reasons.update({q.path: _reword(q.reason) for q in output.quarantined})
    return accepted, reasons


def _reword(reason: str) -> str:
    """Library reasons that give advice ``brainad score`` users cannot follow, reworded."""
    if reason.startswith("changed since manifest"):
        return "changed while being scored; run the command again with --resume"
    for library, cli in _REWORDED.items():
        reason = reason.replace(library, cli)
    return reason


def _classify(session: Session, f: Inspected, accepted: dict, reasons: dict) -> dict | None:
    """The row of one file (``None``: already recorded), with ``_outcome`` and ``_slot``."""
    row: dict[str, Any] = {"path": f.item.shown, "target": shown(f.item.target or "")}
    row["level"] = "image"
    row["sha256"] = f.sha256
    if f.problem:
        return _quarantine(session, row, f.problem)
    previous = session.previous
    if (f.item.shown, f.sha256) in previous.pairs:
        known = previous.first_path.get(f.sha256)
        return {"_outcome": _outcome(known.status if known else "scored"), "_skip": True}
    first = previous.first_path.get(f.sha256) or session.seen.get(f.sha256)
    if first is not None:
        return _duplicate(session, row, first)
    if f.key in accepted:
        session.seen[f.sha256] = Known(f.item.shown, "scored", None, "")
        slot = {"_slot": accepted[f.key], "_open": f.item.path}
        return {**row, "status": "scored", "_outcome": "scored", **slot}
    reason = reasons.get(f.key, "not decoded")
    session.seen[f.sha256] = Known(f.item.shown, "quarantined", (), reason)
    return _quarantine(session, row, reason)


def _outcome(status: str) -> str:
    return "quarantined" if status == "quarantined" else "scored"


def _duplicate(session: Session, row: dict, first: Known) -> dict:
    """A row for bytes already seen: it names the first path and copies its score (or, for
    bytes scored in this very batch, copies it once they are scored)."""
    reason = f"same bytes as {first.path}"
    if first.status == "quarantined":
        reason += f" (quarantined: {first.reason})"
    row.update(status="duplicate", duplicate_of=first.path, reason=reason)
    if first.cells is None:
        row["_copy_from"] = row["sha256"]
    else:
        row.update(zip(session.fields, first.cells, strict=False))
    return {**row, "_outcome": _outcome(first.status)}


def _quarantine(session: Session, row: dict, reason: str) -> dict:
    session.logged += 1
    if session.logged <= LOGGED_QUARANTINES:
        log.warning("%s: quarantined: %s", row["path"], reason)
    elif session.logged == LOGGED_QUARANTINES + 1:
        log.warning("more quarantined files: every one is listed with its reason in scores.csv")
    return {**row, "status": "quarantined", "reason": reason, "_outcome": "quarantined"}


def _stack(
    outputs: Sequence[PreprocessOutput], slots: list[tuple[int, int]], name: str
) -> np.ndarray:
    return np.stack([getattr(outputs[o].arrays, name)[i] for o, i in slots])


def finish(
    engine: Engine, session: Session, batch: Batch, progress: Progress, task: TaskID
) -> Counter[str]:
    """Score a decoded batch, append its rows, draw its maps; returns the outcomes."""
    accepted, reasons = _index(batch)
    rows = [_classify(session, f, accepted, reasons) for f in batch.files]
    pending = [r for r in rows if "_slot" in r]
    outcomes = Counter(r["_outcome"] for r in rows)
    outcomes["already recorded"] = sum("_skip" in r for r in rows)
    if pending:
        outcomes["flagged"] = _score_rows(engine, session, batch.outputs, pending)
    for row in pending:
        known = session.seen[row["sha256"]]
        cells = tuple(cell(row.get(c, "")) for c in session.fields)
        session.seen[row["sha256"]] = known._replace(cells=cells)
    for row in rows:
        if "_copy_from" in row:
            row.update(
                zip(session.fields, session.seen[row["_copy_from"]].cells or (), strict=False)
            )
    written = [r for r in rows if "_skip" not in r]
    outcomes.update(f"row {r['status']}" for r in written)
    session.writer.write(written)
    progress.advance(task, len(batch.files))
    return outcomes


def _score_rows(engine: Engine, session: Session, outputs: list, rows: list[dict]) -> int:
    slots = [r["_slot"] for r in rows]
    images = _stack(outputs, slots, "images")
    maps_all = session.options.maps.kind == "all"
    scored = engine.score(images, _stack(outputs, slots, "brain_masks"), maps_all)
    fallback = _stack(outputs, slots, "fallback")
    for i, row in enumerate(rows):
        row.update(
            score=float(scored.score[i]),
            threshold=session.threshold,
            prediction=int(scored.prediction[i]),
            fallback=bool(fallback[i]),
        )
        row.update({f"component_{k}": float(v[i]) for k, v in scored.components.items()})
        if maps_all:
            name = map_name(row["sha256"], row["path"])
            draw(session.out / MAPS_NAME / name, row, images[i], scored.maps[i])
        elif session.top is not None:
            session.top.push(row["score"], _public(row))
    return int(scored.prediction.sum())


def _public(row: dict) -> dict:
    """The row's columns plus the path to open it again (``_open``)."""
    return {k: v for k, v in row.items() if not k.startswith("_") or k == "_open"}


# ------------------------------------------------------------------------------- top-K maps
def _previous_top(session: Session) -> None:
    """Offer the scored rows of earlier runs (``--resume``) to the top-K selection."""
    if session.top is None or not session.previous.rows:
        return
    for row in iter_scored(session.out / CSV_NAME, limit=session.previous.rows):
        session.top.push(float(row["score"]), {**row, "_open": Path(row["target"] or row["path"])})


def write_top_maps(engine: Engine, session: Session) -> None:
    """``--maps top-K``: re-decode the K most anomalous scans of ``scores.csv`` (this run's and,
    with ``--resume``, earlier ones), score them with maps, replace ``heatmaps/`` with them."""
    if session.top is None:
        return
    _previous_top(session)
    ranked = session.top.ranked()
    staged = session.out / f".{MAPS_NAME}.new.tmp"
    if staged.exists():
        shutil.rmtree(staged)  # a killed run's staging folder
    staged.mkdir()
    items = [Item(r["path"], Path(r["_open"]), "") for r in ranked]
    batch = decode_chunk(engine, session, items, skip_known=False)
    accepted, _ = _index(batch)
    drawn = []
    for rank, (row, f) in enumerate(zip(ranked, batch.files, strict=True), start=1):
        if f.sha256 != row["sha256"] or f.key not in accepted:
            log.warning("no heat map for %s: it changed or cannot be read again", row["path"])
            continue
        drawn.append((rank, row, accepted[f.key]))
    if drawn:
        slots = [slot for _, _, slot in drawn]
        images = _stack(batch.outputs, slots, "images")
        scored = engine.score(images, _stack(batch.outputs, slots, "brain_masks"), True)
        for i, (rank, row, _) in enumerate(drawn):
            fields = {**row, "score": float(scored.score[i]), "threshold": session.threshold}
            fields["prediction"] = int(scored.prediction[i])
            path = staged / map_name(row["sha256"], row["path"], rank)
            draw(path, fields, images[i], scored.maps[i])
    swap_folder(staged, session.out / MAPS_NAME)
    log.info("heat maps of the %d most anomalous scans → %s", len(drawn), session.out / MAPS_NAME)
