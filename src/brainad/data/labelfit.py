"""Fit the per-label classifiers on the annotated sample, measure them held out, label the manifest.

The protocol (deterministic: fixed seeds, no shuffling without a seed):

1. Annotated rows are matched to the manifest by sha256. Whole near-duplicate clusters of them are
   held out (``filter.label_holdout`` of the clusters, chosen by a hash of the seed and the
   cluster's smallest sha256); the rest is the fit part.
2. For each label (plane, modality, sequence), every candidate — each feature set of
   :mod:`brainad.data.features` x each classifier of :data:`CANDIDATES` — is scored by grouped
   5-fold cross-validation on the fit part (groups = clusters); the best is chosen there.
3. The chosen candidate is fit on the fit part and scored once on the held-out part: its accuracy
   on the held-out images of the *random* sample is the reported accuracy (representative of the
   data); with the *targeted* images (picked to add rare cases) it is reported beside it. Every
   candidate's held-out accuracy is recorded too, for the record.
4. The chosen candidate is refit on every annotated row and labels the rest of the manifest; a
   prediction below ``filter.min_confidence`` becomes ``unknown``. Images labelled ``unknown`` by
   the annotator are not used to fit or score.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.base import ClassifierMixin, clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from brainad.config import FilterConfig
from brainad.data import labels as labels_lib
from brainad.data.features import FEATURE_SETS, extract_features
from brainad.data.labels import NO_LABELS, TARGETS, UNKNOWN, Labels
from brainad.data.split import stable_unit

log = logging.getLogger("brainad")

ACCURACY_TARGETS = {"plane": 0.95, "modality": 0.98, "sequence": None}  # issue 13
CV_FOLDS = 5


def _num(value: float) -> float | None:
    """JSON-safe number: NaN (nothing to measure) becomes None."""
    return None if value != value else float(value)


def _logreg(seed: int) -> ClassifierMixin:
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced")
    )


def _forest(seed: int) -> ClassifierMixin:
    return RandomForestClassifier(
        n_estimators=300, class_weight="balanced", random_state=seed, n_jobs=1
    )


CANDIDATES: dict[str, Callable[[int], ClassifierMixin]] = {"logreg": _logreg, "forest": _forest}


def holdout_mask(
    rows: list[dict], annotated: np.ndarray, cluster_ids: np.ndarray, config: FilterConfig
) -> np.ndarray:
    """True for annotated rows whose whole cluster is held out."""
    smallest: dict[int, str] = {}
    for i in annotated:
        cid = int(cluster_ids[i])
        smallest[cid] = min(smallest.get(cid, rows[i]["sha256"]), rows[i]["sha256"])
    held = {
        c
        for c, sha in smallest.items()
        if stable_unit(config.label_seed, sha) < config.label_holdout
    }
    return np.array([int(cluster_ids[i]) in held for i in annotated], dtype=bool)


def _cv_accuracy(model: ClassifierMixin, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    folds = min(CV_FOLDS, len(set(groups.tolist())))
    if folds < 2:
        return None
    hits = 0
    for fit, test in GroupKFold(n_splits=folds).split(x, y, groups):
        if len(set(y[fit].tolist())) < 2:
            hits += int((y[test] == y[fit][0]).sum())
            continue
        hits += int((clone(model).fit(x[fit], y[fit]).predict(x[test]) == y[test]).sum())
    return hits / len(y) if len(y) else None


def _fit_predict(model: ClassifierMixin, x_fit, y_fit, x_new) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels and their probability; a single-class fit predicts that class."""
    if len(set(y_fit.tolist())) < 2:
        return np.full(len(x_new), y_fit[0], dtype=object), np.ones(len(x_new))
    fitted = clone(model).fit(x_fit, y_fit)
    proba = fitted.predict_proba(x_new)
    return fitted.classes_[proba.argmax(axis=1)], proba.max(axis=1)


