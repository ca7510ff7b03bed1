"""Score-side ablation on the VALIDATION split (never the test split): which model and which score
settings separate lesioned from clean scans.

For each trained model, every validation image and a lesioned copy of each healthy validation
scan (the same :func:`~brainad.evaluation.tracks.lesion_track` as the test track) go once
through the model's raw detector (:func:`~brainad.scoring.bundle.raw_detector`: unsmoothed,
with the model's diagnostic maps); each variant (map kind × smoothing × aggregation) is then
measured on three validation tracks:

- ``real``: ROC-AUC of anomalous vs healthy validation scans (confounded by the image source),
  and ``matched``: the same like with like (``evaluate.matched`` strata of the manifest);
- ``lesion``: ROC-AUC of lesioned copies vs their clean twins, and the fraction of pairs in which
  the copy scores higher;
- ``pixel``: pixel ROC-AUC of the anomaly map inside the brain mask of the lesioned copies.

Map kinds: ``residual`` (|input − reconstruction|; for the token prior the healed
reconstruction) for reconstruction models, ``segmentation`` (the anomaly probability inside the
brain) for the segmenter, and each model's ``diagnostic_maps``: for VQGAN+D the ``quantisation
distance`` (distance of each encoder output to its nearest code), for the token prior
``token_nll`` and ``restoration`` (|VQGAN+D reconstruction − healed|).

Each model's best variant (by the bake-off's merit, below) is also **combined with the mirror
asymmetry** (:mod:`brainad.scoring.combined`): both scores standardised on the healthy
validation scans and summed with the asymmetry weighted by each of :data:`ASYMMETRY_WEIGHTS`,
exactly as ``score.weight_asymmetry`` makes the evaluate stage and the CLI score
(:func:`~brainad.scoring.calibration.combine`). Such a row's map is still the model's.

The trivial baselines (:func:`~brainad.scoring.baselines.default_baselines`, fitted on the
healthy training scans) are measured on the same tracks, so the bar each model has to clear on
validation stands in the same table.

The **bake-off** (:func:`bake_off`) ranks the models: each model's best variant by the mean of
its validation lesion ROC-AUC and its real-track ROC-AUC like with like (``matched``; the whole
real track where the study has no matched stratum), beside the best baseline of each track. Its
winner is what ``evaluate.default_model`` should name. How sure the ranking is
(:func:`merit_uncertainty`) is reported beside it, never used by it: each contender's merit is
re-measured on bootstrap resamples of the validation scans, and the winner's lead over the
runner-up gets a percentile interval and the share of resamples in which it holds.

The ``ablate`` stage writes ``reports/<study>/ablation/validation.{json,md}``; the evaluate stage
puts the table into ``summary.md``, so every variant tried is reported beside the chosen one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from brainad import metrics as metrics_lib
from brainad.config import ScoreConfig, StudyConfig
from brainad.data.arrays import SplitArrays, load_arrays
from brainad.data.manifest import read_manifest
from brainad.evaluation.tracks import LesionTrack, Strata, lesion_track, strata_of
from brainad.models.checkpoint import load_model
from brainad.runtime import deterministic_kernels, study_deterministic
from brainad.scoring.baselines import MirrorAsymmetry, default_baselines
from brainad.scoring.bundle import raw_detector
from brainad.scoring.calibration import Calibration, combine, fit_standardiser
from brainad.scoring.detector import pixel_maps, score_raw
from brainad.scoring.gan import SELECTION_SCORE
from brainad.scoring.maps import aggregate, smooth
from brainad.utils import select_device, write_json, write_text

log = logging.getLogger("brainad")

SMOOTHING = (("none", 1), ("gaussian", 5), ("gaussian", 9), ("gaussian", 13), ("median", 5))
AGGREGATES = (("mean", 1.0), ("topk", 1.0), ("topk", 5.0), ("max", 1.0))
BATCH_SIZE = 32  # images per forward pass (the variants are computed on the whole split)
ASYMMETRY_WEIGHTS = (0.5, 1.0, 2.0)  # score.weight_asymmetry values tried with each model
SCORED_MAPS = ("residual", "segmentation")  # the maps a study's detector scores
MERIT_RESAMPLES = 1000  # bootstrap resamples of the validation scans behind the bake-off's CIs
MERIT_CI = 0.95
MERIT_SEED = 0


class _Validation(NamedTuple):
    """The validation split, its lesion track and its strata (None without a manifest)."""

    val: SplitArrays
    track: LesionTrack
    strata: Strata | None


def _row(data: _Validation, s_val: np.ndarray, s_les: np.ndarray, **about) -> dict:
    """One variant's numbers from its validation scores and its lesioned copies' scores."""
    clean = s_val[data.track.clean_index]
    labels = np.r_[np.zeros(len(clean)), np.ones(len(s_les))]
    matched = None  # JSON has no NaN
    if data.strata is not None and len(np.unique(data.val.labels[data.strata.matched])) == 2:
        keep = data.strata.matched
        matched = metrics_lib.roc_auc(data.val.labels[keep], s_val[keep])
    return {
        **about,
        "real_auroc": metrics_lib.roc_auc(data.val.labels, s_val),
        "matched_auroc": matched,
        "lesion_auroc": metrics_lib.roc_auc(labels, np.r_[clean, s_les]),
        "pairs_higher": float(np.mean(s_les > clean)),
    }


class _Scored(NamedTuple):
    """A variant's row and its scores (validation scans, lesioned copies)."""

    row: dict
    val: np.ndarray
    lesioned: np.ndarray


