"""Image- and pixel-level metrics, bootstrap confidence intervals and threshold calibration.

NumPy and scikit-learn only. Conventions used everywhere in brainad:

* labels: 0 = healthy, 1 = anomaly; a HIGHER score means MORE anomalous;
* a prediction is positive when ``score >= threshold`` (the convention of ``sklearn.metrics``);
* a ratio whose denominator is zero (e.g. precision when nothing is predicted positive) is
  defined as 0.0, so every metric is a finite number that JSON and DVC can store.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from brainad.config import ThresholdConfig

log = logging.getLogger("brainad")

THRESHOLD_METRICS = ("accuracy", "precision", "recall", "specificity", "f1")
RANKING_METRICS = ("roc_auc", "average_precision")
MAX_CURVE_POINTS = 200


# ------------------------------------------------------------------------------------ helpers
def _as_labels(labels: object) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {array.shape}")
    if array.size and not np.isin(array, (0, 1)).all():
        bad = sorted({v.item() for v in np.unique(array)} - {0, 1})[:5]
        raise ValueError(f"labels must be 0 (healthy) or 1 (anomaly); found {bad}")
    return array.astype(np.int64)


def _as_scores(scores: object, n: int) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.shape != (n,):
        raise ValueError(f"scores must have shape ({n},) like the labels, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(
            f"scores contain {int((~np.isfinite(array)).sum())} NaN/inf value(s); "
            "check the model output (a diverged model gives NaN reconstructions)"
        )
    return array


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` with 0/0 (and x/0) defined as 0.0."""
    return float(numerator / denominator) if denominator else 0.0


def check_binary(labels: object, what: str = "images") -> None:
    """Raise ``ValueError`` unless ``labels`` holds both classes (0 healthy and 1 anomalous).

    Args:
        labels: 1-D array of 0/1 labels.
        what: what the labels describe, used in the message (``images`` or ``pixels``).
    """
    array = _as_labels(labels)
    present = set(np.unique(array).tolist())
    if present != {0, 1}:
        got = "no labels at all" if not present else f"only label {sorted(present)[0]}"
        raise ValueError(
            f"this metric needs both healthy (0) and anomalous (1) {what}; got {got} "
            f"({array.size} {what}). Check the split and the class filter in params.yaml."
        )


# ------------------------------------------------------------------------- point estimates
def roc_auc(labels: object, scores: object) -> float:
    """Area under the ROC curve (ties count one half)."""
    y = _as_labels(labels)
    check_binary(y)
    return float(roc_auc_score(y, _as_scores(scores, y.size)))


def average_precision(labels: object, scores: object) -> float:
    """Average precision (step-wise area under the precision-recall curve, as scikit-learn)."""
    y = _as_labels(labels)
    check_binary(y)
    return float(average_precision_score(y, _as_scores(scores, y.size)))


def confusion(labels: object, predictions: object) -> dict:
    """Counts ``{"tp", "fp", "tn", "fn"}`` (ints) of 0/1 ``predictions`` against ``labels``."""
    y = _as_labels(labels)
    p = _as_labels(predictions)
    if p.shape != y.shape:
        raise ValueError(f"predictions shape {p.shape} differs from labels shape {y.shape}")
    return {
        "tp": int(((p == 1) & (y == 1)).sum()),
        "fp": int(((p == 1) & (y == 0)).sum()),
        "tn": int(((p == 0) & (y == 0)).sum()),
        "fn": int(((p == 0) & (y == 1)).sum()),
    }


def _from_counts(tp: float, fp: float, tn: float, fn: float) -> dict:
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "precision": precision,
        "recall": recall,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def threshold_metrics(labels: object, scores: object, threshold: float) -> dict:
    """Accuracy, precision, recall (sensitivity), specificity and F1 at ``score >= threshold``.

    A metric whose denominator is zero is 0.0 (e.g. precision when no image is flagged).
    """
    y = _as_labels(labels)
    s = _as_scores(scores, y.size)
    counts = confusion(y, (s >= threshold).astype(np.int64))
    return _from_counts(**counts)


