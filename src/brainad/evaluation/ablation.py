"""Score-side ablation on the VALIDATION split (never the test split): which model and which score
settings separate lesioned from clean scans.

For each trained model, every validation image and a lesioned copy of each healthy validation
scan (the same :func:`~brainad.evaluation.tracks.lesion_track` as the test track) go once
through the model's raw detector (:func:`~brainad.scoring.bundle.raw_detector`: unsmoothed,
with the model's diagnostic maps); each variant (map kind × smoothing × aggregation) is then
measured on three validation tracks:

- ``real``: ROC-AUC of anomalous vs healthy validation scans (confounded by the image source);
- ``lesion``: ROC-AUC of lesioned copies vs their clean twins, and the fraction of pairs in which
  the copy scores higher;
- ``pixel``: pixel ROC-AUC of the anomaly map inside the brain mask of the lesioned copies.

Map kinds: ``residual`` (|input − reconstruction|; for the token prior the healed
reconstruction) for reconstruction models, ``segmentation`` (the anomaly probability inside the
brain) for the segmenter, and each model's ``diagnostic_maps``: for VQGAN+D the ``quantisation
distance`` (distance of each encoder output to its nearest code), for the token prior
``token_nll`` and ``restoration`` (|VQGAN+D reconstruction − healed|).

The ``ablate`` stage writes ``reports/<study>/ablation/validation.{json,md}``; the evaluate stage
puts the table into ``summary.md``, so every variant tried is reported beside the chosen one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch

from brainad import metrics as metrics_lib
from brainad.config import StudyConfig
from brainad.data.arrays import load_arrays
from brainad.evaluation.tracks import lesion_track
from brainad.models.checkpoint import load_model
from brainad.runtime import deterministic_kernels, study_deterministic
from brainad.scoring.bundle import raw_detector
from brainad.scoring.detector import pixel_maps
from brainad.scoring.gan import SELECTION_SCORE
from brainad.scoring.maps import aggregate, smooth
from brainad.utils import select_device, write_json, write_text

log = logging.getLogger("brainad")

SMOOTHING = (("none", 1), ("gaussian", 5), ("gaussian", 9))
AGGREGATES = (("mean", 1.0), ("topk", 1.0), ("topk", 5.0), ("max", 1.0))
BATCH_SIZE = 32  # images per forward pass (the variants are computed on the whole split)


def _variant_rows(name: str, epoch: int, maps_val: dict, maps_les: dict, val, track) -> list[dict]:
    brain_val = torch.from_numpy(val.brain_masks)
    brain_les = torch.from_numpy(track.brain_masks)
    twin = track.clean_index
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
                clean = s_val[twin]
                labels = np.r_[np.zeros(len(clean)), np.ones(len(s_les))]
                rows.append(
                    {
                        "model": name,
                        "epoch": epoch,
                        "map": kind,
                        "smoothing": f"{smoothing} {px}px" if px > 1 else smoothing,
                        "aggregate": method if method != "topk" else f"top {k:g}%",
                        "real_auroc": metrics_lib.roc_auc(val.labels, s_val),
                        "lesion_auroc": metrics_lib.roc_auc(labels, np.r_[clean, s_les]),
                        "pairs_higher": float(np.mean(s_les > clean)),
                        "pixel_auroc": pixel,
                    }
                )
    return rows


def run_ablation(config: StudyConfig, arrays_dir: Path, models: dict[str, Path], out: Path) -> dict:
    """Measure every variant of every model on the validation tracks; write the JSON and table."""
    device = select_device()
    val = load_arrays(arrays_dir / "val.npz")
    track = lesion_track(config.evaluate.lesions, val)
    rows = []
    with deterministic_kernels(study_deterministic(config)):  # pinned in deterministic mode
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
            rows += _variant_rows(name, epoch, maps_val, maps_les, val, track)
    document = {
        "study": config.name,
        "split": "val",
        "n": {
            "healthy": int((val.labels == 0).sum()),
            "anomalous": int((val.labels == 1).sum()),
            "lesioned": int(len(track.clean_index)),
        },
        "models": {k: str(v) for k, v in models.items()},
        "rows": rows,
    }
    write_json(out / "validation.json", document)
    write_text(out / "validation.md", markdown(document))
    return document


def markdown(document: dict) -> str:
    n = document["n"]
    lines = [
        f"# Score ablation on the validation split of `{document['study']}`",
        "",
        f"Validation only (the test split is not read): {n['healthy']} healthy and "
        f"{n['anomalous']} anomalous scans, {n['lesioned']} lesioned copies of the healthy ones.",
        "",
        "| model | map | smoothing | aggregate | real ROC-AUC | lesion ROC-AUC | pairs higher "
        "| pixel ROC-AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in document["rows"]:
        lines.append(
            f"| {r['model']} (epoch {r['epoch']}) | {r['map']} | {r['smoothing']} | "
            f"{r['aggregate']} | {r['real_auroc']:.3f} | {r['lesion_auroc']:.3f} | "
            f"{r['pairs_higher']:.0%} | {r['pixel_auroc']:.3f} |"
        )
    return "\n".join(lines) + "\n"
