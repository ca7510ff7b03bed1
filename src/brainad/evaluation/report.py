"""Reports of the evaluate stage: metrics.json, DVC plot data, per-image CSV, figures, summary.md."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from brainad.data.arrays import SplitArrays  # noqa: E402
from brainad.evaluation.tracks import LesionTrack, MethodResult  # noqa: E402
from brainad.models import registry  # noqa: E402
from brainad.utils import atomic_path, write_json, write_text  # noqa: E402

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


# ------------------------------------------------------------------------------------ figures
def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(path: Path, results: list[MethodResult]) -> None:
    """ROC curves of every method on both tracks, side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for res in results:
        style = "-" if res.kind == "model" else "--"
        pts = res.curves["real_roc"]
        axes[0].plot(
            [p["fpr"] for p in pts],
            [p["tpr"] for p in pts],
            style,
            label=f"{res.name} ({res.metrics['real']['roc_auc']:.2f})",
        )
        pts = res.curves["lesion_roc"]
        axes[1].plot(
            [p["fpr"] for p in pts],
            [p["tpr"] for p in pts],
            style,
            label=f"{res.name} ({res.metrics['lesion']['roc_auc']:.2f})",
        )
    titles = (
        "Track 1: real anomalies vs healthy (test)",
        "Track 2: same healthy scans ± implanted lesion",
    )
    for ax, title in zip(axes, titles):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
        ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def plot_histograms(path: Path, results: list[MethodResult], test: SplitArrays) -> None:
    """Score histograms per class with the calibrated threshold line, one panel per method."""
    n = len(results)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, res in zip(axes.flat, results):
        s = res.test.score
        bins = np.histogram_bin_edges(s[np.isfinite(s)], bins=30)
        ax.hist(s[test.labels == 0], bins=bins, alpha=0.6, label="healthy")
        ax.hist(s[test.labels == 1], bins=bins, alpha=0.6, label="anomalous")
        ax.axvline(res.threshold, color="k", ls="--", label=f"threshold ({res.threshold_method})")
        ax.set_title(res.name, fontsize=10)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Test scores (higher = more anomalous)")
    _save(fig, path)


def plot_confusions(path: Path, results: list[MethodResult]) -> None:
    """Confusion matrices at the validation-calibrated threshold."""
    fig, axes = plt.subplots(1, len(results), figsize=(2.6 * len(results), 2.8), squeeze=False)
    for ax, res in zip(axes.flat, results):
        c = res.metrics["real"]["confusion"]
        m = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=9)
        ax.set(
            xticks=[0, 1],
            yticks=[0, 1],
            xticklabels=["H", "A"],
            yticklabels=["H", "A"],
            xlabel="predicted",
            ylabel="actual",
            title=res.name,
        )
        ax.title.set_fontsize(8)
    _save(fig, path)


def _img(ax: plt.Axes, image: np.ndarray, title: str = "", cmap: str = "gray", **kw) -> None:
    ax.imshow(np.asarray(image, np.float32).squeeze(), cmap=cmap, **kw)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def plot_reconstructions(
    path: Path, test: SplitArrays, models: list[MethodResult], per_class: int = 3, seed: int = 0
) -> None:
    """The same test inputs reconstructed by every model (healthy and anomalous)."""
    rng = np.random.default_rng(seed)
    picks = []
    for label in (0, 1):
        idx = np.flatnonzero(test.labels == label)
        picks += rng.choice(idx, size=min(per_class, len(idx)), replace=False).tolist()
    fig, axes = plt.subplots(
        len(picks),
        1 + 2 * len(models),
        figsize=(1.6 * (1 + 2 * len(models)), 1.7 * len(picks)),
        squeeze=False,
    )
    for row, i in enumerate(picks):
        tag = "healthy" if test.labels[i] == 0 else str(test.class_names[i])
        _img(axes[row, 0], test.images[i], f"input ({tag})", vmin=-1, vmax=1)
        for k, res in enumerate(models):
            _img(axes[row, 1 + 2 * k], res.test.recons[i], f"{res.name} recon", vmin=-1, vmax=1)
            _img(axes[row, 2 + 2 * k], res.test.maps[i], f"{res.name} residual", cmap="inferno")
    _save(fig, path)


def plot_heatmaps(path: Path, test: SplitArrays, res: MethodResult, n: int = 3) -> None:
    """Highest- and lowest-scoring test cases of each class with the residual heat map overlaid."""
    rows = []
    for label in (0, 1):
        idx = np.flatnonzero(test.labels == label)
        order = idx[np.argsort(res.test.score[idx])]
        name = "healthy" if label == 0 else "anomalous"
        rows += [(i, f"{name}, highest") for i in order[::-1][:n]]
        rows += [(i, f"{name}, lowest") for i in order[:n]]
    fig, axes = plt.subplots(
        len(rows) // n, n * 2, figsize=(1.7 * n * 2, 1.8 * len(rows) // n), squeeze=False
    )
    for k, (i, tag) in enumerate(rows):
        r, c = divmod(k, n)
        _img(
            axes[r, 2 * c], test.images[i], f"{tag}\nscore {res.test.score[i]:.2f}", vmin=-1, vmax=1
        )
        _img(axes[r, 2 * c + 1], test.images[i], "heat map", vmin=-1, vmax=1)
        m = np.asarray(res.test.maps[i], np.float32).squeeze()
        axes[r, 2 * c + 1].imshow(
            np.ma.masked_less_equal(m, np.quantile(m, 0.9)), cmap="inferno", alpha=0.7
        )
        if test.has_lesion_mask[i]:
            axes[r, 2 * c + 1].contour(
                test.lesion_masks[i].squeeze(), levels=[0.5], colors="cyan", linewidths=0.6
            )
    fig.suptitle(f"{res.name}: best/worst cases (cyan: true lesion outline where known)")
    _save(fig, path)


