"""Quality-assurance reports of the data stages, for a person to look at: brain-extraction
coverage per class and QA contact sheets (preprocess), example duplicate clusters (split)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from brainad.config import PreprocessConfig
from brainad.data.imageio import ImageDecodeError, read_image
from brainad.data.manifest import hamming
from brainad.data.preprocess import Preprocessed, _disk, extract_brain, head_mask
from brainad.data.split import Clusters, _duplicate_summary, cluster_members
from brainad.utils import atomic_path

log = logging.getLogger("brainad")


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else float("nan")


def coverage_stats(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-class extraction statistics from records with ``class_name``, ``fallback``, ``coverage``.

    Returns ``{class: {count, fallback, fallback_rate, coverage_mean, coverage_median,
    coverage_p05, coverage_p95}}``, classes sorted by name. A fallback rate or coverage that
    differs by class is a shortcut a model could learn; the preprocess report should show it.
    """
    by_class: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_class.setdefault(str(record["class_name"]), []).append(record)
    stats: dict[str, dict[str, float]] = {}
    for name in sorted(by_class):
        rows = by_class[name]
        coverage = np.array([float(r["coverage"]) for r in rows], dtype=np.float64)
        fallback = int(sum(bool(r["fallback"]) for r in rows))
        stats[name] = {
            "count": len(rows),
            "fallback": fallback,
            "fallback_rate": fallback / len(rows),
            "coverage_mean": float(coverage.mean()),
            "coverage_median": _percentile(coverage, 50),
            "coverage_p05": _percentile(coverage, 5),
            "coverage_p95": _percentile(coverage, 95),
        }
    return stats


def _overlay(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB image of ``gray`` (any range) with ``mask`` tinted red and its outline yellow."""
    g = gray.astype(np.float32)
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
    rgb = np.stack([g, g, g], axis=-1)
    rgb[mask, 0] = 0.6 * rgb[mask, 0] + 0.4
    edge = mask & ~cv2.erode(mask.astype(np.uint8), _disk(3)).astype(bool)
    rgb[edge] = (1.0, 1.0, 0.0)
    return rgb


def qa_figure(
    samples: list[tuple[str, np.ndarray, Preprocessed]],
    out_png: Path,
    title: str,
    config: PreprocessConfig | None = None,
) -> None:
    """Save a QA grid: one row per distinct label; per sample the input, mask overlay and output.

    Args:
        samples: ``(row label, input slice, preprocessed)``; the label is a class name (one row
            per class) or a file name (one row per file, as the preprocess stage draws it for
            each class); the caller picks the samples at random.
        out_png: PNG written atomically.
        title: figure title.
        config: if given, the overlay shows the extraction mask on the full input (recomputed);
            otherwise it shows the output mask on the output.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    if not samples:
        raise ValueError(f"{out_png}: no samples for the QA figure")
    classes = sorted({name for name, _, _ in samples})
    rows = {c: [s for s in samples if s[0] == c] for c in classes}
    n_cols = 3 * max(len(r) for r in rows.values())
    fig = Figure(figsize=(1.6 * n_cols, 1.9 * len(classes)))
    axes = fig.subplots(len(classes), n_cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, name in enumerate(classes):
        for i, (_, gray, pre) in enumerate(rows[name]):
            _qa_panels(axes[r, 3 * i : 3 * i + 3], name, np.asarray(gray), pre, config)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=80)


def _qa_panels(
    axes: Any, name: str, gray: np.ndarray, pre: Preprocessed, config: PreprocessConfig | None
) -> None:
    if config is not None:
        extraction = extract_brain(gray, config)
        mask = extraction.mask if extraction.ok else head_mask(gray, config.min_coverage)
        overlay = _overlay(gray, mask)
    else:
        overlay = _overlay(pre.image, pre.mask)
    flag = " FALLBACK" if pre.fallback else ""
    axes[0].imshow(gray, cmap="gray")
    axes[0].set_title(f"{name} {gray.shape[1]}x{gray.shape[0]}", fontsize=7)
    axes[1].imshow(overlay)
    axes[1].set_title(f"cov {pre.coverage:.2f}{flag}", fontsize=7, color="red" if flag else "k")
    axes[2].imshow(pre.image, cmap="gray", vmin=-1, vmax=1)
    axes[2].set_title("output", fontsize=7)


def _example_clusters(clusters: Clusters, n_clusters: int, seed: int) -> list[list[int]]:
    """The largest duplicate clusters (ties broken by a seeded shuffle)."""
    members = [m for m in cluster_members(clusters) if len(m) > 1]
    tiebreak = np.random.default_rng(seed).permutation(len(members))
    order = sorted(range(len(members)), key=lambda k: (-len(members[k]), tiebreak[k]))
    return [members[k] for k in order[:n_clusters]]


def _thumbnail(root: Path, row: dict) -> np.ndarray | None:
    try:  # the row was decoded once already, so its own size is a safe pixel limit
        return read_image(root / row["path"], max(1, row["width"] * row["height"])).gray
    except ImageDecodeError:
        return None


def _draw_member(ax: object, root: Path, row: dict, first_phash: str) -> None:
    """One thumbnail titled with its folder/class and its hash distance to the first member."""
    image = _thumbnail(root, row)
    if image is not None:
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    distance = hamming(first_phash, row["phash"]) if row["phash"] else "-"
    ax.set_title(f"{row['folder']}/{row['class_name']}\nd={distance}", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_duplicate_clusters(
    root: Path,
    rows: list[dict],
    clusters: Clusters,
    out_png: Path,
    n_clusters: int = 6,
    seed: int = 0,
) -> None:
    """Save a figure with one row of member thumbnails per example duplicate cluster.

    The largest clusters come first (ties in a seeded order); at most 8 members are shown.
    """
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

    examples = _example_clusters(clusters, n_clusters, seed)
    n_cols = min(8, max((len(m) for m in examples), default=1))
    fig = Figure(figsize=(1.6 * n_cols, 1.9 * max(1, len(examples)) + 0.4), layout="constrained")
    summary = _duplicate_summary(rows, clusters)
    fig.suptitle(
        f"{summary['n_clusters']} clusters; {summary['clusters_with_duplicates']} with duplicates "
        f"holding {summary['duplicate_files']} duplicate files (largest shown)",
        fontsize=9,
    )
    if not examples:
        fig.text(0.5, 0.5, "no duplicate clusters", ha="center", va="center")
    axes = fig.subplots(len(examples), n_cols, squeeze=False) if examples else []
    for members, row_axes in zip(examples, axes, strict=True):
        for column, ax in enumerate(row_axes):
            if column < len(members):
                _draw_member(ax, root, rows[members[column]], rows[members[0]]["phash"])
            else:
                ax.set_axis_off()
        label = f"cluster {int(clusters.ids[members[0]])}\n{len(members)} files"
        row_axes[0].set_ylabel(label, fontsize=8)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
