"""What deterministic mode costs: the library's training step and evaluate-path scoring of every
model of a study, in three processes — fast (torch's threads, precision ``auto``), fast on one
thread, and deterministic (pinned kernels, :mod:`brainad.runtime`) — and the slowdown.

    python -m benchmarks.determinism [--quick] [--study demo] [--out reports/benchmarks-determinism.json]

Each variant runs in its own process because the pinned environment must be in place before
torch loads. Writes one JSON document and prints a markdown table (``benchmarks/README.md``).
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
from pathlib import Path
from typing import Any

from brainad import runtime

log = logging.getLogger("brainad")

SCHEMA = "brainad-determinism-benchmark/1"
REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("fast", "fast-1-thread", "deterministic")
# (image size or None = the study's, batch or None = the study's, warm-up, timed steps, images)
FULL = (None, None, 2, 8, 256)
QUICK = (32, 4, 1, 2, 8)


# ------------------------------------------------------------------------------------ worker
def _worker(variant: str, study: str, params: Path, quick: bool) -> dict[str, Any]:
    """One variant, in this process (its environment was set by the parent)."""
    deterministic = variant == "deterministic"
    runtime.prepare_process(deterministic, restart=False)
    import dataclasses

    import torch

    from benchmarks.measure import render_phantoms, time_calls
    from benchmarks.workloads import bench_evaluate_path, build_model
    from brainad.config import load_study
    from brainad.models.registry import MODEL_NAMES, fit_config
    from brainad.training.loop import step_runner

    if variant == "fast-1-thread":
        torch.set_num_threads(1)
    size, batch_size, warmup, steps, images = QUICK if quick else FULL
    config = load_study(study, params)
    size = size or config.preprocess.image_size
    cpu = torch.device("cpu")
    training = {}
    with runtime.deterministic_kernels(deterministic):
        for name in MODEL_NAMES:
            fit = dataclasses.replace(fit_config(name, config), deterministic=deterministic)
            batch = batch_size or fit.batch_size
            real = torch.from_numpy(render_phantoms(batch, size, seed=1).images)
            step = step_runner(build_model(name, config, size), real, fit, cpu)
            median = statistics.median(time_calls(step, cpu, warmup, steps))
            training[name] = {
                "batch": batch,
                "step_seconds": median,
                "images_per_s": batch / median,
            }
        data = render_phantoms(images, size, seed=3)
        scoring = {
            name: bench_evaluate_path(config, data, size, cpu, name)[0]["images_per_s"]
            for name in ("vqgan", "vqgan_prior")
        }
        record = runtime.describe(deterministic)
    return {"variant": variant, "image_size": size, "training": training, "scoring": scoring,
            "runtime": record}  # fmt: skip


def _environment(variant: str) -> dict[str, str]:
    pinned = runtime.deterministic_environment()
    env = {k: v for k, v in os.environ.items() if k not in pinned}
    return {**env, **pinned} if variant == "deterministic" else env


def _run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.determinism", "--worker", variant]
    command += ["--study", args.study, "--params", str(args.params), *(["--quick"] * args.quick)]
    log.info("determinism benchmark: %s", variant)
    proc = subprocess.run(
        command, cwd=REPO, env=_environment(variant), capture_output=True, text=True, timeout=3600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ report
def slowdowns(variants: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Deterministic seconds per step (and per scored image) over each fast variant's."""
    det = variants["deterministic"]
    out: dict[str, dict[str, float]] = {}
    for base in ("fast", "fast-1-thread"):
        ref = variants[base]
        ratios = {
            f"train {m}": det["training"][m]["step_seconds"] / ref["training"][m]["step_seconds"]
            for m in det["training"]
        }
        ratios.update({f"score {m}": ref["scoring"][m] / det["scoring"][m] for m in det["scoring"]})
        out[f"vs {base}"] = ratios
    return out


def markdown(document: dict[str, Any]) -> str:
    variants = document["variants"]
    lines = [
        "| step | " + " | ".join(VARIANTS) + " | slowdown vs fast | vs fast, 1 thread |",
        "|---|" + "---:|" * (len(VARIANTS) + 2),
    ]
    ratios = document["slowdown"]
    for key in ratios["vs fast"]:
        kind, model = key.split(" ", 1)
        if kind == "train":
            cells = [f"{variants[v]['training'][model]['step_seconds']:.3g} s" for v in VARIANTS]
        else:
            cells = [f"{variants[v]['scoring'][model]:.3g} img/s" for v in VARIANTS]
        lines.append(
            f"| {key} | " + " | ".join(cells)
            + f" | {ratios['vs fast'][key]:.2f}x | {ratios['vs fast-1-thread'][key]:.2f}x |"
        )  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 px, batch 4, 2 timed steps")
    parser.add_argument("--study", default="demo")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument(
        "--out", type=Path, default=REPO / "reports" / "benchmarks-determinism.json"
    )
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.study, args.params, args.quick)))
        return 0
    from brainad.utils import setup_logging, write_json

    setup_logging()
    started = time.perf_counter()
    variants = {v: _run_variant(v, args) for v in VARIANTS}
    document = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "study": args.study,
        "quick": args.quick,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "seconds": time.perf_counter() - started,
        "variants": variants,
        "slowdown": slowdowns(variants),
    }
    write_json(args.out, document)
    print(markdown(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
