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
    assert (
        "| segmenter (epoch 3) | model | segmentation |"
        in (tmp_path / "out" / "validation.md").read_text()
    )


def test_bake_off_ranks_models_by_both_headline_tracks_against_the_best_baselines() -> None:
    from brainad.evaluation.ablation import bake_off

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
