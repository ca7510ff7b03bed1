"""The curation filter (``filter.planes/modalities/sequences/exclude_flags``) and strata counts.

A decodable manifest row that the filter does not keep gets its reason in ``curation``
(e.g. ``plane=sagittal not in filter.planes``); the split stage then assigns it ``curated`` and
lists it with that reason, so nothing is dropped silently. An empty list keeps every value.
Rows that could not be decoded keep an empty ``curation``: they are quarantined with their decode
error instead.
"""

from __future__ import annotations

from collections import Counter

from brainad.config import FilterConfig
from brainad.data.labels import FLAGS, TARGETS, UNKNOWN, flag_set

_FILTERS = {"plane": "planes", "modality": "modalities", "sequence": "sequences"}
KEPT_COLUMNS = ("train", "val", "test")


def check_filter(config: FilterConfig) -> None:
    """Raise ValueError naming a filter value that no label can take."""
    for target, key in _FILTERS.items():
        allowed = (*TARGETS[target], UNKNOWN)
        bad = [v for v in getattr(config, key) if v not in allowed]
        if bad:
            raise ValueError(f"filter.{key}: {bad} not among {list(allowed)}; fix params.yaml")
    bad = [f for f in config.exclude_flags if f not in FLAGS]
    if bad:
        raise ValueError(f"filter.exclude_flags: {bad} not among {list(FLAGS)}; fix params.yaml")
    if not 0.0 <= config.label_holdout < 1.0 or not 0.0 <= config.min_confidence <= 1.0:
        raise ValueError(
            "filter.label_holdout must be in [0, 1) and filter.min_confidence in [0, 1]"
        )


def curation_reason(row: dict, config: FilterConfig) -> str:
    """Why the filter drops ``row`` ("" if it keeps it)."""
    if row["error"] or not row["label"]:
        return ""
    reasons = []
    for target, key in _FILTERS.items():
        keep = getattr(config, key)
        if keep and row[target] not in keep:
            reasons.append(f"{target}={row[target]} not in filter.{key}")
    flags = sorted(flag_set(row["flags"]) & set(config.exclude_flags))
    if flags:
        reasons.append(f"flagged {','.join(flags)} (filter.exclude_flags)")
    return "; ".join(reasons)


def apply_filter(rows: list[dict], config: FilterConfig) -> dict[str, int]:
    """Set ``curation`` on every row; return the number of rows dropped per reason."""
    check_filter(config)
    for row in rows:
        row["curation"] = curation_reason(row, config)
    return dict(Counter(r["curation"] for r in rows if r["curation"]))


def _stratum(row: dict) -> tuple[str, str, str]:
    plane = row["plane"]
    sequence = "CT" if row["modality"] == "CT" else row["sequence"]
    return row["class_name"] or "no_class", plane, sequence


def strata_counts(rows: list[dict], assignment: list[str]) -> dict:
    """Counts per class x plane x sequence (CT slices as sequence ``CT``): all rows, rows kept by
    the curation filter, and rows in each split (after de-duplication)."""
    columns: dict[str, Counter] = {"all": Counter(), "after_curation": Counter()}
    columns.update({name: Counter() for name in KEPT_COLUMNS})
    for row, split in zip(rows, assignment, strict=True):
        key = _stratum(row)
        columns["all"][key] += 1
        if not row["curation"]:
            columns["after_curation"][key] += 1
        if split in columns and split in KEPT_COLUMNS:
            columns[split][key] += 1
    keys = sorted(columns["all"])
    return {
        "columns": list(columns),
        "rows": [
            {
                "class_name": c,
                "plane": p,
                "sequence": s,
                **{n: columns[n][(c, p, s)] for n in columns},
            }
            for c, p, s in keys
        ],
    }


def strata_markdown(strata: dict, title: str, sheets: list[dict] = ()) -> str:
    """The strata counts as a Markdown table with a total line."""
    columns = strata["columns"]
    lines = [
        f"# {title}",
        "",
        "Counts per class x view plane x sequence (CT slices under sequence `CT`). `all`: every "
        "manifest file of a filtered class; `after_curation`: kept by the curation filter (before "
        "de-duplication); train/val/test: in the split (one image per duplicate cluster).",
        "",
        "| class | plane | sequence | " + " | ".join(columns) + " |",
        "|---|---|---|" + "---:|" * len(columns),
    ]
    for row in strata["rows"]:
        values = " | ".join(str(row[c]) for c in columns)
        lines.append(f"| {row['class_name']} | {row['plane']} | {row['sequence']} | {values} |")
    totals = " | ".join(str(sum(r[c] for r in strata["rows"])) for c in columns)
    lines.append(f"| **total** | | | {totals} |")
    if sheets:
        lines += ["", "Contact sheets (`sheets/`, raw images, random sample per group):", ""]
        lines += [f"- `{s['file']}`: {s['shown']} of {s['n']}" for s in sheets]
    return "\n".join(lines) + "\n"
