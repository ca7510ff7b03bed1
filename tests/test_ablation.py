"""The ablation through the detector interface: reconstruction and segmentation models alike."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from helpers.brains import DAE, SEGMENTER, SIZE, disc_brains, split_arrays

from brainad.config import load_study
from brainad.data.arrays import save_arrays
from brainad.evaluation.ablation import AGGREGATES, ASYMMETRY_WEIGHTS, SMOOTHING, run_ablation
from brainad.models.checkpoint import save_checkpoint
from brainad.models.dae import DenoisingAE
from brainad.models.segmenter import Segmenter

ROOT = Path(__file__).resolve().parents[1]


def test_ablation_measures_every_variant_of_the_new_models(tmp_path: Path) -> None:
    config = load_study("demo", ROOT / "params.yaml")
    lesions = dataclasses.replace(config.evaluate.lesions, radius_range=(0.08, 0.15))
    config = dataclasses.replace(
        config, evaluate=dataclasses.replace(config.evaluate, lesions=lesions)
    )
    images, masks = disc_brains(12, seed=4)
    labels = np.r_[np.zeros(8), np.ones(4)]
    save_arrays(tmp_path / "val.npz", split_arrays(images, masks, labels))
    train_images, train_masks = disc_brains(16, seed=5)
    save_arrays(tmp_path / "train.npz", split_arrays(train_images, train_masks, np.zeros(16)))
    torch.manual_seed(0)
    models = {}
    for model in (DenoisingAE(DAE, SIZE), Segmenter(SEGMENTER, SIZE)):
        models[model.name] = tmp_path / f"{model.name}-best.pt"
        save_checkpoint(models[model.name], model, epoch=3)
    document = run_ablation(config, tmp_path, models, tmp_path / "out")
    baselines = [r for r in document["rows"] if r["kind"] == "baseline"]
    assert {r["model"] for r in baselines} >= {"mirror_asymmetry", "image_stats", "pca_recon"}
    assert all(0.0 <= r["lesion_auroc"] <= 1.0 for r in baselines)
    models = [r for r in document["rows"] if r["kind"] == "model"]
    rows = [r for r in models if r["weight_asymmetry"] == 0]
    variants = len(SMOOTHING) * len(AGGREGATES)
    assert {(r["model"], r["map"]) for r in rows} == {
        ("dae", "residual"),
        ("segmenter", "segmentation"),
    }
    assert len(rows) == 2 * variants and all(r["epoch"] == 3 for r in rows)
    # each model's best variant, combined with the mirror asymmetry at every weight tried
    combined = [r for r in models if r["weight_asymmetry"] > 0]
    assert sorted((r["model"], r["weight_asymmetry"]) for r in combined) == sorted(
        (name, w) for name in ("dae", "segmenter") for w in ASYMMETRY_WEIGHTS
    )
    for r in combined:
        best = document["bake_off"]["best_variant"][r["model"]]
        base = best["map"].split(" + ")[0]
        assert r["map"] == f"{base} + asymmetry ×{r['weight_asymmetry']:g}"
        assert 0.0 <= r["lesion_auroc"] <= 1.0 and r["pixel_auroc"] is not None
    assert all(0.0 <= r["lesion_auroc"] <= 1.0 and 0.0 <= r["real_auroc"] <= 1.0 for r in rows)
    # each model row names the `score` section that runs it; a study set to it agrees
    from brainad.evaluation.bakeoff import score_differences
    from brainad.scoring.gan import SELECTION_SCORE

    for r in models:
        study = dataclasses.replace(SELECTION_SCORE, **r["score"])
        assert r["score"]["weight_asymmetry"] == r["weight_asymmetry"]
        assert score_differences(study, r) == []
        assert score_differences(dataclasses.replace(study, aggregate="topk"), r) != [] or (
            r["score"]["aggregate"] == "topk"
        )
    text = (tmp_path / "out" / "validation.md").read_text()
    assert "| segmenter (epoch 3) | model | segmentation |" in text
    # how sure the ranking is: reported beside it, for each model's best variant
    uncertainty = document["bake_off"]["uncertainty"]
    assert uncertainty["winner"] == document["bake_off"]["winner"]
    assert set(uncertainty["merit_ci"]) == {"dae", "segmenter"}
    assert "| merit | merit CI |" in text and f"Lead of `{uncertainty['winner']}`" in text


def test_bake_off_ranks_models_by_both_headline_tracks_against_the_best_baselines() -> None:
    from brainad.evaluation.bakeoff import bake_off

    def row(model, kind, lesion, matched, real=0.5, **about):
        return {"model": model, "kind": kind, "map": "m", "smoothing": "s", "aggregate": "a",
                "lesion_auroc": lesion, "matched_auroc": matched, "real_auroc": real, **about}  # fmt: skip

    rows = [
        row("a", "model", 0.90, 0.60, aggregate="max"),  # merit 0.75
        row("a", "model", 0.70, 0.70, aggregate="mean"),  # merit 0.70: not a's best variant
        row("b", "model", 0.80, 0.85),  # merit 0.825: the winner
        row("asym", "baseline", 0.65, 0.80, real=0.9),
        row("stats", "baseline", 0.75, 0.40),
    ]
    record = bake_off(rows)
    assert record["winner"] == "b"
    assert record["best_variant"]["a"]["aggregate"] == "max"
    assert record["bars"]["lesion"] == {"baseline": "stats", "roc_auc": 0.75}
    assert record["bars"]["matched"] == {"baseline": "asym", "roc_auc": 0.80}
    assert record["winner_beats_every_baseline"] is True
    rows[2]["matched_auroc"] = 0.79  # below the asymmetry bar on the matched track
    assert bake_off(rows)["winner_beats_every_baseline"] is False


def _validation(labels: np.ndarray, copies: int, matched: np.ndarray | None = None):
    """A validation split of these labels with ``copies`` lesioned copies per healthy scan."""
    from brainad.evaluation.ablation import _Validation
    from brainad.evaluation.tracks import LesionTrack, Strata

    n = len(labels)
    val = split_arrays(np.zeros((n, 1, 4, 4)), np.ones((n, 1, 4, 4)), labels)
    clean_index = np.tile(np.flatnonzero(labels == 0), copies)
    strata = None if matched is None else Strata(np.array(["axial/t1"] * n), matched)
    return _Validation(val, LesionTrack(None, clean_index, None), strata)


def _arrays(data):
    """What :func:`merit_uncertainty` reads of a validation split: labels, each lesioned copy's
    clean twin, and the scans of the merit's real-track term (the matched stratum if any)."""
    labels = data.val.labels
    stratum = np.ones(len(labels), bool) if data.strata is None else data.strata.matched
    return labels, data.track.clean_index, stratum


