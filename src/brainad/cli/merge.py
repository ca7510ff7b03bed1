"""``brainad merge OUT SHARD_DIR...``: one run's ``scores.csv`` from the folders of its shards.

The shards are the ``--out`` folders of ``brainad score --shard I/N`` (:mod:`brainad.cli.shard`),
given in any order. Checked before anything is written, each failure one line naming the folder
and what to do (exit status 2):

* every folder holds a finished shard (``run.json`` with a ``shard`` entry, its last run neither
  interrupted nor killed);
* all come from one sharded run: the same N, model (sha256), columns, ``--maps`` and inputs (the
  same items per shard and the same fingerprint of every item's key in walk order);
* each shard once (``shard 1/4 given twice``), none missing (``shard 2/4 missing: pass its output
  folder``);
* each shard's ``scores.csv`` has the rows its ``run.json`` records, for exactly the items that
  were assigned to it.

``OUT/scores.csv`` has the rows in the order of an unsharded run (by ``position``, a column that is
dropped; the rows of one item in the order they were written), so it is the file one unsharded run
writes (scores to float32 rounding: see docs/scoring.md). Identical bytes under two paths always
land in one shard, which writes the same ``duplicate`` row as an unsharded run, so no row can be
in two shards: rows of one item in two shards (an edited ``scores.csv``) and items no shard
scored are refused. ``OUT/run.json`` records the model as ``score`` does, plus ``merged`` (the
shards and their rows), so ``brainad score --resume --out OUT`` can continue it unsharded. Volume
maps (``maps/``) and, with ``--maps all``, ``heatmaps/`` are linked (or copied) into OUT; each
shard's top-K heat maps stay in its folder. OUT must be new or empty; ``--overwrite`` replaces
earlier brainad results in it (the ``score`` convention).
"""

from __future__ import annotations

import argparse
import csv
import heapq
import itertools
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from brainad.cli.inputs import inside, shown
from brainad.cli.results import (
    CSV_NAME,
    MAPS_NAME,
    RUN_NAME,
    VOLUME_MAPS_NAME,
    clear_ours,
    ensure_unlocked,
    folder_state,
    run_record,
)
from brainad.cli.shard import POSITION, ShardDir, ShardError, check_shards, read_shard
from brainad.utils import atomic_path, write_json

log = logging.getLogger("brainad")


class Scan(NamedTuple):
    """What a shard's ``scores.csv`` holds: ``rows``, distinct ``items`` (positions), and whether
    its positions never decrease (``ordered``; not so only after ``--resume`` retried a file)."""

    rows: int
    items: int
    ordered: bool


# ------------------------------------------------------------------------------ the rows
def _read_rows(s: ShardDir) -> Iterator[tuple[int, list[str]]]:
    """``(position, row)`` for every row of a shard's ``scores.csv``, checked."""
    path, header = s.folder / CSV_NAME, s.record["columns"]
    where, hint = shown(path), "score that shard again (--overwrite)"
    if POSITION not in header:
        raise ShardError(f"{where}: no {POSITION} column (its {RUN_NAME} is damaged); {hint}")
    at, total = header.index(POSITION), int(s.record["shard"]["items"])
    try:
        handle = open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise ShardError(f"{where}: cannot be read ({exc.strerror or exc}); {hint}") from None
    with handle:
        reader = csv.reader(handle)
        if next(reader, None) != header:
            raise ShardError(f"{where}: its header differs from its {RUN_NAME}; {hint}")
        for number, row in enumerate(reader, start=2):
            position = row[at] if len(row) == len(header) else ""
            if not (position.isascii() and position.isdigit()) or int(position) >= total:
                raise ShardError(f"{where} line {number}: malformed row; {hint}")
            yield int(position), row


