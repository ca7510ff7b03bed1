"""The bake-off on validation: which model's best variant the study should run by default.

- :func:`merit` is the criterion (mean of the validation lesion ROC-AUC and the like-with-like
  real-track ROC-AUC); :func:`bake_off` ranks each model's best variant by it and sets the best
  baseline of each track beside the winner.
- :func:`merit_uncertainty` says how sure that ranking is: every contender's merit on the same
  bootstrap resamples of the validation scans, and the winner's lead over the runner-up. It is
  reported beside the ranking, never used by it.
- :func:`score_differences` checks that a study's ``score`` section runs the winner's variant
  (each ablation row records the settings that run it, :func:`score_fields`).
- :func:`bake_off_lines` and :func:`default_section` put all of it into ``validation.md`` and
  the top of ``summary.md``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from brainad import metrics as metrics_lib
from brainad.config import ScoreConfig

SCORED_MAPS = ("residual", "segmentation")  # the maps a study's detector scores
MERIT_RESAMPLES = 1000  # bootstrap resamples of the validation scans behind the bake-off's CIs
MERIT_CI = 0.95
MERIT_SEED = 0


class Scored(NamedTuple):
    """A variant's row and its scores (validation scans, lesioned copies)."""

    row: dict
    val: np.ndarray
    lesioned: np.ndarray


def merit(row: dict) -> float:
    """The bake-off's criterion: mean of the validation lesion ROC-AUC and the like-with-like
    real-track ROC-AUC (the whole real track where there is no matched stratum)."""
    real = row["matched_auroc"] if row.get("matched_auroc") is not None else row["real_auroc"]
    return (row["lesion_auroc"] + real) / 2


def score_fields(score: ScoreConfig) -> dict:
    """The ``score`` section that runs a variant (its batch size is no part of it)."""
    return {k: v for k, v in dataclasses.asdict(score).items() if k != "batch_size"}


def score_differences(score: ScoreConfig, variant: dict) -> list[str]:
    """Where a study's ``score`` section differs from a bake-off ``variant`` (a row of
    :func:`~brainad.evaluation.ablation.run_ablation`): ``[]`` when the study's detector runs
    exactly that variant. Settings that have no effect (the width of no smoothing, the share of
    a non-top-k aggregate) are not compared; a diagnostic map (:data:`SCORED_MAPS` are the
    scored ones) cannot be set at all."""
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


def merit_uncertainty(
    labels: np.ndarray,
    clean_index: np.ndarray,
    in_stratum: np.ndarray,
    contenders: dict[str, Scored],
    resamples: int = MERIT_RESAMPLES,
    ci: float = MERIT_CI,
    seed: int = MERIT_SEED,
) -> dict | None:
    """How sure the bake-off's ranking is: :func:`merit` on bootstrap resamples of the
    validation scans (``labels``; ``clean_index``: the clean twin of each lesioned copy;
    ``in_stratum``: the scans of the merit's real-track term, all of them without a stratum).

    Each resample draws, with replacement, as many healthy scans from the healthy ones and as many
    anomalous from the anomalous ones as validation has; a drawn healthy scan brings its lesioned
    copies along (the lesion track is paired), and the real-track term uses the drawn scans
    ``in_stratum``. Every contender (each model's best variant)
    is measured on the same resamples, so their difference is paired. Resamples whose stratum
    lacks a class are skipped and counted.

    Returns ``None`` for fewer than two contenders, else the merit interval of each, the
    runner-up, the winner's lead over it with its interval, and the share of resamples in which
    the winner leads (the ranking itself stays the point estimate's, :func:`bake_off`).
    """
    if len(contenders) < 2:
        return None
    healthy, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    copies = [np.flatnonzero(clean_index == i) for i in range(len(labels))]
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
            clean = s.val[clean_index[lesioned]]
            lesion = metrics_lib.roc_auc(pairs, np.r_[clean, s.lesioned[lesioned]])
            merits[name][b] = (lesion + metrics_lib.roc_auc(labels[scans], s.val[scans])) / 2
    alpha = (1.0 - ci) / 2.0

    def interval(values: np.ndarray) -> list[float]:
        return [float(np.nanquantile(values, alpha)), float(np.nanquantile(values, 1 - alpha))]

    ranked = sorted(contenders, key=lambda name: -merit(contenders[name].row))
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
        "lead": merit(contenders[winner].row) - merit(contenders[runner_up].row),
        "lead_ci": interval(lead),
        "winner_leads": float(np.mean(lead[valid] > 0)),
    }


def bake_off(rows: list[dict]) -> dict:
    """Each model's best variant by :func:`merit`, the best baseline of each track, the winner
    among the models, and whether it beats every baseline on both tracks (on validation)."""
    best: dict[str, dict] = {}
    for row in (r for r in rows if r["kind"] == "model"):
        if row["model"] not in best or merit(row) > merit(best[row["model"]]):
            best[row["model"]] = row
    baselines = [r for r in rows if r["kind"] == "baseline"]
    tracks = {"lesion": "lesion_auroc", "real": "real_auroc", "matched": "matched_auroc"}
    bars = {}
    for track, key in tracks.items():
        scored = [r for r in baselines if r.get(key) is not None]
        if scored:
            top = max(scored, key=lambda r: r[key])
            bars[track] = {"baseline": top["model"], "roc_auc": top[key]}
    winner = max(best, key=lambda name: merit(best[name])) if best else None
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
        "best_variant": {name: {**row, "merit": merit(row)} for name, row in best.items()},
        "bars": bars,
        "winner": winner,
        "winner_beats_every_baseline": beats,
    }


def bake_off_lines(record: dict | None) -> list[str]:
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


def default_section(
    study: str, default: str | None, ablation: dict | None, score: ScoreConfig | None
) -> list[str]:
    """Which detector the study recommends, whether the validation bake-off agrees, and whether
    the study's ``score`` section runs the winning variant."""
    if default is None:
        return []
    record = (ablation or {}).get("bake_off") or {}
    winner = record.get("winner")
    if winner is None:
        agreement = "the ablation has no bake-off record"
    elif winner == default:
        best = record["best_variant"][winner]
        differences = None if score is None else score_differences(score, best)
        if differences is None:
            settings = ""
        elif differences:
            settings = "; **the study's `score` section does not run that variant**: " + "; ".join(
                differences
            )
        else:
            settings = "; the study's `score` section runs that variant"
        agreement = (
            f"it is the validation bake-off's winner ({record['criterion']}), with the variant "
            f"map {best['map']}, smoothing {best['smoothing']}, aggregate {best['aggregate']}"
            f"{settings}"
        )
    else:
        agreement = (
            f"**the validation bake-off now picks `{winner}`** ({record['criterion']}): "
            "update `evaluate.default_model`"
        )
    uncertainty = record.get("uncertainty")
    return [
        f"Default detector of this study: **`{default}`** (`evaluate.default_model`); {agreement}. "
        f"Score new scans with `brainad score --model models/{study}/scorers/{default}.pt`.",
        *([lead_sentence(uncertainty)] if uncertainty else []),
        "",
    ]


def _cell(value: float | None, fmt: str = ".3f") -> str:
    return "–" if value is None or not np.isfinite(value) else format(value, fmt)
