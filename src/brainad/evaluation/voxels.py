"""Voxel-level metrics of anomaly maps against expert label volumes, per subject and pooled, with
subject-level bootstrap intervals; slice-level ROC-AUC overall and within slice-position strata.

Pixel AP, ROC-AUC and the best Dice over thresholds are computed from counts of tumour and
healthy brain voxels in quantile bins of the map values (:func:`bin_edges`, shared by every
subject of a comparison), so pooling subjects is adding their counts and a subject bootstrap
resamples counts, not millions of voxels. Within a bin voxels count as tied. Dice at a fixed
threshold is exact. HIGHER = MORE ANOMALOUS.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from brainad.metrics import roc_auc


class Counts(NamedTuple):
    """Voxel counts of one subject per bin of map values (ascending bins)."""

    tumour: np.ndarray
    healthy: np.ndarray


def bin_edges(values: list[np.ndarray], bins: int) -> np.ndarray:
    """Inner edges of ``bins`` quantile bins of the pooled ``values`` (duplicates dropped)."""
    pooled = np.concatenate([np.ravel(v) for v in values]).astype(np.float64)
    if pooled.size == 0:
        raise ValueError("no voxels to bin")
    quantiles = np.quantile(pooled, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return np.unique(quantiles)


def counts(scores: np.ndarray, tumour: np.ndarray, edges: np.ndarray) -> Counts:
    """Bin the brain voxels' ``scores`` (1-D) by ``edges``; ``tumour`` marks the label voxels."""
    index = np.searchsorted(edges, scores, side="right")
    size = len(edges) + 1
    tumour = np.asarray(tumour, bool)
    return Counts(
        np.bincount(index[tumour], minlength=size).astype(np.int64),
        np.bincount(index[~tumour], minlength=size).astype(np.int64),
    )


def curve_metrics(c: Counts) -> dict:
    """``pixel_ap``, ``pixel_auroc``, ``best_dice`` (an upper bound: the threshold is chosen on
    the same voxels) and ``best_bin`` (the lowest bin flagged at the best Dice) of binned counts;
    None where a class is empty."""
    pos, neg = c.tumour[::-1].astype(np.float64), c.healthy[::-1].astype(np.float64)
    p, n = pos.sum(), neg.sum()
    if p == 0 or n == 0:
        return {"pixel_ap": None, "pixel_auroc": None, "best_dice": None, "best_bin": None}
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    precision = tp / np.maximum(tp + fp, 1.0)
    ap = float(np.sum(precision * pos) / p)
    above = tp - pos  # tumour voxels in higher bins
    auroc = float(np.sum(neg * (above + 0.5 * pos)) / (p * n))
    dice = 2.0 * tp / (tp + fp + p)
    best = int(np.argmax(dice))
    return {
        "pixel_ap": ap,
        "pixel_auroc": auroc,
        "best_dice": float(dice[best]),
        "best_bin": len(pos) - 1 - best,
    }


class DiceCounts(NamedTuple):
    """Exact counts at one threshold: label voxels flagged, voxels flagged, label voxels."""

    hit: int
    flagged: int
    tumour: int


def dice_counts(scores: np.ndarray, tumour: np.ndarray, threshold: float) -> DiceCounts:
    flagged = scores >= threshold
    tumour = np.asarray(tumour, bool)
    return DiceCounts(int((flagged & tumour).sum()), int(flagged.sum()), int(tumour.sum()))


def dice(d: DiceCounts) -> float | None:
    total = d.flagged + d.tumour
    return None if total == 0 else 2.0 * d.hit / total


def validation_threshold(scores: np.ndarray, tumour: np.ndarray, bins: int) -> float:
    """The threshold with the best Dice on validation voxels: the lower edge of the best bin of
    the validation map's own quantile bins (flagged = score >= threshold)."""
    edges = bin_edges([scores], bins)
    best = curve_metrics(counts(scores, tumour, edges))["best_bin"]
    if best is None:
        raise ValueError("validation has no tumour voxel or no healthy voxel: no threshold")
    return float(edges[best - 1]) if best > 0 else float(np.min(scores))