def scan(s: ShardDir) -> Scan:
    """Count a shard's rows and items and check them against its ``run.json``.

    Raises:
        ShardError: a malformed row, or other counts than the shard recorded.
    """
    rows = items = 0
    last, ordered = -1, True
    for position, _ in _read_rows(s):
        rows += 1
        items += position != last
        ordered = ordered and position >= last
        last = position
    if not ordered:
        items = len({position for position, _ in _read_rows(s)})
    entry, where = s.record["shard"], shown(s.folder / CSV_NAME)
    if rows != int(entry["rows"]):
        raise ShardError(
            f"{where}: {rows} rows, but its {RUN_NAME} records {entry['rows']} (edited or "
            "damaged?); score that shard again (--overwrite)"
        )
    if items != entry["assigned"][s.shard.index]:
        raise ShardError(
            f"{where}: rows for {items} items, but {entry['assigned'][s.shard.index]} were "
            f"assigned to shard {s.shard}; score that shard again (--overwrite)"
        )
    return Scan(rows, items, ordered)


def _stream(s: ShardDir, order: int, ordered: bool) -> Iterator[tuple[int, int, list[str]]]:
    rows: Iterator[tuple[int, list[str]]] = _read_rows(s)
    if not ordered:  # stable: the rows of one item keep the order they were written in
        rows = iter(sorted(rows, key=itemgetter(0)))
    for position, row in rows:
        yield position, order, row


def merged_rows(
    shards: Sequence[ShardDir], scans: Sequence[Scan], tally: Counter[str]
) -> Iterator[list[str]]:
    """Every row of the shards in the unsharded order, ``position`` dropped; ``tally`` counts
    ``items`` and ``rows``.

    Raises:
        ShardError: rows of one item in two shards (impossible for the shards of one run, whose
            items each belong to one shard: a file was edited).
    """
    at = shards[0].record["columns"].index(POSITION)
    streams = [_stream(s, i, n.ordered) for i, (s, n) in enumerate(zip(shards, scans, strict=True))]
    merged = heapq.merge(*streams, key=itemgetter(0))
    for _, group in itertools.groupby(merged, key=itemgetter(0)):
        tally["items"] += 1
        owner = None
        for _, order, row in group:
            owner = order if owner is None else owner
            if order != owner:
                raise ShardError(
                    f"{row[0]}: rows in {shown(shards[owner].folder)} (shard "
                    f"{shards[owner].shard}) and {shown(shards[order].folder)} (shard "
                    f"{shards[order].shard}), but each item belongs to one shard (an edited "
                    "scores.csv?); score those shards again (--overwrite)"
                )
            tally["rows"] += 1
            yield row[:at] + row[at + 1 :]


# ---------------------------------------------------------------------------------- output
def check_out(out: Path, shards: Sequence[ShardDir], overwrite: bool) -> str:
    """Refuse an OUT that is a shard folder or holds other results; returns its state.

    Raises:
        ShardError: OUT is (inside, or holds) a shard folder, a file, a folder with other
            files, or brainad results without ``--overwrite``.
    """
    where, real = f"OUT {shown(out)}", os.path.realpath(out)
    for s in shards:
        folder = os.path.realpath(s.folder)
        if inside(real, folder) or inside(folder, real):
            raise ShardError(
                f"{where}: is, is inside or holds the shard folder {shown(s.folder)}; choose a "
                "new folder for the merged results"
            )
    state = folder_state(out)
    if state == "file":
        raise ShardError(f"{where}: is a file; OUT names a folder (for {CSV_NAME})")
    if state == "foreign":
        raise ShardError(f"{where}: folder holds other files; choose a new or empty folder")
    if state == "ours" and not overwrite:
        raise ShardError(
            f"{where}: already holds results ({CSV_NAME}); pass --overwrite to replace them, or "
            "choose a new folder"
        )
    return state