def _variant_rows(
    name: str, epoch: int, maps_val: dict, maps_les: dict, data: _Validation
) -> list[_Scored]:
    val, track = data.val, data.track
    brain_val = torch.from_numpy(val.brain_masks)
    brain_les = torch.from_numpy(track.brain_masks)
    rows = []
    for kind in maps_val:
        for smoothing, px in SMOOTHING:
            score = dataclasses.replace(SELECTION_SCORE, smoothing=smoothing, smoothing_px=px)
            sm_val = smooth(maps_val[kind], score) * brain_val
            sm_les = smooth(maps_les[kind], score) * brain_les
            pixel = metrics_lib.pixel_metrics(
                track.lesions.masks, sm_les.numpy(), track.brain_masks, seed=0
            )["pixel_auroc"]
            for method, k in AGGREGATES:
                s_val = aggregate(sm_val, brain_val, method, k).numpy()
                s_les = aggregate(sm_les, brain_les, method, k).numpy()
                variant = dataclasses.replace(score, aggregate=method, topk_percent=k)
                about = {
                    "model": name,
                    "kind": "model",
                    "epoch": epoch,
                    "map": kind,
                    "smoothing": f"{smoothing} {px}px" if px > 1 else smoothing,
                    "aggregate": method if method != "topk" else f"top {k:g}%",
                    "weight_asymmetry": 0.0,
                    "score": _score_fields(variant),
                }
                row = {**_row(data, s_val, s_les, **about), "pixel_auroc": pixel}
                rows.append(_Scored(row, s_val, s_les))
    return rows


def _asymmetry_scores(data: _Validation) -> _Scored:
    """The mirror-asymmetry statistic of the validation scans and of the lesioned copies."""
    mirror = MirrorAsymmetry()
    s_val = score_raw(mirror, data.val.images, data.val.brain_masks).components["score"]
    s_les = score_raw(mirror, data.track.lesions.images, data.track.brain_masks)
    return _Scored({}, s_val, s_les.components["score"])


def _best(variants: list[_Scored]) -> _Scored:
    """The variant of highest :func:`_merit` (the first of equals, as :func:`bake_off`)."""
    return max(variants, key=lambda v: _merit(v.row))


def _combined_rows(data: _Validation, variants: list[_Scored], asymmetry: _Scored) -> list[_Scored]:
    """The model's best variant (:func:`_merit`) plus the asymmetry at each weight of
    :data:`ASYMMETRY_WEIGHTS`, standardised and summed as the detector's calibration does."""
    best = _best(variants)
    healthy = data.val.labels == 0
    on_val = {"model": best.val, "asymmetry": asymmetry.val}
    on_lesioned = {"model": best.lesioned, "asymmetry": asymmetry.lesioned}
    means, stds = fit_standardiser({k: v[healthy] for k, v in on_val.items()})
    calibration = Calibration(means, stds, float("nan"), "none")
    rows = []
    for weight in ASYMMETRY_WEIGHTS:
        weights = {"model": 1.0, "asymmetry": weight}
        s_val = combine(on_val, calibration, weights)
        s_les = combine(on_lesioned, calibration, weights)
        about = {k: best.row[k] for k in ("model", "kind", "epoch", "smoothing", "aggregate")}
        about |= {"map": f"{best.row['map']} + asymmetry ×{weight:g}", "weight_asymmetry": weight}
        about["score"] = {**best.row["score"], "weight_asymmetry": weight}
        row = {**_row(data, s_val, s_les, **about), "pixel_auroc": best.row["pixel_auroc"]}
        rows.append(_Scored(row, s_val, s_les))
    return rows


def _score_fields(score: ScoreConfig) -> dict:
    """The ``score`` section that runs a variant (its batch size is no part of it)."""
    return {k: v for k, v in dataclasses.asdict(score).items() if k != "batch_size"}


