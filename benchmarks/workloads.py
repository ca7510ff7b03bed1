"""The benchmark's workloads: the library's own training step (per model, device and precision,
with FLOP/s against a same-run matmul) and its scoring paths (the evaluate path and
``brainad score``)."""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.measure import (
    PeakMemory,
    Phantoms,
    Sizes,
    _sync,
    render_phantoms,
    time_calls,
)
from brainad.config import FitConfig, StudyConfig
from brainad.models.registry import MODEL_NAMES, fit_config, new_model
from brainad.scoring.bundle import ScorerBundle, make_detector, save_scorer
from brainad.scoring.calibration import Calibration, identity_standardiser
from brainad.scoring.detector import score_images
from brainad.training.loop import choose_precision, step_runner
from brainad.utils import write_bytes

log = logging.getLogger("brainad")

MODELS = MODEL_NAMES
MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGET_IMAGE_SIZE = 128  # the issue states the scoring target at 128 x 128


# ---------------------------------------------------------------------------------- training
def training_cases(cpu_bf16: bool) -> list[tuple[torch.device, str]]:
    """(device, precision) pairs: CPU fp32 (+ bf16 if fast), CUDA fp32/fp16 (+ bf16) if present."""
    cpu = torch.device("cpu")
    cases = [(cpu, "fp32")] + ([(cpu, "bf16")] if cpu_bf16 else [])
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        cases += [(cuda, "fp32"), (cuda, "fp16")]
        if torch.cuda.is_bf16_supported():
            cases.append((cuda, "bf16"))
    return cases


def matmul_flops(device: torch.device, precision: str, n: int, reps: int) -> dict[str, Any]:
    """FLOP/s (``2·n³`` per product) of an ``n``x``n`` matmul in ``precision``; median of reps."""
    generator = torch.Generator().manual_seed(0)
    dtype = MATMUL_DTYPES[precision]
    a = torch.randn(n, n, generator=generator).to(device, dtype)
    b = torch.randn(n, n, generator=generator).to(device, dtype)
    seconds = time_calls(lambda: torch.mm(a, b), device, 1, reps)
    median = statistics.median(seconds)
    return {
        "device": device.type,
        "precision": precision,
        "n": n,
        "reps": reps,
        "seconds_median": median,
        "flops_per_s": 2.0 * n**3 / median,
    }


def build_model(name: str, config: StudyConfig, image_size: int) -> nn.Module:
    """A freshly initialised (seeded) model of the study, built by the registry's builder
    (:func:`brainad.models.registry.new_model`); the token prior sits on an untrained VQGAN+D
    whose threshold is unset, so no token is resampled."""
    torch.manual_seed(0)
    return new_model(name, config, image_size)


def _step(name: str, config: StudyConfig, fit: FitConfig, real: torch.Tensor, device, precision):
    """The library's own training step (:func:`brainad.training.loop.step_runner`) at ``precision``."""
    fit = dataclasses.replace(fit, precision=precision, deterministic=False)
    return step_runner(build_model(name, config, real.shape[-1]), real, fit, device)


