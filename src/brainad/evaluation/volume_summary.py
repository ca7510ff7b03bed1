"""The volume study's ``summary.md`` and overlay figure, read from its results (never recomputed).

Published numbers stand in their own block with their source and how their protocol differs
from ours; they are context, never rows of our table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainad.utils import write_text

LICENCE = (
    'BraTS data: Menze et al., "The multimodal brain tumor image segmentation benchmark '
    '(BRATS)", IEEE TMI 34(10), 2015; licence CC BY-NC-SA 3.0 (non-commercial, share-alike).'
)
# (method, data, pixel AP, Dice, image AUROC, source, how its protocol differs from ours)
PUBLISHED = (
    (
        "FLAIR thresholding",
        "BraTS",
        "–",
        "0.738 (best)",
        "–",
        "Meissen et al. 2021",
        "best Dice over thresholds on many BraTS subjects; their preprocessing",
    ),
    (
        "8-model transformer ensemble",
        "BraTS",
        "–",
        "0.759 (best)",
        "–",
        "Meissen et al. 2021",
        "trained on healthy datasets; best Dice over thresholds",
    ),
    (
        "AE",
        "BraTS2021, 64 px",
        "0.332",
        "0.392",
        "0.826",
        "MedIAnomaly",
        "64 px slices, many subjects, their healthy training slices",
    ),
    (
        "VAE",
        "BraTS2021, 64 px",
        "0.440",
        "0.471",
        "0.806",
        "MedIAnomaly",
        "as AE; about 10^6 sample presentations",
    ),
    (
        "coarse-noise DAE",
        "BraTS20 T2",
        "~0.43",
        "0.57",
        "–",
        "Kascenas et al.",
        "T2 input, trained on healthy slices of the same dataset",
    ),
    (
        "patched diffusion (pDDPM)",
        "BraTS",
        "0.457",
        "0.46",
        "–",
        "Behrendt et al.",
        "trained on IXI healthy volumes (cross-dataset)",
    ),
    (
        "PatchCore (ImageNet features)",
        "BraTS2021",
        "–",
        "–",
        "0.917",
        "BMAD",
        "image level only; pretrained ImageNet features (not available offline here)",
    ),
)


def _f(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(value, interval) -> str:
    if value is None or not interval:
        return _f(value)
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _detector_rows(evaluation: dict) -> list[str]:
    reference = evaluation["reference"]
    lines = [
        "| detector | input | σ (val) | val AP | test pixel AP [95 % CI] | pixel ROC-AUC | "
        "Dice at val threshold [CI] | best Dice (upper bound) | slice ROC-AUC | "
        "middle-stratum slice ROC-AUC |",
        "|---|---|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    for name, result in evaluation["detectors"].items():
        spec, test, val = result["input"], result["test"], result["validation"]
        pooled, ci = test["pooled"], test["ci"]
        row = next(v for v in val["variants"] if v["sigma"] == val["sigma"])
        middle = _middle(test["slices"])
        mark = " **(default)**" if name == evaluation["default"] else ""
        mark += " (reference)" if name == reference else ""
        lines.append(
            f"| {name}{mark} | {spec['channel']}, {spec['normalisation']}, {spec['method']} | "
            f"{val['sigma']:g} | {_f(row['pixel_ap'])} | "
            f"{_ci(pooled['pixel_ap'], ci.get('pixel_ap'))} | {_f(pooled['pixel_auroc'])} | "
            f"{_ci(pooled['dice'], ci.get('dice'))} | {_f(pooled['best_dice'])} | "
            f"{_f(test['slices']['all']['roc_auc'])} | {_f(middle.get('roc_auc'))} |"
        )
    return lines


def _middle(slices: dict) -> dict:
    strata = len([k for k in slices if k.startswith("stratum_")])
    return slices.get(f"stratum_{strata // 2}", {})


def _difference_rows(evaluation: dict) -> list[str]:
    lines = [
        f"| detector | pixel AP − {evaluation['reference']} [95 % CI] | ahead in draws | "
        "Dice − reference [95 % CI] | ahead in draws |",
        "|---|---|---:|---|---:|",
    ]
    for name, result in evaluation["detectors"].items():
        test = result["test"]
        if name == evaluation["reference"] or "difference" not in test:
            continue
        d, ahead = test["difference"], test["ahead"]
        cells = []
        for key in ("pixel_ap", "dice"):
            low_high = d.get(key)
            cells.append("–" if low_high is None else f"[{low_high[0]:+.3f}, {low_high[1]:+.3f}]")
            cells.append("–" if key not in ahead else f"{ahead[key]:.0%}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _per_case_rows(evaluation: dict) -> list[str]:
    names = list(evaluation["detectors"])
    cases = list(next(iter(evaluation["detectors"].values()))["test"]["per_case"])
    lines = [
        "| case | " + " | ".join(f"{n} AP / Dice" for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for case in cases:
        cells = []
        for n in names:
            found = evaluation["detectors"][n]["test"]["per_case"][case]
            cells.append(f"{_f(found['pixel_ap'])} / {_f(found['dice'])}")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return lines


def _strata_rows(evaluation: dict) -> list[str]:
    first = next(iter(evaluation["detectors"].values()))["test"]["slices"]
    keys = list(first)
    header = " | ".join(
        f"{k} ({first[k]['n_anomalous']} tumour / {first[k]['n_healthy']} healthy)" for k in keys
    )
    lines = [f"| detector | {header} |", "|---|" + "---:|" * len(keys)]
    for name, result in evaluation["detectors"].items():
        slices = result["test"]["slices"]
        lines.append(f"| {name} | " + " | ".join(_f(slices[k]["roc_auc"]) for k in keys) + " |")
    return lines


def _top_rows(evaluation: dict) -> list[str]:
    lines = [
        "| detector | case | positions of the top slices (0 = lowest brain slice) | "
        "with tumour | share in the outer strata | volume score | without the outer strata |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for name, result in evaluation["detectors"].items():
        for case, found in result["test"]["per_case"].items():
            top = found["top_slices"]
            tumour = ", ".join("yes" if t else "no" for t in top["with_tumour"])
            positions = ", ".join(f"{p:.2f}" for p in top["positions"])
            lines.append(
                f"| {name} | {case} | {positions} | {tumour} | {_f(top['outer_share'], 2)} | "
                f"{_f(top['volume_score'])} | {_f(top.get('inner_volume_score'))} |"
            )
    return lines


def _training_rows(evaluation: dict) -> list[str]:
    """The trained rows grouped by model and input: which healthy training data served best
    on validation (pixel AP of each row's chosen smoothing)."""
    groups: dict = {}
    for name, result in evaluation["detectors"].items():
        spec = result["input"]
        if "training" in spec:
            groups.setdefault((spec["model"], spec["channel"]), []).append((name, spec, result))
    lines = [
        "| model, input | row | healthy training data | val pixel AP | test pixel AP |",
        "|---|---|---|---:|---:|",
    ]
    for (model, channel), found in groups.items():
        best = max(found, key=lambda f: validation_ap(f[2]))[0]
        for name, spec, result in found:
            mark = " **(best on validation)**" if name == best and len(found) > 1 else ""
            lines.append(
                f"| {model}, {channel} | {name}{mark} | {spec['training']} | "
                f"{_f(validation_ap(result))} | {_f(result['test']['pooled']['pixel_ap'])} |"
            )
    return lines


def validation_ap(result: dict) -> float:
    """The pixel AP of a row's validation-chosen smoothing (-1 where undefined)."""
    chosen = result["validation"]
    row = next(v for v in chosen["variants"] if v["sigma"] == chosen["sigma"])
    return row["pixel_ap"] if row["pixel_ap"] is not None else -1.0


def _variant_rows(evaluation: dict) -> list[str]:
    lines = [
        "| detector | σ | val pixel AP | val pixel ROC-AUC | val best Dice |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, result in evaluation["detectors"].items():
        for row in result["validation"]["variants"]:
            chosen = " (chosen)" if row["sigma"] == result["validation"]["sigma"] else ""
            lines.append(
                f"| {name} | {row['sigma']:g}{chosen} | {_f(row['pixel_ap'])} | "
                f"{_f(row['pixel_auroc'])} | {_f(row['best_dice'])} |"
            )
    return lines


def write_summary(path: Path, evaluation: dict) -> None:
    """``summary.md`` of a volume study from its ``evaluation.json`` content."""
    roles = evaluation["roles"]
    role_of = {s: r for r in ("train", "val", "test") for s in roles[r]}
    case_lines = [
        "| case | role | healthy slices | tumour slices | excluded slices |",
        "|---|---|---:|---:|---:|",
    ]
    for case, found in evaluation["cases"].items():
        n = found["slices"]
        case_lines.append(
            f"| {case} | {role_of[case]} | {n['healthy']} | {n['anomalous']} | {n['excluded']} |"
        )
    published = [
        "| method | data | pixel AP | Dice | image AUROC | source | differs from ours |",
        "|---|---|---|---|---|---|---|",
    ]
    published += ["| " + " | ".join(row) + " |" for row in PUBLISHED]
    rules = evaluation["config"]["slices"]
    ev = evaluation["config"]["evaluate"]
    rejected = evaluation["rejected"] or "none"
    text = [
        f"# Volume study `{evaluation['study']}`: voxel-level results on held-out test cases",
        "",
        LICENCE,
        "",
        "Every choice (each detector's smoothing, its threshold, the default) was made on the "
        "validation cases; the test cases were never used for one. Metrics are over the brain "
        "voxels of every brain slice (label > 0 = tumour); pixel AP, ROC-AUC and best Dice on "
        f"{ev['bins']} quantile bins of the pooled map. Intervals: {ev['bootstrap']} subject "
        f"bootstrap draws — with {len(roles['test'])} test cases they are coarse (few distinct "
        "resamples) and say how much one case moves the pooled number, nothing more.",
        "",
        f"Default (best validation pixel AP): **{evaluation['default']}**. Reference (the bar): "
        f"**{evaluation['reference']}**.",
        "",
        "## Test, pooled over the test cases",
        "",
        *_detector_rows(evaluation),
        "",
        "## Distance to the reference (same bootstrap draws)",
        "",
        *_difference_rows(evaluation),
        "",
        "## Per test case",
        "",
        *_per_case_rows(evaluation),
        "",
        f"## Slice level, by position stratum ({ev['strata']} equal parts of each case's brain "
        "extent, 0 = inferior)",
        "",
        "Slice score: mean of the top "
        f"{ev['topk_percent']:g} % of the map in the brain. Tumour slices have at least "
        f"{rules['min_tumour_voxels']} label voxels, healthy ones none; those in between are "
        "excluded here.",
        "",
        *_strata_rows(evaluation),
        "",
        f"## Where each test volume's top {ev['top_k']} slices fall",
        "",
        *_top_rows(evaluation),
        "",
        "## Healthy training data of the 2-D models (chosen on validation)",
        "",
        "Each trained row's healthy slices: `cases` — the tumour-free slices of the train cases "
        "(the MedIAnomaly/BMAD protocol); `archive` — the slice study's healthy training slices "
        "of the sequences in `variants.archive_sequences` (cross-dataset); `both`. Validation "
        "is the same for every row (the validation cases).",
        "",
        *_training_rows(evaluation),
        "",
        "## Every variant on validation",
        "",
        *_variant_rows(evaluation),
        "",
        "## Cases and roles",
        "",
        *case_lines,
        "",
        f"Rejected cases: {rejected}. Cases found but given no role: "
        f"{', '.join(evaluation['unused']) or 'none'}.",
        "",
        "## Published, for context only (not our protocol)",
        "",
        *published,
        "",
    ]
    write_text(path, "\n".join(text))


def write_figure(path: Path, inputs: dict, maps: dict, default: str) -> None:
    """One column per test case (its slice with the most tumour), one row per detector: FLAIR
    with the label outline on top, then each detector's map (its validation-chosen variant) on
    its own 1–99 % brain scale, the label outline in cyan."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from brainad.utils import write_bytes

    cases, names = list(inputs), list(maps)
    fig, axes = plt.subplots(
        len(names) + 1,
        len(cases),
        figsize=(2.0 * len(cases), 2.0 * (len(names) + 1)),
        squeeze=False,
    )
    for c, case in enumerate(cases):
        x = inputs[case]
        i = int(np.argmax(x.tumour.reshape(len(x.tumour), -1).sum(1)))
        brain, tumour = x.masks[i, 0], x.tumour[i, 0]
        panels = [("FLAIR + label", x.images[i, 0])]
        panels += [(n + (" (default)" if n == default else ""), maps[n][case][i, 0]) for n in names]
        for r, (title, image) in enumerate(panels):
            low, high = np.percentile(image[brain], [1, 99]) if brain.any() else (0, 1)
            ax = axes[r, c]
            shown = np.where(brain, image, np.nan)  # outside the brain: black, not a value
            cmap = matplotlib.colormaps["gray" if r == 0 else "inferno"].with_extremes(bad="black")
            ax.imshow(shown, cmap=cmap, vmin=low, vmax=high)
            ax.contour(tumour, levels=[0.5], colors="cyan", linewidths=0.5)
            ax.set_title(case if r == 0 else "", fontsize=7)
            ax.set_ylabel(title if c == 0 else "", fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
