"""The ``voxels`` stage of a volume study: every row — the intensity detectors of
``detectors``, then the 2-D models of ``models`` trained by the ``volume_models`` stage — scored
on the validation and test cases on their own grids, choices made on validation, test reported.

For each row (one :class:`~brainad.scoring.detector.Detector`; the intensity detectors are
fitted on the healthy slices of the ``train`` cases, the models were trained on them):

1. its raw map of every brain slice of the validation and test cases (native resolution);
2. each smoothing of ``evaluate.smoothing_sigmas`` (inside the brain) is scored on VALIDATION
   voxels; the best pixel AP is the detector's variant, and its best-Dice threshold on
   validation is the threshold used on test (the honest Dice);
3. on TEST: pixel AP, ROC-AUC, best Dice (an upper bound) and Dice at the validation threshold
   per case and pooled, subject-bootstrap intervals and the difference to the first detector
   (the reference: FLAIR thresholding) on the same draws; slice ROC-AUC overall and per
   position stratum; where each volume's top-k slices fall. The test maps are written back to
   each case's own grid (NIfTI) so a viewer overlays them.

The study's default is the detector with the best validation pixel AP.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from brainad.config import VolumeStudyConfig, to_dict
from brainad.data.brats import Case, normalise, read_cases, slice_rows, slice_stack
from brainad.data.volumes import Slices, save_nifti, volume_map
from brainad.evaluation import voxels
from brainad.evaluation.volume_summary import validation_ap, write_figure, write_summary
from brainad.scoring.detector import pixel_maps
from brainad.scoring.intensity import VOLUME_METHODS
from brainad.scoring.maps import aggregate, masked_gaussian
from brainad.utils import write_json

log = logging.getLogger("brainad")


def _check_roles(config: VolumeStudyConfig) -> tuple[str, ...]:
    roles = config.roles
    subjects = (*roles.train, *roles.val, *roles.test)
    twice = sorted({s for s in subjects if subjects.count(s) > 1})
    if twice:
        raise ValueError(f"volume_studies.{config.name}.roles: case(s) {twice} have two roles")
    if not roles.val or not roles.test:
        raise ValueError(f"volume_studies.{config.name}.roles: val and test need a case each")
    return subjects


class Inputs:
    """A detector's inputs of one case: normalised slices, brain masks, labels, slice rows."""

    def __init__(self, case: Case, channel: str, normalisation: str | None, rows: list) -> None:
        ks = [r.slice for r in rows]
        values = case.channels[channel]
        if normalisation is not None:  # None: the voxels as stored (a model windows each slice)
            values = normalise(values, case.brain, normalisation)
        self.rows = rows
        self.images = slice_stack(values, ks)
        self.masks = slice_stack(case.brain, ks)
        self.tumour = slice_stack(case.label, ks)


def _voxels_of(maps: np.ndarray, inputs: Inputs) -> tuple[np.ndarray, np.ndarray]:
    return maps[inputs.masks], inputs.tumour[inputs.masks]


def _raw_maps(detector, inputs: dict[str, Inputs]) -> dict[str, np.ndarray]:
    """The detector's raw map of every slice of each case: ``{subject: (N, 1, H, W)}``."""
    return {s: pixel_maps(detector, x.images, x.masks)["map"].numpy() for s, x in inputs.items()}


def _variants(raw: dict[str, np.ndarray], inputs: dict[str, Inputs], config) -> dict:
    """Each smoothing of the raw maps: ``{sigma: {subject: map}}``."""
    return {
        sigma: {s: masked_gaussian(raw[s], inputs[s].masks, sigma) for s in raw}
        for sigma in config.evaluate.smoothing_sigmas
    }


