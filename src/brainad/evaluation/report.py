"""Reports of the evaluate stage: metrics.json, DVC plot data, the per-image CSV and summary.md
(figures: :mod:`brainad.evaluation.figures`). They read results and never recompute them."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np

from brainad.data.arrays import SplitArrays
from brainad.evaluation.tracks import MethodResult
from brainad.utils import write_json, write_text

log = logging.getLogger("brainad")

HEADLINE = ("roc_auc", "average_precision", "accuracy", "precision", "recall", "specificity", "f1")

# What the reproduced master's thesis reported (official Kaggle split, inverted score direction).
THESIS_REPORTED = {
    "vqgan": {"roc_auc": 0.877, "accuracy": 0.78, "precision": 0.71, "recall": 0.86, "f1": 0.78},
    "dcgan": {"accuracy": 0.48, "f1": 0.50},
}


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
        if "pixel" in real:
            entry["real"]["pixel_auroc"] = _r(real["pixel"]["pixel_auroc"])
            entry["real"]["best_dice"] = _r(real["pixel"]["best_dice"])
        out[res.name] = entry
    return out


def ceiling_entries(ceiling: dict) -> tuple[dict, dict]:
    """The confound ceiling's ``metrics.json`` entry and its ``evaluation.json`` record (with the
    CI where ``brainad compare`` looks for it)."""
    compact = {"kind": "ceiling", "real": {"roc_auc": _r(ceiling["roc_auc"])}}
    ci = {"roc_auc": ceiling["ci"]} if ceiling["ci"] else {}
    return compact, {
        "kind": "ceiling",
        "real": {"roc_auc": ceiling["roc_auc"], "ci": ci},
        **ceiling,
    }


def _ceiling_row(ceiling: dict | None) -> list[str]:
    if not ceiling or ceiling["roc_auc"] is None:
        return []
    ci = ceiling["ci"]
    cv = ceiling["candidates"][ceiling["chosen"]]["val_cv_roc_auc"]
    return [
        f"| confound ceiling ({ceiling['chosen']}) | trivial features | {ceiling['roc_auc']:.3f} "
        f"[{ci['low']:.3f}, {ci['high']:.3f}] | – | – | – | – | – | – | – | – |",
        "",
        "Confound ceiling: a classifier given only trivial features (file size, image size and "
        "aspect, channels, bit depth, brain coverage, an intensity histogram, and the view "
        "plane / modality / sequence labels where the manifest has them), fitted on the "
        f"validation split (cross-validated ROC-AUC there {cv:.3f}, {ceiling['cv_folds']} folds), "
        "then applied to test. A model's T1 ROC-AUC at or below it can be explained by a "
        "shortcut; only the T2 (paired) columns cannot.",
    ]


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


# ------------------------------------------------------------------------------------ summary
def _fmt(metric: dict, key: str) -> str:
    value = metric.get(key)
    ci = metric.get("ci", {}).get(key)
    if value is None or not np.isfinite(value):
        return "–"
    if ci:
        return f"{value:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"
    return f"{value:.3f}"


def _lesion_groups_section(results: list[MethodResult]) -> list[str]:
    """Track 2 ROC-AUC per lesion kind and size (offset kinds can leave the slice's intensity
    range; ``tissue``/``textured`` keep to it, so an intensity statistic cannot see them by range)."""
    first = results[0].metrics["lesion"] if results else {}
    columns = [(key, name) for key in ("kind", "size") for name in first.get(f"by_{key}", {})]
    if not columns:
        return []
    counts = ", ".join(f"{name} {first[f'by_{key}'][name]['n']}" for key, name in columns)
    lines = [
        "",
        "## Track 2 by lesion kind and size",
        "",
        "ROC-AUC of each group's lesioned copies against their own clean twins. `blob`/`ring` add an "
        "intensity offset (often beyond the slice's range); `tissue`/`textured` take another "
        "tissue's intensity of the same slice (smooth / with noise texture) and stay inside its "
        f"range. Pairs per group: {counts}.",
        "",
        "| method | " + " | ".join(name for _, name in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for r in results:
        groups = r.metrics["lesion"]
        cells = [f"{groups[f'by_{key}'][name]['roc_auc']:.3f}" for key, name in columns]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return lines


def summary_markdown(
    study: str,
    results: list[MethodResult],
    provenance: dict,
    thesis_comparison: bool,
    leak: dict | None = None,
    ablation: dict | None = None,
    ceiling: dict | None = None,
) -> str:
    """The human-readable summary: one table, both tracks, CIs, thresholds, the variants tried on
    validation (``ablation``, from the ablate stage), provenance."""
    lines = [f"# brainad results — study `{study}`", ""]
    inverted = [
        r for r in results if r.kind == "model" and np.isfinite(r.val_auroc) and r.val_auroc < 0.5
    ]
    for r in inverted:
        lines += [
            f"**Warning: {r.name} has validation ROC-AUC {r.val_auroc:.3f} < 0.5 — its "
            "scores rank healthy scans as more anomalous. Likely cause: a source/scanner "
            "confound between classes or a normalisation mismatch. The sign is NOT "
            "flipped.**",
            "",
        ]
    lines += [
        "Track 1: real anomalies vs healthy scans of the leak-free test split (clusters of "
        "near-duplicates never cross splits). Track 2: each held-out healthy test scan scored as "
        "it is and again with a synthetic lesion implanted — same scan, only the lesion differs, "
        "so a source confound cannot help. Thresholds were chosen on validation only. "
        "Values: point estimate [95% bootstrap CI].",
        "",
        "| method | kind | T1 ROC-AUC | T1 AP | T1 accuracy | T1 F1 | T1 sens. | T1 spec. "
        "| T2 ROC-AUC | T2 pairs higher | T2 pixel ROC-AUC |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        real, lesion = r.metrics["real"], r.metrics["lesion"]
        pixel = lesion.get("pixel", {}).get("pixel_auroc")
        lines.append(
            f"| {r.name} | {r.kind} | {_fmt(real, 'roc_auc')} | {_fmt(real, 'average_precision')} "
            f"| {_fmt(real, 'accuracy')} | {_fmt(real, 'f1')} | {_fmt(real, 'recall')} "
            f"| {_fmt(real, 'specificity')} | {_fmt(lesion, 'roc_auc')} "
            f"| {lesion['pairs_lesioned_higher']:.3f} | {'–' if pixel is None else f'{pixel:.3f}'} |"
        )
    lines += _ceiling_row(ceiling)
    n = results[0].metrics["real"]["n"] if results else {}
    lines += [
        "",
        f"Test images: {n.get('healthy', 0)} healthy, {n.get('anomalous', 0)} anomalous.",
        "",
        "## Thresholds (validation only)",
        "",
        "| method | threshold | how chosen | validation ROC-AUC |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.threshold:.4g} | {r.threshold_method} | "
            f"{'–' if not np.isfinite(r.val_auroc) else f'{r.val_auroc:.3f}'} |"
        )
    lines += _lesion_groups_section(results)
    lines += ["", "## Reading the table", ""]
    lines += _verdicts(results)
    if ablation:
        lines += _ablation_section(ablation)
    if thesis_comparison:
        lines += _thesis_comparison(results, leak)
    lines += [
        "",
        "## Provenance",
        "",
        _mode_sentence(provenance.get("runtime")),
        "",
        "```json",
        json.dumps(_brief(provenance), indent=2, sort_keys=True),
        "```",
        "",
        "Figures: `figures/`. Per-image scores: `scores.csv`. Machine-readable "
        "metrics: `metrics.json` (full detail: `evaluation.json`).",
        "",
    ]
    return "\n".join(lines)


def _versus(model: dict, baseline: tuple[str, float]) -> str:
    """How a model's ROC-AUC compares with the best baseline's, honest about the interval."""
    name, value = baseline
    low = model.get("ci", {}).get("roc_auc", {}).get("low", float("nan"))
    if model["roc_auc"] <= value:
        word = "below"
    elif low > value:
        word = "clearly above (95% CI above it)"
    else:
        word = "above, but within the 95% CI"
    return f"{model['roc_auc']:.3f}, {word} the best trivial baseline ({name} {value:.3f})"


def _verdicts(results: list[MethodResult]) -> list[str]:
    """One line per model: both tracks against the best baseline of each track."""
    lines = []
    best = {}
    for track in ("real", "lesion"):
        scored = [(r.name, r.metrics[track]["roc_auc"]) for r in results if r.kind == "baseline"]
        best[track] = max(scored, key=lambda item: item[1], default=("none", float("nan")))
    for r in (r for r in results if r.kind == "model"):
        real, lesion = r.metrics["real"], r.metrics["lesion"]
        above = [m["roc_auc"] > best[t][1] for t, m in (("real", real), ("lesion", lesion))]
        clear = [
            m.get("ci", {}).get("roc_auc", {}).get("low", float("nan")) > best[t][1]
            for t, m in (("real", real), ("lesion", lesion))
        ]
        lines.append(
            f"- **{r.name}**: track 1 ROC-AUC {_versus(real, best['real'])}; track 2 ROC-AUC "
            f"{_versus(lesion, best['lesion'])}; the lesioned copy scores higher in "
            f"{lesion['pairs_lesioned_higher']:.0%} of pairs. "
            + (
                "Clearly better than the trivial baselines on both tracks."
                if all(clear)
                else "Above the trivial baselines on both tracks, but not clearly on both."
                if all(above)
                else "Not better than the trivial baselines on both tracks."
            )
        )
    return lines


def _ablation_section(ablation: dict) -> list[str]:
    """Best variant per model and map kind on the VALIDATION lesion track, with its other numbers;
    the full table (every variant) is in ``ablation/validation.md``."""
    best: dict[tuple[str, str], dict] = {}
    for row in ablation["rows"]:
        key = (row["model"], row["map"])
        if key not in best or row["lesion_auroc"] > best[key]["lesion_auroc"]:
            best[key] = row
    n = ablation["n"]
    lines = [
        "",
        "## Variants tried (validation only)",
        "",
        f"Every model and score variant, measured on the validation split ({n['healthy']} healthy, "
        f"{n['anomalous']} anomalous scans, and a lesioned copy of each healthy one); the test "
        "split played no part. Best variant per model and map by validation lesion ROC-AUC; all "
        f"{len(ablation['rows'])} rows are in `../ablation/validation.md`.",
        "",
        "| model | map | smoothing | aggregate | real ROC-AUC | lesion ROC-AUC | pairs higher "
        "| pixel ROC-AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in best.values():
        lines.append(
            f"| {r['model']} | {r['map']} | {r['smoothing']} | {r['aggregate']} | "
            f"{r['real_auroc']:.3f} | {r['lesion_auroc']:.3f} | {r['pairs_higher']:.0%} | "
            f"{r['pixel_auroc']:.3f} |"
        )
    return lines


def _thesis_comparison(results: list[MethodResult], leak: dict | None) -> list[str]:
    """The reproduced study's numbers beside ours, and why the protocols differ."""
    ours = {r.name: r.metrics["real"] for r in results if r.kind == "model"}
    keys = ("roc_auc", "accuracy", "precision", "recall", "f1")
    lines = [
        "",
        "## Compared with the reproduced thesis",
        "",
        "| model | source | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for name, reported in THESIS_REPORTED.items():
        lines.append(
            f"| {name} | thesis | "
            + " | ".join(f"{reported[k]:.2f}" if k in reported else "–" for k in keys)
            + " |"
        )
        if name in ours:
            lines.append(
                f"| {name} | this run | " + " | ".join(f"{ours[name][k]:.2f}" for k in keys) + " |"
            )
    healthy = (leak or {}).get("per_class", {}).get("notumor")
    measured = (
        f"in this dataset {healthy['with_twin_in_training']} of {healthy['testing']} "
        f"({healthy['fraction']:.0%}) Testing/notumor images have a near-duplicate in "
        "Training/notumor at the split's hash distance"
        if healthy
        else "most healthy test images have a near-copy in training"
    )
    lines += [
        "",
        "The protocols differ, so the numbers are not comparable: the thesis evaluated on "
        f"the official Testing folder, where {measured} (memorisation is rewarded); it "
        "chose settings looking at test results; and it called LOW scores anomalous, "
        "because the score direction was set by the source confound (each class comes "
        "from a different collection). Here the split is by duplicate cluster, the test "
        "split is never used for choices (thresholds are calibrated on validation), "
        "higher = more anomalous, and accuracy is computed on a test split whose class "
        "balance is that of the leak-free split (see the counts above).",
    ]
    return lines


def _brief(provenance: dict) -> dict:
    """Provenance for the summary: everything but the full params and source record (those are
    in ``evaluation.json``)."""
    out = {k: v for k, v in provenance.items() if k not in ("params", "source")}
    if "runtime" in out:
        out["runtime"] = _brief_runtime(out["runtime"])
    if "training" in out:
        out["training"] = {
            name: {**entry, "runtime": _brief_runtime(entry.get("runtime"))}
            for name, entry in out["training"].items()
        }
    source = provenance.get("source", {})
    out["source"] = {k: source[k] for k in ("kind", "uri", "sha256", "n_files") if k in source}
    out["params"] = f"params.yaml, study {provenance.get('study')} (in full: evaluation.json)"
    return out


def _brief_runtime(record: dict | None) -> dict | None:
    """Mode, kernel level and threads of a :func:`brainad.runtime.describe` record (the CPU
    model is in evaluation.json: left out here, a deterministic summary is the same on every CPU)."""
    if not record:
        return record
    keys = ("mode", "aten_cpu_capability", "threads")
    return {**{k: record.get(k) for k in keys}, "onednn": record.get("onednn", {}).get("enabled")}


def _mode_sentence(record: dict | None) -> str:
    """How far these numbers reproduce, from the run mode of the evaluate process."""
    mode = (record or {}).get("mode")
    if mode == "deterministic":
        return (
            "Deterministic run: pinned kernels on one thread, so `dvc repro` gives these exact "
            "numbers on any x86-64 CPU with the same installed builds; any difference from a "
            "committed result is a real change; `brainad compare` says whether it is beyond the "
            'seed noise measured in `../seeds/spread.md` (README, "Reading a metric diff").'
        )
    if mode == "same-machine":
        return (
            "Deterministic algorithms, but the kernels followed this CPU: the numbers reproduce "
            "on this machine only."
        )
    return (
        "Fast (non-deterministic) run: kernels and precision follow the CPU, so another machine "
        "gives slightly different numbers; compare commits with `brainad compare`, which judges "
        "a difference against the measured noise."
    )
