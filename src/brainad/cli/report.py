"""What ``brainad score`` tells the user: the progress bar (files, rate, ETA), the summary of the
walk and of the run, and a filter for the library's own per-file lines."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from rich.console import RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from brainad.cli.inputs import Collected
from brainad.cli.results import CSV_NAME
from brainad.utils import console

log = logging.getLogger("brainad")


def log_summary(outcomes: Counter[str], out: Path, status: int) -> None:
    """One line of counts, and what the exit status means."""
    log.info(
        "scored %d files (%d flagged anomalous), %d quarantined, %d duplicates, "
        "%d already recorded → %s",
        outcomes["row scored"],
        outcomes["flagged"],
        outcomes["row quarantined"],
        outcomes["row duplicate"],
        outcomes["already recorded"],
        out / CSV_NAME,
    )
    if outcomes["volume scored"] or outcomes["volume quarantined"]:
        log.info(
            "volumes: %d scored (%d slices), %d quarantined → %s",
            outcomes["volume scored"],
            outcomes["slices scored"],
            outcomes["volume quarantined"],
            out / CSV_NAME,
        )
    if status == 1:
        log.warning("exit status 1: some files were quarantined (reasons in %s)", out / CSV_NAME)
    elif status == 2:
        log.error("exit status 2: no file could be scored (reasons in %s)", out / CSV_NAME)


class _Rate(ProgressColumn):
    """Files per second."""

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        rate = task.completed / elapsed if elapsed else None
        return Text("" if rate is None else f"{rate:.1f} files/s", style="progress.data.speed")


@contextlib.contextmanager
def progress_bar() -> Iterator[Progress]:
    """A rich bar on stderr: files done / total, rate, elapsed time and ETA."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    progress = Progress(*columns, console=console())
    progress.live = _OwnLive(console=console(), get_renderable=progress.get_renderable)
    with progress:
        yield progress


class _OwnLive(Live):
    """A live display that shows only its own bar: the library's per-chunk "preprocessing" bars
    (started in the decoding threads) would otherwise be drawn nested under it."""

    @property
    def renderable(self) -> RenderableType:
        return self.get_renderable()


class LibraryQuarantines(logging.Filter):
    """Drops ``preprocess_files``' own per-file lines (it names files by their real path; this
    command logs each quarantined file itself, by the name the user gave)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "quarantined %s: %s"


def report_collection(found: Collected) -> None:
    """Log what the walk of the inputs found besides the files to score."""
    if found.repeated:
        log.info("%d paths were named more than once; each is scored once", found.repeated)
    if found.skipped:
        parts = ", ".join(f"{reason}: {n}" for reason, n in sorted(found.skipped.items()))
        log.info("not considered inside the folders: %s", parts)
    for folder in found.empty_folders:
        log.warning(
            "input folder %s: no image files (.jpg, .png, .bmp, .tif), NIfTI or DICOM files in it",
            folder,
        )