def _combined(parts: list[dict], inputs: dict[str, Inputs], config) -> dict[str, np.ndarray]:
    """The sum of the parts' raw maps, each standardised by its mean and std over the healthy
    (label 0) brain voxels of the validation cases (never the test cases)."""
    val = [s for s in config.roles.val if s in inputs]
    total = {s: np.zeros_like(parts[0][s]) for s in parts[0]}
    for raw in parts:
        healthy = np.concatenate([raw[s][inputs[s].masks & ~inputs[s].tumour] for s in val])
        mean, std = float(healthy.mean()), max(float(healthy.std()), 1e-6)
        for s in total:
            total[s] += np.where(inputs[s].masks, (raw[s] - mean) / std, 0.0).astype(np.float32)
    return total


def _validation(variants: dict, inputs: dict[str, Inputs], config: VolumeStudyConfig) -> dict:
    """Validation pixel metrics of every variant, the chosen sigma and its threshold."""
    table, pooled = [], {}
    for sigma, maps in variants.items():
        parts = [_voxels_of(maps[s], inputs[s]) for s in config.roles.val if s in inputs]
        scores = np.concatenate([p[0] for p in parts])
        tumour = np.concatenate([p[1] for p in parts])
        edges = voxels.bin_edges([scores], config.evaluate.bins)
        found = voxels.curve_metrics(voxels.counts(scores, tumour, edges))
        found.pop("best_bin")
        table.append({"sigma": sigma, **found})
        pooled[sigma] = (scores, tumour)
    best = max(table, key=lambda row: row["pixel_ap"] or -1.0)
    threshold = voxels.validation_threshold(*pooled[best["sigma"]], config.evaluate.bins)
    return {"variants": table, "sigma": best["sigma"], "threshold": threshold}


def _slice_scores(maps: np.ndarray, inputs: Inputs, config: VolumeStudyConfig) -> np.ndarray:
    pct = config.evaluate.topk_percent
    found = aggregate(torch.from_numpy(maps), torch.from_numpy(inputs.masks), "topk", pct)
    return found.numpy().astype(np.float64)


def _test(maps: dict[str, np.ndarray], inputs: dict[str, Inputs], threshold: float, config):
    """Per-case counts and metrics, slice-level results and top-k slices on the test cases."""
    tests = [s for s in config.roles.test if s in inputs]
    values = {s: _voxels_of(maps[s], inputs[s]) for s in tests}
    edges = voxels.bin_edges([v[0] for v in values.values()], config.evaluate.bins)
    counts = {s: voxels.counts(*values[s], edges) for s in tests}
    at = {s: voxels.dice_counts(*values[s], threshold) for s in tests}
    per_case, labels, scores, positions = {}, [], [], []
    for s in tests:
        rows, found = inputs[s].rows, _slice_scores(maps[s], inputs[s], config)
        metrics = voxels.curve_metrics(counts[s])
        metrics.pop("best_bin")
        place = np.array([r.position for r in rows])
        tumour = np.array([r.tumour_voxels > 0 for r in rows])
        k, strata = config.evaluate.top_k, config.evaluate.strata
        top = voxels.top_slices(found, place, tumour, k, strata)
        per_case[s] = {**metrics, "dice": voxels.dice(at[s]), "top_slices": top}
        for row, value in zip(rows, found):
            if row.status != "excluded":
                labels.append(int(row.status == "anomalous"))
                scores.append(value)
                positions.append(row.position)
    slices = voxels.slice_metrics(
        np.array(labels), np.array(scores), np.array(positions), config.evaluate.strata
    )
    return counts, at, per_case, slices


def _write_maps(maps: dict, inputs: dict, cases: dict, name: str, out: Path) -> None:
    for subject, values in maps.items():
        case = cases[subject]
        ks = [r.slice for r in inputs[subject].rows]
        shape = tuple(int(n) for n in case.brain.shape)
        grid = volume_map(case.reference, Slices(ks, [], shape, ()), dict(zip(ks, values[:, 0])))
        save_nifti(out / name / f"{subject}.nii.gz", grid, case.reference.affine)


TRAINING = {
    "cases": "the train cases' tumour-free slices",
    "archive": "the slice study's healthy training slices",
    "both": "the train cases' tumour-free slices + the slice study's healthy training slices",
}


