"""Performance benchmarks of brainad, measured on this machine in one run.

    python -m benchmarks.run [--quick] [--out reports/benchmarks.json] [--skip-dvc]

What is measured (``benchmarks/README.md`` explains every number):

* training throughput (images/s) of one full GAN step — generator step then discriminator step,
  each with its Adam optimiser, in the order of :func:`brainad.training.loop.fit` — of VQGAN+D and of
  the DCGAN (``gan`` phase), per device and precision; and its achieved FLOP/s (nominal FLOPs of
  the step counted by ``FlopCounterMode`` / measured step time) against the FLOP/s of a large
  matmul of the same precision measured in the same run;
* scoring throughput and peak memory of the evaluate path (``make_detector`` + ``score_images``) and
  of the ``brainad score`` command (in this process, on a folder of JPEG files);
* archive-scale ``brainad score`` (:mod:`benchmarks.archive`): images/s and peak RSS of the
  command on 2,000 and 20,000 synthetic slices (RSS must not grow with the number of files);
* the wall time of a no-op ``dvc repro evaluate@demo`` (only when ``dvc status`` says it is up to
  date).

Writes one JSON document atomically and prints a markdown table to stdout (logs go to stderr).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import archive
from benchmarks.measure import FULL, QUICK, _load_average, machine_info
from benchmarks.workloads import TARGET_IMAGE_SIZE, bench_all_training, bench_scoring
from brainad.config import load_study
from brainad.utils import select_device, setup_logging, write_json

log = logging.getLogger("brainad")


SCHEMA = "brainad-benchmarks/1"
REPO = Path(__file__).resolve().parents[1]
STUDY = "brain-tumor-mri"
DVC_TARGET = "evaluate@demo"
DEMO_NOTE = (
    "not measured here: taken from CI's log, where `.ci/run` prints '== tests done in T1 s' and "
    "'== demo pipeline done in T2 s' (both counted from the start of the run), so the demo "
    "end-to-end time is T2 - T1; filled in by the lead"
)


# --------------------------------------------------------------------------------------- dvc
def _run_dvc(command: list[str], repo: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, env=env, timeout=1800)


def _tail(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"


def _dvc_up_to_date(dvc: Path, repo: Path, target: str) -> str | None:
    """``None`` if ``dvc status --with-deps`` reports ``target`` up to date, else the reason."""
    status = _run_dvc([str(dvc), "status", "--with-deps", "--json", target], repo)
    if status.returncode != 0:
        return f"`dvc status {target}` failed: {_tail(status)}"
    try:
        changed = json.loads(status.stdout.strip() or "{}")
    except json.JSONDecodeError:
        return f"`dvc status --json` printed no JSON: {status.stdout.strip()[:200]!r}"
    if changed:
        return f"not up to date ({', '.join(sorted(changed))}); run `dvc repro {target}` first"
    return None


def bench_dvc_noop(
    repo: Path, reps: int, dvc: Path | None = None, target: str = DVC_TARGET
) -> dict[str, Any]:
    """Wall time (median of ``reps``) of ``dvc repro target`` when it has nothing to do.

    ``dvc`` defaults to the one beside this Python (the project's venv). ``seconds`` is ``None``
    with a ``reason`` when dvc is missing, the target is not up to date, or a run fails or runs
    a stage.
    """
    dvc = Path(dvc) if dvc is not None else Path(sys.executable).with_name("dvc")
    result: dict[str, Any] = {"target": target, "seconds": None, "seconds_all": [], "reason": None}
    if not dvc.is_file():
        return {**result, "reason": f"{dvc} not found; install the project (scripts/setup.sh)"}
    try:
        reason = _dvc_up_to_date(dvc, repo, target)
        if reason is not None:
            return {**result, "reason": reason}
        seconds = []
        for _ in range(reps):
            start = time.perf_counter()
            proc = _run_dvc([str(dvc), "repro", target], repo)
            seconds.append(time.perf_counter() - start)
            if proc.returncode != 0:
                return {**result, "reason": f"`dvc repro {target}` failed: {_tail(proc)}"}
            if "Running stage" in proc.stdout + proc.stderr:
                return {**result, "reason": f"`dvc repro {target}` ran a stage: not a no-op"}
    except subprocess.TimeoutExpired as exc:
        return {**result, "reason": f"`{' '.join(map(str, exc.cmd))}` timed out"}
    return {**result, "seconds": statistics.median(seconds), "seconds_all": seconds}


# ------------------------------------------------------------------------------------ report
def _target(name: str, value: float | None, op: str, limit: float, note: str = "") -> dict:
    met = None
    if value is not None and not note:
        met = bool(value >= limit) if op == ">=" else bool(value <= limit)
    return {"name": name, "value": value, "target": f"{op} {limit:g}", "met": met, "note": note}


def evaluate_targets(results: dict[str, Any]) -> list[dict]:
    """The issue's targets beside the measured values (``met`` is None if not comparable)."""
    rows = [
        _target(
            f"training {e['model']} {e['device']} bf16 FLOP/s / same-run bf16 matmul FLOP/s",
            e["ratio_to_matmul"],
            ">=",
            0.8,
        )
        for e in results["training"]
        if e["precision"] == "bf16"
    ]
    default = results.get("default_model")
    rows += [
        _target(
            f"training {e['model']} (the default detector) bf16 FLOP/s / same-run bf16 matmul "
            "FLOP/s, detector issue",
            e["ratio_to_matmul"],
            ">=",
            0.6,
        )
        for e in results["training"]
        if e["precision"] == "bf16" and e["model"] == default
    ]
    for path, entry in results["scoring"].items():
        if entry["precision"] != "fp32":
            continue  # the target is for the precision evaluation uses
        size = entry["image_size"]
        note = "" if size == TARGET_IMAGE_SIZE else f"measured at {size} px, target is at 128 px"
        rows.append(
            _target(f"scoring images/s ({path} path)", entry["images_per_s"], ">=", 300, note)
        )
        if entry.get("model") == default:  # the detector issue's target for the default
            rows.append(
                _target(
                    f"scoring images/s with the default detector {default} ({path} path)",
                    entry["images_per_s"],
                    ">=",
                    200,
                    note,
                )
            )
    demo = results["demo_end_to_end"]["seconds"]
    rows.append(_target("demo end to end (s)", demo, "<=", 600))
    rows.append(_target("no-op dvc repro (s)", results["dvc_noop_repro"]["seconds"], "<=", 3))
    return rows


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def markdown(results: dict[str, Any]) -> str:
    """Two markdown tables: training steps, then every target and memory figure."""
    lines = [
        "| model | device | precision | batch | images/s | step s | GFLOP/step | GFLOP/s "
        "| matmul GFLOP/s | ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in results["training"]:
        lines.append(
            f"| {e['model']} | {e['device']} | {e['precision']} | {e['batch_size']} "
            f"| {_fmt(e['images_per_s'])} | {_fmt(e['step_seconds_median'])} "
            f"| {_fmt(e['flops_per_step'] / 1e9)} | {_fmt(e['achieved_flops_per_s'] / 1e9)} "
            f"| {_fmt(e['matmul_flops_per_s'] / 1e9)} | {_fmt(e['ratio_to_matmul'], 2)} |"
        )
    lines += ["", "| measurement | value | target | met |", "|---|---:|---|---|"]
    for t in results["targets"]:
        met = {True: "yes", False: "NO", None: "—"}[t["met"]]
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| {t['name']} | {_fmt(t['value'])} | {t['target']} | {met}{note} |")
    for path, entry in results["scoring"].items():
        memory = _fmt(entry["rss_peak_increase_mb"])
        lines.append(f"| scoring peak RSS increase, {path} path (MB) | {memory} | — | — |")
        for run_entry in entry.get("runs", []):  # the archive row: one line per archive size
            lines.append(
                f"| archive of {run_entry['files']} files: images/s, peak RSS (MB) "
                f"| {_fmt(run_entry['images_per_s'])}, {_fmt(run_entry['rss_peak_mb'])} | — | — |"
            )
        if "agreement_with_fp32" in entry:
            a = entry["agreement_with_fp32"]
            lines.append(
                f"| scoring images/s, {path} path | {_fmt(entry['images_per_s'])} | — | — "
                f"(scores vs fp32: max rel. error {_fmt(a['max_relative_error'], 2)}, "
                f"Spearman {_fmt(a['spearman'], 4)}) |"
            )
    reason = results["dvc_noop_repro"]["reason"]
    if reason:
        lines.append(f"\nno-op dvc repro: {reason}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- run
def run(quick: bool, study: str, params: Path, skip_dvc: bool) -> dict[str, Any]:
    """Every measurement; returns the JSON document (``targets`` included)."""
    sizes = QUICK if quick else FULL
    config = load_study(study, params)
    image_size = sizes.image_size or config.preprocess.image_size
    machine = machine_info()
    matmuls, training = bench_all_training(config, sizes, image_size, machine["cpu_bf16_supported"])
    scoring = bench_scoring(config, sizes, image_size, select_device())
    scoring["archive"] = archive.bench_demo_archive(
        params, sizes.archive_files, sizes.archive_image_size, select_device()
    )
    skipped = {"target": DVC_TARGET, "seconds": None, "seconds_all": [], "reason": "--skip-dvc"}
    dvc = skipped if skip_dvc else bench_dvc_noop(REPO, sizes.dvc_reps)
    results = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "study": study,
        "default_model": config.evaluate.default_model,
        "sizes": sizes._asdict(),
        "machine": machine,
        "matmul": matmuls,
        "training": training,
        "scoring": scoring,
        "dvc_noop_repro": dvc,
        "demo_end_to_end": {"seconds": None, "note": DEMO_NOTE},
    }
    results["targets"] = evaluate_targets(results)
    results["machine"]["load_average_1m_end"] = _load_average()
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (32 px, 2 steps): smoke test"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks.json"))
    parser.add_argument("--study", default=STUDY, help="study whose model configs are used")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice, normally one per core); use 1 on "
        "a busy machine, where OpenMP threads waiting for a descheduled peer dominate",
    )
    parser.add_argument(
        "--skip-dvc", action="store_true", help=f"do not run dvc (no-op `dvc repro {DVC_TARGET}`)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    if args.threads is not None:
        if args.threads < 1:
            log.error("--threads must be >= 1, got %d", args.threads)
            return 2
        torch.set_num_threads(args.threads)
    try:
        results = run(args.quick, args.study, args.params, args.skip_dvc)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    write_json(args.out, results)
    print(markdown(results))  # the table is the command's output (stdout); logs go to stderr
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
