"""Rule-based check of the skull stripping: did the brain mask come out brain-shaped and inside
the skull?

Measured on the full-resolution brain mask of :func:`brainad.data.preprocess.extract_brain`
against the head region of :func:`brainad.data.preprocess.head_mask`:

* ``fallback``: extraction failed (coverage outside ``[min_coverage, max_coverage]``, blank);
* ``head_fraction``: brain area / head area (low when most of the brain was cut away);
* ``rim_touch``: fraction of the head's outline within 2 % of the image size of the brain mask;
* ``solidity``: brain area / its convex hull's area — low for fragmented or ragged masks;
* ``rim_brightness``: mean of the mask's outer band (3 % of its size) / median of its inside —
  high when bright scalp fat was kept (a skull ring left on T1-weighted slices).

:func:`strip_failed` flags a slice when extraction fell back or a measure is outside the rule's
limits (:data:`RULE`: solidity, head fraction, and rim brightness on T1-weighted slices only;
``rim_touch`` is recorded but not used — it did not separate failed from good masks). The limits were chosen by a small grid on the
annotated sample, so the agreement reported on that sample is optimistic; they are fixed here,
not fit per run.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from brainad.config import PreprocessConfig
from brainad.data.imageio import ImageDecodeError, read_image
from brainad.data.labels import flag_set
from brainad.data.preprocess import extract_brain, head_mask
from brainad.utils import atomic_path


class StripRule(NamedTuple):
    """Limits of the rule: a slice fails outside any of them (or when extraction fell back)."""

    min_solidity: float
    max_rim_brightness: float
    min_head_fraction: float


RULE = StripRule(min_solidity=0.90, max_rim_brightness=1.15, min_head_fraction=0.3)
T1_WEIGHTED = ("T1", "T1CE")  # bright scalp fat: a bright rim means the scalp was kept


def strip_measures(gray: np.ndarray, brain: np.ndarray, fallback: bool) -> dict[str, float]:
    """The measures of the module docstring for one slice and its full-resolution brain mask."""
    head = head_mask(gray, 0.0)
    area = float(brain.sum())
    head_area = float(head.sum()) or 1.0
    outline = head & ~cv2.erode(head.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    reach = max(3, int(0.02 * max(gray.shape)))
    near = cv2.dilate(brain.astype(np.uint8), np.ones((reach, reach), np.uint8)).astype(bool)
    solidity = 0.0
    if area > 0:
        contours, _ = cv2.findContours(
            brain.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        hull = cv2.convexHull(np.concatenate(contours))
        solidity = area / max(float(cv2.contourArea(hull)), 1.0)
    rim, core = _band(gray, brain)
    return {
        "rim_brightness": rim / max(core, 1e-6),
        "fallback": float(fallback),
        "head_fraction": area / head_area,
        "rim_touch": float((near & outline).sum()) / max(float(outline.sum()), 1.0),
        "solidity": min(solidity, 1.0),
    }


def _band(gray: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """Mean intensity of the mask's outer band (3 % of its size) and median of its inside."""
    if not brain.any():
        return 0.0, 1.0
    rows, cols = np.nonzero(brain.any(axis=1))[0], np.nonzero(brain.any(axis=0))[0]
    side = max(3, int(0.03 * max(rows[-1] - rows[0], cols[-1] - cols[0])))
    inner = cv2.erode(brain.astype(np.uint8), np.ones((side, side), np.uint8)).astype(bool)
    band = brain & ~inner
    if not inner.any() or not band.any():
        return 0.0, 1.0
    return float(gray[band].mean()), float(np.median(gray[inner]))


def strip_failed(measures: dict[str, float], sequence: str, rule: StripRule = RULE) -> str:
    """Why the rule flags the slice ("" if it passes); the rim rule applies to T1-weighted
    slices only (on T2 the CSF around the brain is bright too)."""
    reasons = []
    if measures["fallback"]:
        reasons.append("extraction fell back")
    if measures["solidity"] < rule.min_solidity:
        reasons.append(f"solidity < {rule.min_solidity}")
    if sequence in T1_WEIGHTED and measures["rim_brightness"] > rule.max_rim_brightness:
        reasons.append(f"rim_brightness > {rule.max_rim_brightness}")
    if measures["head_fraction"] < rule.min_head_fraction:
        reasons.append(f"head_fraction < {rule.min_head_fraction}")
    return "; ".join(reasons)