def _model_row(name: str, model: str, channel: str, training: str, module, study) -> tuple:
    from brainad.scoring.bundle import raw_detector
    from brainad.scoring.native import NativeGrid
    from brainad.utils import select_device

    detector = NativeGrid(
        raw_detector(model, module, select_device()), study.preprocess, study.volume
    )
    spec = {
        "name": name,
        "channel": channel,
        "normalisation": "window",  # each slice by its own percentiles, as brainad score
        "method": f"{model} (trained on {TRAINING[training]}, {study.name} settings)",
        "model": model,
        "training": training,
    }
    return spec, detector


def _rows(config: VolumeStudyConfig, params: Path, model_dir: Path, variants_dir: Path):
    """Every trained or fitted row: ``(input description, detector)``; the intensity detectors
    of ``detectors`` first (the first is the reference), then the trained models of ``models``
    and of ``variants.rows`` (the ``combinations`` follow in :func:`run_voxels`)."""
    rows = [(to_dict(spec), VOLUME_METHODS[spec.method]()) for spec in config.detectors]
    trained = [
        (n, n, config.models.channel, config.models.training, model_dir)
        for n in config.models.names
    ]
    trained += [
        (v.name, v.model, v.channel, v.training, variants_dir / v.name)
        for v in config.variants.rows
    ]
    if not trained:
        return rows
    from brainad.config import load_study
    from brainad.models import registry
    from brainad.models.checkpoint import load_model
    from brainad.utils import select_device

    slice_study = load_study(config.models.study, params)
    for name, model, channel, training, found in trained:
        module, _ = load_model(registry.best_file(found, model), device=select_device())
        rows.append(_model_row(name, model, channel, training, module, slice_study))
    return rows


def _grade(raw: dict, scored: dict, config: VolumeStudyConfig, reference) -> tuple:
    """Choose the smoothing and threshold on validation, grade on test: the row's result, its
    test maps and its test counts (the reference row's are compared with every later row)."""
    variants = _variants(raw, scored, config)
    chosen = _validation(variants, scored, config)
    maps = {s: variants[chosen["sigma"]][s] for s in config.roles.test if s in scored}
    counts, at, per_case, slices = _test(maps, scored, chosen["threshold"], config)
    ev = config.evaluate
    boot = voxels.bootstrap(counts, at, ev.bootstrap, ev.ci, ev.seed, reference)
    pooled = voxels.pooled(counts, at, sorted(counts))
    test = {"pooled": pooled, **boot, "per_case": per_case, "slices": slices}
    return {"validation": chosen, "test": test}, maps, (counts, at)


def _fitted_inputs(spec: dict, detector, cases: dict, rows: dict, config) -> dict[str, Inputs]:
    """The row's inputs of every case; a detector that learns is fitted on the healthy slices of
    the train cases (a trained model's ``fit`` calibrates nothing it is graded on)."""
    norm = None if spec["normalisation"] == "window" else spec["normalisation"]
    inputs = {s: Inputs(cases[s], spec["channel"], norm, rows[s]) for s in cases}
    train = [inputs[s] for s in config.roles.train if s in inputs]
    healthy = [x.images[[r.status == "healthy" for r in x.rows]] for x in train]
    if healthy and sum(len(h) for h in healthy):
        masks = [x.masks[[r.status == "healthy" for r in x.rows]] for x in train]
        detector.fit(np.concatenate(healthy), np.concatenate(masks))
    graded = (*config.roles.val, *config.roles.test)
    return {s: inputs[s] for s in graded if s in inputs}


def _combination_spec(combination, results: dict) -> dict:
    parts = list(combination.parts)
    return {
        "name": combination.name,
        "channel": "+".join(dict.fromkeys(results[p]["input"]["channel"] for p in parts)),
        "normalisation": "standardised on validation",
        "method": " + ".join(parts),
        "parts": parts,
    }