def score_differences(score: ScoreConfig, variant: dict) -> list[str]:
    """Where a study's ``score`` section differs from a bake-off ``variant`` (a row of
    :func:`run_ablation`): ``[]`` when the study's detector runs exactly that variant. Settings
    that have no effect (the width of no smoothing, the share of a non-top-k aggregate) are not
    compared; a diagnostic map (:data:`SCORED_MAPS` are the scored ones) cannot be set at all."""
    wanted = variant.get("score")
    if wanted is None:
        return ["the variant records no score settings: re-run the ablate stage"]
    out = []
    kind = variant["map"].split(" + ")[0]
    if kind not in SCORED_MAPS:
        out.append(f"map `{kind}` is a diagnostic map, which no `score` setting selects")
    for key, value in wanted.items():
        if key == "smoothing_px" and wanted["smoothing"] == "none":
            continue
        if key == "topk_percent" and wanted["aggregate"] != "topk":
            continue
        if getattr(score, key) != value:
            out.append(f"`{key}` is {getattr(score, key)!r}, the variant's {value!r}")
    return out


def _baseline_rows(config: StudyConfig, train: SplitArrays, data: _Validation) -> list[dict]:
    """Each trivial baseline, fitted on the healthy training scans, on the validation tracks."""
    healthy = train.labels == 0
    rows = []
    for baseline in default_baselines(config.evaluate):
        baseline.fit(train.images[healthy].astype(np.float32), train.brain_masks[healthy])
        s_val = score_raw(baseline, data.val.images, data.val.brain_masks)
        s_les = score_raw(baseline, data.track.lesions.images, data.track.brain_masks, True)
        about = {"model": baseline.name, "kind": "baseline", "epoch": 0, "map": "own"}
        about |= {"smoothing": "own", "aggregate": "own"}
        row = _row(data, s_val.components["score"], s_les.components["score"], **about)
        pixel = None
        if s_les.maps is not None:
            pixel = metrics_lib.pixel_metrics(
                data.track.lesions.masks, s_les.maps, data.track.brain_masks, seed=0
            )["pixel_auroc"]
        rows.append({**row, "pixel_auroc": pixel})
    return rows


def _merit(row: dict) -> float:
    """The bake-off's criterion: mean of the validation lesion ROC-AUC and the like-with-like
    real-track ROC-AUC (the whole real track where there is no matched stratum)."""
    real = row["matched_auroc"] if row.get("matched_auroc") is not None else row["real_auroc"]
    return (row["lesion_auroc"] + real) / 2


def _uses_matched(data: _Validation) -> bool:
    """Whether the merit's real-track term is like with like (as :func:`_row` decides)."""
    if data.strata is None:
        return False
    return len(np.unique(data.val.labels[data.strata.matched])) == 2


def merit_uncertainty(
    data: _Validation,
    contenders: dict[str, _Scored],
    resamples: int = MERIT_RESAMPLES,
    ci: float = MERIT_CI,
    seed: int = MERIT_SEED,
) -> dict | None:
    """How sure the bake-off's ranking is: :func:`_merit` on bootstrap resamples of the
    validation scans.

    Each resample draws, with replacement, as many healthy scans from the healthy ones and as many
    anomalous from the anomalous ones as validation has; a drawn healthy scan brings its lesioned
    copies along (the lesion track is paired), and the real-track term uses the drawn scans of the
    like-with-like stratum where :func:`_merit` does. Every contender (each model's best variant)
    is measured on the same resamples, so their difference is paired. Resamples whose stratum
    lacks a class are skipped and counted.

    Returns ``None`` for fewer than two contenders, else the merit interval of each, the
    runner-up, the winner's lead over it with its interval, and the share of resamples in which
    the winner leads (the ranking itself stays the point estimate's, :func:`bake_off`).
    """
    if len(contenders) < 2:
        return None
    labels = data.val.labels
    healthy, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    copies = [np.flatnonzero(data.track.clean_index == i) for i in range(len(labels))]
    in_stratum = data.strata.matched if _uses_matched(data) else np.ones(len(labels), bool)
    rng = np.random.default_rng(seed)
    merits = {name: np.full(resamples, np.nan) for name in contenders}
    for b in range(resamples):
        drawn = np.r_[rng.choice(healthy, healthy.size), rng.choice(anomalous, anomalous.size)]
        scans = drawn[in_stratum[drawn]]
        lesioned = np.concatenate([copies[i] for i in drawn[: healthy.size]])
        if len(np.unique(labels[scans])) < 2 or lesioned.size == 0:
            continue
        pairs = np.r_[np.zeros(lesioned.size), np.ones(lesioned.size)]
        for name, s in contenders.items():
            clean = s.val[data.track.clean_index[lesioned]]
            lesion = metrics_lib.roc_auc(pairs, np.r_[clean, s.lesioned[lesioned]])
            merits[name][b] = (lesion + metrics_lib.roc_auc(labels[scans], s.val[scans])) / 2
    alpha = (1.0 - ci) / 2.0

    def interval(values: np.ndarray) -> list[float]:
        return [float(np.nanquantile(values, alpha)), float(np.nanquantile(values, 1 - alpha))]

    ranked = sorted(contenders, key=lambda name: -_merit(contenders[name].row))
    winner, runner_up = ranked[:2]
    lead = merits[winner] - merits[runner_up]
    valid = np.isfinite(lead)
    return {
        "resamples": resamples,
        "skipped": int((~valid).sum()),
        "ci": ci,
        "seed": seed,
        "merit_ci": {name: interval(values) for name, values in merits.items()},
        "winner": winner,
        "runner_up": runner_up,
        "lead": _merit(contenders[winner].row) - _merit(contenders[runner_up].row),
        "lead_ci": interval(lead),
        "winner_leads": float(np.mean(lead[valid] > 0)),
    }


