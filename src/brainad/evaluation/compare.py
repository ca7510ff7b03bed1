"""``brainad compare``: a study's metrics at one revision beside another's, with a verdict per metric.

    brainad compare [A_REV] [B_REV] [--study S] [--check] [--markdown FILE] [--json FILE]

``A_REV`` defaults to ``HEAD`` (the committed results), ``B_REV`` to the workspace. The values
come from DVC itself (``dvc metrics diff A [B] --json --all``), so any study and any two commits
can be compared. Each metric gets a verdict:

* ``unchanged`` — the same value (within ``--tolerance``, 0 by default);
* ``within noise`` / ``beyond noise`` — changed by at most / more than its noise scale;
* ``changed`` — changed, and no noise scale is known for it;
* ``added`` / ``removed`` — present at only one of the two revisions.

The noise scale of a metric is, where available, the measured seed spread
(``reports/<study>/seeds/spread.json``, written by ``python -m benchmarks.seeds``): a change is
beyond noise when it exceeds :data:`SEED_Z` · √2 · the standard deviation over training seeds,
the 95 % band of the difference of two runs that differ only in their seed (a standard deviation
of 0, every seed giving the same value, is no estimate and is skipped). Otherwise it is the
bootstrap confidence interval of ``A``'s value in the ``evaluation.json`` beside the metrics file
(test-set sampling noise): beyond noise when ``B``'s value lies outside it.

``--check`` makes the exit code a CI gate: 1 when results changed beyond the cross-machine
tolerance — in deterministic mode (:func:`brainad.runtime.study_deterministic` of ``--study``)
that tolerance is 0, so ANY change fails (results are byte-identical on every x86-64 CPU); in
fast mode a change beyond noise fails. A metric added or removed always fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("brainad")

SEED_Z = 1.96
SPREAD_FILE = "reports/{study}/seeds/spread.json"
WORKSPACE = "workspace"
FAILING = {"beyond noise", "added", "removed"}


@dataclass(frozen=True)
class Row:
    """One metric of the comparison.

    Args:
        metric: dotted key in the metrics file (e.g. ``dcgan.lesion.roc_auc``).
        old: value at ``A`` (None if absent). new: value at ``B`` (None if absent).
        diff: ``new - old`` for numbers, else None.
        ci: ``[low, high]``, the bootstrap 95 % CI of ``old`` (None if not in evaluation.json).
        noise: the largest ``|diff|`` that is still noise (None if unknown).
        noise_source: ``seeds (N)``, ``bootstrap CI`` or ``""``.
        verdict: one of the verdicts in the module docstring.
        file: the metrics file.
    """

    metric: str
    old: Any
    new: Any
    diff: float | None
    ci: list[float] | None
    noise: float | None
    noise_source: str
    verdict: str
    file: str


# ------------------------------------------------------------------------------ reading
def _git(root: Path, *args: str) -> str | None:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def read_at(root: Path, rev: str | None, path: str) -> Any:
    """JSON file ``path`` at revision ``rev`` (None: the workspace), or None if absent."""
    if rev is None:
        file = root / path
        text = file.read_text(encoding="utf-8") if file.is_file() else None
    else:
        text = _git(root, "show", f"{rev}:{path}")
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def study_metric_files(root: Path, study: str) -> list[str]:
    """Metrics files of a study: the ``metrics`` of every ``foreach`` stage of ``dvc.yaml`` over
    the study's kind (``studies`` or ``volume_studies`` of ``params.yaml``) with ``${key}`` set
    to ``study`` (and top-level metrics that name the study's folder)."""
    import yaml

    dvc_yaml = root / "dvc.yaml"
    if not dvc_yaml.is_file():
        raise FileNotFoundError(f"{dvc_yaml}: not found; run compare in the repository root")
    document = yaml.safe_load(dvc_yaml.read_text()) or {}
    params = root / "params.yaml"
    volume_studies = (
        (yaml.safe_load(params.read_text()) or {}).get("volume_studies") or {}
        if params.is_file()
        else {}
    )
    group = "${volume_studies}" if study in volume_studies else "${studies}"
    files: list[str] = []
    for stage in (document.get("stages") or {}).values():
        if "foreach" in stage and stage["foreach"] != group:
            continue  # the other kind of study's stages
        for entry in (stage.get("do") or stage).get("metrics", []):
            name = entry if isinstance(entry, str) else next(iter(entry))
            files.append(name.replace("${key}", study).replace("${item}", study))
    files += [m for m in document.get("metrics", []) if f"/{study}/" in f"/{m}"]
    return [f for f in dict.fromkeys(files) if "${" not in f]


def dvc_metrics_diff(
    root: Path, a_rev: str, b_rev: str | None, targets: Sequence[str]
) -> dict[str, dict[str, dict]]:
    """``dvc metrics diff A [B] --json --all`` as a dict: file → metric → {old, new, diff}."""
    command = [sys.executable, "-m", "dvc", "metrics", "diff", a_rev, *([b_rev] if b_rev else [])]
    command += ["--json", "--all", *(["--targets", *targets] if targets else [])]
    proc = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(f"`{' '.join(command[2:])}` failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip() or "{}")


# ---------------------------------------------------------------------------- noise scale
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bootstrap_interval(evaluation: dict | None, metric: str) -> tuple[float, float] | None:
    """The 95 % CI of ``method.track.name`` in an ``evaluation.json`` (``methods`` → ... ``ci``)."""
    *path, name = metric.split(".")
    node: Any = (evaluation or {}).get("methods", {})
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    ci = node.get("ci", {}).get(name) if isinstance(node, dict) else None
    if isinstance(ci, dict) and _number(ci.get("low")) and _number(ci.get("high")):
        return float(ci["low"]), float(ci["high"])
    return None


def seed_noise_threshold(sd: float) -> float:
    """The largest change that is still seed noise: :data:`SEED_Z` · √2 · ``sd`` (the 95 % band
    of the difference of two runs that differ only in their seed, sd measured over seeds)."""
    return SEED_Z * math.sqrt(2.0) * sd


def _seed_noise(spread: dict | None, metric: str) -> tuple[float, str] | None:
    entry = (spread or {}).get("metrics", {}).get(metric)
    if isinstance(entry, dict) and _number(entry.get("sd")) and entry["sd"] > 0:  # 0: degenerate
        seeds = len(entry.get("values", [])) or len(spread.get("seeds", []))
        return seed_noise_threshold(float(entry["sd"])), f"seeds ({seeds})"
    return None


def _row(file: str, metric: str, old: Any, new: Any, noise: dict, tolerance: float) -> Row:
    if old is None or new is None:
        verdict = "unchanged" if old == new else ("added" if old is None else "removed")
        return Row(metric, old, new, None, None, None, "", verdict, file)
    if not (_number(old) and _number(new)):
        verdict = "unchanged" if old == new else "changed"
        return Row(metric, old, new, None, None, None, "", verdict, file)
    diff = float(new) - float(old)
    seeds = _seed_noise(noise.get("spread"), metric)
    interval = _bootstrap_interval(noise.get("evaluation"), metric)
    if seeds is not None:
        scale, source = seeds
        inside = abs(diff) <= scale
    elif interval is not None:
        scale, source = (interval[1] - interval[0]) / 2, "bootstrap CI"
        inside = interval[0] <= float(new) <= interval[1]
    else:
        scale, source, inside = None, "", None
    if abs(diff) <= tolerance:
        verdict = "unchanged"
    elif inside is None:
        verdict = "changed"
    else:
        verdict = "within noise" if inside else "beyond noise"
    ci = list(interval) if interval else None
    return Row(metric, old, new, diff, ci, scale, source, verdict, file)


# ------------------------------------------------------------------------------ compare
def compare(
    root: Path,
    a_rev: str = "HEAD",
    b_rev: str | None = None,
    study: str | None = None,
    tolerance: float | None = None,
    spread_path: Path | None = None,
) -> dict:
    """The comparison as a JSON-able document (see :func:`to_markdown` for the table).

    ``tolerance`` None: 0 and ``deterministic`` from the study's params (at ``B``'s workspace);
    ``failed`` says whether ``--check`` fails.
    """
    root = Path(root)
    targets = study_metric_files(root, study) if study else []
    diff = dvc_metrics_diff(root, a_rev, b_rev, targets)
    deterministic = _deterministic(root, study) if study else False
    spread = _spread(root, study, spread_path)
    rows: list[Row] = []
    for file, metrics in sorted(diff.items()):
        evaluation = read_at(root, a_rev, str(Path(file).parent / "evaluation.json"))
        noise = {"spread": spread, "evaluation": evaluation}
        for metric, values in sorted(metrics.items()):
            old, new = values.get("old"), values.get("new")
            rows.append(_row(file, metric, old, new, noise, tolerance or 0.0))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.verdict] = counts.get(row.verdict, 0) + 1
    failing = {v for v in counts if v != "unchanged"} if deterministic else FAILING & set(counts)
    return {
        "a_rev": a_rev,
        "b_rev": b_rev or WORKSPACE,
        "study": study,
        "deterministic": deterministic,
        "tolerance": tolerance or 0.0,
        "seed_spread": _spread_note(spread),
        "counts": counts,
        "failed": bool(failing) if rows else True,
        "rows": [asdict(r) for r in rows],
    }


def _deterministic(root: Path, study: str) -> bool:
    from brainad.config import ConfigError, load_study
    from brainad.runtime import study_deterministic

    try:
        return study_deterministic(load_study(study, root / "params.yaml"))
    except (ConfigError, FileNotFoundError) as exc:
        log.warning(
            "compare: cannot read study %s from params.yaml (%s): fast-mode rules", study, exc
        )
        return False


def _spread(root: Path, study: str | None, path: Path | None) -> dict | None:
    """The seed spread document (``path``, or the study's default file if it exists)."""
    if path is None and study:
        path = root / SPREAD_FILE.format(study=study)
    if path is None or not Path(path).is_file():
        return None
    shown = Path(path).relative_to(root) if Path(path).is_relative_to(root) else Path(path)
    return {**json.loads(Path(path).read_text(encoding="utf-8")), "file": shown.as_posix()}


def _spread_note(spread: dict | None) -> str | None:
    if not spread:
        return None
    return (
        f"{len(spread.get('seeds', []))} training seeds at {spread.get('epoch_scale', 1)}x the "
        f"study's epochs (`{spread['file']}`)"
    )


# ------------------------------------------------------------------------------- output
def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if _number(value):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _signed(value: float | None) -> str:
    return "–" if value is None else ("0" if value == 0 else f"{value:+.4g}")


def to_markdown(result: dict, show_all: bool = False) -> str:
    """The comparison as a Markdown section (a pull-request comment): a one-line verdict, how to
    read it, and a table of the metrics that changed (every metric with ``show_all``)."""
    a, b = result["a_rev"], result["b_rev"]
    rows = result["rows"]
    changed = [r for r in rows if r["verdict"] != "unchanged"]
    title = f"study `{result['study']}`" if result["study"] else "all metrics"
    mode = (
        "deterministic mode: results are byte-identical on any x86-64 CPU, so the tolerance is 0 "
        "and any change means the results changed"
        if result["deterministic"]
        else "fast mode: a change fails only beyond noise"
    )
    status = "FAIL" if result["failed"] else "OK"
    counts = ", ".join(f"{n} {v}" for v, n in sorted(result["counts"].items())) or "no metrics"
    lines = [
        f"## Metrics: {title}, `{a}` → `{b}` — {status}",
        "",
        f"{counts} ({mode}).",
        "",
        "Noise: "
        + (
            f"seed spread of {result['seed_spread']}: beyond noise = |Δ| > 1.96·√2·sd over seeds; "
            if result["seed_spread"]
            else "no seed spread measured; "
        )
        + f"otherwise the bootstrap 95 % CI of `{a}`'s value (beyond noise = outside it).",
        "",
    ]
    shown = rows if show_all else changed
    if not shown:
        return "\n".join([*lines, "Every metric is unchanged.", ""])
    lines += [
        f"| metric | `{a}` | `{b}` | Δ | `{a}` 95 % CI | noise (±) | noise from | verdict |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in shown:
        verdict = (
            r["verdict"] if r["verdict"] in ("unchanged", "within noise") else f"**{r['verdict']}**"
        )
        ci = f"[{_fmt(r['ci'][0])}, {_fmt(r['ci'][1])}]" if r["ci"] else "–"
        lines.append(
            f"| {r['metric']} | {_fmt(r['old'])} | {_fmt(r['new'])} | {_signed(r['diff'])} "
            f"| {ci} | {_fmt(r['noise'])} | {r['noise_source'] or '–'} | {verdict} |"
        )
    hidden = len(rows) - len(shown)
    if hidden:
        lines += ["", f"{hidden} unchanged metrics not shown (`--all` lists them)."]
    return "\n".join([*lines, ""])


# ---------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a_rev", nargs="?", default="HEAD", help="old revision (default HEAD)")
    parser.add_argument("b_rev", nargs="?", default=None, help="new revision (default workspace)")
    parser.add_argument("--study", help="compare only this study's metrics (params.yaml name)")
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root")
    parser.add_argument("--check", action="store_true", help="exit 1 when results changed")
    parser.add_argument("--tolerance", type=float, default=None, help="|Δ| counted as unchanged")
    parser.add_argument("--spread", type=Path, default=None, help="seed spread JSON")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--all", action="store_true", help="list unchanged metrics too")


def run(args: argparse.Namespace) -> int:
    """Compare, print the Markdown table, write the files asked for; the exit code."""
    from brainad.utils import write_json, write_text

    result = compare(args.root, args.a_rev, args.b_rev, args.study, args.tolerance, args.spread)
    markdown = to_markdown(result, show_all=args.all)
    print(markdown)  # the table is the command's output (logs go to stderr)
    if args.markdown:
        write_text(args.markdown, markdown)
    if args.json:
        write_json(args.json, result)
    if args.check and result["failed"]:
        log.error("compare: results changed (%s)", result["counts"])
        return 1
    return 0
