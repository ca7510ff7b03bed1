"""The two test tracks and the per-method evaluation record.

* ``real``: anomalous vs healthy test scans (per class and folder too; pixel metrics where the
  data has lesion masks) — confounded on real data by where the images came from;
  per stratum of the manifest's view plane x sequence labels, and as its headline the
  like-with-like comparison of ``evaluate.matched`` (:class:`Strata`);
* ``lesion``: the paired track — lesioned copies of the healthy test scans against their clean
  twins (same scan, only the lesion differs), with pixel metrics of the anomaly maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from brainad import metrics as metrics_lib
from brainad.config import EvaluateConfig, LesionConfig, MatchedConfig
from brainad.data.arrays import SplitArrays
from brainad.evaluation.lesions import LesionSet, implant_lesions
from brainad.scoring.detector import ScoredImages


@dataclass
class MethodResult:
    """Everything evaluation knows about one method (model or baseline) on one study."""

    name: str
    kind: str  # "model" | "baseline"
    threshold: float
    threshold_method: str
    val_auroc: float
    test: ScoredImages
    lesion: ScoredImages
    metrics: dict
    curves: dict[str, list[dict]]


def curves(
    test: SplitArrays, track: LesionTrack, result_test: ScoredImages, result_lesion: ScoredImages
) -> dict[str, list[dict]]:
    """ROC and PR points of the real track and ROC points of the lesion track (computed once,
    here; the report only draws and writes them)."""
    clean = result_test.score[track.clean_index]
    pairs = len(track.clean_index)
    return {
        "real_roc": metrics_lib.roc_points(test.labels, result_test.score),
        "real_pr": metrics_lib.pr_points(test.labels, result_test.score),
        "lesion_roc": metrics_lib.roc_points(
            np.r_[np.zeros(pairs), np.ones(pairs)], np.r_[clean, result_lesion.score]
        ),
    }


class LesionTrack(NamedTuple):
    """The paired track: lesioned copies of healthy scans and, for each copy, its clean twin.

    Args:
        lesions: the lesioned copies (copy ``k`` of healthy scan ``i`` at ``k * n_healthy + i``).
        clean_index: index in the split of each copy's clean twin (same order as the copies).
        brain_masks: brain masks of the copies (those of their twins).
    """

    lesions: LesionSet
    clean_index: np.ndarray
    brain_masks: np.ndarray


def lesion_track(config: LesionConfig, arrays: SplitArrays) -> LesionTrack:
    """Implant lesions into the healthy scans of ``arrays`` (test, or validation for the
    ablation): same scans, only the lesion differs."""
    healthy = np.flatnonzero(arrays.labels == 0)
    lesions = implant_lesions(
        arrays.images[healthy].astype(np.float32), arrays.brain_masks[healthy], config
    )
    clean_index = np.tile(healthy, config.per_image)
    return LesionTrack(lesions, clean_index, arrays.brain_masks[clean_index])


class Strata(NamedTuple):
    """Manifest labels of a split's scans (test; validation in the ablation), for the
    per-stratum real track.

    Args:
        keys: (N,) ``"<plane>/<sequence>"`` of each scan (``unknown`` where unlabelled).
        matched: (N,) True for the scans of the like-with-like comparison (``evaluate.matched``).
    """

    keys: np.ndarray
    matched: np.ndarray


def strata_of(arrays: SplitArrays, rows: list[dict], config: MatchedConfig) -> Strata:
    """The :class:`Strata` of ``arrays`` from the study's manifest ``rows`` (matched by path).

    Raises:
        ValueError: a scan of ``arrays`` is not in the manifest (stale arrays: re-run the
            pipeline).
    """
    by_path = {row["path"]: row for row in rows}
    keys, matched = [], []
    for path, label in zip(arrays.paths.tolist(), arrays.labels.tolist(), strict=True):
        row = by_path.get(path)
        if row is None:
            raise ValueError(f"{path}: in the arrays but not in the manifest; re-run `dvc repro`")
        plane, sequence = row.get("plane") or "unknown", row.get("sequence") or "unknown"
        sequences = config.anomalous_sequences if label == 1 else config.healthy_sequences
        keys.append(f"{plane}/{sequence}")
        matched.append(plane in config.planes and sequence in sequences)
    return Strata(np.array(keys, dtype=np.str_), np.array(matched, dtype=bool))


def _stratum_record(
    ev: EvaluateConfig, labels: np.ndarray, scores: np.ndarray, threshold: float, keep: np.ndarray
) -> dict:
    """Metrics with CIs on the scans ``keep`` (counts only unless both classes have 2 scans)."""
    n = {"healthy": int((labels[keep] == 0).sum()), "anomalous": int((labels[keep] == 1).sum())}
    if min(n.values()) < 2:
        return {"n": n}
    return _with_ci(labels[keep], scores[keep], threshold, ev)


def stratum_metrics(
    ev: EvaluateConfig, labels: np.ndarray, scores: np.ndarray, threshold: float, strata: Strata
) -> dict:
    """The real track like with like: ``matched`` (the headline, with CIs) and ``by_stratum``:
    per plane/sequence, its anomalous scans against its healthy scans (``like_with_like``) and
    its healthy scans against every anomalous scan (``healthy_vs_all_anomalous``: which healthy
    contrast a method confuses with the anomalies)."""
    out = {"matched": _stratum_record(ev, labels, scores, threshold, strata.matched)}
    out["by_stratum"] = {}
    for key in sorted(set(strata.keys.tolist())):
        inside = strata.keys == key
        record = {"like_with_like": _stratum_record(ev, labels, scores, threshold, inside)}
        healthy = inside & (labels == 0)
        if healthy.any() and (labels == 1).any():
            keep = healthy | (labels == 1)
            record["healthy_vs_all_anomalous"] = metrics_lib.roc_auc(labels[keep], scores[keep])
        out["by_stratum"][key] = record
    return out


def _with_ci(labels: np.ndarray, scores: np.ndarray, threshold: float, ev: EvaluateConfig) -> dict:
    out = metrics_lib.all_metrics(labels, scores, threshold)
    out["ci"] = metrics_lib.bootstrap_ci(labels, scores, threshold, ev.bootstrap, ev.ci, ev.seed)
    out["n"] = {"healthy": int((labels == 0).sum()), "anomalous": int((labels == 1).sum())}
    return out


def _real_track(
    ev: EvaluateConfig,
    test: SplitArrays,
    scored: ScoredImages,
    threshold: float,
    strata: Strata | None,
) -> dict:
    out = _with_ci(test.labels, scored.score, threshold, ev)
    if strata is not None:
        out.update(stratum_metrics(ev, test.labels, scored.score, threshold, strata))
    out["by_class"] = {}
    for name in sorted(set(test.class_names[test.labels == 1].tolist())):
        keep = (test.labels == 0) | (test.class_names == name)
        out["by_class"][name] = metrics_lib.all_metrics(
            test.labels[keep], scored.score[keep], threshold
        )
    out["by_folder"] = {}
    for folder in sorted(set(test.folders.tolist())):
        keep = test.folders == folder
        if len(np.unique(test.labels[keep])) == 2:
            out["by_folder"][folder] = metrics_lib.all_metrics(
                test.labels[keep], scored.score[keep], threshold
            )
    if scored.maps is not None and test.has_lesion_mask.any():
        keep = test.has_lesion_mask
        out["pixel"] = metrics_lib.pixel_metrics(
            test.lesion_masks[keep], scored.maps[keep], test.brain_masks[keep], seed=ev.seed
        )
    return out


def _lesion_groups(
    track: LesionTrack, clean: np.ndarray, lesioned: np.ndarray, key: str
) -> dict[str, dict]:
    """Lesion-track ROC-AUC and pairs-higher per lesion ``kind`` or ``size`` (each group's
    lesioned copies against their own clean twins)."""
    groups = np.array([p[key] for p in track.lesions.params])
    out = {}
    for name in sorted(set(groups.tolist())):
        keep = groups == name
        labels = np.r_[np.zeros(keep.sum(), np.int8), np.ones(keep.sum(), np.int8)]
        out[name] = {
            "roc_auc": metrics_lib.roc_auc(labels, np.r_[clean[keep], lesioned[keep]]),
            "pairs_lesioned_higher": float(np.mean(lesioned[keep] > clean[keep])),
            "n": int(keep.sum()),
        }
    return out


def track_metrics(
    ev: EvaluateConfig,
    test: SplitArrays,
    track: LesionTrack,
    result_test: ScoredImages,
    result_lesion: ScoredImages,
    threshold: float,
    strata: Strata | None = None,
) -> dict:
    """Track 1 (real anomalies; per stratum with ``strata``) and track 2 (paired lesions)
    metrics with bootstrap CIs."""
    real = _real_track(ev, test, result_test, threshold, strata)
    out: dict = {"threshold": threshold, "real": real}
    clean = result_test.score[track.clean_index]
    lesioned = result_lesion.score
    labels = np.r_[np.zeros(len(clean), np.int8), np.ones(len(lesioned), np.int8)]
    scores = np.r_[clean, lesioned]
    out["lesion"] = _with_ci(labels, scores, threshold, ev)
    out["lesion"]["pairs_lesioned_higher"] = float(np.mean(lesioned > clean))
    for key in ("kind", "size"):
        out["lesion"][f"by_{key}"] = _lesion_groups(track, clean, lesioned, key)
    if result_lesion.maps is not None:
        out["lesion"]["pixel"] = metrics_lib.pixel_metrics(
            track.lesions.masks, result_lesion.maps, track.brain_masks, seed=ev.seed
        )
    return out