def all_metrics(labels: object, scores: object, threshold: float) -> dict:
    """:func:`threshold_metrics` plus ``roc_auc``, ``average_precision`` and ``confusion``."""
    y = _as_labels(labels)
    s = _as_scores(scores, y.size)
    out = threshold_metrics(y, s, threshold)
    out["roc_auc"] = roc_auc(y, s)
    out["average_precision"] = average_precision(y, s)
    out["confusion"] = confusion(y, (s >= threshold).astype(np.int64))
    return out


# ---------------------------------------------------------------------------------- bootstrap
def _fast_auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC from mid-ranks (Mann-Whitney U); equals ``roc_auc_score`` including ties."""
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _fast_ap(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision; equals ``average_precision_score`` (thresholds at distinct scores)."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]  # last index of each score
    tps = np.cumsum(y_sorted)[last]
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _resample_metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict:
    pred = s >= threshold
    tp = float((pred & (y == 1)).sum())
    fp = float((pred & (y == 0)).sum())
    out = _from_counts(tp, fp, float((y == 0).sum()) - fp, float((y == 1).sum()) - tp)
    out["roc_auc"] = _fast_auc(y, s)
    out["average_precision"] = _fast_ap(y, s)
    return out


def _stratified_draws(
    y: np.ndarray, s: np.ndarray, threshold: float, n: int, seed: int
) -> dict[str, np.ndarray]:
    """``{metric: (n,) values}`` over ``n`` class-stratified resamples with replacement."""
    rng = np.random.default_rng(seed)
    neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    draws = {name: np.empty(n) for name in THRESHOLD_METRICS + RANKING_METRICS}
    for b in range(n):
        index = np.r_[rng.choice(neg, neg.size), rng.choice(pos, pos.size)]
        for name, value in _resample_metrics(y[index], s[index], threshold).items():
            draws[name][b] = value
    return draws


def bootstrap_ci(
    labels: object, scores: object, threshold: float, n: int, ci: float, seed: int
) -> dict[str, dict]:
    """Stratified percentile-bootstrap intervals of every scalar metric.

    Each resample draws, with replacement, as many healthy images from the healthy ones and as
    many anomalous images from the anomalous ones as the data has, so both classes are always
    present. The interval is the ``(1-ci)/2`` and ``(1+ci)/2`` percentiles of the resampled
    values; ``value`` is the metric on the full data (the percentile interval need not be
    centred on it).

    Args:
        labels: 0/1 labels; both classes required.
        scores: anomaly scores (higher = more anomalous).
        threshold: decision threshold for the threshold metrics.
        n: number of resamples (>= 1).
        ci: confidence level in (0, 1), e.g. 0.95.
        seed: seed of the resampling generator.

    Returns:
        ``{metric: {"value", "low", "high"}}`` for accuracy, precision, recall, specificity, f1,
        roc_auc and average_precision.
    """
    y = _as_labels(labels)
    s = _as_scores(scores, y.size)
    check_binary(y)
    if n < 1:
        raise ValueError(f"evaluate.bootstrap must be >= 1, got {n}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"evaluate.ci must be in (0, 1), got {ci}")
    draws = _stratified_draws(y, s, threshold, n, seed)
    point = _resample_metrics(y, s, threshold)
    alpha = (1.0 - ci) / 2.0
    return {
        name: {
            "value": float(point[name]),
            "low": float(np.quantile(draws[name], alpha)),
            "high": float(np.quantile(draws[name], 1.0 - alpha)),
        }
        for name in draws
    }


# ---------------------------------------------------------------------------------- threshold
class Threshold(NamedTuple):
    """A calibrated decision threshold (positive when ``score >= value``).

    Args:
        value: the threshold.
        method: the ``threshold.method`` that produced it.
        details: JSON-ready facts about the calibration (achieved validation metrics, counts).
    """

    value: float
    method: str
    details: dict


def _healthy_percentile(y: np.ndarray, s: np.ndarray, target: float) -> Threshold:
    healthy = s[y == 0]
    if healthy.size == 0:
        raise ValueError(
            "threshold.method healthy_percentile needs healthy (0) validation images; got none"
        )
    if not 0.0 < target < 1.0:
        raise ValueError(f"threshold.target_specificity must be in (0, 1), got {target}")
    value = float(np.quantile(healthy, target))
    details = {
        "target_specificity": float(target),
        "val_specificity": float(np.mean(healthy < value)),
        "n_healthy": int(healthy.size),
    }
    return Threshold(value, "healthy_percentile", details)


def _youden(y: np.ndarray, s: np.ndarray) -> Threshold:
    check_binary(y)
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    j = np.where(finite, tpr - fpr, -np.inf)
    best = int(np.argmax(j))  # first maximum = the highest such threshold
    details = {"youden_j": float(j[best]), "val_tpr": float(tpr[best]), "val_fpr": float(fpr[best])}
    return Threshold(float(thresholds[best]), "youden", details)


def _f1_max(y: np.ndarray, s: np.ndarray) -> Threshold:
    check_binary(y)
    precision, recall, thresholds = precision_recall_curve(y, s, drop_intermediate=False)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    best = int(np.argmax(f1[::-1]))  # ties → the highest threshold
    best = f1.size - 1 - best
    details = {
        "val_f1": float(f1[best]),
        "val_precision": float(precision[best]),
        "val_recall": float(recall[best]),
    }
    return Threshold(float(thresholds[best]), "f1_max", details)


def calibrate_threshold(labels: object, scores: object, config: ThresholdConfig) -> Threshold:
    """Choose the decision threshold on VALIDATION data (the caller guarantees no test data).

    Methods (``config.method``):

    * ``fixed``: ``config.fixed_value``;
    * ``healthy_percentile``: the ``target_specificity`` quantile of the healthy scores (only
      healthy images are needed; anomalous ones are ignored);
    * ``youden``: the ROC threshold maximising TPR − FPR;
    * ``f1_max``: the threshold maximising F1 among all distinct scores.

    Ties between equally good thresholds are resolved towards the highest threshold.
    """
    y = _as_labels(labels)
    s = _as_scores(scores, y.size)
    if config.method == "fixed":
        return Threshold(float(config.fixed_value), "fixed", {})
    if config.method == "healthy_percentile":
        return _healthy_percentile(y, s, config.target_specificity)
    if config.method == "youden":
        return _youden(y, s)
    if config.method == "f1_max":
        return _f1_max(y, s)
    raise ValueError(
        f"threshold.method: unknown method {config.method!r}; "
        "use fixed, healthy_percentile, youden or f1_max"
    )


# ------------------------------------------------------------------------------ sanity checks
def direction_check(labels: object, scores: object) -> dict:
    """Flag a score that ranks healthy images ABOVE anomalous ones (AUROC < 0.5).

    The sign is never flipped: an inverted score is reported as it is, with a warning.

    Returns:
        ``{"auroc", "inverted", "message"}``; ``message`` is a bold markdown warning when
        inverted, else an empty string.
    """
    auroc = roc_auc(labels, scores)
    inverted = auroc < 0.5
    message = ""
    if inverted:
        message = (
            f"**Warning: AUROC {auroc:.3f} < 0.5 — this score ranks healthy images as MORE "
            "anomalous than the anomalies. Likely causes: a source/scanner confound between the "
            "classes (the healthy and anomalous images come from different sources), or an "
            "intensity normalisation that treats the classes differently. The sign was NOT "
            "flipped; do not report 1 − AUROC as a result.**"
        )
        log.warning("direction check: AUROC %.3f < 0.5 (inverted score)", auroc)
    return {"auroc": float(auroc), "inverted": bool(inverted), "message": message}


# -------------------------------------------------------------------------------- pixel level
def _pixel_arrays(
    lesion_masks: np.ndarray, maps: np.ndarray, brain_masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    lesion = np.asarray(lesion_masks).astype(bool)
    values = np.asarray(maps, dtype=np.float64)
    brain = np.asarray(brain_masks).astype(bool)
    if not lesion.shape == values.shape == brain.shape:
        raise ValueError(
            f"pixel metrics need equal shapes; got lesion masks {lesion.shape}, "
            f"maps {values.shape}, brain masks {brain.shape}"
        )
    y, s = lesion[brain].astype(np.int64), values[brain]
    if not np.isfinite(s).all():
        raise ValueError("anomaly maps contain NaN/inf inside the brain masks")
    return y, s


def _best_dice(y: np.ndarray, s: np.ndarray, n_levels: int = 50) -> tuple[float, float]:
    """Best Dice over thresholds at ``n_levels`` score quantiles, denser near the top (lesions
    are small). Returns ``(dice, threshold)``."""
    levels = 1.0 - np.logspace(-4, 0, n_levels)  # 0.9999 … 0
    candidates = np.unique(np.quantile(s, levels))
    order = np.sort(s)
    positives_from_top = np.cumsum(y[np.argsort(s, kind="stable")][::-1])
    n_pred = s.size - np.searchsorted(order, candidates, side="left")  # count of s >= t
    tp = np.where(n_pred > 0, positives_from_top[np.maximum(n_pred - 1, 0)], 0)
    dice = 2.0 * tp / (n_pred + y.sum())
    best = int(np.argmax(dice))
    return float(dice[best]), float(candidates[best])


def pixel_metrics(
    lesion_masks: np.ndarray,
    maps: np.ndarray,
    brain_masks: np.ndarray,
    max_pixels: int = 2_000_000,
    seed: int = 0,
) -> dict:
    """Pixel-level AUROC and best Dice of anomaly ``maps`` against ``lesion_masks``.

    Only pixels inside ``brain_masks`` count. Above ``max_pixels`` brain pixels, a deterministic
    (``seed``) uniform subsample is used.

    Returns:
        ``{"pixel_auroc", "best_dice", "dice_threshold", "n_pixels", "lesion_fraction"}``.
    """
    y, s = _pixel_arrays(lesion_masks, maps, brain_masks)
    if y.size > max_pixels:
        keep = np.sort(np.random.default_rng(seed).choice(y.size, max_pixels, replace=False))
        y, s = y[keep], s[keep]
    check_binary(y, what="pixels")
    dice, threshold = _best_dice(y, s)
    return {
        "pixel_auroc": _fast_auc(y, s),
        "best_dice": dice,
        "dice_threshold": threshold,
        "n_pixels": int(y.size),
        "lesion_fraction": float(y.mean()),
    }


# --------------------------------------------------------------------------------- plot data
def _thin(n: int, limit: int = MAX_CURVE_POINTS) -> np.ndarray:
    """At most ``limit`` evenly spaced indices of ``range(n)``, always including both ends."""
    return np.unique(np.round(np.linspace(0, n - 1, min(n, limit))).astype(np.int64))


def _finite_thresholds(thresholds: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Replace sklearn's ``inf`` start threshold by the next float above the top score (JSON)."""
    above_top = float(np.nextafter(s.max(), np.inf))
    return np.where(np.isfinite(thresholds), thresholds, above_top)


def roc_points(labels: object, scores: object) -> list[dict]:
    """ROC curve as ``[{"fpr", "tpr", "threshold"}]`` (≤ 200 points) for DVC plots."""
    y = _as_labels(labels)
    s = _as_scores(scores, y.size)
    check_binary(y)
    fpr, tpr, thresholds = roc_curve(y, s)
    thresholds = _finite_thresholds(thresholds, s)
    return [
        {"fpr": float(fpr[i]), "tpr": float(tpr[i]), "threshold": float(thresholds[i])}
        for i in _thin(fpr.size)
    ]


def pr_points(labels: object, scores: object) -> list[dict]:
    """Precision-recall curve as ``[{"recall", "precision", "threshold"}]`` (≤ 200 points)."""
    y = _as_labels(labels)
    s = _as_scores(scores, y.size)
    check_binary(y)
    precision, recall, thresholds = precision_recall_curve(y, s)
    thresholds = _finite_thresholds(np.r_[thresholds, np.inf], s)  # last point: nothing flagged
    return [
        {
            "recall": float(recall[i]),
            "precision": float(precision[i]),
            "threshold": float(thresholds[i]),
        }
        for i in _thin(recall.size)
    ]
