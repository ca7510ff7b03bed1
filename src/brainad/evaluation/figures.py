"""Figures of the evaluate stage: ROC curves, score histograms, confusion matrices,
reconstructions, heat maps, lesion pairs and training curves. They draw results computed by the
evaluation (:class:`~brainad.evaluation.tracks.MethodResult`); nothing here recomputes a metric."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from brainad.data.arrays import SplitArrays  # noqa: E402
from brainad.evaluation.tracks import LesionTrack, MethodResult  # noqa: E402
from brainad.models import registry  # noqa: E402
from brainad.utils import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(path: Path, results: list[MethodResult]) -> None:
    """ROC curves of every method on both tracks, side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for res in results:
        style = "-" if res.kind == "model" else "--"
        for ax, track in zip(axes, ("real", "lesion")):
            pts = res.curves[f"{track}_roc"]
            auroc = res.metrics[track]["roc_auc"]
            ax.plot(
                [p["fpr"] for p in pts],
                [p["tpr"] for p in pts],
                style,
                label=f"{res.name} ({auroc:.2f})",
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
    """Paired track examples: clean scan, lesioned copy, true mask, both anomaly maps (one colour
    scale per row, so the lesion's effect on the map is visible) and both scores."""
    fig, axes = plt.subplots(n, 5, figsize=(8.5, 1.8 * n), squeeze=False)
    lesions = track.lesions
    count = min(n, len(track.clean_index))
    for row in range(count):
        i = track.clean_index[row]
        clean, lesioned = res.test.score[i], res.lesion.score[row]
        _img(axes[row, 0], test.images[i], f"clean {clean:.2f}", vmin=-1, vmax=1)
        _img(axes[row, 1], lesions.images[row], f"lesioned {lesioned:.2f}", vmin=-1, vmax=1)
        _img(axes[row, 2], lesions.masks[row], "true mask")
        maps = [np.asarray(m, np.float32) for m in (res.test.maps[i], res.lesion.maps[row])]
        scale = {"vmin": min(m.min() for m in maps), "vmax": max(m.max() for m in maps)}
        _img(axes[row, 3], maps[0], "map, clean", cmap="inferno", **scale)
        _img(axes[row, 4], maps[1], "map, lesioned", cmap="inferno", **scale)
    for ax in axes[count:].flat:
        ax.axis("off")
    fig.suptitle(
        f"{res.name}: paired implanted lesions (both maps of a row share one colour scale)"
    )
    _save(fig, path)


def _metric_tsv(live: Path, key: str) -> Path:
    return Path(live) / "plots" / "metrics" / f"{key}.tsv"


def plot_training_curves(path: Path, live_dirs: dict[str, Path]) -> None:
    """Generator/discriminator losses, validation metrics (the token prior's: ``val_nll``, the
    segmenter's: ``val_seg``) and codebook health from DVCLive logs; a panel no model logged is
    left out."""
    keys = ("g_loss", "d_loss", "val_recon", "val_auroc", "val_nll", "val_seg")
    keys += ("codebook_perplexity",)
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
    reconstructing = [r for r in models if r.test.recons is not None]  # not the segmenter
    if reconstructing:
        plot_reconstructions(
            fig_dir / "reconstructions.png", test, reconstructing, seed=config.evaluate.seed
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