def _contender(data, val: np.ndarray, lesioned: np.ndarray):
    """A best variant with these scores, its row measured as the ablation measures it."""
    from brainad.evaluation.ablation import _row
    from brainad.evaluation.bakeoff import Scored

    return Scored(_row(data, val, lesioned, model="m"), val, lesioned)


def test_merit_uncertainty_separates_a_clear_lead_from_a_tie() -> None:
    from brainad.evaluation.bakeoff import lead_sentence, merit_uncertainty

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(30), np.ones(20)].astype(np.int8)
    data = _validation(labels, copies=2)
    perfect = _contender(data, labels.astype(float), np.full(60, 2.0))  # merit 1 in every draw
    noise = _contender(data, rng.normal(size=50), rng.normal(size=60))
    record = merit_uncertainty(*_arrays(data), {"noise": noise, "perfect": perfect}, resamples=200)
    assert record["winner"] == "perfect" and record["runner_up"] == "noise"
    assert record["merit_ci"]["perfect"] == [1.0, 1.0] and record["skipped"] == 0
    low, high = record["merit_ci"]["noise"]  # chance, with the spread of 30 + 20 scans
    assert low < (noise.row["lesion_auroc"] + noise.row["real_auroc"]) / 2 < high
    assert 0.05 < high - low < 0.4 and 0.3 < low and high < 0.8
    assert record["lead_ci"][0] > 0 and record["winner_leads"] == 1.0
    assert "beyond validation noise" in lead_sentence(record)
    # a copy of the same scores only ties: its lead is exactly 0 in every resample
    record = merit_uncertainty(*_arrays(data), {"a": noise, "b": noise}, resamples=50)
    assert record["lead"] == 0.0 and record["lead_ci"] == [0.0, 0.0]
    assert record["winner_leads"] == 0.0 and "a tie" in lead_sentence(record)
    # one contender: nothing to rank
    assert merit_uncertainty(*_arrays(data), {"perfect": perfect}) is None


def test_merit_uncertainty_uses_the_like_with_like_stratum_where_the_merit_does() -> None:
    from brainad.evaluation.bakeoff import merit_uncertainty

    labels = np.r_[np.zeros(20), np.ones(20)].astype(np.int8)
    matched = np.r_[np.ones(10, bool), np.zeros(10, bool), np.ones(10, bool), np.zeros(10, bool)]
    data = _validation(labels, copies=1, matched=matched)
    # right inside the stratum, backwards outside it; every lesioned copy above every scan
    val = np.where(matched, labels, 1 - labels).astype(float)
    inside = _contender(data, val, np.full(20, 5.0))
    assert inside.row["matched_auroc"] == 1.0 and inside.row["real_auroc"] == 0.5
    outside = _contender(data, 1 - val, np.full(20, 5.0))
    record = merit_uncertainty(
        *_arrays(data), {"inside": inside, "outside": outside}, resamples=100
    )
    assert record["merit_ci"]["inside"] == [1.0, 1.0]
    assert record["merit_ci"]["outside"] == [0.5, 0.5]
    assert record["skipped"] == 0


def test_score_differences_names_each_setting_the_study_does_not_run() -> None:
    from brainad.evaluation.bakeoff import score_differences, score_fields
    from brainad.scoring.gan import SELECTION_SCORE

    chosen = dataclasses.replace(
        SELECTION_SCORE, smoothing="median", smoothing_px=5, weight_asymmetry=0.5
    )
    row = {"map": "residual + asymmetry ×0.5", "score": score_fields(chosen)}
    study = dataclasses.replace(chosen, batch_size=7, topk_percent=3.0)  # neither has effect
    assert score_differences(study, row) == []
    study = dataclasses.replace(study, aggregate="max", weight_asymmetry=0.0)
    assert score_differences(study, row) == [
        "`aggregate` is 'max', the variant's 'mean'",
        "`weight_asymmetry` is 0.0, the variant's 0.5",
    ]
    unsmoothed = {"map": "residual", "score": score_fields(SELECTION_SCORE)}
    assert score_differences(dataclasses.replace(SELECTION_SCORE, smoothing_px=9), unsmoothed) == []
    diagnostic = {**unsmoothed, "map": "quantisation distance"}
    assert "diagnostic map" in score_differences(SELECTION_SCORE, diagnostic)[0]
    assert "re-run the ablate stage" in score_differences(SELECTION_SCORE, {"map": "residual"})[0]
