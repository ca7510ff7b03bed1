"""Files of the evaluate stage: metrics.json, DVC plot data and the per-image CSV (summary.md:
:mod:`brainad.evaluation.summary`; figures: :mod:`brainad.evaluation.figures`). They read results
and never recompute them."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from brainad.data.arrays import SplitArrays
from brainad.evaluation.tracks import MethodResult
from brainad.utils import write_json, write_text

log = logging.getLogger("brainad")

HEADLINE = ("roc_auc", "average_precision", "accuracy", "precision", "recall", "specificity", "f1")


def _r(x: float) -> float | None:
    """Round for JSON (None for NaN, which JSON cannot hold)."""
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def compact_metrics(results: list[MethodResult]) -> dict:
    """The DVC metrics file: headline numbers per method and track (diffable across commits)."""
    out: dict = {}
    for res in results:
        real, lesion = res.metrics["real"], res.metrics["lesion"]
        entry = {
            "kind": res.kind,
            "threshold": _r(res.threshold),
            "val_auroc": _r(res.val_auroc),
            "real": {k: _r(real[k]) for k in HEADLINE},
            "lesion": {
                "roc_auc": _r(lesion["roc_auc"]),
                "pairs_lesioned_higher": _r(lesion["pairs_lesioned_higher"]),
                **{
                    f"{key}_{name}": _r(group["roc_auc"])
                    for key in ("kind", "size")
                    for name, group in lesion.get(f"by_{key}", {}).items()
                },
            },
        }
        if "pixel" in lesion:
            entry["lesion"]["pixel_auroc"] = _r(lesion["pixel"]["pixel_auroc"])
            entry["lesion"]["best_dice"] = _r(lesion["pixel"]["best_dice"])
        if "roc_auc" in real.get("matched", {}):
            entry["real"]["matched"] = {"roc_auc": _r(real["matched"]["roc_auc"])}
        if "pixel" in real:
            entry["real"]["pixel_auroc"] = _r(real["pixel"]["pixel_auroc"])
            entry["real"]["best_dice"] = _r(real["pixel"]["best_dice"])
        out[res.name] = entry
    return out


def ceiling_entries(ceiling: dict) -> tuple[dict, dict]:
    """The confound ceiling's ``metrics.json`` entry and its ``evaluation.json`` record (with the
    CI where ``brainad compare`` looks for it)."""
    real = {
        "roc_auc": ceiling["roc_auc"],
        "ci": {"roc_auc": ceiling["ci"]} if ceiling["ci"] else {},
    }
    real.update({key: ceiling[key] for key in ("matched", "by_stratum") if key in ceiling})
    compact = {"kind": "ceiling", "real": {"roc_auc": _r(ceiling["roc_auc"])}}
    if "roc_auc" in ceiling.get("matched", {}):
        compact["real"]["matched"] = {"roc_auc": _r(ceiling["matched"]["roc_auc"])}
    about = {key: ceiling[key] for key in ("chosen", "candidates", "features", "cv_folds")}
    return compact, {"kind": "ceiling", "real": real, **about}


def write_plot_data(plots_dir: Path, results: list[MethodResult], test: SplitArrays) -> None:
    """ROC, PR and confusion data per method, in the layout ``dvc plots`` reads."""
    for res in results:
        write_json(
            plots_dir / "roc" / f"{res.name}.json",
            res.curves["real_roc"],
        )
        write_json(
            plots_dir / "pr" / f"{res.name}.json",
            res.curves["real_pr"],
        )
        rows = [
            {"actual": "anomaly" if a else "healthy", "predicted": "anomaly" if p else "healthy"}
            for a, p in zip(test.labels.tolist(), res.test.prediction.tolist())
        ]
        write_json(plots_dir / "confusion" / f"{res.name}.json", rows)


def write_scores_csv(path: Path, results: list[MethodResult], test: SplitArrays) -> None:
    """One row per test image and method: provenance, each component, score, threshold, prediction."""
    components = sorted({c for r in results for c in r.test.components})
    fields = [
        "method",
        "path",
        "sha256",
        "folder",
        "class_name",
        "split",
        "label",
        *[f"component_{c}" for c in components],
        "score",
        "threshold",
        "prediction",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for res in results:
        for i in range(len(test.labels)):
            row = {
                "method": res.name,
                "path": test.paths[i],
                "sha256": test.sha256[i],
                "folder": test.folders[i],
                "class_name": test.class_names[i],
                "split": "test",
                "label": int(test.labels[i]),
                "score": f"{res.test.score[i]:.6g}",
                "threshold": f"{res.threshold:.6g}",
                "prediction": int(res.test.prediction[i]),
            }
            for c in components:
                value = res.test.components.get(c)
                row[f"component_{c}"] = "" if value is None else f"{value[i]:.6g}"
            writer.writerow(row)
    write_text(path, buffer.getvalue())