def plot_lesion_pairs(
    path: Path, test: SplitArrays, track: LesionTrack, res: MethodResult, n: int = 4
) -> None:
    """Paired track examples: clean scan, lesioned copy, true mask, residual maps and both scores."""
    fig, axes = plt.subplots(n, 5, figsize=(8.5, 1.8 * n), squeeze=False)
    lesions = track.lesions
    count = min(n, len(track.clean_index))
    for row in range(count):
        i = track.clean_index[row]
        clean, lesioned = res.test.score[i], res.lesion.score[row]
        _img(axes[row, 0], test.images[i], f"clean {clean:.2f}", vmin=-1, vmax=1)
        _img(axes[row, 1], lesions.images[row], f"lesioned {lesioned:.2f}", vmin=-1, vmax=1)
        _img(axes[row, 2], lesions.masks[row], "true mask")
        _img(axes[row, 3], res.test.maps[i], "residual clean", cmap="inferno")
        _img(axes[row, 4], res.lesion.maps[row], "residual lesioned", cmap="inferno")
    for ax in axes[count:].flat:
        ax.axis("off")
    fig.suptitle(f"{res.name}: paired implanted lesions")
    _save(fig, path)


def _metric_tsv(live: Path, key: str) -> Path:
    return Path(live) / "plots" / "metrics" / f"{key}.tsv"


def plot_training_curves(path: Path, live_dirs: dict[str, Path]) -> None:
    """Generator/discriminator losses, validation metrics (the token prior's: ``val_nll``) and
    codebook health from DVCLive logs; a panel no model logged is left out."""
    keys = ("g_loss", "d_loss", "val_recon", "val_auroc", "val_nll", "codebook_perplexity")
    panels = [k for k in keys if any(_metric_tsv(live, k).is_file() for live in live_dirs.values())]
    panels = panels or list(keys[:1])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for ax, key in zip(axes[0], panels):
        for index, (name, live) in enumerate(live_dirs.items()):  # one colour per run everywhere
            tsv = _metric_tsv(live, key)
            if tsv.is_file():
                data = np.atleast_1d(np.genfromtxt(tsv, delimiter="\t", names=True))
                ax.plot(data["step"] + 1, data[key], label=name, color=f"C{index}")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _save(fig, path)


# ------------------------------------------------------------------------------------ summary
def _fmt(metric: dict, key: str) -> str:
    value = metric.get(key)
    ci = metric.get("ci", {}).get(key)
    if value is None or not np.isfinite(value):
        return "–"
    if ci:
        return f"{value:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"
    return f"{value:.3f}"


def summary_markdown(
    study: str,
    results: list[MethodResult],
    provenance: dict,
    thesis_comparison: bool,
    leak: dict | None = None,
    ablation: dict | None = None,
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
        "```json",
        json.dumps(_brief(provenance), indent=2, sort_keys=True),
        "```",
        "",
        "Figures: `figures/`. Per-image scores: `scores.csv`. Machine-readable "
        "metrics: `metrics.json` (full detail: `evaluation.json`).",
        "",
    ]
    return "\n".join(lines)


def save_grid(path: Path, grid, title: str) -> None:
    """Save a torchvision ``make_grid`` tensor (C, H, W) in [0, 1] as a titled PNG."""
    image = grid.permute(1, 2, 0).numpy()
    fig, ax = plt.subplots(figsize=(image.shape[1] / 80, image.shape[0] / 80 + 0.4))
    ax.imshow(image.squeeze(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    _save(fig, path)


def render_figures(
    fig_dir: Path,
    results: list[MethodResult],
    test: SplitArrays,
    track: LesionTrack,
    train_dir: Path,
    config,
) -> None:
    """Every figure of the evaluate stage."""
    plot_curves(fig_dir / "roc.png", results)
    plot_histograms(fig_dir / "score_histograms.png", results, test)
    plot_confusions(fig_dir / "confusion.png", results)
    models = [r for r in results if r.kind == "model"]
    if models:
        plot_reconstructions(
            fig_dir / "reconstructions.png", test, models, seed=config.evaluate.seed
        )
    for res in models:
        plot_heatmaps(fig_dir / f"heatmaps_{res.name}.png", test, res)
        plot_lesion_pairs(fig_dir / f"lesion_pairs_{res.name}.png", test, track, res)
    lives = {}
    for name in registry.MODEL_NAMES:
        for phase in registry.entry(name).phases:
            live = registry.live_dir(Path(train_dir) / name, phase)
            if live.is_dir():
                lives[name if phase == "main" else f"{name}-{phase}"] = live
    if lives:
        plot_training_curves(fig_dir / "training_curves.png", lives)


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
    source = provenance.get("source", {})
    out["source"] = {k: source[k] for k in ("kind", "uri", "sha256", "n_files") if k in source}
    out["params"] = f"params.yaml, study {provenance.get('study')} (in full: evaluation.json)"
    return out
