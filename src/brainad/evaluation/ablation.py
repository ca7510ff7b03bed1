"""Score-side ablation on the VALIDATION split (never the test split): which model and which score
settings separate lesioned from clean scans.

For each trained model, every validation image and a lesioned copy of each healthy validation
scan (the same :func:`~brainad.evaluation.tracks.lesion_track` as the test track) go once
through the model's raw detector (:func:`~brainad.scoring.bundle.raw_detector`: unsmoothed,
with the model's diagnostic maps); each variant (map kind × smoothing × aggregation) is then
measured on three validation tracks:

- ``real``: ROC-AUC of anomalous vs healthy validation scans (confounded by the image source),
  and ``matched``: the same like with like (``evaluate.matched`` strata of the manifest);
- ``lesion``: ROC-AUC of lesioned copies vs their clean twins, and the fraction of pairs in which
  the copy scores higher;
- ``pixel``: pixel ROC-AUC of the anomaly map inside the brain mask of the lesioned copies.

Map kinds: ``residual`` (|input − reconstruction|; for the token prior the healed
reconstruction) for reconstruction models, ``segmentation`` (the anomaly probability inside the
brain) for the segmenter, and each model's ``diagnostic_maps``: for VQGAN+D the ``quantisation
distance`` (distance of each encoder output to its nearest code), for the token prior
``token_nll`` and ``restoration`` (|VQGAN+D reconstruction − healed|).

Each model's best variant (by the bake-off's merit, below) is also **combined with the mirror
asymmetry** (:mod:`brainad.scoring.combined`): both scores standardised on the healthy
validation scans and summed with the asymmetry weighted by each of :data:`ASYMMETRY_WEIGHTS`,
exactly as ``score.weight_asymmetry`` makes the evaluate stage and the CLI score
(:func:`~brainad.scoring.calibration.combine`). Such a row's map is still the model's.

The trivial baselines (:func:`~brainad.scoring.baselines.default_baselines`, fitted on the
healthy training scans) are measured on the same tracks, so the bar each model has to clear on
validation stands in the same table.

The **bake-off** (:func:`~brainad.evaluation.bakeoff.bake_off`) ranks the models: each model's best variant by the mean of
its validation lesion ROC-AUC and its real-track ROC-AUC like with like (``matched``; the whole
real track where the study has no matched stratum), beside the best baseline of each track. Its
winner is what ``evaluate.default_model`` should name. How sure the ranking is
(:func:`~brainad.evaluation.bakeoff.merit_uncertainty`) is reported beside it, never used by it: each contender's merit is
re-measured on bootstrap resamples of the validation scans, and the winner's lead over the
runner-up gets a percentile interval and the share of resamples in which it holds.

The ``ablate`` stage writes ``reports/<study>/ablation/validation.{json,md}``; the evaluate stage
puts the table into ``summary.md``, so every variant tried is reported beside the chosen one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from brainad import metrics as metrics_lib
from brainad.config import StudyConfig
from brainad.data.arrays import SplitArrays, load_arrays
from brainad.data.manifest import read_manifest
from brainad.evaluation.bakeoff import (
    Scored,
    bake_off,
    bake_off_lines,
    merit,
    merit_uncertainty,
    score_fields,
)
from brainad.evaluation.tracks import LesionTrack, Strata, lesion_track, strata_of
from brainad.models.checkpoint import load_model
from brainad.runtime import deterministic_kernels, study_deterministic
from brainad.scoring.baselines import MirrorAsymmetry, default_baselines
from brainad.scoring.bundle import raw_detector
from brainad.scoring.calibration import Calibration, combine, fit_standardiser
from brainad.scoring.detector import pixel_maps, score_raw
from brainad.scoring.gan import SELECTION_SCORE
from brainad.scoring.maps import aggregate, smooth
from brainad.utils import select_device, write_json, write_text

log = logging.getLogger("brainad")

SMOOTHING = (("none", 1), ("gaussian", 5), ("gaussian", 9), ("gaussian", 13), ("median", 5))
AGGREGATES = (("mean", 1.0), ("topk", 1.0), ("topk", 5.0), ("max", 1.0))
BATCH_SIZE = 32  # images per forward pass (the variants are computed on the whole split)
ASYMMETRY_WEIGHTS = (0.5, 1.0, 2.0)  # score.weight_asymmetry values tried with each model


class _Validation(NamedTuple):
    """The validation split, its lesion track and its strata (None without a manifest)."""

    val: SplitArrays
    track: LesionTrack
    strata: Strata | None


def _row(data: _Validation, s_val: np.ndarray, s_les: np.ndarray, **about) -> dict:
    """One variant's numbers from its validation scores and its lesioned copies' scores."""
    clean = s_val[data.track.clean_index]
    labels = np.r_[np.zeros(len(clean)), np.ones(len(s_les))]
    matched = None  # JSON has no NaN
    if data.strata is not None and len(np.unique(data.val.labels[data.strata.matched])) == 2:
        keep = data.strata.matched
        matched = metrics_lib.roc_auc(data.val.labels[keep], s_val[keep])
    return {
        **about,
        "real_auroc": metrics_lib.roc_auc(data.val.labels, s_val),
        "matched_auroc": matched,
        "lesion_auroc": metrics_lib.roc_auc(labels, np.r_[clean, s_les]),
        "pairs_higher": float(np.mean(s_les > clean)),
    }


def _variant_rows(
    name: str, epoch: int, maps_val: dict, maps_les: dict, data: _Validation
) -> list[Scored]:
    val, track = data.val, data.track
    brain_val = torch.from_numpy(val.brain_masks)
    brain_les = torch.from_numpy(track.brain_masks)
    rows = []
    for kind in maps_val:
        for smoothing, px in SMOOTHING:
            score = dataclasses.replace(SELECTION_SCORE, smoothing=smoothing, smoothing_px=px)
            sm_val = smooth(maps_val[kind], score) * brain_val
            sm_les = smooth(maps_les[kind], score) * brain_les
            pixel = metrics_lib.pixel_metrics(
                track.lesions.masks, sm_les.numpy(), track.brain_masks, seed=0
            )["pixel_auroc"]
            for method, k in AGGREGATES:
                s_val = aggregate(sm_val, brain_val, method, k).numpy()
                s_les = aggregate(sm_les, brain_les, method, k).numpy()
                variant = dataclasses.replace(score, aggregate=method, topk_percent=k)
                about = {
                    "model": name,
                    "kind": "model",
                    "epoch": epoch,
                    "map": kind,
                    "smoothing": f"{smoothing} {px}px" if px > 1 else smoothing,
                    "aggregate": method if method != "topk" else f"top {k:g}%",
                    "weight_asymmetry": 0.0,
                    "score": score_fields(variant),
                }
                row = {**_row(data, s_val, s_les, **about), "pixel_auroc": pixel}
                rows.append(Scored(row, s_val, s_les))
    return rows


def _asymmetry_scores(data: _Validation) -> Scored:
    """The mirror-asymmetry statistic of the validation scans and of the lesioned copies."""
    mirror = MirrorAsymmetry()
    s_val = score_raw(mirror, data.val.images, data.val.brain_masks).components["score"]
    s_les = score_raw(mirror, data.track.lesions.images, data.track.brain_masks)
    return Scored({}, s_val, s_les.components["score"])


def _best(variants: list[Scored]) -> Scored:
    """The variant of highest :func:`~brainad.evaluation.bakeoff.merit` (the first of equals, as :func:`bake_off`)."""
    return max(variants, key=lambda v: merit(v.row))


def _combined_rows(data: _Validation, variants: list[Scored], asymmetry: Scored) -> list[Scored]:
    """The model's best variant (:func:`~brainad.evaluation.bakeoff.merit`) plus the asymmetry at each weight of
    :data:`ASYMMETRY_WEIGHTS`, standardised and summed as the detector's calibration does."""
    best = _best(variants)
    healthy = data.val.labels == 0
    on_val = {"model": best.val, "asymmetry": asymmetry.val}
    on_lesioned = {"model": best.lesioned, "asymmetry": asymmetry.lesioned}
    means, stds = fit_standardiser({k: v[healthy] for k, v in on_val.items()})
    calibration = Calibration(means, stds, float("nan"), "none")
    rows = []
    for weight in ASYMMETRY_WEIGHTS:
        weights = {"model": 1.0, "asymmetry": weight}
        s_val = combine(on_val, calibration, weights)
        s_les = combine(on_lesioned, calibration, weights)
        about = {k: best.row[k] for k in ("model", "kind", "epoch", "smoothing", "aggregate")}
        about |= {"map": f"{best.row['map']} + asymmetry ×{weight:g}", "weight_asymmetry": weight}
        about["score"] = {**best.row["score"], "weight_asymmetry": weight}
        row = {**_row(data, s_val, s_les, **about), "pixel_auroc": best.row["pixel_auroc"]}
        rows.append(Scored(row, s_val, s_les))
    return rows