def measure_rows(root: Path, rows: list[dict], config: PreprocessConfig) -> list[tuple[dict, dict]]:
    """(row, measures) for each decodable row, one per distinct sha256 (re-decoded, extracted)."""
    seen: set[str] = set()
    out = []
    for row in rows:
        if row["error"] or row["sha256"] in seen:
            continue
        seen.add(row["sha256"])
        try:
            gray = read_image(Path(root) / row["path"], config.max_pixels).gray
        except ImageDecodeError:
            continue
        extraction = extract_brain(gray, config)
        out.append((row, strip_measures(gray, extraction.mask, not extraction.ok)))
    return out


def _rates(items: list[tuple[tuple, bool]]) -> list[dict]:
    counts: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for key, failed in items:
        counts[key][0] += 1
        counts[key][1] += int(failed)
    return [
        {"class_name": c, "plane": p, "sequence": s, "n": n, "rule_failed": f, "rate": f / n}
        for (c, p, s), (n, f) in sorted(counts.items())
    ]


def strip_report(records: list[dict], rows: dict[str, dict], annotated: list[tuple]) -> dict:
    """Rule failure rate per class x plane x sequence on the accepted slices, and the rule's
    agreement with the hand annotations (``strip_failed`` flag) on every annotated file."""
    kept = []
    for record in records:
        row = rows[record["path"]]
        key = (row["class_name"], row["plane"], row["sequence"])
        kept.append((key, bool(strip_failed(record["strip"], row["sequence"]))))
    agreement: dict[str, Counter] = defaultdict(Counter)
    reasons: Counter = Counter()
    for row, measures in annotated:
        rule = strip_failed(measures, row["sequence"])
        reasons.update(r for r in rule.split("; ") if r)
        truth = "strip_failed" in flag_set(row["flags"])
        cell = f"annotated_{'failed' if truth else 'ok'}/rule_{'failed' if rule else 'ok'}"
        agreement[row["class_name"]][cell] += 1
        agreement["all"][cell] += 1
    return {
        "rule": RULE._asdict(),
        "accepted_by_stratum": _rates(kept),
        "accepted_rule_failed": sum(failed for _, failed in kept),
        "accepted": len(kept),
        "agreement_with_annotations": {
            name: {
                **dict(cells),
                "n": sum(cells.values()),
                "agreement": sum(v for k, v in cells.items() if _agrees(k)) / sum(cells.values()),
            }
            for name, cells in sorted(agreement.items())
        },
        "annotated_rule_reasons": dict(reasons),
        "note": (
            "rule limits chosen by looking at the same annotated sample: agreement is optimistic; "
            "the annotations' strip_failed flags judged the stripping before the scalp peel and "
            "sulcus closing (annotations/README.md), so disagreement here can be a fixed failure"
        ),
    }


def _agrees(cell: str) -> bool:
    truth, rule = cell.split("/")
    return truth.split("_")[1] == rule.split("_")[1]


SHEET_PER_GROUP = 32  # accepted slices drawn per class x plane x sequence
SHEET_TILE = 80  # pixels per tile
SHEET_COLUMNS = 8


def _sheet_tile(root: Path, row: dict, config: PreprocessConfig, failed: bool) -> np.ndarray:
    """One RGB tile: the slice with its brain mask's outline in red, a blue corner where the rule
    flags it."""
    gray = read_image(Path(root) / row["path"], config.max_pixels).gray
    extraction = extract_brain(gray, config)
    g = cv2.resize(gray.astype(np.float32), (SHEET_TILE, SHEET_TILE), interpolation=cv2.INTER_AREA)
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
    mask = cv2.resize(extraction.mask.astype(np.uint8), (SHEET_TILE, SHEET_TILE)) > 0
    tile = np.repeat(g[..., None], 3, axis=2)
    tile[mask & ~(cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)] = (1, 0, 0)
    if failed:
        tile[:8, :8] = (0.1, 0.3, 1.0)
    return (tile * 255).astype(np.uint8)


