"""The GPU check's micro study: every registered model trained a few steps by the library's own
loop (:func:`brainad.training.loop.fit`, validation and sample grids included) under bf16 and fp16
autocast (fp16 with the loop's GradScaler), each scored by the one detector engine; and the
GradScaler skipping a step whose gradients are not finite. Tiny phantom data (32 px) of the
``demo`` study's configs; no DVC, no DVCLive.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.measure import _sync, render_phantoms
from brainad.config import FitConfig, StudyConfig, load_study
from brainad.data.arrays import SplitArrays
from brainad.models import registry
from brainad.models.checkpoint import load_checkpoint
from brainad.scoring.bundle import make_detector
from brainad.scoring.detector import calibrate, score_images
from brainad.training.batches import to_tensor
from brainad.training.loop import FitPaths, fit, step_runner
from brainad.training.runner import (
    _phase_fit,
    make_prior_validator,
    make_segmenter_validator,
    make_validator,
    sample_inputs,
)

log = logging.getLogger("brainad")

REPO = Path(__file__).resolve().parents[1]
STUDY = "demo"
IMAGE_SIZE = 32
BATCH = 4
STEPS = 6  # training steps per phase (one epoch of BATCH x STEPS healthy slices)
INITIAL_SCALE = 2.0**16  # torch.amp.GradScaler's default, which the loop keeps


def micro_config(params: Path = REPO / "params.yaml") -> StudyConfig:
    """The ``demo`` study's configs at :data:`IMAGE_SIZE` px (every model builds at that size)."""
    config = load_study(STUDY, params)
    preprocess = dataclasses.replace(config.preprocess, image_size=IMAGE_SIZE)
    return dataclasses.replace(config, preprocess=preprocess)


def phantom_split(n: int, seed: int) -> SplitArrays:
    """``n`` phantom slices at :data:`IMAGE_SIZE` px as a split (every fourth has a tumour)."""
    data = render_phantoms(n, IMAGE_SIZE, seed)
    labels = (np.arange(n) % 4 == 0).astype(np.int8)
    names = np.array([f"phantom_{seed}_{i:03d}" for i in range(n)])
    return SplitArrays(
        images=data.images.astype(np.float16),
        brain_masks=data.masks,
        lesion_masks=np.zeros_like(data.masks),
        has_lesion_mask=np.zeros(n, bool),
        labels=labels,
        paths=names,
        sha256=names,
        class_names=np.where(labels == 1, "glioma", "notumor"),
        folders=np.full(n, "Training"),
        fallback=np.zeros(n, bool),
        coverage=np.ones(n, np.float32),
    )