def _baseline_rows(config: StudyConfig, train: SplitArrays, data: _Validation) -> list[dict]:
    """Each trivial baseline, fitted on the healthy training scans, on the validation tracks."""
    healthy = train.labels == 0
    rows = []
    for baseline in default_baselines(config.evaluate):
        baseline.fit(train.images[healthy].astype(np.float32), train.brain_masks[healthy])
        s_val = score_raw(baseline, data.val.images, data.val.brain_masks)
        s_les = score_raw(baseline, data.track.lesions.images, data.track.brain_masks, True)
        about = {"model": baseline.name, "kind": "baseline", "epoch": 0, "map": "own"}
        about |= {"smoothing": "own", "aggregate": "own"}
        row = _row(data, s_val.components["score"], s_les.components["score"], **about)
        pixel = None
        if s_les.maps is not None:
            pixel = metrics_lib.pixel_metrics(
                data.track.lesions.masks, s_les.maps, data.track.brain_masks, seed=0
            )["pixel_auroc"]
        rows.append({**row, "pixel_auroc": pixel})
    return rows


def _uses_matched(data: _Validation) -> bool:
    """Whether the merit's real-track term is like with like (as :func:`_row` decides)."""
    if data.strata is None:
        return False
    return len(np.unique(data.val.labels[data.strata.matched])) == 2


