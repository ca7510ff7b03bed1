"""``brainad score --shard I/N``: score one of N parts of an archive, on any machine.

Every shard walks all the inputs exactly as an unsharded run does, then keeps only its own
*items*. An item is what gives one group of rows in ``scores.csv``: a 2-D file, a NIfTI file, a
DICOM series (its files grouped by ``SeriesInstanceUID``) or a DICOM file outside any series.
Each item has a key, and the item is shard ``int(key, 16) % N``:

* a file: the sha256 of its bytes (the ``sha256`` the row records; the scorer reuses it);
* a DICOM series: the sha256 over its files' sorted sha256 (the series row's ``sha256``);
* a file that cannot be read (broken symlink, fifo, permission denied): the sha256 of
  ``path:`` + its path as shown.

So the assignment does not depend on the machine, on the order the inputs are named in or on
how folders are walked, and the same bytes under two paths land in one shard (its ``duplicate``
row is the same as in an unsharded run). Each shard reads every file once to hash it (hashing
costs a small part of scoring) and scores only its own.

A shard's ``scores.csv`` has one more column, ``position``: the item's place in the order of an
unsharded run (2-D files in walk order, then the volumes in the order they are scored), which
``brainad merge`` (:mod:`brainad.cli.merge`) uses to write the rows in that order. ``run.json``
records the shard under ``shard``: ``index``, ``count``, ``items`` (all shards), ``assigned``
(items per shard, this one and the others), ``inputs`` (sha256 over every item's key in the order
of the run: all shards of one run agree on it) and ``rows`` (rows in this shard's ``scores.csv``).
The second half of this module reads shard folders back for ``brainad merge`` and refuses a set
that is not one complete sharded run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from brainad.cli.inputs import Collected, Item, shown
from brainad.cli.report import progress_bar
from brainad.cli.results import RUN_FORMAT, RUN_NAME, ResultsError, read_run, save_run
from brainad.data.dicom import group_series
from brainad.utils import file_sha256

if TYPE_CHECKING:
    from brainad.cli.batch import Session

log = logging.getLogger("brainad")

POSITION = "position"
KEY_RULE = (
    "sha256 of the file's bytes; DICOM series: sha256 of its files' sorted sha256; unreadable "
    "file: sha256 of 'path:' + its path as shown; shard = int(key, 16) % count"
)
SCORE_HINT = "the --out folder of a `brainad score ... --shard I/N` run"


class Shard(NamedTuple):
    """One part of a sharded run: ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``--shard I/N`` with ``0 <= I < N`` (argparse shows the message of a bad value).

    Raises:
        argparse.ArgumentTypeError: not ``I/N``, ``N < 1`` or ``I >= N``.
    """
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not I/N; pass this shard's 0-based index and the number of shards, "
            "e.g. --shard 0/4 ... --shard 3/4"
        )
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of shards N must be at least 1")
    if index >= count:
        raise argparse.ArgumentTypeError(
            f"{text!r}: shard indices are 0-based, 0 to {count - 1} for {count} shards "
            f"(e.g. --shard {count - 1}/{count} for the last one)"
        )
    return Shard(index, count)


def shard_of(key: str, count: int) -> int:
    """The shard of an item with this hex ``key``."""
    return int(key, 16) % count


def path_key(item: Item) -> str:
    """The key of a file that cannot be read: the sha256 of ``path:`` + its shown path."""
    return hashlib.sha256(f"path:{item.shown}".encode()).hexdigest()


def content_sha256(item: Item) -> str:
    """The sha256 of a readable regular file's bytes, ``""`` for any other (never opens a fifo)."""
    if item.problem:
        return ""
    try:
        if not stat.S_ISREG(os.stat(item.path).st_mode):
            return ""
        return file_sha256(item.path)
    except OSError:
        return ""


class Unit(NamedTuple):
    """One item to assign: ``row_key`` (``(path, sha256 or "")``: how its rows are found again),
    its ``files`` and its assignment ``key``."""

    row_key: tuple[str, str]
    files: list[Item]
    key: str


@dataclass
class Plan:
    """What one shard scores.

    Args:
        shard: this shard.
        found: this shard's items (in the order of the whole run).
        positions: row key → the item's place in the unsharded order (this shard's items).
        record: ``run.json``'s ``shard`` entry (``rows`` kept up to date while writing).
    """

    shard: Shard
    found: Collected
    positions: dict[tuple[str, str], int] = field(default_factory=dict)
    record: dict = field(default_factory=dict)

    def annotate(self, row: dict) -> dict:
        """The ``position`` cell of a row about to be written (and one more row counted)."""
        position = self.positions.get((row["path"], row.get("sha256", "")))
        if position is None:
            position = self.positions[(row["path"], "")]
        self.record["rows"] += 1
        return {POSITION: position}


