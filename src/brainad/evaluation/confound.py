"""The confound ceiling: how well the class can be predicted from trivial features alone.

On real data the classes differ in where the images came from (scanner, file format, size,
view plane, sequence). A classifier given only such shortcuts — file size, image size and aspect,
channel count, bit depth, brain coverage, a coarse intensity histogram of the preprocessed slice,
and the curation labels (plane, modality, sequence) where the manifest has them — is fitted on the
VALIDATION split (its ROC-AUC cross-validated there, :data:`CV_FOLDS` folds, to choose between a
logistic regression and a random forest) and then scores the test split. Its test ROC-AUC is
printed beside every model's: a model that does not beat it may be reading the shortcut.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from brainad import metrics as metrics_lib
from brainad.config import EvaluateConfig
from brainad.data.arrays import SplitArrays
from brainad.evaluation.tracks import Strata, stratum_metrics

log = logging.getLogger("brainad")

CEILING = "confound_ceiling"  # its name in metrics.json and evaluation.json
CV_FOLDS = 5
HISTOGRAM_BINS = 16  # of the preprocessed brain intensities in [-1, 1]
NUMERIC = ("bytes", "width", "height", "channels", "bit_depth")
CATEGORICAL = ("plane", "modality", "sequence")  # curation labels, used where present
FOREST_TREES = 200


def _classifiers(seed: int) -> dict:
    return {
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)),
        "forest": RandomForestClassifier(
            n_estimators=FOREST_TREES, min_samples_leaf=2, random_state=seed, n_jobs=1
        ),
    }


def trivial_features(
    arrays: SplitArrays, rows: dict[str, dict], categories: dict[str, list[str]]
) -> np.ndarray:
    """(N, F) features of each image of ``arrays``: manifest numbers (log file size, width,
    height, aspect, channels, bit depth), brain coverage, a brain-intensity histogram, and one-hot
    curation labels (``categories``: the values of each label seen in the manifest)."""
    out = []
    for i, path in enumerate(arrays.paths.tolist()):
        row = rows.get(path)
        if row is None:
            raise ValueError(
                f"{path}: in the arrays but not in the manifest; re-run the pipeline (dvc repro)"
            )
        numbers = [float(row.get(key) or 0) for key in NUMERIC]
        numbers[0] = math.log1p(numbers[0])
        aspect = numbers[1] / numbers[2] if numbers[2] else 0.0
        brain = arrays.images[i, 0][arrays.brain_masks[i, 0]].astype(np.float32)
        histogram = np.histogram(brain, HISTOGRAM_BINS, (-1.0, 1.0))[0] / max(brain.size, 1)
        onehot = [
            float(row.get(key) == value) for key, values in categories.items() for value in values
        ]
        out.append([*numbers, aspect, float(arrays.coverage[i]), *histogram, *onehot])
    return np.asarray(out, dtype=np.float64)


def _categories(rows: dict[str, dict]) -> dict[str, list[str]]:
    found = {}
    for key in CATEGORICAL:
        values = sorted({str(r[key]) for r in rows.values() if r.get(key) not in (None, "")})
        if values:
            found[key] = values
    return found


def confound_ceiling(
    val: SplitArrays,
    test: SplitArrays,
    manifest_rows: list[dict],
    ev: EvaluateConfig,
    strata: Strata | None = None,
) -> dict:
    """The ceiling's record: the chosen classifier, every candidate's validation CV ROC-AUC, and
    the chosen one's test ROC-AUC with a bootstrap CI (``None`` values where validation lacks a
    class or has too few images per class for :data:`CV_FOLDS` folds); with the test scans'
    ``strata``, also its like-with-like ``matched`` and ``by_stratum`` records."""
    rows = {r["path"]: r for r in manifest_rows}
    categories = _categories(rows)
    x_val, x_test = (trivial_features(a, rows, categories) for a in (val, test))
    y_val = val.labels.astype(int)
    folds = min(CV_FOLDS, int(np.bincount(y_val, minlength=2).min()))
    record = {"features": _feature_names(categories), "cv_folds": folds, "candidates": {}}
    if folds < 2 or len(np.unique(test.labels)) < 2:
        log.warning("confound ceiling: too few images per class in validation or test; skipped")
        return {**record, "chosen": None, "roc_auc": None, "ci": None}
    splitter = StratifiedKFold(folds, shuffle=True, random_state=ev.seed)
    for name, classifier in _classifiers(ev.seed).items():
        cv = cross_val_predict(classifier, x_val, y_val, cv=splitter, method="predict_proba")
        record["candidates"][name] = {"val_cv_roc_auc": metrics_lib.roc_auc(y_val, cv[:, 1])}
    chosen = max(record["candidates"], key=lambda k: record["candidates"][k]["val_cv_roc_auc"])
    classifier = _classifiers(ev.seed)[chosen].fit(x_val, y_val)
    scores = classifier.predict_proba(x_test)[:, 1]
    ci = metrics_lib.bootstrap_ci(test.labels, scores, 0.5, ev.bootstrap, ev.ci, ev.seed)
    if strata is not None:
        record.update(stratum_metrics(ev, test.labels, scores, 0.5, strata))
    return {**record, "chosen": chosen, "roc_auc": ci["roc_auc"]["value"], "ci": ci["roc_auc"]}


def _feature_names(categories: dict[str, list[str]]) -> list[str]:
    names = ["log_bytes", *NUMERIC[1:], "aspect", "coverage"]
    names += [f"hist_{i}" for i in range(HISTOGRAM_BINS)]
    return names + [f"{key}={value}" for key, values in categories.items() for value in values]
