"""summary.md of the evaluate stage: the human-readable report. It reads results (metrics of
:mod:`brainad.evaluation.tracks`, the ablation's record, the confound ceiling) and never
recomputes them."""

from __future__ import annotations

import json

import numpy as np

from brainad.config import MatchedConfig, ScoreConfig
from brainad.evaluation.bakeoff import default_section
from brainad.evaluation.tracks import MethodResult

# What the reproduced master's thesis reported (official Kaggle split, inverted score direction).
THESIS_REPORTED = {
    "vqgan": {"roc_auc": 0.877, "accuracy": 0.78, "precision": 0.71, "recall": 0.86, "f1": 0.78},
    "dcgan": {"accuracy": 0.48, "f1": 0.50},
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


def _fmt(metric: dict, key: str) -> str:
    value = metric.get(key)
    ci = metric.get("ci", {}).get(key)
    if value is None or not np.isfinite(value):
        return "–"
    if ci:
        return f"{value:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"
    return f"{value:.3f}"


def _matched_section(
    results: list[MethodResult], ceiling: dict | None, matched: MatchedConfig | None
) -> list[str]:
    """The real track's headline: like with like (``evaluate.matched``), with CIs and counts."""
    first = results[0].metrics["real"].get("matched") if results else None
    if first is None or matched is None:
        return []
    n = first["n"]
    lines = [
        "## Headline: track 1 like with like",
        "",
        f"Anomalous test scans of sequence {'/'.join(matched.anomalous_sequences)} against healthy "
        f"test scans of sequence {'/'.join(matched.healthy_sequences)}, both in plane "
        f"{'/'.join(matched.planes)} (manifest labels): {n['anomalous']} anomalous, "
        f"{n['healthy']} healthy. The whole test split mixes contrasts whose share differs by "
        "class, which a contrast detector could read; this comparison cannot be won that way "
        "(other shortcuts, such as the image source, remain: see the confound ceiling).",
        "",
    ]
    if "roc_auc" not in first:
        return [
            *lines,
            "Too few scans in one of the groups for a ROC-AUC (2 per class needed).",
            "",
        ]
    lines += ["| method | kind | matched ROC-AUC | all-strata ROC-AUC |", "|---|---|---|---|"]
    for r in results:
        real = r.metrics["real"]
        lines.append(
            f"| {r.name} | {r.kind} | {_fmt(real['matched'], 'roc_auc')} | {_fmt(real, 'roc_auc')} |"
        )
    if ceiling and "roc_auc" in ceiling.get("matched", {}):
        lines.append(
            f"| confound ceiling ({ceiling['chosen']}) | trivial features | "
            f"{_fmt(ceiling['matched'], 'roc_auc')} | {ceiling['roc_auc']:.3f} |"
        )
    return [*lines, ""]


def _strata_section(results: list[MethodResult], ceiling: dict | None) -> list[str]:
    """Track 1 per view plane x sequence: which healthy contrast each method confuses with the
    anomalies, and like with like where a stratum has both classes."""
    strata = results[0].metrics["real"].get("by_stratum") if results else None
    if not strata:
        return []
    keys = list(strata)
    counts = ", ".join(
        f"{k} {strata[k]['like_with_like']['n']['healthy']}/{strata[k]['like_with_like']['n']['anomalous']}"
        for k in keys
    )
    rows = [(r.name, r.metrics["real"]["by_stratum"]) for r in results]
    if ceiling and ceiling.get("by_stratum"):
        rows.append((f"confound ceiling ({ceiling['chosen']})", ceiling["by_stratum"]))
    healthy_keys = [k for k in keys if "healthy_vs_all_anomalous" in strata[k]]
    lines = [
        "",
        "## Track 1 per stratum (view plane / sequence)",
        "",
        f"Test scans per stratum, healthy/anomalous: {counts}. First table: each stratum's "
        "healthy scans against ALL anomalous scans (ROC-AUC). A method that reads contrast "
        "instead of anomaly does well on some healthy strata and badly on others.",
        "",
        "| method | " + " | ".join(healthy_keys) + " |",
        "|---|" + "---|" * len(healthy_keys),
    ]
    for name, by in rows:
        cells = [f"{by[k]['healthy_vs_all_anomalous']:.3f}" for k in healthy_keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    both = [k for k in keys if "roc_auc" in strata[k]["like_with_like"]]
    if both:
        lines += [
            "",
            "Strata with both classes (at least 2 each), anomalous vs healthy of the same stratum:",
            "",
            "| method | " + " | ".join(both) + " |",
            "|---|" + "---|" * len(both),
        ]
        for name, by in rows:
            cells = [_fmt(by[k]["like_with_like"], "roc_auc") for k in both]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


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
    matched: MatchedConfig | None = None,
    default_model: str | None = None,
    score: ScoreConfig | None = None,
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
    lines += default_section(study, default_model, ablation, score)
    lines += _matched_section(results, ceiling, matched)
    lines += [
        "## All methods, both tracks",
        "",
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
    lines += _strata_section(results, ceiling)
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


def _track(result: MethodResult, track: str) -> dict | None:
    """The metric record of ``track`` (``real``, ``matched``: the real track like with like,
    ``lesion``), or None where the method has no ROC-AUC for it."""
    real = result.metrics["real"]
    record = real.get("matched") if track == "matched" else result.metrics[track]
    return record if record and "roc_auc" in record else None


def _verdicts(results: list[MethodResult]) -> list[str]:
    """One line per model: each track against the best baseline of that track; "clearly" needs
    the model's 95 % CI above the baseline's point estimate on the real-track headline (matched
    stratum where the study has one, else all strata) and on track 2."""
    tracks = [t for t in ("real", "matched", "lesion") if results and _track(results[0], t)]
    best = {}
    for track in tracks:
        scored = [(r.name, _track(r, track)["roc_auc"]) for r in results if r.kind == "baseline"]
        best[track] = max(scored, key=lambda item: item[1], default=("none", float("nan")))
    headline = ["matched" if "matched" in tracks else "real", "lesion"]
    words = {"real": "track 1 ROC-AUC", "matched": "like with like", "lesion": "track 2 ROC-AUC"}
    lines = []
    for r in (r for r in results if r.kind == "model"):
        above = [_track(r, t)["roc_auc"] > best[t][1] for t in headline]
        clear = [
            _track(r, t).get("ci", {}).get("roc_auc", {}).get("low", float("nan")) > best[t][1]
            for t in headline
        ]
        parts = "; ".join(f"{words[t]} {_versus(_track(r, t), best[t])}" for t in tracks)
        lines.append(
            f"- **{r.name}**: {parts}; the lesioned copy scores higher in "
            f"{r.metrics['lesion']['pairs_lesioned_higher']:.0%} of pairs. "
            + (
                "Clearly better than the trivial baselines on both headline tracks."
                if all(clear)
                else "Above the trivial baselines on both headline tracks, but not clearly on both."
                if all(above)
                else "Not better than the trivial baselines on both headline tracks."
            )
        )
    return lines


def _ablation_section(ablation: dict) -> list[str]:
    """Best variant per model and map kind on the VALIDATION lesion track, with its other numbers,
    and every baseline on the same tracks; the full table is in ``ablation/validation.md``."""
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
        f"Every model and score variant, and every baseline, measured on the validation split "
        f"({n['healthy']} healthy, {n['anomalous']} anomalous scans, and a lesioned copy of each "
        "healthy one); the test split played no part. Best variant per model and map by "
        f"validation lesion ROC-AUC; all {len(ablation['rows'])} rows are in "
        "`../ablation/validation.md`.",
        "",
        "| model | kind | map | smoothing | aggregate | real ROC-AUC | matched ROC-AUC "
        "| lesion ROC-AUC | pairs higher | pixel ROC-AUC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in best.values():
        cells = [_cell(r.get(k)) for k in ("real_auroc", "matched_auroc", "lesion_auroc")]
        lines.append(
            f"| {r['model']} | {r.get('kind', 'model')} | {r['map']} | {r['smoothing']} | "
            f"{r['aggregate']} | {' | '.join(cells)} | {_cell(r['pairs_higher'], '.0%')} | "
            f"{_cell(r['pixel_auroc'])} |"
        )
    return lines


def _cell(value: float | None, fmt: str = ".3f") -> str:
    return "–" if value is None or not np.isfinite(value) else format(value, fmt)


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