def _hashed(items: Sequence[Item], workers: int) -> list[Item]:
    """``items`` with their content sha256 (``""``: cannot be read), hashed in threads."""
    if not items:
        return []
    with progress_bar() as progress, ThreadPoolExecutor(max(1, workers)) as pool:
        task = progress.add_task("hashing (shard assignment)", total=len(items))
        done = []
        for item, digest in zip(items, pool.map(content_sha256, items), strict=True):
            done.append(item._replace(sha256=digest))
            progress.advance(task)
    return done


def _file_unit(item: Item) -> Unit:
    return Unit((item.shown, ""), [item], item.sha256 or path_key(item))


def _dicom_units(dicom: Sequence[Item], grouped: bool, workers: int) -> list[Unit]:
    """DICOM items in the order they are scored: files that cannot be used, then series (as
    :func:`brainad.cli.volumes.volume_inputs` orders them); ungrouped: one unit per file."""
    if not grouped:
        return [_file_unit(item) for item in _hashed(dicom, workers)]
    bad = [i for i in dicom if i.problem]
    units = [_file_unit(item) for item in bad]
    item_of = {i.path: i for i in dicom}
    series, problems = group_series([i.path for i in dicom if not i.problem])
    units += [_file_unit(i) for i in _hashed([item_of[p.path] for p in problems], workers)]
    for s in series:
        units.append(Unit((shown(s.folder), s.sha256), [item_of[p] for p in s.files], s.sha256))
    return units


def plan(found: Collected, shard: Shard, grouped: bool, workers: int) -> Plan:
    """Assign every item of ``found`` to its shard; keep this ``shard``'s.

    Args:
        found: everything the walk of the inputs found.
        shard: which shard this run is.
        grouped: DICOM files are grouped into series (``False``: the bundle has no volume
            settings, so each DICOM file is its own quarantined row).
        workers: hashing threads.
    """
    images = [_file_unit(i) for i in _hashed(found.items, workers)]
    niftis = [_file_unit(i) for i in _hashed(found.volumes, workers)]
    groups = [images, niftis, _dicom_units(found.dicom, grouped, workers)]
    assigned, result = [0] * shard.count, Plan(shard, found)
    mine: list[list[Item]] = [[], [], []]
    position, inputs = 0, hashlib.sha256()
    for kind, group in enumerate(groups):
        for unit in group:
            inputs.update(f"{kind}:{unit.key}\n".encode())
            owner = shard_of(unit.key, shard.count)
            assigned[owner] += 1
            if owner == shard.index:
                result.positions[unit.row_key] = position
                mine[kind] += unit.files
            position += 1
    dicom = {i.path for i in mine[2]}
    result.found = found._replace(
        items=mine[0], volumes=mine[1], dicom=[i for i in found.dicom if i.path in dicom]
    )
    result.record = {"index": shard.index, "count": shard.count, "key": KEY_RULE}
    result.record.update(items=position, assigned=assigned, inputs=inputs.hexdigest(), rows=0)
    log.info(
        "shard %s: %d of %d items (2-D files, NIfTI files, DICOM series) are this shard's; "
        "items per shard: %s",
        shard,
        assigned[shard.index],
        position,
        assigned,
    )
    return result


def check_resume(out: Path, shard: Shard | None, resume: bool) -> None:
    """``--resume`` continues the same shard (or an unsharded run without ``--shard``).

    Raises:
        ResultsError: ``out`` holds another shard's results, or unsharded ones.
    """
    if not resume or not (out / RUN_NAME).is_file():
        return
    recorded = read_run(out).get("shard")
    was = None if recorded is None else Shard(recorded["index"], recorded["count"])
    if was == shard:
        return
    if was is None:
        raise ResultsError(
            f"--resume: {shown(out)} holds the results of an unsharded run; resume it without "
            "--shard, or choose a new --out for this shard"
        )
    raise ResultsError(
        f"--resume: {shown(out)} holds shard {was}, not {shard or 'an unsharded run'}; pass "
        f"--shard {was} to resume it, or choose a new --out"
    )