def bake_off(rows: list[dict]) -> dict:
    """Each model's best variant by :func:`_merit`, the best baseline of each track, the winner
    among the models, and whether it beats every baseline on both tracks (on validation)."""
    best: dict[str, dict] = {}
    for row in (r for r in rows if r["kind"] == "model"):
        if row["model"] not in best or _merit(row) > _merit(best[row["model"]]):
            best[row["model"]] = row
    baselines = [r for r in rows if r["kind"] == "baseline"]
    tracks = {"lesion": "lesion_auroc", "real": "real_auroc", "matched": "matched_auroc"}
    bars = {}
    for track, key in tracks.items():
        scored = [r for r in baselines if r.get(key) is not None]
        if scored:
            top = max(scored, key=lambda r: r[key])
            bars[track] = {"baseline": top["model"], "roc_auc": top[key]}
    winner = max(best, key=lambda name: _merit(best[name])) if best else None
    headline = "matched" if "matched" in bars else "real"
    beats = None
    if winner is not None and bars:
        row = best[winner]
        beats = all(
            row[tracks[t]] is not None and row[tracks[t]] > bars[t]["roc_auc"]
            for t in ("lesion", headline)
            if t in bars
        )
    return {
        "criterion": f"mean of validation lesion ROC-AUC and {headline} ROC-AUC",
        "best_variant": {name: {**row, "merit": _merit(row)} for name, row in best.items()},
        "bars": bars,
        "winner": winner,
        "winner_beats_every_baseline": beats,
    }


def run_ablation(
    config: StudyConfig,
    arrays_dir: Path,
    models: dict[str, Path],
    out: Path,
    manifest: Path | None = None,
) -> dict:
    """Measure every variant of every model, and every baseline, on the validation tracks (like
    with like too, with the study's ``manifest``); write the JSON and the table."""
    device = select_device()
    val = load_arrays(arrays_dir / "val.npz")
    track = lesion_track(config.evaluate.lesions, val)
    strata = None
    if manifest is not None:
        strata = strata_of(val, read_manifest(manifest), config.evaluate.matched)
    data = _Validation(val, track, strata)
    rows = []
    contenders: dict[str, _Scored] = {}  # each model's best variant, for the ranking's CIs
    with deterministic_kernels(study_deterministic(config)):  # pinned in deterministic mode
        asymmetry = _asymmetry_scores(data)
        for name, path in models.items():
            model, payload = load_model(path, device=device)
            detector = raw_detector(name, model, device, diagnostics=True, batch_size=BATCH_SIZE)
            started = time.perf_counter()
            maps_val = pixel_maps(detector, val.images, val.brain_masks)
            maps_les = pixel_maps(detector, track.lesions.images, track.brain_masks)
            log.info(
                "%s: mapped %d images in %.0f s",
                name,
                len(val.images) + len(track.clean_index),
                time.perf_counter() - started,
            )
            epoch = int(payload.get("epoch", 0))
            variants = _variant_rows(name, epoch, maps_val, maps_les, data)
            variants += _combined_rows(data, variants, asymmetry)
            rows += [v.row for v in variants]
            contenders[name] = _best(variants)
        rows += _baseline_rows(config, load_arrays(arrays_dir / "train.npz"), data)
    document = {
        "study": config.name,
        "split": "val",
        "n": {
            "healthy": int((val.labels == 0).sum()),
            "anomalous": int((val.labels == 1).sum()),
            "lesioned": int(len(track.clean_index)),
        },
        "matched": None if strata is None else int(strata.matched.sum()),
        "models": {k: str(v) for k, v in models.items()},
        "bake_off": bake_off(rows),
        "rows": rows,
    }
    uncertainty = merit_uncertainty(data, contenders)
    if uncertainty is not None:
        if uncertainty["winner"] != document["bake_off"]["winner"]:  # one ranking rule, twice
            raise RuntimeError("merit_uncertainty and bake_off disagree on the winner")
        document["bake_off"]["uncertainty"] = uncertainty
    write_json(out / "validation.json", document)
    write_text(out / "validation.md", markdown(document))
    return document


