"""Calibration fitted on VALIDATION scans only: component standardisation and the threshold.

Every detector's raw per-image components become one score through :func:`combine`, a weighted
sum of components standardised on HEALTHY validation scans; the decision threshold is then
chosen on the validation scores (:func:`brainad.metrics.calibrate_threshold`). A
:class:`Calibration` is stored in a scorer bundle, so ``brainad score`` scores exactly like the
evaluation did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """Everything a saved model needs to score exactly like the evaluation did.

    Args:
        means: per-component mean, fitted on healthy validation scans.
        stds: per-component standard deviation (floored), fitted on the same scans.
        threshold: decision threshold on the combined score (positive when ``>=``).
        method: the ``threshold.method`` that chose it.
        details: JSON-ready calibration facts (achieved validation metrics, counts).
    """

    means: dict[str, float]
    stds: dict[str, float]
    threshold: float
    method: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return {
            "means": {k: float(v) for k, v in self.means.items()},
            "stds": {k: float(v) for k, v in self.stds.items()},
            "threshold": float(self.threshold),
            "method": str(self.method),
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: dict, components: tuple[str, ...]) -> Calibration:
        """Strict inverse of :meth:`to_dict`: a missing, unknown or mistyped key, or a component
        not among the detector's ``components`` → ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"calibration: expected a mapping, got {type(data).__name__}")
        expected = ("means", "stds", "threshold", "method", "details")
        for key in expected:
            if key not in data:
                raise ValueError(
                    f"calibration: missing key {key!r}; re-run the evaluate stage to rewrite it"
                )
        unknown = sorted(set(data) - set(expected))
        if unknown:
            raise ValueError(f"calibration: unknown key(s) {unknown}; expected {list(expected)}")
        means = _float_mapping(data["means"], "means", components)
        stds = _float_mapping(data["stds"], "stds", components)
        if set(means) != set(stds):
            raise ValueError(f"calibration: means {sorted(means)} and stds {sorted(stds)} differ")
        if not isinstance(data["method"], str) or not isinstance(data["details"], dict):
            raise ValueError("calibration: 'method' must be a string and 'details' a mapping")
        threshold = _number(data["threshold"], "threshold")
        return cls(means, stds, threshold, data["method"], dict(data["details"]))


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"calibration: {key} must be a finite number, got {value!r}")
    return float(value)


def _float_mapping(value: object, key: str, components: tuple[str, ...]) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError(f"calibration: {key} must map component names to numbers")
    unknown = sorted(set(value) - set(components))
    if unknown:
        raise ValueError(f"calibration: {key} has unknown component(s) {unknown}")
    return {k: _number(v, f"{key}.{k}") for k, v in value.items()}


def fit_standardiser(components: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Per-component mean and standard deviation (fit on HEALTHY VALIDATION scans only).

    The standard deviation is floored at ``max(1e-6·|mean|, 1e-12)`` so a constant component
    never divides by zero.

    Returns:
        ``(means, stds)``: two ``{component: float}`` dicts.
    """
    means, stds = {}, {}
    for name, values in components.items():
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"fit_standardiser: component {name!r} needs a non-empty 1-D array")
        if not np.isfinite(array).all():
            raise ValueError(f"fit_standardiser: component {name!r} contains NaN/inf")
        mean = float(array.mean())
        std = float(array.std(ddof=1)) if array.size > 1 else 0.0
        means[name] = mean
        stds[name] = max(std, 1e-6 * abs(mean), 1e-12)
    return means, stds


def identity_standardiser(names: tuple[str, ...]) -> tuple[dict, dict]:
    """Means 0 and standard deviations 1: ``combine`` then returns the raw component (baselines,
    whose single statistic is already on its own scale)."""
    return {n: 0.0 for n in names}, {n: 1.0 for n in names}


def combine(
    components: dict[str, np.ndarray], calibration: Calibration, weights: dict[str, float]
) -> np.ndarray:
    """One score per image: ``Σ w_c · (c − mean_c) / std_c`` over components with ``w_c ≠ 0``."""
    weights = {k: w for k, w in weights.items() if w != 0}
    if not weights:
        raise ValueError(
            "score: every weight_* is 0; set at least one of weight_residual, weight_ssim, "
            "weight_perceptual, weight_discriminator in params.yaml"
        )
    total: np.ndarray | None = None
    for name, weight in weights.items():
        if name not in components:
            raise ValueError(f"combine: component {name!r} (weight_{name}={weight}) was not scored")
        if name not in calibration.means:
            raise ValueError(
                f"combine: calibration has no mean/std for {name!r}; re-run the evaluate stage "
                f"with the current score weights"
            )
        values = np.asarray(components[name], np.float64)
        z = (values - calibration.means[name]) / calibration.stds[name]
        total = weight * z if total is None else total + weight * z
    return total
