"""The GPU check's benchmark part: ``python -m benchmarks.run --quick --skip-dvc`` in a
subprocess (it measures CUDA rows wherever CUDA is present and scores on
:func:`~brainad.utils.select_device`), then its rows on the checked device: present for every
model and precision, finite, and every scoring path on that device."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from benchmarks.gpu_setup import run_logged
from benchmarks.workloads import training_cases
from brainad.models.registry import MODEL_NAMES

TRAINING_KEYS = (
    "model",
    "precision",
    "batch_size",
    "images_per_s",
    "step_seconds_median",
    "ratio_to_matmul",
)
SCORING_KEYS = ("device", "precision", "images_per_s", "cuda_peak_allocated_mb")


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and 0 < value < math.inf


def benchmark_summary(doc: dict[str, Any], device_type: str) -> dict[str, Any]:
    """The ``benchmarks.run`` rows on ``device_type`` and what is missing or wrong among them:
    every model x precision of :func:`~benchmarks.workloads.training_cases` on that device with a
    finite speed, and every scoring path run on that device."""
    cpu_bf16 = bool(doc["machine"]["cpu_bf16_supported"])
    precisions = {p for d, p in training_cases(cpu_bf16) if d.type == device_type}
    rows = [e for e in doc["training"] if e["device"] == device_type]
    missing = {(m, p) for m in MODEL_NAMES for p in precisions}
    missing -= {(e["model"], e["precision"]) for e in rows}
    failures = [f"no training rows on {device_type}"] if not rows else []
    failures += [f"training row missing: {m} in {p}" for m, p in sorted(missing)]
    failures += [
        f"training {e['model']} {e['precision']}: images/s {e['images_per_s']}"
        for e in rows
        if not _positive(e["images_per_s"])
    ]
    scoring = doc["scoring"]
    failures += [
        f"scoring.{name} ran on {entry.get('device')}, not {device_type}"
        for name, entry in scoring.items()
        if entry.get("device") != device_type
    ]
    failures += [
        f"scoring.{name}: images/s {entry.get('images_per_s')}"
        for name, entry in scoring.items()
        if not _positive(entry.get("images_per_s"))
    ]
    matmul = [m for m in doc["matmul"] if m["device"] == device_type]
    return {
        "training": [{k: e[k] for k in TRAINING_KEYS} for e in rows],
        "matmul_tflops": {m["precision"]: m["flops_per_s"] / 1e12 for m in matmul},
        "scoring": {
            name: {k: entry.get(k) for k in SCORING_KEYS} for name, entry in scoring.items()
        },
        "failures": failures,
    }


def run_benchmark(out: Path, device_type: str, timeout: float = 270) -> dict[str, Any]:
    """``python -m benchmarks.run --quick --skip-dvc --out out/benchmarks.json`` (log
    ``out/benchmark.log``, tables ``out/benchmarks.md``) and :func:`benchmark_summary` of it."""
    target = out / "benchmarks.json"
    command = [sys.executable, "-m", "benchmarks.run", "--quick", "--skip-dvc"]
    command += ["--out", str(target)]
    result = run_logged(command, out / "benchmark.log", timeout, stdout=out / "benchmarks.md")
    if result["exit_code"] != 0:
        return result
    return {**result, **benchmark_summary(json.loads(target.read_text()), device_type)}