def attach(session: Session, shard_plan: Plan) -> None:
    """Record the shard in ``run.json`` and give every written row its ``position``."""
    shard_plan.record["rows"] = session.previous.rows
    session.record["shard"] = shard_plan.record
    session.writer.extra = shard_plan.annotate
    save_run(session.out, session.record)


# ------------------------------------------------------------ a shard read back (brainad merge)
class ShardError(ValueError):
    """Shard folders that cannot be merged as given; the message says what to do."""


class ShardDir(NamedTuple):
    """A shard's output folder, its ``run.json`` and which shard it is."""

    folder: Path
    record: dict
    shard: Shard


def _shard_entry(record: dict, where: str) -> Shard:
    entry = record.get("shard")
    if entry is None:
        raise ShardError(
            f"{where}: scored without --shard, so it is a whole run, not a shard; pass {SCORE_HINT}"
        )
    try:
        shard = Shard(int(entry["index"]), int(entry["count"]))
        ok = len(entry["assigned"]) == shard.count and int(entry["rows"]) >= 0
        ok = ok and 0 <= shard.index < shard.count and int(entry["items"]) >= 0
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ShardError(f"{where}: the shard entry of its {RUN_NAME} is damaged; score it again")
    return shard


def read_shard(folder: Path) -> ShardDir:
    """The shard in ``folder``.

    Raises:
        ShardError: not a folder, no readable ``run.json``, not a shard, or not finished.
    """
    where, path = shown(folder), folder / RUN_NAME
    if not folder.is_dir():
        raise ShardError(f"{where}: not a folder; pass {SCORE_HINT}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardError(f"{where}: has no {RUN_NAME}; pass {SCORE_HINT}") from None
    except (OSError, ValueError) as exc:
        raise ShardError(f"{shown(path)}: cannot be read ({exc}); score that shard again") from None
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        raise ShardError(f"{shown(path)}: not a brainad score record; pass {SCORE_HINT}")
    shard = _shard_entry(record, where)
    runs = record.get("runs") or [{}]
    if runs[-1].get("interrupted", True) or runs[-1].get("exit_status") is None:
        raise ShardError(
            f"{where}: shard {shard} did not finish; run its `brainad score ... --shard {shard}` "
            "command again with --resume, then merge"
        )
    return ShardDir(folder, record, shard)


def _same(shards: Sequence[ShardDir], value: Callable[[dict], object], what: str) -> None:
    first = shards[0]
    for other in shards[1:]:
        if value(other.record) != value(first.record):
            raise ShardError(
                f"{shown(other.folder)} and {shown(first.folder)} differ in {what} "
                f"({str(value(other.record))[:80]} vs {str(value(first.record))[:80]}); "
                "merge the shards of one run (same model, settings and inputs)"
            )


def _by_index(shards: Sequence[ShardDir]) -> dict[int, ShardDir]:
    """The shards by index, refusing another N or an index given twice."""
    first, by_index = shards[0], {}
    for s in shards:
        if s.shard.count != first.shard.count:
            raise ShardError(
                f"{shown(s.folder)} is shard {s.shard} but {shown(first.folder)} is shard "
                f"{first.shard}: the numbers of shards differ; merge the shards of one run"
            )
        seen = by_index.setdefault(s.shard.index, s)
        if seen is not s:
            raise ShardError(
                f"shard {s.shard} given twice ({shown(seen.folder)} and {shown(s.folder)}); "
                "pass each shard's folder once"
            )
    return by_index


def check_shards(shards: Sequence[ShardDir]) -> list[ShardDir]:
    """Refuse shards that are not the complete set of one sharded run; returns them in order.

    Raises:
        ShardError: mismatched N, a shard given twice, another model, other settings or
            inputs, or missing shards (one line per missing shard).
    """
    by_index = _by_index(shards)
    _same(shards, lambda r: r.get("model_sha256"), "the model (sha256)")
    _same(shards, lambda r: r.get("columns"), "columns")
    _same(shards, lambda r: r.get("maps"), "--maps")
    _same(shards, lambda r: r["shard"]["assigned"], "their inputs (items per shard)")
    _same(shards, lambda r: r["shard"].get("inputs"), "their inputs (the files or their order)")
    count = shards[0].shard.count
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        raise ShardError(
            "\n".join(f"shard {i}/{count} missing: pass its output folder" for i in missing)
        )
    return [by_index[i] for i in range(count)]