def pooled(per_subject: dict[str, Counts], dice_at: dict[str, DiceCounts], subjects) -> dict:
    """Pooled metrics of ``subjects`` (repeats allowed: a bootstrap draw)."""
    total = Counts(
        np.sum([per_subject[s].tumour for s in subjects], axis=0),
        np.sum([per_subject[s].healthy for s in subjects], axis=0),
    )
    out = curve_metrics(total)
    out.pop("best_bin")
    summed = DiceCounts(*np.sum([tuple(dice_at[s]) for s in subjects], axis=0).tolist())
    out["dice"] = dice(summed)
    return out


def bootstrap(
    per_subject: dict[str, Counts],
    dice_at: dict[str, DiceCounts],
    n_draws: int,
    ci: float,
    seed: int,
    reference: tuple[dict[str, Counts], dict[str, DiceCounts]] | None = None,
) -> dict:
    """Subject-level bootstrap: ``{metric: [low, high]}`` of the pooled metrics over ``n_draws``
    resamples of the subjects with replacement; with ``reference`` (another detector's counts on
    the same subjects) also ``difference`` ``{metric: [low, high]}`` of this minus the reference
    on the same draws, and ``ahead`` (share of draws where this is higher)."""
    subjects = sorted(per_subject)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(subjects), size=(n_draws, len(subjects)))
    values: dict[str, list[float]] = {}
    gaps: dict[str, list[float]] = {}
    for draw in draws:
        chosen = [subjects[i] for i in draw]
        mine = pooled(per_subject, dice_at, chosen)
        theirs = pooled(*reference, chosen) if reference is not None else {}
        for key, value in mine.items():
            if value is None:
                continue
            values.setdefault(key, []).append(value)
            if theirs.get(key) is not None:
                gaps.setdefault(key, []).append(value - theirs[key])
    tail = (1.0 - ci) / 2.0 * 100.0

    def interval(v: list[float]) -> list[float]:
        return [float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail))]

    out = {"ci": {k: interval(v) for k, v in values.items()}}
    if reference is not None:
        out["difference"] = {k: interval(v) for k, v in gaps.items()}
        out["ahead"] = {k: float(np.mean(np.asarray(v) > 0)) for k, v in gaps.items()}
    return out


# -------------------------------------------------------------------------------- slice level
def stratum(position: float, strata: int) -> int:
    """The slice-position stratum of a position in [0, 1] (0 = inferior)."""
    return min(int(position * strata), strata - 1)


def slice_metrics(labels: np.ndarray, scores: np.ndarray, positions: np.ndarray, strata: int):
    """Slice ROC-AUC overall and per position stratum, with the class counts of each."""

    def one(y: np.ndarray, s: np.ndarray) -> dict:
        n_anomalous, n_healthy = int(y.sum()), int((1 - y).sum())
        value = roc_auc(y, s) if n_anomalous and n_healthy else None
        return {"roc_auc": value, "n_anomalous": n_anomalous, "n_healthy": n_healthy}

    labels = np.asarray(labels, np.int64)
    which = np.array([stratum(p, strata) for p in positions], np.int64)
    out = {"all": one(labels, scores)}
    for k in range(strata):
        keep = which == k
        out[f"stratum_{k}"] = one(labels[keep], scores[keep])
    return out


def top_slices(scores: np.ndarray, positions: np.ndarray, tumour: np.ndarray, k: int, strata: int):
    """Where a volume's ``k`` highest slice scores fall: their positions, whether each shows
    tumour, the share of them in the outer strata, the top-k mean (the volume score) and the
    same without the outer strata's slices (``inner_volume_score``: how much of the volume
    score the extreme slices drive is the difference)."""
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")[:k]
    is_outer = np.array([stratum(p, strata) in (0, strata - 1) for p in positions], bool)
    inner = np.sort(scores[~is_outer])[::-1][:k] if strata > 2 else scores[order]
    return {
        "positions": [round(float(positions[i]), 3) for i in order],
        "with_tumour": [bool(tumour[i]) for i in order],
        "outer_share": float(np.mean(is_outer[order])) if len(order) else None,
        "volume_score": float(np.mean(scores[order])) if len(order) else None,
        "inner_volume_score": float(np.mean(inner)) if len(inner) else None,
    }
