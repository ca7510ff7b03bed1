"""The GPU check's ``brainad score`` part: the command itself, in a subprocess, on phantom JPEG
files with ``--device`` set, scoring with a scorer bundle around a model the micro study trained
(:mod:`benchmarks.gpu_micro`), written as the evaluate stage writes one."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import torch

from benchmarks.gpu_micro import IMAGE_SIZE, micro_config, micro_splits
from benchmarks.gpu_setup import run_logged
from benchmarks.workloads import write_jpegs
from brainad.config import StudyConfig
from brainad.models import registry
from brainad.models.checkpoint import load_model
from brainad.scoring.bundle import ScorerBundle, make_detector, save_scorer
from brainad.scoring.detector import calibrate

SCAN_FILES = 8  # JPEG files ``brainad score`` reads
SCAN_SIZE = 64  # their side before preprocessing


def write_bundle(
    trained: dict[str, str], config: StudyConfig, device: torch.device, path: Path
) -> dict:
    """A scorer bundle (as the evaluate stage writes it, calibrated on the validation phantoms)
    around the study's default model if the micro study trained it, else any model it trained,
    else an untrained VQGAN+D (as ``tests/helpers/scorer_bundle.py``)."""
    default = config.evaluate.default_model
    name = default if default in trained else next(iter(trained), "vqgan")
    if name in trained:
        module, payload = load_model(Path(trained[name]), device=device)
        source, epoch = trained[name], int(payload.get("epoch", 0))
    else:
        torch.manual_seed(0)
        module, source, epoch = registry.new_model(name, config, IMAGE_SIZE).to(device), None, 0
    detector = make_detector(name, module, config.score, config.perceptual, device)
    val = micro_splits()["val"]
    calibration = calibrate(detector, val.images, val.brain_masks, val.labels, config.threshold)
    meta = {
        "study": config.name,
        "model": name,
        "epoch": epoch,
        "note": "GPU check",
        "source_model": source,
    }
    bundle = ScorerBundle(
        module, calibration, config.score, config.preprocess, config.perceptual, meta, config.volume
    )
    save_scorer(path, bundle)
    return {"model": name, "source_model": source or "untrained"}


def run_score_cli(
    trained: dict[str, str], device: torch.device, work: Path, out: Path, timeout: float = 180
) -> dict:
    """``python -m brainad.cli score`` in a subprocess on :data:`SCAN_FILES` phantom JPEGs with
    ``--device`` set and heat maps for all; its log is ``out/score.log``."""
    config = micro_config()
    bundle = work / "scorer.pt"
    result = write_bundle(trained, config, device, bundle)
    scans = work / "scans"
    write_jpegs(scans, SCAN_FILES, SCAN_SIZE, seed=5)
    results = out / "score"
    command = [
        sys.executable,
        "-m",
        "brainad.cli",
        "score",
        "--model",
        str(bundle),
        str(scans),
        "--out",
        str(results),
        "--overwrite",
        "--device",
        str(device),
        "--maps",
        "all",
    ]
    result.update(run_logged(command, out / "score.log", timeout))
    if result["exit_code"] != 0:
        return result
    with open(results / "scores.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    scored = [r for r in rows if r["status"] == "scored"]
    heatmaps = list((results / "heatmaps").rglob("*.png"))
    result.update(files=SCAN_FILES, scored=len(scored), heatmaps=len(heatmaps))
    failures = []
    if len(scored) != SCAN_FILES:
        failures.append(f"brainad score scored {len(scored)} of {SCAN_FILES} files")
    if not all(math.isfinite(float(r["score"])) for r in scored):
        failures.append("brainad score wrote non-finite scores")
    if not heatmaps:
        failures.append("brainad score wrote no heat map")
    return {**result, "failures": failures}