def run_voxels(
    config: VolumeStudyConfig,
    report_dir: Path,
    maps_dir: Path,
    params: Path,
    model_dir: Path,
    variants_dir: Path,
) -> dict:
    """Score, choose on validation, report on test; write ``evaluation.json``, ``metrics.json``,
    ``summary.md`` and the overlay figure under ``report_dir`` and test maps under ``maps_dir``
    (the trained models are read from ``model_dir`` and ``variants_dir/<variant>``)."""
    subjects = _check_roles(config)
    wanted = (*(d.channel for d in config.detectors), config.models.channel)
    channels = tuple(dict.fromkeys((*wanted, *(v.channel for v in config.variants.rows))))
    cases, rejected, unused = read_cases(config.source, subjects, channels)
    rows = {s: slice_rows(case, config.slices) for s, case in cases.items()}
    for role in ("val", "test"):
        if not any(s in cases for s in getattr(config.roles, role)):
            raise ValueError(f"roles.{role}: no usable case (rejected: {rejected})")
    results, reference, shown, raws, scored_of = {}, None, {}, {}, {}
    graded = [*_rows(config, params, model_dir, variants_dir), *config.combinations]
    parts = {p for c in config.combinations for p in c.parts}
    for row in graded:
        if isinstance(row, tuple):  # a detector, trained model or variant
            spec, detector = row
            log.info("voxels: %s (%s, %s, %s)", *(spec[k] for k in _SHOWN))
            scored = _fitted_inputs(spec, detector, cases, rows, config)
            raw = _raw_maps(detector, scored)
        else:  # a combination of rows graded before it
            spec = _combination_spec(row, results)
            log.info("voxels: %s (%s)", spec["name"], spec["method"])
            scored = scored_of[row.parts[0]]
            raw = _combined([raws[p] for p in row.parts], scored, config)
        result, maps, counted = _grade(raw, scored, config, reference)
        reference = reference or counted
        results[spec["name"]] = {"input": spec, **result}
        if spec["name"] in parts:  # kept only while a combination needs it
            raws[spec["name"]], scored_of[spec["name"]] = raw, scored
        _write_maps(maps, scored, cases, spec["name"], maps_dir)
        shown[spec["name"]] = maps
    default = max(results, key=lambda name: validation_ap(results[name]))
    evaluation = _evaluation(config, cases, rows, rejected, unused, results, default)
    write_json(report_dir / "evaluation.json", evaluation)
    write_json(report_dir / "metrics.json", _metrics(results, default))
    write_summary(report_dir / "summary.md", evaluation)
    tests = [s for s in config.roles.test if s in cases]
    test_inputs = {s: Inputs(cases[s], channels[0], "zscore", rows[s]) for s in tests}
    write_figure(report_dir / "figures" / "overlays.png", test_inputs, shown, default)
    return evaluation


_SHOWN = ("name", "channel", "normalisation", "method")


def _evaluation(config, cases, rows, rejected, unused, results, default) -> dict:
    def count(subject: str) -> dict:
        statuses = [r.status for r in rows[subject]]
        return {s: statuses.count(s) for s in ("healthy", "anomalous", "excluded")}

    return {
        "study": config.name,
        "config": to_dict(config),
        "roles": to_dict(config.roles),
        "cases": {
            s: {"files": c.files, "sha256": c.sha256, "slices": count(s)} for s, c in cases.items()
        },
        "rejected": [r._asdict() for r in rejected],
        "unused": unused,
        "reference": config.detectors[0].name,
        "default": default,
        "detectors": results,
    }


def _metrics(results: dict, default: str) -> dict:
    """Test metrics for ``dvc metrics``: pooled voxel metrics and slice ROC-AUC (overall and per
    position stratum) of every detector; the default's validation pixel AP."""
    out: dict = {"default_validation_pixel_ap": {default: validation_ap(results[default])}}
    for name, result in results.items():
        test = result["test"]
        slices = {f"slice_roc_auc_{k}": v["roc_auc"] for k, v in test["slices"].items()}
        found = {**test["pooled"], **slices}
        out[name] = {k: v for k, v in found.items() if v is not None}
    return out
