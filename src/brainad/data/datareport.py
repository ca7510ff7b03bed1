"""Readable data reports: the label accuracy table and contact sheets per stratum.

Contact sheets are small grayscale PNGs (at most 6 x 8 thumbnails of 64 px from the raw files), one
per class x plane x sequence group of the kept images (``kept_*``, in train/val/test) and of the
images the curation filter dropped (``curated_*``), drawn with a fixed seed.
"""

from __future__ import annotations

import random
import shutil
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from brainad.data.curation import KEPT_COLUMNS
from brainad.data.imageio import ImageDecodeError, read_image

THUMB, COLS, ROWS, TITLE = 64, 8, 6, 16
_MAX_PIXELS = 40_000_000


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def labels_markdown(report: dict, study: str) -> str:
    """The label accuracy report (held-out n, accuracy, confusion, every attempt) as Markdown."""
    lines = [f"# {study}: slice labels", ""]
    lines.append(
        f"Annotations: `{report['annotations'] or 'none'}` ({report['annotations_in_file']} "
        f"distinct files; {report['annotations_matched']} manifest rows incl. byte-identical "
        f"copies; by sample {report.get('annotated_by_sample', {})}). Label sources: "
        f"{report['label_source_counts']}; predictions below {report['min_confidence']} "
        "probability are `unknown`."
    )
    if "holdout" in report:
        h = report["holdout"]
        lines.append(
            f"\nHeld out: {h['n_held_out']} annotated images in {h['clusters_held_out']} whole "
            f"duplicate clusters (fit part: {h['clusters_fit']} clusters; clusters in both: "
            f"{h['cross_clusters']}). The headline accuracy is on the held-out images of the "
            "random sample (representative); `all` adds the held-out targeted images."
        )
    for target, rec in report["targets"].items():
        lines += _target_lines(target, rec)
    return "\n".join(lines) + "\n"


def _target_lines(target: str, rec: dict) -> list[str]:
    held, goal = rec["held_out"], rec["target_accuracy"]
    verdict = f", target {goal:.2f}: {'met' if rec['target_met'] else 'NOT met'}" if goal else ""
    lines = [
        "",
        f"## {target}",
        "",
        f"Chosen: {rec['chosen']['features']} / {rec['chosen']['model']} "
        f"({rec['chosen']['chosen_by']}); fit on {rec['n_fit']}. **Held-out accuracy "
        f"{_f(held['accuracy'])} (n = {held['n']}, random sample){verdict}**; with the targeted "
        f"images {_f(rec['held_out_with_targeted']['accuracy'])} "
        f"(n = {rec['held_out_with_targeted']['n']}). {_f(held['coverage_at_min_confidence'])} of "
        f"the held-out random predictions are confident, accuracy among them "
        f"{_f(held['accuracy_of_confident'])}. By class (random held-out): "
        + ", ".join(
            f"{c} {_f(v['accuracy'])} (n = {v['n']})"
            for c, v in rec["held_out_accuracy_by_class"].items()
        )
        + ".",
        "",
        "Confusion on the held-out random sample (rows: annotation, columns: prediction):",
        "",
        "| | " + " | ".join(held["confusion"]["labels"]) + " |",
        "|---|" + "---:|" * len(held["confusion"]["labels"]),
    ]
    for name, counts in zip(held["confusion"]["labels"], held["confusion"]["matrix"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(c) for c in counts) + " |")
    lines += [
        "",
        "| features | model | grouped CV (fit part) | held-out (random) | held-out (all) |",
        "|---|---|---:|---:|---:|",
    ]
    for a in rec["attempts"]:
        lines.append(
            f"| {a['features']} | {a['model']} | {_f(a['cv_accuracy_fit_part'])} | "
            f"{_f(a['held_out_accuracy'])} | {_f(a['held_out_accuracy_with_targeted'])} |"
        )
    return lines


def _thumbnail(root: Path, row: dict) -> np.ndarray:
    try:
        gray = read_image(root / row["path"], _MAX_PIXELS).gray.astype(np.float32)
    except ImageDecodeError:
        return np.zeros((THUMB, THUMB), np.uint8)
    gray = (gray - gray.min()) / max(float(np.ptp(gray)), 1e-6)
    scale = THUMB / max(gray.shape)
    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    tile = np.zeros((THUMB, THUMB), np.float32)
    top, left = (THUMB - small.shape[0]) // 2, (THUMB - small.shape[1]) // 2
    tile[top : top + small.shape[0], left : left + small.shape[1]] = small
    return (tile * 255).astype(np.uint8)


def _sheet(root: Path, rows: list[dict], title: str) -> np.ndarray:
    canvas = np.full((TITLE + ROWS * THUMB, COLS * THUMB), 40, np.uint8)
    cv2.putText(canvas, title, (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, 255, 1, cv2.LINE_AA)
    for k, row in enumerate(rows):
        top, left = TITLE + (k // COLS) * THUMB, (k % COLS) * THUMB
        canvas[top : top + THUMB, left : left + THUMB] = _thumbnail(root, row)
    return canvas


def group_sheets(
    root: Path, rows: list[dict], assignment: list[str], out_dir: Path, seed: int
) -> list[dict]:
    """One contact sheet per kept / curated class x plane x sequence group; returns the index."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row, split in zip(rows, assignment, strict=True):
        state = "kept" if split in KEPT_COLUMNS else "curated" if split == "curated" else None
        if state is not None:
            sequence = "CT" if row["modality"] == "CT" else row["sequence"]
            groups[(state, row["class_name"], row["plane"], sequence)].append(row)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    index = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda r: r["path"])
        shown = random.Random(f"{seed}-{'-'.join(key)}").sample(
            members, min(len(members), ROWS * COLS)
        )
        name = "_".join(key) + ".png"
        title = f"{' '.join(key)}: {len(shown)} of {len(members)}"
        cv2.imwrite(str(out_dir / name), _sheet(root, shown, title))
        index.append({"file": name, "n": len(members), "shown": len(shown)})
    return index