def micro_splits() -> dict[str, SplitArrays]:
    """train (``BATCH x STEPS`` healthy slices among them), val and test splits."""
    healthy_needed = BATCH * STEPS
    return {
        "train": phantom_split(healthy_needed * 4 // 3, seed=0),
        "val": phantom_split(16, seed=1),
        "test": phantom_split(16, seed=2),
    }


def finite(value: Any) -> bool:
    """Whether a number (or every float of a tensor) is finite."""
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    return isinstance(value, (int, float)) and math.isfinite(value)


def _validator(name: str, val: SplitArrays, device: torch.device):
    """The validation callback the train stage uses for this model (as in ``run_train``)."""
    found = registry.entry(name)
    if found.base is not None:
        return make_prior_validator(val, device)
    if found.detector == "segmentation":
        return make_segmenter_validator(val, device)
    return make_validator(val, device)


def fit_settings(
    config: StudyConfig, name: str, phase: str, precision: str, epochs: int = 1
) -> FitConfig:
    """The study's fit settings of one phase (as the train stage), shortened: ``epochs``, batch
    :data:`BATCH`, ``precision`` (not forced to fp32 by ``deterministic``), a checkpoint and a
    sample grid every epoch."""
    return dataclasses.replace(
        _phase_fit(config, name, phase),
        epochs=epochs,
        batch_size=BATCH,
        precision=precision,
        deterministic=False,
        checkpoint_every=1,
        sample_every=1,
        extra_sample_epochs=(),
    )


def _devices_of(module: nn.Module) -> list[str]:
    return sorted(
        {p.device.type for p in module.parameters()} | {b.device.type for b in module.buffers()}
    )


def train_model(
    name: str, precision: str, config: StudyConfig, splits: dict, device: torch.device, work: Path
) -> tuple[dict, nn.Module, Path]:
    """Train ``name`` one epoch per phase with :func:`fit`; returns its row, module, final file."""
    found = registry.entry(name)
    torch.manual_seed(0)
    module = registry.new_model(name, config, IMAGE_SIZE)
    train = to_tensor(splits["train"], torch.device("cpu"), healthy_only=True)
    started = time.perf_counter()
    for phase in found.phases:
        last = phase == found.phases[-1]
        if hasattr(module, "set_phase"):
            module.set_phase(phase)
        root = work / name / precision / phase
        paths = FitPaths(root / "ckpt", root / "final.pt", root / "best.pt", root / "samples", None)
        result = fit(
            module,
            train,
            fit_settings(config, name, phase, precision),
            paths,
            validate=_validator(name, splits["val"], device) if last else None,
            sample_batch=sample_inputs(splits["val"], 2) if last else None,
            phase=phase,
            device=device,
        )
    _sync(device)
    extra = load_checkpoint(paths.final)["extra"]
    scale = extra["grad_scaler"].get("scale")
    history = result.history[-1]
    row = {
        "model": name,
        "precision": precision,
        "phases": list(found.phases),
        "steps_per_phase": len(train) // BATCH,
        "seconds": time.perf_counter() - started,
        "trained_precision": extra["precision"],
        "grad_scaler_scale": scale,
        # each skipped step halves the scale (it grows only after 2,000 clean steps)
        "steps_skipped_by_scaler": None
        if scale is None
        else round(math.log2(INITIAL_SCALE / scale)),
        "devices": _devices_of(module),
        "samples_written": len(list(paths.samples_dir.glob("*.png"))),
        "last_epoch": {k: float(v) for k, v in history.items()},
    }
    return row, module, paths.final


def training_failures(row: dict, device: torch.device) -> list[str]:
    """What is wrong with one trained row (empty: nothing)."""
    where = f"{row['model']}/{row['precision']}"
    wrong = []
    if row["trained_precision"] != row["precision"]:
        wrong.append(f"{where}: trained in {row['trained_precision']}, not {row['precision']}")
    if (row["grad_scaler_scale"] is not None) != (row["precision"] == "fp16"):
        wrong.append(f"{where}: GradScaler state {row['grad_scaler_scale']} (wanted only in fp16)")
    if row["devices"] != [device.type]:
        wrong.append(f"{where}: parameters/buffers on {row['devices']}, not only {device.type}")
    losses = {k: v for k, v in row["last_epoch"].items() if k.endswith("loss")}
    if not losses or not all(finite(v) for v in losses.values()):
        wrong.append(f"{where}: losses {losses}")
    if row["samples_written"] < 1:
        wrong.append(f"{where}: no sample grid written")
    return wrong


def score_model(
    name: str, module: nn.Module, config: StudyConfig, splits: dict, device: torch.device
) -> dict:
    """Fit, calibrate (validation) and score the test split in fp32, as the evaluate stage does."""
    started = time.perf_counter()
    detector = make_detector(name, module, config.score, config.perceptual, device)
    train = splits["train"]
    healthy = train.labels == 0
    detector.fit(train.images[healthy].astype(np.float32), train.brain_masks[healthy])
    val, test = splits["val"], splits["test"]
    calibration = calibrate(detector, val.images, val.brain_masks, val.labels, config.threshold)
    scored = score_images(detector, calibration, test.images, test.brain_masks, keep_maps=True)
    _sync(device)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "images": len(test),
        "threshold": float(calibration.threshold),
        "scores_finite": bool(np.isfinite(scored.score).all()),
        "maps_finite": scored.maps is None or bool(np.isfinite(scored.maps).all()),
        "flagged": int(scored.prediction.sum()),
    }


def precisions_here(requested: tuple[str, ...], device: torch.device) -> tuple[list, dict]:
    """The requested precisions this device runs, and the skipped ones with the reason."""
    skipped = {}
    if device.type == "cuda" and "bf16" in requested and not torch.cuda.is_bf16_supported():
        skipped["bf16"] = f"{torch.cuda.get_device_name(device)} has no bf16 support"
    return [p for p in requested if p not in skipped], skipped