def write_merged(out: Path, shards: Sequence[ShardDir], scans: Sequence[Scan]) -> Counter[str]:
    """Write ``OUT/scores.csv`` atomically (nothing is left if a check fails on the way).

    Raises:
        ShardError: an item no shard scored, or other inputs (:func:`merged_rows`).
    """
    header = [c for c in shards[0].record["columns"] if c != POSITION]
    tally: Counter[str] = Counter()
    with atomic_path(out / CSV_NAME) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(merged_rows(shards, scans, tally))
            handle.flush()
            os.fsync(handle.fileno())
        total = int(shards[0].record["shard"]["items"])
        if tally["items"] != total:
            raise ShardError(
                f"the shards hold rows for {tally['items']} of their {total} items: "
                f"{total - tally['items']} were scored by no shard (files changed between the "
                "shards' runs?); score the shards again"
            )
    return tally


def _link_maps(shards: Sequence[ShardDir], out: Path, maps: str) -> int:
    """Hard-link (or copy) the shards' map files into OUT; returns how many."""
    names = [VOLUME_MAPS_NAME, *([MAPS_NAME] if maps == "all" else [])]
    done = 0
    for s, name in itertools.product(shards, names):
        if not (s.folder / name).is_dir():
            continue
        (out / name).mkdir(exist_ok=True)
        for picture in sorted((s.folder / name).iterdir()):
            target = out / name / picture.name
            if target.exists() or not picture.is_file():
                continue
            try:
                os.link(picture, target)
            except OSError:
                shutil.copy2(picture, target)
            done += 1
    if maps.startswith("top"):
        log.info("heat maps: each shard's %s/ keeps its own top-K; they are not merged", MAPS_NAME)
    return done


def _merged_record(shards: Sequence[ShardDir], scans: Sequence[Scan], tally: Counter) -> dict:
    first = shards[0].record
    header = [c for c in first["columns"] if c != POSITION]
    meta = first.get("model_meta", {})
    record = run_record(Path(first["model"]), first["model_sha256"], meta, header, first["maps"])
    parts = [
        {"shard": str(s.shard), "folder": str(s.folder), "rows": n.rows}
        for s, n in zip(shards, scans, strict=True)
    ]
    record["merged"] = {
        "shards": parts,
        "items": int(first["shard"]["items"]),
        "assigned": first["shard"]["assigned"],
        "rows": tally["rows"],
    }
    return record


def _prepare_out(out: Path, state: str) -> None:
    """Remove earlier brainad results (``--overwrite``; not while a run writes them), create OUT."""
    try:
        if state == "ours":
            ensure_unlocked(out / CSV_NAME)
            clear_ours(out)
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ShardError(
            f"OUT {shown(out)}: cannot write there ({exc.strerror or exc}); choose a folder you "
            "can write to"
        ) from None


def cmd_merge(args: argparse.Namespace) -> int:
    """Run ``brainad merge`` (parsed ``args``); returns the exit status (0)."""
    shards = check_shards([read_shard(folder) for folder in args.shards])
    state = check_out(args.out, shards, args.overwrite)
    scans = [scan(s) for s in shards]
    _prepare_out(args.out, state)
    tally = write_merged(args.out, shards, scans)
    write_json(args.out / RUN_NAME, _merged_record(shards, scans, tally))
    linked = _link_maps(shards, args.out, str(shards[0].record["maps"]))
    log.info(
        "merged %d shards: %d rows for %d items, %d map files → %s",
        len(shards),
        tally["rows"],
        tally["items"],
        linked,
        args.out / CSV_NAME,
    )
    return 0


def add_merge_parser(sub: Any, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Register ``brainad merge`` on the ``sub`` parsers."""
    merge = sub.add_parser(
        "merge",
        parents=list(parents),
        help="join the --out folders of `brainad score --shard I/N` into one scores.csv",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    merge.add_argument("out", type=Path, metavar="OUT", help="folder for the merged results")
    merge.add_argument(
        "shards", type=Path, nargs="+", metavar="SHARD_DIR", help="every shard's --out folder"
    )
    merge.add_argument(
        "--overwrite", action="store_true", help="replace OUT's previous brainad results"
    )
    merge.set_defaults(func=cmd_merge)