def strip_sheets(
    root: Path, records: list[dict], rows: dict[str, dict], config: PreprocessConfig, out_dir: Path
) -> dict[str, int]:
    """Contact sheets of the stripping, per class x plane x sequence of the accepted slices: up to
    :data:`SHEET_PER_GROUP` random slices (fixed seed), each with its brain mask's outline (red)
    and a blue corner where :func:`strip_failed` flags it, so a person can count failures by eye.
    Returns ``{sheet file name: slices in its group}``."""
    from PIL import Image

    groups: dict[str, list[tuple[dict, bool]]] = defaultdict(list)
    for record in records:
        row = rows[record["path"]]
        name = f"{row['class_name']}_{row['plane']}_{row['sequence']}.png"
        groups[name].append((row, bool(strip_failed(record["strip"], row["sequence"]))))
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.png"):
        stale.unlink()
    drawn = {}
    for name, members in sorted(groups.items()):
        rng = np.random.default_rng(int.from_bytes(name.encode()[:8], "big"))
        picked = rng.permutation(len(members))[:SHEET_PER_GROUP]
        tiles = [_sheet_tile(root, members[i][0], config, members[i][1]) for i in sorted(picked)]
        for number, tile in enumerate(tiles):  # numbered, so a count by eye can name its tiles
            cv2.putText(tile, str(number), (2, SHEET_TILE - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                        (255, 255, 0), 1)  # fmt: skip
        tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % SHEET_COLUMNS)
        grid = np.vstack(
            [np.hstack(tiles[k : k + SHEET_COLUMNS]) for k in range(0, len(tiles), SHEET_COLUMNS)]
        )
        with atomic_path(out_dir / name) as tmp:
            Image.fromarray(grid).save(tmp, format="PNG", optimize=True)
        drawn[name] = len(members)
    return drawn


def strip_markdown(report: dict, study: str) -> str:
    """The strip-QC report as Markdown: agreement with the annotations, rates per stratum."""
    lines = [
        f"# {study}: skull-stripping QC (rule)",
        "",
        f"Rule: {report['rule']} (or extraction fell back; the rim limit on T1/T1CE slices "
        f"only); {report['note']}.",
        "",
        "| annotated set | n | agreement | annotated failed & rule failed | annotated failed & "
        "rule ok | annotated ok & rule failed | annotated ok & rule ok |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    cells = ("failed/rule_failed", "failed/rule_ok", "ok/rule_failed", "ok/rule_ok")
    for name, rec in report["agreement_with_annotations"].items():
        values = " | ".join(str(rec.get(f"annotated_{c}", 0)) for c in cells)
        lines.append(f"| {name} | {rec['n']} | {rec['agreement']:.3f} | {values} |")
    lines += [
        "",
        f"Accepted slices flagged by the rule: {report['accepted_rule_failed']} of "
        f"{report['accepted']}.",
        "",
        "| class | plane | sequence | accepted | rule failed | rate |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in report["accepted_by_stratum"]:
        lines.append(
            f"| {r['class_name']} | {r['plane']} | {r['sequence']} | {r['n']} | "
            f"{r['rule_failed']} | {r['rate']:.2f} |"
        )
    sheets = report.get("sheets", {})
    if sheets:
        lines += [
            "",
            f"Contact sheets (`strip_sheets/`, up to {SHEET_PER_GROUP} random accepted slices per "
            "group, brain-mask outline red, rule-flagged tiles with a blue corner):",
            "",
            *[
                f"- `{name}`: {SHEET_PER_GROUP if n > SHEET_PER_GROUP else n} of {n}"
                for name, n in sheets.items()
            ],
        ]
    return "\n".join(lines) + "\n"