def run_ablation(
    config: StudyConfig,
    arrays_dir: Path,
    models: dict[str, Path],
    out: Path,
    manifest: Path | None = None,
) -> dict:
    """Measure every variant of every model, and every baseline, on the validation tracks (like
    with like too, with the study's ``manifest``); write the JSON and the table."""
    device = select_device()
    val = load_arrays(arrays_dir / "val.npz")
    track = lesion_track(config.evaluate.lesions, val)
    strata = None
    if manifest is not None:
        strata = strata_of(val, read_manifest(manifest), config.evaluate.matched)
    data = _Validation(val, track, strata)
    rows = []
    contenders: dict[str, Scored] = {}  # each model's best variant, for the ranking's CIs
    with deterministic_kernels(study_deterministic(config)):  # pinned in deterministic mode
        asymmetry = _asymmetry_scores(data)
        for name, path in models.items():
            model, payload = load_model(path, device=device)
            detector = raw_detector(name, model, device, diagnostics=True, batch_size=BATCH_SIZE)
            started = time.perf_counter()
            maps_val = pixel_maps(detector, val.images, val.brain_masks)
            maps_les = pixel_maps(detector, track.lesions.images, track.brain_masks)
            log.info(
                "%s: mapped %d images in %.0f s",
                name,
                len(val.images) + len(track.clean_index),
                time.perf_counter() - started,
            )
            epoch = int(payload.get("epoch", 0))
            variants = _variant_rows(name, epoch, maps_val, maps_les, data)
            variants += _combined_rows(data, variants, asymmetry)
            rows += [v.row for v in variants]
            contenders[name] = _best(variants)
        rows += _baseline_rows(config, load_arrays(arrays_dir / "train.npz"), data)
    document = {
        "study": config.name,
        "split": "val",
        "n": {
            "healthy": int((val.labels == 0).sum()),
            "anomalous": int((val.labels == 1).sum()),
            "lesioned": int(len(track.clean_index)),
        },
        "matched": None if strata is None else int(strata.matched.sum()),
        "models": {k: str(v) for k, v in models.items()},
        "bake_off": bake_off(rows),
        "rows": rows,
    }
    in_stratum = data.strata.matched if _uses_matched(data) else np.ones(len(val.labels), bool)
    uncertainty = merit_uncertainty(val.labels, track.clean_index, in_stratum, contenders)
    if uncertainty is not None:
        if uncertainty["winner"] != document["bake_off"]["winner"]:  # one ranking rule, twice
            raise RuntimeError("merit_uncertainty and bake_off disagree on the winner")
        document["bake_off"]["uncertainty"] = uncertainty
    write_json(out / "validation.json", document)
    write_text(out / "validation.md", markdown(document))
    return document


def _cell(value: float, fmt: str = ".3f") -> str:
    return "–" if value is None or not np.isfinite(value) else format(value, fmt)


def markdown(document: dict) -> str:
    n = document["n"]
    matched = document.get("matched")
    lines = [
        f"# Score ablation on the validation split of `{document['study']}`",
        "",
        f"Validation only (the test split is not read): {n['healthy']} healthy and "
        f"{n['anomalous']} anomalous scans, {n['lesioned']} lesioned copies of the healthy ones"
        + (f"; {matched} scans in the like-with-like (matched) comparison." if matched else ".")
        + " Baselines (kind `baseline`) use their own statistic and map.",
        "",
        *bake_off_lines(document.get("bake_off")),
        "| model | kind | map | smoothing | aggregate | real ROC-AUC | matched ROC-AUC "
        "| lesion ROC-AUC | pairs higher | pixel ROC-AUC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in document["rows"]:
        epoch = f" (epoch {r['epoch']})" if r.get("kind", "model") == "model" else ""
        lines.append(
            f"| {r['model']}{epoch} | {r.get('kind', 'model')} | {r['map']} | {r['smoothing']} | "
            f"{r['aggregate']} | {_cell(r['real_auroc'])} | {_cell(r.get('matched_auroc'))} | "
            f"{_cell(r['lesion_auroc'])} | {_cell(r['pairs_higher'], '.0%')} | "
            f"{_cell(r['pixel_auroc'])} |"
        )
    return "\n".join(lines) + "\n"