def run_micro(
    device: torch.device, models: tuple[str, ...], precisions: tuple[str, ...], work: Path
) -> dict:
    """Every model x precision: train (:func:`train_model`) and score (:func:`score_model`).
    A failing model does not stop the others; ``failures`` names each."""
    config, splits = micro_config(), micro_splits()
    usable, skipped = precisions_here(precisions, device)
    rows, failures, trained = [], [], {}
    for name in models:
        for precision in usable:
            try:
                row, module, final = train_model(name, precision, config, splits, device, work)
                row["score"] = score_model(name, module, config, splits, device)
                wrong = training_failures(row, device)
                if not (row["score"]["scores_finite"] and row["score"]["maps_finite"]):
                    wrong.append(f"{name}/{precision}: non-finite scores or maps")
            except Exception as exc:  # one broken model must not hide the others
                log.exception("micro study: %s in %s failed", name, precision)
                row, wrong = (
                    {"model": name, "precision": precision},
                    [f"{name}/{precision}: {type(exc).__name__}: {str(exc)[:300]}"],
                )
            row["status"] = "failed" if wrong else "ok"
            rows.append(row)
            failures += wrong
            if not wrong:
                trained.setdefault(name, str(final))
            log.info("micro study: %s in %s %s", name, precision, row["status"])
    return {
        "image_size": IMAGE_SIZE,
        "batch_size": BATCH,
        "skipped_precisions": skipped,
        "rows": rows,
        "trained": trained,
        "failures": failures,
    }


# ------------------------------------------------------------------------ GradScaler skipping
def _parameters(nets: list[nn.Module]) -> list[list[torch.Tensor]]:
    return [[p.detach().clone() for p in net.parameters()] for net in nets]


def _moved(before: list[list[torch.Tensor]], nets: list[nn.Module]) -> list[bool]:
    """Per network: did any parameter change since ``before``?"""
    return [
        any(not torch.equal(a, p.detach()) for a, p in zip(old, net.parameters()))
        for old, net in zip(before, nets)
    ]


def _clean_steps(step, nets: list[nn.Module], device: torch.device, limit: int) -> int | None:
    """Clean steps until one updates every network (in fp16 the GradScaler skips the first ones
    while its initial scale of 2^16 makes scaled gradients overflow); how many, None if never."""
    for count in range(1, limit + 1):
        before = _parameters(nets)
        step()
        _sync(device)
        if all(_moved(before, nets)):
            return count
    return None


def poisoned_step(name: str, device: torch.device, precision: str, limit: int = 12) -> dict:
    """The library's training step (:func:`step_runner`, as :func:`fit` runs it) on model
    ``name``: clean steps until one updates every network, then one step whose generator
    gradient is made ``inf``, then a clean one. With fp16 the GradScaler must skip the
    generator's Adam step while a discriminator's finite step still applies (``None``: the model
    has none), and the next clean step must apply again."""
    config = micro_config()
    settings = dataclasses.replace(
        registry.fit_config(name, config), precision=precision, deterministic=False
    )
    torch.manual_seed(0)
    module = registry.new_model(name, config, IMAGE_SIZE)
    batch = torch.from_numpy(render_phantoms(BATCH, IMAGE_SIZE, seed=7).images)
    step = step_runner(module, batch, settings, device)
    nets = [module.networks()["generator"]]
    nets += [module.networks()["discriminator"]] if "discriminator" in module.networks() else []
    result: dict[str, Any] = {"precision": precision}
    result["clean_steps_to_update"] = _clean_steps(step, nets, device, limit)
    if result["clean_steps_to_update"] is None:
        return {**result, "error": f"no clean step in {limit} updated every network"}
    armed = [True]
    target = next(p for p in nets[0].parameters() if p.requires_grad)
    handle = target.register_hook(lambda g: torch.full_like(g, math.inf) if armed[0] else g)
    try:
        before = _parameters(nets)
        logs = step()
        _sync(device)
        moved = _moved(before, nets)
        armed[0] = False
        result.update(
            loss_finite=finite(logs["g_loss"]),
            generator_step_skipped=not moved[0],
            discriminator_step_applied=moved[1] if len(nets) > 1 else None,
            weights_finite=all(finite(p) for p in module.parameters()),
            next_step_applied=_clean_steps(step, nets[:1], device, 1) == 1,
            weights_finite_after=all(finite(p) for p in module.parameters()),
        )
    finally:
        handle.remove()
    return result


def run_scaler(name: str, device: torch.device) -> dict:
    """:func:`poisoned_step` in fp16 (must skip) and, for the record, in bf16, where the loop has
    no GradScaler and so no skipping (a non-finite gradient reaches the weights; the loop stops
    at the end of the epoch with ``TrainingDiverged``)."""
    fp16 = poisoned_step(name, device, "fp16")
    expected = (
        "generator_step_skipped",
        "discriminator_step_applied",
        "weights_finite",
        "next_step_applied",
        "weights_finite_after",
    )
    failures = [f"fp16: {fp16['error']}"] if "error" in fp16 else []
    failures += [
        f"fp16 with GradScaler: {key} is false" for key in expected if fp16.get(key) is False
    ]
    usable, _ = precisions_here(("bf16",), device)
    bf16 = poisoned_step(name, device, "bf16") if usable else None
    return {"model": name, "fp16": fp16, "bf16_no_scaler": bf16, "failures": failures}
