"""The ``volume_models`` stage: a volume study's 2-D models, trained by the one training loop
(:func:`brainad.training.runner.run_train`) on healthy slices of its cases.

Training slices: the tumour-free brain slices of the ``train`` cases; validation (model
selection by the model's own criterion): every non-excluded brain slice of the ``val`` cases.
The test cases are never read here. Model and preprocessing settings are those of the slice
study ``models.study``.

The ``volume_variants`` stage (:func:`run_volume_variants`) trains each row of ``variants.rows``
the same way, with its own input channel and healthy training slices: the train cases', the
slice study's own healthy training slices of ``variants.archive_sequences`` (cross-dataset), or
both; validation is the ``val`` cases' slices for every variant alike.
"""

from __future__ import annotations

import logging
from pathlib import Path

from brainad.config import ModelVariantConfig, VolumeStudyConfig, load_study, to_dict
from brainad.data.arrays import SplitArrays, concatenate, save_arrays
from brainad.data.brats import read_cases, slice_rows
from brainad.data.volume_arrays import archive_healthy, model_arrays
from brainad.models import registry
from brainad.training.runner import run_train
from brainad.utils import write_json

log = logging.getLogger("brainad")


def run_volume_models(
    config: VolumeStudyConfig, params: Path, arrays_dir: Path, model_dir: Path, report_dir: Path
) -> dict:
    """Write the train/val arrays, then train every model of ``config.models.names``."""
    models = config.models
    slice_study = load_study(models.study, params)
    subjects = (*config.roles.train, *config.roles.val)
    cases, rejected, _ = read_cases(config.source, subjects, (models.channel,))
    rows = {s: slice_rows(case, config.slices) for s, case in cases.items()}
    counts = {}
    for split, role, healthy_only in (("train", "train", True), ("val", "val", False)):
        chosen = {s: cases[s] for s in getattr(config.roles, role) if s in cases}
        arrays = model_arrays(
            chosen, rows, models.channel, slice_study.preprocess, slice_study.volume, healthy_only
        )
        if split == "train" and not len(arrays) and models.names:
            raise ValueError(f"roles.train: no healthy slice to train on (rejected: {rejected})")
        save_arrays(arrays_dir / f"{split}.npz", arrays)
        counts[split] = {"slices": len(arrays), "anomalous": int(arrays.labels.sum())}
    model_dir.mkdir(parents=True, exist_ok=True)
    trained = {}
    for name in models.names:
        log.info("volume_models: training %s on %d healthy slices", name, counts["train"]["slices"])
        trained[name] = run_train(
            slice_study,
            name,
            arrays_dir,
            model_dir,
            model_dir / "checkpoints" / name,
            report_dir / name,
        )
    summary = {"arrays": counts, "models": trained, "rejected": [r._asdict() for r in rejected]}
    write_json(report_dir / "volume_models.json", summary)
    return summary


def _counts(arrays: SplitArrays) -> dict:
    return {"slices": len(arrays), "anomalous": int(arrays.labels.sum())}


def _variant_train(
    variant: ModelVariantConfig, cases_healthy: SplitArrays, archive: SplitArrays | None
) -> SplitArrays:
    parts = {"cases": [cases_healthy], "archive": [archive], "both": [cases_healthy, archive]}
    train = concatenate(parts[variant.training])
    if not len(train):
        raise ValueError(f"variants.rows.{variant.name}: no healthy slice to train on")
    return train


def run_volume_variants(
    config: VolumeStudyConfig,
    params: Path,
    slice_data_dir: Path,
    arrays_dir: Path,
    model_dir: Path,
    report_dir: Path,
) -> dict:
    """Train every row of ``config.variants.rows``: arrays under ``arrays_dir/<name>/``, model
    files under ``model_dir/<name>/``, reports under ``report_dir/<name>/``. ``slice_data_dir``
    is the slice study's data folder (``data/<models.study>``: ``arrays/train.npz`` and
    ``manifest.jsonl``), read only if a variant trains on the archive."""
    variants = config.variants.rows
    for variant in variants:
        registry.entry(variant.model)  # an unknown model fails before any work
    slice_study = load_study(config.models.study, params)
    pre, vol = slice_study.preprocess, slice_study.volume
    channels = tuple(dict.fromkeys(v.channel for v in variants))
    subjects = (*config.roles.train, *config.roles.val)
    cases, rejected, _ = read_cases(config.source, subjects, channels)
    rows = {s: slice_rows(case, config.slices) for s, case in cases.items()}
    by_role = {
        r: {s: cases[s] for s in getattr(config.roles, r) if s in cases} for r in ("train", "val")
    }
    archive = None
    if any(v.training != "cases" for v in variants):
        archive = archive_healthy(
            slice_data_dir / "arrays" / "train.npz",
            slice_data_dir / "manifest.jsonl",
            config.variants.archive_sequences,
        )
    summary: dict = {"rejected": [r._asdict() for r in rejected], "variants": {}}
    if archive is not None:  # the cross-dataset healthy data, for the audit
        summary["archive"] = {
            "study": config.models.study,
            "arrays": str(slice_data_dir / "arrays" / "train.npz"),
            "sequences": list(config.variants.archive_sequences),
            "healthy_slices": len(archive),
        }
    for v in variants:
        healthy = model_arrays(by_role["train"], rows, v.channel, pre, vol, True)
        train = _variant_train(v, healthy, archive)
        val = model_arrays(by_role["val"], rows, v.channel, pre, vol, False)
        save_arrays(arrays_dir / v.name / "train.npz", train)
        save_arrays(arrays_dir / v.name / "val.npz", val)
        log.info("volume_variants: %s (%s) on %d healthy slices", v.name, v.model, len(train))
        found = model_dir / v.name
        trained = run_train(
            slice_study,
            v.model,
            arrays_dir / v.name,
            found,
            found / "checkpoints",
            report_dir / v.name,
        )
        from_cases = len(healthy) if v.training != "archive" else 0
        summary["variants"][v.name] = {
            **to_dict(v),
            "arrays": {"train": _counts(train), "from_cases": from_cases, "val": _counts(val)},
            "trained": trained,
        }
    write_json(report_dir / "volume_variants.json", summary)
    return summary
