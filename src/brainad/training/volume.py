"""The ``volume_models`` stage: a volume study's 2-D models, trained by the one training loop
(:func:`brainad.training.runner.run_train`) on healthy slices of its cases.

Training slices: the tumour-free brain slices of the ``train`` cases; validation (model
selection by the model's own criterion): every non-excluded brain slice of the ``val`` cases.
The test cases are never read here. Model and preprocessing settings are those of the slice
study ``models.study``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from brainad.config import VolumeStudyConfig, load_study
from brainad.data.arrays import save_arrays
from brainad.data.brats import read_cases, slice_rows
from brainad.data.volume_arrays import model_arrays
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
