"""Seed spread: how much each headline metric moves when only the training seed changes.

    python -m benchmarks.seeds [--study demo] [--seeds 0 1 2] [--epoch-scale 1] [--fast]
                               [--arrays-dir data/demo/arrays] [--out reports/demo/seeds]

Trains every registered model of the study once per seed — every ``fit.seed`` set to it, every
``epochs`` scaled by ``--epoch-scale`` (at least 1) so the run fits in minutes — with the study's
own pipeline code (:func:`brainad.training.runner.run_train`), evaluates each on the study's test
split and lesion track exactly as the evaluate stage does (:func:`brainad.evaluation.run.
evaluate_model`), and writes, per metric of ``metrics.json``, the values, mean, standard deviation
and range over seeds to ``spread.json`` and a table to ``spread.md``. ``brainad compare`` reads
``reports/<study>/seeds/spread.json`` as the noise scale of each metric: a change is beyond noise
when it exceeds 1.96 · √2 · sd. Baselines are not trained, so they have no seed spread.

Needs the study's arrays (``dvc repro preprocess@<study>``). In deterministic mode the run is
pinned like a stage (:mod:`brainad.runtime`), so its numbers are the same on any machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from brainad import runtime
from brainad.config import FitConfig, StudyConfig, load_study
from brainad.evaluation.compare import seed_noise_threshold

log = logging.getLogger("brainad")

SCHEMA = "brainad-seed-spread/1"
REPO = Path(__file__).resolve().parents[1]


def seeded(config: StudyConfig, seed: int, epoch_scale: float, fast: bool = False) -> StudyConfig:
    """``config`` with every fit section's ``seed`` replaced and its ``epochs`` scaled (and with
    ``deterministic`` off when ``fast``)."""

    def visit(node: Any) -> Any:
        if isinstance(node, FitConfig):
            epochs = max(1, round(node.epochs * epoch_scale))
            return dataclasses.replace(
                node, seed=seed, epochs=epochs, checkpoint_every=epochs,
                sample_every=epochs, extra_sample_epochs=(),
                deterministic=node.deterministic and not fast,
            )  # fmt: skip
        if dataclasses.is_dataclass(node):
            return dataclasses.replace(
                node, **{f.name: visit(getattr(node, f.name)) for f in dataclasses.fields(node)}
            )
        return node

    return visit(config)


def flatten(entry: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a ``metrics.json`` entry as dotted keys."""
    if isinstance(entry, dict):
        out: dict[str, float] = {}
        for key, value in entry.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
        return out
    number = isinstance(entry, (int, float)) and not isinstance(entry, bool)
    return {prefix: float(entry)} if number and math.isfinite(entry) else {}


def train_and_evaluate(config: StudyConfig, arrays_dir: Path, workdir: Path) -> dict[str, float]:
    """Every registered model trained and evaluated like the pipeline does; flat metrics."""
    from brainad.evaluation.report import compact_metrics
    from brainad.evaluation.run import evaluate_model, load_splits
    from brainad.evaluation.tracks import lesion_track
    from brainad.models import registry
    from brainad.training.runner import run_train
    from brainad.utils import select_device

    models = workdir / "models"
    for name in registry.MODEL_NAMES:  # the registry's order: a base model before its prior
        run_train(config, name, arrays_dir, models, models / "checkpoints" / name,
                  workdir / "train" / name)  # fmt: skip
    splits = load_splits(arrays_dir)
    track = lesion_track(config.evaluate.lesions, splits["test"])
    device = select_device()
    with runtime.deterministic_kernels(runtime.study_deterministic(config)):
        results = [
            evaluate_model(
                config,
                name,
                registry.best_file(models, name),
                registry.scorer_file(workdir / "scorers", name),
                splits,
                track,
                {},
                device,
            )  # fmt: skip
            for name in registry.MODEL_NAMES
        ]
    return {
        f"{name}.{key}": value
        for name, entry in compact_metrics(results).items()
        for key, value in flatten(entry).items()
    }


def spread(per_seed: dict[int, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per metric: values (seed order), mean, sample sd, min, max, and the noise threshold."""
    keys = sorted(set.intersection(*(set(m) for m in per_seed.values())))
    out = {}
    for key in keys:
        values = [per_seed[s][key] for s in sorted(per_seed)]
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        out[key] = {
            "values": values,
            "mean": statistics.fmean(values),
            "sd": sd,
            "min": min(values),
            "max": max(values),
            "beyond_noise_above": seed_noise_threshold(sd),
        }
    return out


def markdown(document: dict[str, Any]) -> str:
    seeds = document["seeds"]
    lines = [
        f"# Seed spread — study `{document['study']}`",
        "",
        f"{len(seeds)} training seeds ({', '.join(map(str, seeds))}), every model's epochs x "
        f"{document['epoch_scale']} ({document['seconds'] / 60:.1f} min, mode "
        f"{document['runtime']['mode']}). `brainad compare` calls a change beyond noise when "
        "|Δ| > 1.96·√2·sd (the last column).",
        "",
        "| metric | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | mean | sd | beyond noise above |",
        "|---|" + "---:|" * (len(seeds) + 3),
    ]
    for key, entry in document["metrics"].items():
        values = " | ".join(f"{v:.4f}" for v in entry["values"])
        lines.append(
            f"| {key} | {values} | {entry['mean']:.4f} | {entry['sd']:.4f} "
            f"| {entry['beyond_noise_above']:.4f} |"
        )
    return "\n".join([*lines, ""])


def _runtime_record(deterministic: bool) -> dict[str, Any]:
    with runtime.deterministic_kernels(deterministic):
        return runtime.describe(deterministic)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="demo")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epoch-scale", type=float, default=1.0, help="of every fit.epochs")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="train unpinned (the seed spread of the training, about 3.6x faster than pinned "
        "kernels; the numbers are then this machine's)",
    )
    parser.add_argument("--arrays-dir", type=Path, default=None, help="default data/<study>/arrays")
    parser.add_argument("--out", type=Path, default=None, help="default reports/<study>/seeds")
    args = parser.parse_args(argv)
    if len(args.seeds) < 2 or not 0 < args.epoch_scale <= 1:
        parser.error("need at least two --seeds and 0 < --epoch-scale <= 1")
    config = load_study(args.study, args.params)
    deterministic = runtime.study_deterministic(config) and not args.fast
    runtime.prepare_process(deterministic, restart=True)
    from brainad.utils import setup_logging, write_json, write_text

    setup_logging()
    arrays = args.arrays_dir or REPO / "data" / args.study / "arrays"
    out = args.out or REPO / "reports" / args.study / "seeds"
    started = time.perf_counter()
    per_seed = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"brainad-seed{seed}-") as tmp:
            log.info("seed spread: seed %d of %s", seed, args.seeds)
            run_config = seeded(config, seed, args.epoch_scale, args.fast)
            per_seed[seed] = train_and_evaluate(run_config, arrays, Path(tmp))
    document = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "study": args.study,
        "seeds": args.seeds,
        "epoch_scale": args.epoch_scale,
        "fast": args.fast,
        "seconds": time.perf_counter() - started,
        "runtime": _runtime_record(deterministic),
        "metrics": spread(per_seed),
    }
    write_json(out / "spread.json", document)
    write_text(out / "spread.md", markdown(document))
    print(markdown(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