def _bake_off_lines(record: dict | None) -> list[str]:
    if not record or record["winner"] is None:
        return []
    lines = [
        f"## Bake-off ({record['criterion']})",
        "",
        "| model | map | smoothing | aggregate | lesion ROC-AUC | real ROC-AUC | matched ROC-AUC "
        "| merit | merit CI |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    uncertainty = record.get("uncertainty") or {}
    ranked = sorted(record["best_variant"].values(), key=lambda r: -r["merit"])
    for r in ranked:
        low_high = uncertainty.get("merit_ci", {}).get(r["model"])
        interval = f"[{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else "–"
        lines.append(
            f"| {r['model']} | {r['map']} | {r['smoothing']} | {r['aggregate']} | "
            f"{_cell(r['lesion_auroc'])} | {_cell(r['real_auroc'])} | "
            f"{_cell(r.get('matched_auroc'))} | {_cell(r['merit'])} | {interval} |"
        )
    bars = ", ".join(
        f"{track} {bar['baseline']} {bar['roc_auc']:.3f}" for track, bar in record["bars"].items()
    )
    verdict = "beats" if record["winner_beats_every_baseline"] else "does NOT beat"
    lines += [
        "",
        f"Winner: **{record['winner']}**; it {verdict} the best baseline of each headline track "
        f"on validation (best baselines: {bars}).",
        *(["", lead_sentence(uncertainty)] if uncertainty else []),
        "",
        "## Every variant",
        "",
    ]
    return lines


def lead_sentence(uncertainty: dict) -> str:
    """The winner's lead over the runner-up, with its bootstrap interval, in one sentence."""
    low, high = uncertainty["lead_ci"]
    verdict = (
        "a tie within validation noise (the interval includes 0)"
        if low <= 0.0 <= high
        else "a lead beyond validation noise"
    )
    return (
        f"Lead of `{uncertainty['winner']}` over `{uncertainty['runner_up']}`: "
        f"{uncertainty['lead']:.3f} of merit, {uncertainty['ci'] * 100:g} % CI "
        f"[{low:.3f}, {high:.3f}] "
        f"over {uncertainty['resamples'] - uncertainty['skipped']} bootstrap resamples of the "
        f"validation scans; the winner leads in {uncertainty['winner_leads']:.0%} of them: "
        f"{verdict}. The interval is reported, not used: the winner is the point estimate's."
    )


def _cell(value: float, fmt: str = ".3f") -> str:
    return "–" if value is None or not np.isfinite(value) else format(value, fmt)


def markdown(document: dict) -> str:
    n = document["n"]
    matched = document.get("matched")
    lines = [
        f"# Score ablation on the validation split of `{document['study']}`",
        "",
        f"Validation only (the test split is not read): {n['healthy']} healthy and "
        f"{n['anomalous']} anomalous scans, {n['lesioned']} lesioned copies of the healthy ones"
        + (f"; {matched} scans in the like-with-like (matched) comparison." if matched else ".")
        + " Baselines (kind `baseline`) use their own statistic and map.",
        "",
        *_bake_off_lines(document.get("bake_off")),
        "| model | kind | map | smoothing | aggregate | real ROC-AUC | matched ROC-AUC "
        "| lesion ROC-AUC | pairs higher | pixel ROC-AUC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in document["rows"]:
        epoch = f" (epoch {r['epoch']})" if r.get("kind", "model") == "model" else ""
        lines.append(
            f"| {r['model']}{epoch} | {r.get('kind', 'model')} | {r['map']} | {r['smoothing']} | "
            f"{r['aggregate']} | {_cell(r['real_auroc'])} | {_cell(r.get('matched_auroc'))} | "
            f"{_cell(r['lesion_auroc'])} | {_cell(r['pairs_higher'], '.0%')} | "
            f"{_cell(r['pixel_auroc'])} |"
        )
    return "\n".join(lines) + "\n"