def _held_out_record(y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray, config) -> dict:
    classes = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    confident = proba >= config.min_confidence
    return {
        "n": int(len(y_true)),
        "accuracy": _num(float((y_true == y_pred).mean())) if len(y_true) else None,
        "confusion": {
            "labels": classes,
            "rows_are": "annotation (true)",
            "columns_are": "prediction",
            "matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        },
        "coverage_at_min_confidence": float(confident.mean()) if len(y_true) else None,
        "accuracy_of_confident": float((y_true == y_pred)[confident].mean())
        if confident.any()
        else None,
    }


def _by_class(classes: np.ndarray, hits: np.ndarray) -> dict:
    """Held-out accuracy and n per dataset class (e.g. sequence on healthy images alone)."""
    return {
        str(c): {"n": int((classes == c).sum()), "accuracy": float(hits[classes == c].mean())}
        for c in sorted(set(classes.tolist()))
    }


class _Sample:
    """The annotated rows: features, labels, clusters, the held-out mask."""

    def __init__(self, features, rows, annotated, truth, cluster_ids, config) -> None:
        self.features = {name: x[annotated] for name, x in features.items()}
        self.truth = [a.labels for a in truth]  # per annotated row
        self.random = np.array([a.sample == "random" for a in truth], dtype=bool)
        self.classes = np.array([rows[i]["class_name"] for i in annotated], dtype=object)
        self.groups = cluster_ids[annotated]
        self.held = holdout_mask(rows, annotated, cluster_ids, config)


def _fit_target(target: str, sample: _Sample, features: dict, config: FilterConfig) -> tuple:
    """Choose, score and apply one label's classifier; returns (report, labels of every row)."""
    y = np.array([getattr(t, target) for t in sample.truth], dtype=object)
    known = y != UNKNOWN
    fit, held = known & ~sample.held, known & sample.held
    random = sample.random[held]  # the representative part: drawn at random, not picked
    attempts, best = [], None
    for feature_set in FEATURE_SETS:
        x = sample.features[feature_set]
        for name, factory in CANDIDATES.items():
            model = factory(config.label_seed)
            cv = _cv_accuracy(model, x[fit], y[fit], sample.groups[fit])
            hits = _fit_predict(model, x[fit], y[fit], x[held])[0] == y[held]
            attempts.append(
                {
                    "features": feature_set,
                    "model": name,
                    "cv_accuracy_fit_part": cv,
                    "held_out_accuracy": float(hits[random].mean()) if random.any() else None,
                    "held_out_accuracy_with_targeted": float(hits.mean()) if held.any() else None,
                }
            )
            if best is None or (cv or 0.0) > best[0]:
                best = (cv or 0.0, feature_set, name)
    _, feature_set, name = best
    model, x = CANDIDATES[name](config.label_seed), sample.features[feature_set]
    pred, proba = _fit_predict(model, x[fit], y[fit], x[held])
    record = {
        "classes_annotated": dict(Counter(y.tolist())),
        "n_fit": int(fit.sum()),
        "attempts": attempts,
        "chosen": {
            "features": feature_set,
            "model": name,
            "chosen_by": "grouped CV on the fit part",
        },
        "held_out": _held_out_record(y[held][random], pred[random], proba[random], config),
        "held_out_with_targeted": _held_out_record(y[held], pred, proba, config),
        "held_out_accuracy_by_class": _by_class(
            sample.classes[held][random], y[held][random] == pred[random]
        ),
        "target_accuracy": ACCURACY_TARGETS[target],
    }
    goal = ACCURACY_TARGETS[target]
    accuracy = record["held_out"]["accuracy"]
    record["target_met"] = None if goal is None or accuracy is None else accuracy >= goal
    all_pred, all_proba = _fit_predict(model, x[known], y[known], features[feature_set])
    return record, np.where(all_proba >= config.min_confidence, all_pred, UNKNOWN)


def label_rows(
    rows: list[dict], root: Path, cluster_ids: np.ndarray, config: FilterConfig, max_pixels: int
) -> dict:
    """Set ``plane, modality, sequence, flags, label_source`` on every manifest row; report."""
    source = labels_lib.read_source_labels(root)
    annotations = (
        labels_lib.read_annotations(Path(config.annotations)) if config.annotations else {}
    )
    annotated = np.array(
        [i for i, r in enumerate(rows) if r["sha256"] in annotations and not r["error"]], np.int64
    )
    report: dict = {
        "annotations": config.annotations,
        "annotations_in_file": len(annotations),
        "annotations_matched": int(len(annotated)),
        "source_labels": len(source),
        "min_confidence": config.min_confidence,
        "targets": {},
    }
    predicted: dict[str, np.ndarray] = {}
    if len(annotated):
        features = extract_features(root, rows, max_pixels)
        truth = [annotations[rows[i]["sha256"]] for i in annotated]
        sample = _Sample(features, rows, annotated, truth, cluster_ids, config)
        report["annotated_by_sample"] = dict(Counter(a.sample for a in truth))
        report["holdout"] = {
            "fraction_of_clusters": config.label_holdout,
            "seed": config.label_seed,
            "n_held_out": int(sample.held.sum()),
            "clusters_held_out": len(set(sample.groups[sample.held].tolist())),
            "clusters_fit": len(set(sample.groups[~sample.held].tolist())),
            "cross_clusters": len(
                set(sample.groups[sample.held].tolist()) & set(sample.groups[~sample.held].tolist())
            ),
        }
        for target in TARGETS:
            report["targets"][target], predicted[target] = _fit_target(
                target, sample, features, config
            )
            log.info("labels: %s held-out %s", target, report["targets"][target]["held_out"])
    _assign(rows, annotations, source, predicted)
    report["label_source_counts"] = dict(Counter(r["label_source"] for r in rows))
    return report


def _assign(rows: list[dict], annotations: dict, source: dict, predicted: dict) -> None:
    for i, row in enumerate(rows):
        if row["error"]:
            labels, origin = NO_LABELS, "none"
        elif row["sha256"] in annotations:
            labels, origin = annotations[row["sha256"]].labels, "annotation"
        elif row["path"] in source:
            labels, origin = source[row["path"]], "source"
        elif predicted:
            labels = Labels(*(str(predicted[t][i]) for t in TARGETS), "")
            origin = "classifier"
        else:
            labels, origin = NO_LABELS, "none"
        row.update(labels._asdict(), label_source=origin)
