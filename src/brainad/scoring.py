"""Residual maps → per-image anomaly scores: ONE code path for the evaluate stage and the CLI.

Scoring depends on a model only through ``model.reconstruct(x)`` and
``model.discriminator_features(x)`` (see :mod:`brainad.models.protocol`). Per image, inside the
brain mask, four raw components are computed (HIGHER = MORE ANOMALOUS):

* ``residual``: aggregate of the smoothed ``|x − x̂|`` (l1) or ``(x − x̂)²`` (l2) map;
* ``ssim``: aggregate of ``(1 − SSIM)/2`` (11-px Gaussian window, σ = 1.5, on [0, 1]);
* ``perceptual``: aggregate of :func:`brainad.models.perceptual.perceptual_map`;
* ``discriminator``: mean squared difference of the discriminator features of ``x`` and ``x̂``
  (the f-AnoGAN feature residual; not masked, the features are coarser than the mask).

Aggregation (``score.aggregate``) is the mean over brain pixels, the mean of the top
``topk_percent`` % brain pixels, or the maximum. :func:`combine` turns the components into one
score: a weighted sum of components standardised with a :class:`Calibration` fitted on HEALTHY
VALIDATION scans.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainad.config import ScoreConfig
from brainad.models.perceptual import perceptual_map
from brainad.utils import console

log = logging.getLogger("brainad")

COMPONENTS = ("residual", "ssim", "perceptual", "discriminator")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_C1, _C2 = 0.01**2, 0.03**2  # data range 1 (images mapped to [0, 1])


class ScoreBatch(NamedTuple):
    """Scores of one batch.

    Args:
        components: raw per-image component scores, ``{name: (B,) float32}`` for every component
            the :class:`Scorer` computes (all of :data:`COMPONENTS` by default).
        residual_map: (B, 1, S, S) smoothed pixel residual, 0 outside the brain mask.
        recon: (B, 1, S, S) reconstruction.
    """

    components: dict[str, Tensor]
    residual_map: Tensor
    recon: Tensor


class ScoreTable(NamedTuple):
    """Scores of a whole array of images (host memory).

    Args:
        components: ``{name: (N,) float32}``.
        maps: (N, 1, S, S) float32 residual maps, or None unless ``keep_maps``.
        recons: (N, 1, S, S) float32 reconstructions, or None unless ``keep_maps``.
    """

    components: dict[str, np.ndarray]
    maps: np.ndarray | None
    recons: np.ndarray | None


# ----------------------------------------------------------------------------- calibration
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
    def from_dict(cls, data: dict) -> Calibration:
        """Strict inverse of :meth:`to_dict`: a missing, unknown or mistyped key → ValueError."""
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
        means = _float_mapping(data["means"], "means")
        stds = _float_mapping(data["stds"], "stds")
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


def _float_mapping(value: object, key: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError(f"calibration: {key} must map component names to numbers")
    unknown = sorted(set(value) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"calibration: {key} has unknown component(s) {unknown}")
    return {k: _number(v, f"{key}.{k}") for k, v in value.items()}


def component_weights(config: ScoreConfig) -> dict[str, float]:
    """``{component: weight}`` from the ``score`` section."""
    return {
        "residual": config.weight_residual,
        "ssim": config.weight_ssim,
        "perceptual": config.weight_perceptual,
        "discriminator": config.weight_discriminator,
    }


def active_components(config: ScoreConfig) -> tuple[str, ...]:
    """Components with a non-zero weight, plus ``residual`` (always computed, it gives the maps)."""
    weights = component_weights(config)
    return tuple(c for c in COMPONENTS if weights[c] != 0 or c == "residual")


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


def combine(
    components: dict[str, np.ndarray], calibration: Calibration, config: ScoreConfig
) -> np.ndarray:
    """One score per image: ``Σ w_c · (c − mean_c) / std_c`` over components with ``w_c ≠ 0``."""
    weights = {k: w for k, w in component_weights(config).items() if w != 0}
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


# --------------------------------------------------------------------------- map operations
def _gaussian_kernel(size: int, sigma: float, device: torch.device) -> Tensor:
    coords = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(maps: Tensor, size: int, sigma: float) -> Tensor:
    """Separable Gaussian filter of (B, C, H, W) maps with reflect padding, same shape."""
    if size <= 1:
        return maps
    channels, pad = maps.shape[1], size // 2
    kernel = _gaussian_kernel(size, sigma, maps.device)
    out = F.pad(maps, (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, size).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, size, 1).repeat(channels, 1, 1, 1), groups=channels)


def median_filter(maps: Tensor, size: int, chunk: int = 16) -> Tensor:
    """Exact ``size``×``size`` median filter of (B, 1, H, W) maps (reflect padding) via unfold;
    processed ``chunk`` images at a time to bound memory (B·size²·H·W floats per chunk)."""
    if size <= 1:
        return maps
    pad, (height, width) = size // 2, maps.shape[-2:]
    out = []
    for part in maps.split(chunk):
        padded = F.pad(part, (pad, pad, pad, pad), mode="reflect")
        patches = F.unfold(padded, size)  # (b, size², H·W)
        out.append(patches.median(dim=1).values.view(part.shape[0], 1, height, width))
    return torch.cat(out)


def smooth(maps: Tensor, config: ScoreConfig) -> Tensor:
    """Apply ``score.smoothing`` (``none``/``gaussian`` σ = px/4/``median``) to (B, 1, H, W)."""
    if config.smoothing == "none":
        return maps
    if config.smoothing_px < 1 or config.smoothing_px % 2 == 0:
        raise ValueError(
            f"score.smoothing_px must be an odd integer >= 1, got {config.smoothing_px}"
        )
    if config.smoothing == "gaussian":
        return gaussian_blur(maps, config.smoothing_px, config.smoothing_px / 4.0)
    if config.smoothing == "median":
        return median_filter(maps, config.smoothing_px)
    raise ValueError(f"score.smoothing: unknown {config.smoothing!r}; use none, gaussian or median")


def ssim_map(x: Tensor, y: Tensor) -> Tensor:
    """Per-pixel SSIM of (B, 1, H, W) images in [-1, 1] (11-px Gaussian window, σ = 1.5).

    Computed on the images mapped to [0, 1]: the luminance term assumes non-negative
    intensities and is unstable for local means near 0, which [-1, 1] images have.
    """
    x, y = (x.float() + 1.0) / 2.0, (y.float() + 1.0) / 2.0
    stats = gaussian_blur(torch.cat([x, y, x * x, y * y, x * y], 1), SSIM_WINDOW, SSIM_SIGMA)
    mu_x, mu_y, xx, yy, xy = stats.split(1, dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + _C1) * (2 * cov + _C2)
    return numerator / ((mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2))


def aggregate(maps: Tensor, masks: Tensor, method: str, topk_percent: float = 1.0) -> Tensor:
    """Per-image aggregate (B,) of (B, 1, H, W) ``maps`` over the True pixels of ``masks``.

    ``mean``: mean over mask pixels; ``topk``: mean of the highest ``ceil(topk_percent/100·n)``
    mask pixels (at least one); ``max``: maximum. An empty mask gives 0.
    """
    values, inside = maps.flatten(1).float(), masks.flatten(1).bool()
    count = inside.sum(1)
    if method == "mean":
        out = (values * inside).sum(1) / count.clamp(min=1)
    elif method in ("topk", "max"):
        if method == "max":
            k = torch.ones_like(count)
        else:
            if not 0.0 < topk_percent <= 100.0:
                raise ValueError(f"score.topk_percent must be in (0, 100], got {topk_percent}")
            k = torch.ceil(count * (topk_percent / 100.0)).long().clamp(min=1)
        k_max = int(min(int(k.max()), values.shape[1]))
        top = values.masked_fill(~inside, float("-inf")).topk(k_max, dim=1).values
        keep = torch.arange(k_max, device=values.device)[None, :] < k[:, None]
        out = torch.where(keep, top, torch.zeros_like(top)).sum(1) / k
    else:
        raise ValueError(f"score.aggregate: unknown {method!r}; use mean, topk or max")
    return torch.where(count > 0, out, torch.zeros_like(out))


# ------------------------------------------------------------------------------------ scorer
@contextlib.contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode; restore their previous modes afterwards."""
    previous = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, previous):
            m.train(mode)


