"""Heat-map overlays of ``brainad score`` (``--maps all|top-K|none``), drawn with OpenCV.

One PNG per scan: the preprocessed slice beside the same slice with its residual map (the
hottest 10 % of pixels, inferno colours) and a title line with the score, threshold and verdict.
Names start with the first 12 hex digits of the file's sha256 (unique per content, stable across
``--resume``); ``top-K`` maps are prefixed with their rank (``0001_`` = most anomalous) and the
folder is replaced as a whole at the end of each run.
"""

from __future__ import annotations

import heapq
import os
import re
import shutil
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from brainad.utils import write_bytes

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_PANEL = 256  # minimum side of each half of the picture in pixels
_BANNER = 22


class MapsMode(NamedTuple):
    """``--maps``: ``kind`` is ``none``, ``all`` or ``top`` (with ``k``)."""

    kind: str
    k: int = 0

    def __str__(self) -> str:
        return f"top-{self.k}" if self.kind == "top" else self.kind


def parse_maps(text: str) -> MapsMode:
    """``none``, ``all`` or ``top-K`` (K >= 1).

    Raises:
        ValueError: anything else (argparse shows the message).
    """
    if text in ("none", "all"):
        return MapsMode(text)
    match = re.fullmatch(r"top-(\d+)", text)
    if match and int(match.group(1)) >= 1:
        return MapsMode("top", int(match.group(1)))
    raise ValueError(f"--maps {text!r}: use none, all or top-K with K >= 1 (e.g. top-50)")


def map_name(sha256: str, shown_path: str, rank: int | None = None) -> str:
    """File name of a heat map: ``[rank_]sha12_stem.png`` (stem reduced to safe characters)."""
    stem = _UNSAFE.sub("_", os.path.splitext(os.path.basename(shown_path))[0])[:60] or "scan"
    prefix = f"{rank:04d}_" if rank is not None else ""
    return f"{prefix}{sha256[:12]}_{stem}.png"


def render(image: np.ndarray, residual: np.ndarray, title: str) -> np.ndarray:
    """BGR picture: ``image`` (S, S) in [-1, 1] | the same with ``residual`` (S, S) overlaid."""
    side = image.shape[-1]
    scale = max(1, -(-_PANEL // side))
    gray = np.clip((image.astype(np.float32) + 1.0) * 127.5, 0, 255).astype(np.uint8)
    gray = cv2.resize(gray, (side * scale,) * 2, interpolation=cv2.INTER_NEAREST)
    heat = residual.astype(np.float32)
    hot = heat > np.quantile(heat, 0.9)
    peak = float(heat.max()) or 1.0
    colours = cv2.applyColorMap(
        np.clip(heat / peak * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO
    )
    colours = cv2.resize(colours, (side * scale,) * 2, interpolation=cv2.INTER_NEAREST)
    hot = cv2.resize(hot.astype(np.uint8), (side * scale,) * 2, interpolation=cv2.INTER_NEAREST)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    blend = cv2.addWeighted(base, 0.3, colours, 0.7, 0)
    overlay = np.where(hot[..., None] > 0, blend, base)
    panels = np.concatenate([base, overlay], axis=1)
    banner = np.zeros((_BANNER, panels.shape[1], 3), np.uint8)
    text = title.encode("ascii", "replace").decode("ascii")
    cv2.putText(banner, text, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    return np.concatenate([banner, panels], axis=0)


def title(shown_path: str, score: float, threshold: float, prediction: int) -> str:
    """``name: score 1.23 (threshold 0.98) -> ANOMALOUS``."""
    verdict = "ANOMALOUS" if prediction else "normal"
    name = os.path.basename(shown_path)[:48]
    return f"{name}: score {score:.3g} (threshold {threshold:.3g}) -> {verdict}"


def save_png(path: Path, picture: np.ndarray) -> None:
    """Write ``picture`` as PNG atomically."""
    ok, data = cv2.imencode(".png", picture)
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the heat map")
    write_bytes(path, data.tobytes())


def draw(path: Path, row: dict, image: np.ndarray, residual: np.ndarray) -> None:
    """Render and save the heat map of a scored ``row`` (``score``, ``threshold``, ...)."""
    heading = title(row["path"], row["score"], row["threshold"], row["prediction"])
    save_png(path, render(image.squeeze(), residual.squeeze(), heading))


class TopK:
    """The ``k`` highest-scored rows seen so far (memory bounded by ``k``)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._heap: list[tuple[float, int, dict[str, str]]] = []
        self._count = 0

    def push(self, score: float, row: dict[str, str]) -> None:
        """Offer a row with its ``score``."""
        self._count += 1
        entry = (score, -self._count, row)  # ties: the earlier row wins
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, entry)
        elif entry > self._heap[0]:
            heapq.heapreplace(self._heap, entry)

    def ranked(self) -> list[dict[str, str]]:
        """The rows, most anomalous first."""
        return [row for _, _, row in sorted(self._heap, reverse=True)]


def swap_folder(staged: Path, dest: Path) -> None:
    """Replace ``dest`` by ``staged`` (old content removed only once the new one is in place)."""
    old = dest.with_name(f".{dest.name}.old.tmp")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(staged, dest)
    if old.exists():
        shutil.rmtree(old)