def count_flops(step: Callable[[], None]) -> int:
    """Nominal FLOPs of one call of ``step`` (forward and backward of every network)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def bench_training(
    name: str,
    config: StudyConfig,
    sizes: Sizes,
    image_size: int,
    device: torch.device,
    precision: str,
) -> dict[str, Any]:
    """Timed training steps of model ``name`` on phantom slices, plus its FLOPs per step."""
    fit = fit_config(name, config)
    batch = sizes.batch_size or fit.batch_size
    real = torch.from_numpy(render_phantoms(batch, image_size, seed=1).images)
    step = _step(name, config, fit, real, device, precision)
    log.info("training step: %s on %s in %s, batch %d", name, device, precision, batch)
    flops = count_flops(step)  # also the first warm-up step
    seconds = time_calls(step, device, sizes.warmup - 1, sizes.steps)
    median = statistics.median(seconds)
    return {
        "model": name,
        "phase": "gan" if name == "dcgan" else "main",  # the prior: transformer only, VQGAN frozen
        "device": device.type,
        "precision": precision,
        "image_size": image_size,
        "batch_size": batch,
        "warmup_steps": sizes.warmup,
        "timed_steps": sizes.steps,
        "step_seconds": seconds,
        "step_seconds_median": median,
        "images_per_s": batch / median,
        "flops_per_step": flops,
        "achieved_flops_per_s": flops / median,
    }


def bench_all_training(
    config: StudyConfig, sizes: Sizes, image_size: int, cpu_bf16: bool
) -> tuple[list[dict], list[dict]]:
    """Every (device, precision) case of both models; each ratio uses the same-run matmul."""
    matmuls, training = [], []
    for device, precision in training_cases(cpu_bf16):
        matmul = matmul_flops(device, precision, sizes.matmul_n, sizes.matmul_reps)
        matmuls.append(matmul)
        for name in MODELS:
            entry = bench_training(name, config, sizes, image_size, device, precision)
            entry["matmul_flops_per_s"] = matmul["flops_per_s"]
            entry["ratio_to_matmul"] = entry["achieved_flops_per_s"] / matmul["flops_per_s"]
            training.append(entry)
    return matmuls, training


# ----------------------------------------------------------------------------------- scoring
def placeholder_calibration(components: tuple[str, ...]) -> Calibration:
    """Mean 0, std 1 for every component (an untrained model has no calibration)."""
    means, stds = identity_standardiser(components)
    return Calibration(means, stds, 0.0, "fixed", {})


def bench_evaluate_path(
    config: StudyConfig,
    data: Phantoms,
    image_size: int,
    device: torch.device,
    model_name: str,
    precision: str = "fp32",
) -> tuple[dict[str, Any], np.ndarray]:
    """``make_detector`` + ``score_images`` (maps kept, as for the test split) on in-memory arrays;
    returns the entry and the scores. The token prior is untrained: every block pass runs, no
    token is resampled (same cost)."""
    model = build_model(model_name, config, image_size)

    def evaluate(n: int) -> np.ndarray:
        detector = make_detector(
            model_name, model, config.score, config.perceptual, device, precision
        )
        calibration = placeholder_calibration(detector.components)
        return score_images(
            detector, calibration, data.images[:n], data.masks[:n], keep_maps=True
        ).score

    evaluate(min(config.score.batch_size, len(data.images)))  # warm-up
    log.info(
        "scoring: evaluate path, %s in %s, %d images on %s",
        model_name,
        precision,
        len(data.images),
        device,
    )
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        scores = evaluate(len(data.images))
        _sync(device)
        seconds = time.perf_counter() - start
    entry = {
        "model": model_name,
        "images": len(data.images),
        "image_size": image_size,
        "device": device.type,
        "precision": precision,
        "seconds": seconds,
        "images_per_s": len(data.images) / seconds,
        **memory.result(),
    }
    return entry, scores


def agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """How far reduced-precision scores are from fp32 ones: relative errors and rank agreement."""
    relative = np.abs(other - reference) / np.maximum(np.abs(reference), 1e-12)
    ranks = [np.argsort(np.argsort(v)).astype(np.float64) for v in (reference, other)]
    spearman = float(np.corrcoef(*ranks)[0, 1]) if len(reference) > 1 else float("nan")
    return {
        "max_relative_error": float(relative.max()),
        "median_relative_error": float(np.median(relative)),
        "spearman": spearman,
    }


def write_jpegs(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    """``n`` phantom slices of ``size`` px written as grey JPEG files (quality 90)."""
    import cv2

    paths = []
    for index, image in enumerate(render_phantoms(n, size, seed).raw):
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise OSError(f"OpenCV could not encode phantom slice {index} as JPEG")
        path = folder / f"scan_{index:05d}.jpg"
        write_bytes(path, encoded.tobytes())
        paths.append(path)
    return paths


def _cli_counts(csv_path: Path) -> Counter:
    """Rows per status in a ``scores.csv``, and skull-strip fallbacks among the scored."""
    import csv

    counts: Counter = Counter()
    with open(csv_path, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            counts[row["status"]] += 1
            counts["fallback"] += row["fallback"] == "True"
    return counts


def write_untrained_bundle(config: StudyConfig, image_size: int, path: Path) -> Path:
    """A scorer bundle around an untrained VQGAN (placeholder calibration): speed only."""

    preprocess = dataclasses.replace(config.preprocess, image_size=image_size)
    meta = {"study": config.name, "model": "vqgan", "epoch": 0, "note": "untrained: speed only"}
    model = build_model("vqgan", config, image_size)
    detector = make_detector("vqgan", model, config.score, config.perceptual, torch.device("cpu"))
    calibration = placeholder_calibration(detector.components)  # with the study's combination
    save_scorer(
        path, ScorerBundle(model, calibration, config.score, preprocess, config.perceptual, meta)
    )
    return path


def bench_cli_path(
    config: StudyConfig, sizes: Sizes, image_size: int, device: torch.device, workdir: Path
) -> dict[str, Any]:
    """``brainad score`` (in this process, ``--maps none``) on a folder of JPEGs with an untrained
    VQGAN bundle: checks, load bundle, hash, decode, skull strip, preprocess, score, write CSV."""
    from brainad.cli import main as cli_main

    bundle = write_untrained_bundle(config, image_size, workdir / "vqgan-untrained.pt")
    scans = workdir / "scans"
    files = write_jpegs(scans, sizes.cli_files, sizes.source_size, seed=2)
    args = ["score", "--model", str(bundle), str(scans), "--maps", "none", "--device", str(device)]
    cli_main([*args, "--out", str(workdir / "warm-up")])
    log.info("scoring: brainad score path, %d JPEG files on %s", len(files), device)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        cli_main([*args, "--out", str(workdir / "out")])
        _sync(device)
        seconds = time.perf_counter() - start
    counts = _cli_counts(workdir / "out" / "scores.csv")
    return {
        "files": len(files),
        "scored": counts["scored"],
        "quarantined": len(files) - counts["scored"],
        "fallback": counts["fallback"],
        "source_size": sizes.source_size,
        "image_size": image_size,
        "device": device.type,
        "precision": "fp32",
        "seconds": seconds,
        "images_per_s": counts["scored"] / seconds,
        **memory.result(),
    }


def bench_scoring(
    config: StudyConfig, sizes: Sizes, image_size: int, device: torch.device
) -> dict[str, Any]:
    """Both scoring paths on ``device``: the evaluate path for the thesis' VQGAN+D, its token
    prior and the study's default detector (``evaluate.default_model``, with the study's score
    settings, e.g. its mirror-asymmetry combination), and the CLI path."""
    data = render_phantoms(sizes.score_images, image_size, seed=3)
    out: dict[str, Any] = {}
    reduced = "bf16" if choose_precision("auto", device).name in ("bf16", "fp16") else None
    paths = [("vqgan", "evaluate"), ("vqgan_prior", "evaluate_prior")]
    if config.evaluate.default_model not in ("vqgan", "vqgan_prior"):
        paths.append((config.evaluate.default_model, "evaluate_default"))
    for model_name, key in paths:
        out[key], reference = bench_evaluate_path(config, data, image_size, device, model_name)
        if reduced:  # the same images in bf16 autocast, with the agreement of their scores
            entry, scores = bench_evaluate_path(
                config, data, image_size, device, model_name, reduced
            )
            out[f"{key}_{reduced}"] = {**entry, "agreement_with_fp32": agreement(reference, scores)}
    with tempfile.TemporaryDirectory(prefix="brainad-bench-") as tmp:
        out["cli"] = bench_cli_path(config, sizes, image_size, device, Path(tmp))
    return out