def _check_pair(images: Tensor | np.ndarray, masks: Tensor | np.ndarray) -> None:
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, 1, S, S), got {tuple(images.shape)}")
    if tuple(masks.shape) != tuple(images.shape):
        raise ValueError(
            f"brain masks shape {tuple(masks.shape)} differs from images {tuple(images.shape)}"
        )


class Scorer:
    """Scores images with any model exposing ``reconstruct`` and ``discriminator_features``.

    Args:
        model: the trained model (moved to ``device``; put in eval mode while scoring, its
            previous mode restored afterwards).
        config: the ``score`` section.
        perceptual: frozen feature network from :func:`brainad.models.perceptual.build_perceptual`.
        device: where to compute.
        precision: ``fp32``, ``bf16`` or ``fp16``; reduced precision uses ``torch.autocast`` for
            the model forward passes only, all residual arithmetic is float32.
        components: the components to compute (default: all of :data:`COMPONENTS`, so every
            component can be reported); ``residual`` is always computed. Pass
            :func:`active_components` to skip the costly ones with weight 0 (the perceptual
            network dominates the run time on a CPU).
    """

    def __init__(
        self,
        model: nn.Module,
        config: ScoreConfig,
        perceptual: nn.Module,
        device: torch.device,
        precision: str = "fp32",
        *,
        components: Sequence[str] | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if config.batch_size < 1:
            raise ValueError(f"score.batch_size must be >= 1, got {config.batch_size}")
        wanted = set(COMPONENTS if components is None else components)
        if wanted - set(COMPONENTS):
            raise ValueError(f"unknown score component(s) {sorted(wanted - set(COMPONENTS))}")
        smooth(torch.zeros(1, 1, 8, 8), config)  # validates the settings before any work
        aggregate(
            torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), config.aggregate, config.topk_percent
        )
        self.components = tuple(c for c in COMPONENTS if c in wanted or c == "residual")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.perceptual = perceptual.to(self.device)
        self.config = config
        self.precision = precision

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _aggregate(self, maps: Tensor, mask: Tensor) -> Tensor:
        return aggregate(maps, mask, self.config.aggregate, self.config.topk_percent)

    def _feature_residual(self, x: Tensor, recon: Tensor) -> Tensor:
        """Mean squared difference of the discriminator features of ``x`` and ``recon`` (B,)."""
        with self._autocast():
            fx = self.model.discriminator_features(x)
            fr = self.model.discriminator_features(recon)
        return (fx.float() - fr.float()).pow(2).flatten(1).mean(1)

    @torch.no_grad()
    def score_batch(self, images: Tensor, masks: Tensor) -> ScoreBatch:
        """Raw component scores, residual maps and reconstructions (clamped to [-1, 1])."""
        _check_pair(images, masks)
        x = images.to(self.device, torch.float32)
        mask = masks.to(self.device).bool()
        empty = int((~mask.flatten(1).any(1)).sum())
        if empty:
            log.warning("%d image(s) have an empty brain mask; their scores are 0", empty)
        with _eval_mode(self.model, self.perceptual):
            with self._autocast():
                recon = self.model.reconstruct(x)
            recon = recon.float().clamp(-1.0, 1.0)
            diff = x - recon
            residual = diff.abs() if self.config.residual == "l1" else diff.pow(2)
            residual_map = smooth(residual, self.config) * mask
            components = {"residual": self._aggregate(residual_map, mask)}
            if "ssim" in self.components:
                components["ssim"] = self._aggregate((1.0 - ssim_map(x, recon)) / 2.0, mask)
            if "perceptual" in self.components:
                perceptual = perceptual_map(self.perceptual, x, recon)
                components["perceptual"] = self._aggregate(perceptual, mask)
            if "discriminator" in self.components:
                components["discriminator"] = self._feature_residual(x, recon)
        return ScoreBatch(components, residual_map, recon)

    def score_arrays(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        keep_maps: bool = False,
        progress: bool = False,
    ) -> ScoreTable:
        """Score (N, 1, S, S) arrays in batches of ``score.batch_size``; results on the host."""
        _check_pair(images, masks)
        starts = range(0, images.shape[0], self.config.batch_size)
        if progress:
            from rich.progress import track

            starts = track(starts, description="scoring", transient=True, console=console())
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.components}
        maps, recons = [], []
        for start in starts:
            stop = start + self.config.batch_size
            batch = self.score_batch(
                torch.from_numpy(np.ascontiguousarray(images[start:stop], dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(masks[start:stop], dtype=bool)),
            )
            for name in self.components:
                parts[name].append(batch.components[name].cpu().numpy())
            if keep_maps:
                maps.append(batch.residual_map.cpu().numpy())
                recons.append(batch.recon.cpu().numpy())
        components = {
            name: np.concatenate(v) if v else np.zeros(0, np.float32) for name, v in parts.items()
        }
        if keep_maps and maps:
            return ScoreTable(components, np.concatenate(maps), np.concatenate(recons))
        return ScoreTable(components, None, None)
