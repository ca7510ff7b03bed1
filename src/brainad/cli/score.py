"""``brainad score``: score scans (files, folders, whole archives) with a trained study model.

Everything that can be checked is checked before any work (inputs, ``--out``, ``--device``,
``--model``, including one warm-up forward pass); each failure is one line and exit status 2.
Then files are read, hashed, decoded and preprocessed in batches (``--workers`` threads, one
batch ahead of the model) and scored; complete rows are appended to ``scores.csv`` after every
batch, so memory does not grow with the number of files and a killed run loses at most one
batch (``--resume`` continues it). A file that cannot be used — unreadable, not an image,
truncated, too large — is a *quarantined* row with its reason; the rest of the batch is scored.
``--shard I/N`` scores one of N parts of the inputs (:mod:`brainad.cli.shard`); ``brainad merge``
joins the parts into the ``scores.csv`` of one run (:mod:`brainad.cli.merge`).

Exit status: 0 every file was scored; 1 some were quarantined (the others were scored);
2 nothing could be scored, or a check failed; 130 interrupted (rows so far are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from brainad.cli import batch as score_batch
from brainad.cli import report as score_report
from brainad.cli import shard as sharding
from brainad.cli.batch import Batch, Options, Session
from brainad.cli.checks import (
    ScoreError,
    check_model_file,
    check_out,
    explain_model_error,
    parse_device,
)
from brainad.cli.inputs import Collected, Item, check_inputs, collect, shown
from brainad.cli.maps import MapsMode, parse_maps
from brainad.cli.results import CSV_NAME
from brainad.cli.volumes import score_volumes
from brainad.utils import console

if TYPE_CHECKING:
    from brainad.data.arrays import PreprocessOutput
    from brainad.data.preprocess import Preprocessed
    from brainad.scoring.bundle import ScorerBundle
    from brainad.scoring.detector import ScoredImages

log = logging.getLogger("brainad")

EXIT_OK, EXIT_QUARANTINED, EXIT_NOTHING, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_WORKERS = 64


# ------------------------------------------------------------- the one door into the library
class Engine(NamedTuple):
    """A loaded scorer bundle and the evaluate stage's own functions bound to it.

    Args:
        bundle: the scorer bundle (model, calibration, preprocessing, score settings).
        components: score components the bundle computes (the CSV's ``component_*`` columns).
        prepare: ``(root, rows) -> PreprocessOutput``: read, verify sha256, decode, preprocess.
        score: ``(images, masks, keep_maps) -> ScoredImages``: components, score, prediction.
        prepare_slice: ``(gray) -> Preprocessed``: one decoded slice in [0, 1] (a volume's
            windowed axial slice) through the same ``preprocess_slice`` as every image.
    """

    bundle: ScorerBundle
    components: tuple[str, ...]
    prepare: Callable[[Path, list[dict]], PreprocessOutput]
    score: Callable[[np.ndarray, np.ndarray, bool], ScoredImages]
    prepare_slice: Callable[[np.ndarray], Preprocessed]


def load_engine(model: Path, device: Any) -> Engine:
    """The ONLY code of the score command that calls ``load_scorer``, ``preprocess_files`` and
    ``score_images`` (the one detector engine evaluation uses, so CLI scores equal evaluation
    scores)."""
    from brainad.data.arrays import preprocess_files
    from brainad.data.preprocess import preprocess_slice
    from brainad.scoring.bundle import load_scorer
    from brainad.scoring.detector import score_images

    bundle = load_scorer(model, device=device)
    detector = bundle.detector(device)

    def prepare(root: Path, rows: list[dict]) -> PreprocessOutput:
        return preprocess_files(root, rows, bundle.preprocess)

    def score(images: np.ndarray, masks: np.ndarray, keep_maps: bool) -> ScoredImages:
        return score_images(detector, bundle.calibration, images, masks, keep_maps=keep_maps)

    def prepare_slice(gray: np.ndarray) -> Preprocessed:
        return preprocess_slice(gray, bundle.preprocess)

    components = tuple(detector.components)  # what this model's detector computes
    return Engine(bundle, components, prepare, score, prepare_slice)


def open_engine(model: Path, device: Any) -> Engine:
    """:func:`load_engine` plus one warm-up forward pass on ``device``, errors as one line.

    Raises:
        ScoreError: the bundle does not load, or the model cannot run on ``device``.
    """
    try:
        engine = load_engine(model, device)
    except Exception as exc:  # CheckpointError, ValueError, KeyError from a malformed bundle...
        log.debug("loading %s failed", model, exc_info=True)
        raise ScoreError(explain_model_error(model, exc)) from exc
    side = engine.bundle.preprocess.image_size
    try:
        shape = (1, 1, side, side)
        engine.score(np.zeros(shape, np.float16), np.ones(shape, bool), False)
    except Exception as exc:
        log.debug("warm-up on %s failed", device, exc_info=True)
        raise ScoreError(
            f"--device {device}: the model cannot run there ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}); try --device cpu"
        ) from exc
    return engine


# ------------------------------------------------------------------------------- the batches
class _Decoder:
    """Decodes batches in ``workers`` threads, one batch ahead of the model (0: inline)."""

    def __init__(self, engine: Engine, session: Session, workers: int) -> None:
        self.engine, self.session, self.workers = engine, session, workers
        self.pool = ThreadPoolExecutor(workers, "brainad-decode") if workers else None

    def submit(self, items: list[Item]) -> Callable[[], Batch]:
        """Start decoding ``items``; the returned call waits for (or computes) the batch."""
        decode = score_batch.decode_chunk
        if self.pool is None:
            return lambda: decode(self.engine, self.session, items)
        size = -(-len(items) // self.workers)
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        futures = [self.pool.submit(decode, self.engine, self.session, c) for c in chunks]
        return lambda: score_batch.merge([f.result() for f in futures])

    def close(self) -> None:
        """Stop the threads (pending chunks are cancelled)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class _HeapTrimmer:
    """Hands freed heap back to the OS after every batch (glibc ``malloc_trim``; a no-op where
    there is no glibc). Without it the model's large temporary buffers fragment glibc's heap
    and the resident memory of a long run creeps up (~10 MB per 128 files with the demo VQGAN),
    so memory would grow with the number of files."""

    def __init__(self) -> None:
        try:
            self._trim: Callable[[int], int] | None = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self._trim = None

    def __call__(self) -> None:
        if self._trim is not None:
            self._trim(0)


def _batches(items: Sequence[Item], size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def score_all(engine: Engine, items: Sequence[Item], session: Session) -> Counter[str]:
    """Score ``items`` batch by batch, writing rows as they complete; returns the outcomes."""
    outcomes: Counter[str] = Counter()
    decoder, trim = _Decoder(engine, session, session.options.workers), _HeapTrimmer()
    with score_report.progress_bar() as progress:
        task = progress.add_task("scoring", total=len(items))
        pending: Callable[[], Batch] | None = None
        try:
            for batch in _batches(items, session.options.batch_size):
                upcoming = decoder.submit(batch)
                if pending is not None:
                    outcomes += score_batch.finish(engine, session, pending(), progress, task)
                    trim()
                pending = upcoming
            if pending is not None:
                outcomes += score_batch.finish(engine, session, pending(), progress, task)
        finally:  # the decoding threads stop before the bar does
            decoder.close()
    return outcomes


# ------------------------------------------------------------------------------- the command
def exit_status(outcomes: Counter[str]) -> int:
    """0 all scored, 1 some quarantined, 2 nothing scored (see the module docstring)."""
    if not outcomes["scored"]:
        return EXIT_NOTHING
    return EXIT_QUARANTINED if outcomes["quarantined"] else EXIT_OK


def _check_and_collect(
    args: argparse.Namespace,
) -> tuple[Engine, Collected, str, sharding.Plan | None]:
    """Every check that needs no output written, then the walk of the inputs (``--shard``:
    this shard's part of it)."""
    check_inputs(args.inputs)
    check_out(args.out, args.inputs, args.resume, args.overwrite)
    sharding.check_resume(args.out, args.shard, args.resume)
    device = parse_device(args.device)
    model_sha256 = check_model_file(args.model)
    engine = open_engine(args.model, device)
    with console().status("looking for image files in the inputs"):
        found = collect(args.inputs, exclude=[args.out])
    score_report.report_collection(found)
    if not found.count:
        raise ScoreError(
            f"no image files (.jpg, .jpeg, .png, .bmp, .tif, .tiff), NIfTI volumes (.nii, .nii.gz)"
            f" or DICOM files in the inputs {[shown(i) for i in args.inputs]}; check the paths"
        )
    plan = None
    if args.shard is not None:
        grouped = engine.bundle.volume is not None
        plan = sharding.plan(found, args.shard, grouped, args.workers)
        found = plan.found
    log.info(
        "scoring %d image files, %d NIfTI files and %d DICOM files with %s on %s → %s",
        len(found.items),
        len(found.volumes),
        len(found.dicom),
        args.model,
        device,
        args.out,
    )
    return engine, found, model_sha256, plan


def cmd_score(args: argparse.Namespace) -> int:
    """Run ``brainad score`` (parsed ``args``); returns the exit status."""
    engine, found, model_sha256, plan = _check_and_collect(args)
    maps = MapsMode("none") if args.no_heatmaps else args.maps
    extra = (sharding.POSITION,) if plan is not None else ()
    options = Options(maps, args.workers, args.batch_size, extra)
    session = score_batch.open_session(args.out, engine, args.model, model_sha256, options, args)
    if plan is not None:
        sharding.attach(session, plan)
    quiet = score_report.LibraryQuarantines()
    log.addFilter(quiet)
    try:
        outcomes = score_all(engine, found.items, session) if found.items else Counter()
        outcomes += score_volumes(engine, session, found.volumes, found.dicom)
    except KeyboardInterrupt:
        score_batch.close_session(session, Counter(), interrupted=True)
        log.error(
            "interrupted: the rows written so far are kept in %s; run the same command with "
            "--resume to continue",
            args.out / CSV_NAME,
        )
        return EXIT_INTERRUPTED
    except Exception:  # record the incomplete run, then report the error (cli.main)
        with contextlib.suppress(OSError):
            score_batch.close_session(session, Counter(), interrupted=True)
        raise
    finally:
        log.removeFilter(quiet)
    status = exit_status(outcomes) if found.count else EXIT_OK  # a shard given no files
    score_batch.write_top_maps(engine, session)
    score_batch.close_session(session, outcomes, interrupted=False, status=status)
    score_report.log_summary(outcomes, args.out, status)
    return status


# -------------------------------------------------------------------------------- the parser
def default_workers() -> int:
    """Usable cores minus one (the model's PyTorch threads need one), between 1 and 4: on 2 cores
    one decoding thread beside the model was fastest (benchmarks/README.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cores or 2) - 1))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _workers(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be 0 to {MAX_WORKERS}, got {value}")
    return value


def _maps(text: str) -> Any:
    try:
        return parse_maps(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_score_parser(sub: Any, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Register ``brainad score`` on the ``sub`` parsers."""
    score = sub.add_parser(
        "score",
        parents=list(parents),
        help="score scans (files or folders) with a trained study model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    score.add_argument(
        "--model",
        required=True,
        type=Path,
        help="scorer bundle written by evaluate, e.g. models/demo/scorers/vqgan.pt",
    )
    score.add_argument(
        "--out", type=Path, default=Path("brainad-scores"), help="results folder (new or empty)"
    )
    score.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:N")
    score.add_argument(
        "--maps",
        type=_maps,
        default=parse_maps("top-50"),
        help="heat maps: none, all, or top-K (the K most anomalous; default top-50)",
    )
    score.add_argument("--no-heatmaps", action="store_true", help="same as --maps none")
    again = score.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue --out's results (skips files by sha256)"
    )
    again.add_argument(
        "--overwrite", action="store_true", help="replace --out's previous brainad results"
    )
    score.add_argument(
        "--workers",
        type=_workers,
        default=default_workers(),
        help="threads reading and decoding files while the model scores the previous batch "
        "(0: none, decode then score; default: one per core beside the model's, 1 to 4)",
    )
    score.add_argument(
        "--batch-size", type=_positive, default=128, help="files per batch (default 128)"
    )
    score.add_argument(
        "--shard",
        type=sharding.parse_shard,
        metavar="I/N",
        help="score only shard I of N (0-based: 0 <= I < N); each file goes to shard "
        "sha256 %% N; combine the shards' --out folders with `brainad merge`",
    )
    score.set_defaults(func=cmd_score)
