"""The reconstruction detector of every trained model (VQGAN+D, its token prior, the DCGAN).

It depends on a model only through ``model.reconstruct(x)``, ``model.discriminator_features(x)``
and, for the ablation's diagnostics, ``model.diagnostic_maps(x)`` (see
:mod:`brainad.models.protocol`). Per image, inside the brain mask, four raw components
(HIGHER = MORE ANOMALOUS):

* ``residual``: aggregate of the smoothed ``|x − x̂|`` (l1) or ``(x − x̂)²`` (l2) map;
* ``ssim``: aggregate of ``(1 − SSIM)/2`` (11-px Gaussian window, σ = 1.5, on [0, 1]);
* ``perceptual``: aggregate of :func:`brainad.models.perceptual.perceptual_map`;
* ``discriminator``: mean squared difference of the discriminator features of ``x`` and ``x̂``
  (the f-AnoGAN feature residual; not masked, the features are coarser than the mask).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from brainad.config import ScoreConfig
from brainad.models.perceptual import perceptual_map
from brainad.scoring.detector import AnomalyMaps, ImageScores, check_pair
from brainad.scoring.maps import aggregate, check_settings, score_map, ssim_map

log = logging.getLogger("brainad")

COMPONENTS = ("residual", "ssim", "perceptual", "discriminator")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

SELECTION_SCORE = ScoreConfig(
    residual="l1",
    smoothing="none",
    smoothing_px=1,
    aggregate="mean",
    topk_percent=1.0,
    weight_residual=1.0,
    weight_ssim=0.0,
    weight_perceptual=0.0,
    weight_discriminator=0.0,
    weight_asymmetry=0.0,
    batch_size=64,
)
"""The fixed criterion of model selection during training (``val_recon``: mean absolute residual
inside the brain mask) and the unsmoothed base of the ablation's variants. It is a definition,
not a tunable value, so changing the ``score`` params never invalidates trained models."""


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


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode; restore their previous modes afterwards."""
    previous = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, previous):
            m.train(mode)


@contextlib.contextmanager
def channels_last(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """The 4-D parameters and buffers of ``module`` in channels-last memory format for the block
    (oneDNN's CPU convolutions prefer it: the segmenter's fp32 forward ran 1.6x faster), then its
    own tensors back, values untouched; a no-op unless ``enabled``."""
    swapped: list[tuple[Tensor, Tensor]] = []
    if enabled:
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if tensor.dim() == 4 and not tensor.is_contiguous(memory_format=torch.channels_last):
                swapped.append((tensor, tensor.data))
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for tensor, data in swapped:
            tensor.data = data


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``bf16``/``fp16``, a no-op for ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class GANDetector:
    """Scores images by how badly a trained model reconstructs them.

    Args:
        name: the model's name (``vqgan``, ``vqgan_prior``, ``dcgan``).
        model: the trained model (moved to ``device``; eval mode while scoring, its previous
            mode restored afterwards).
        config: the ``score`` section (map, smoothing, aggregation, weights, batch size).
        perceptual: frozen feature network (:func:`brainad.models.perceptual.build_perceptual`);
            only used when the ``perceptual`` component is computed.
        device: where to compute.
        precision: ``fp32``, ``bf16`` or ``fp16``; reduced precision autocasts the model
            forward passes only, all map arithmetic is float32.
        components: the components to compute (default: all of :data:`COMPONENTS`);
            ``residual`` is always computed. :func:`active_components` skips the costly ones
            with weight 0 (the perceptual network dominates the run time on a CPU).
        diagnostics: also return the model's ``diagnostic_maps`` (the ablation's extra maps).
    """

    kind = "model"
    standardise = True

    def __init__(
        self,
        name: str,
        model: nn.Module,
        config: ScoreConfig,
        perceptual: nn.Module,
        device: torch.device,
        precision: str = "fp32",
        *,
        components: Sequence[str] | None = None,
        diagnostics: bool = False,
    ) -> None:
        autocast(torch.device(device), precision)  # validates the precision
        if config.batch_size < 1:
            raise ValueError(f"score.batch_size must be >= 1, got {config.batch_size}")
        wanted = set(COMPONENTS if components is None else components)
        if wanted - set(COMPONENTS):
            raise ValueError(f"unknown score component(s) {sorted(wanted - set(COMPONENTS))}")
        check_settings(config)
        self.name = name
        self.components = tuple(c for c in COMPONENTS if c in wanted or c == "residual")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.perceptual = perceptual.to(self.device)
        self.config = config
        self.precision = precision
        self.diagnostics = diagnostics
        self.batch_size = config.batch_size
        self.weights = component_weights(config)

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        """Nothing to fit: the model was trained by the training loop."""

    def _feature_residual(self, x: Tensor, recon: Tensor) -> Tensor:
        """Mean squared difference of the discriminator features of ``x`` and ``recon`` (B,)."""
        with autocast(self.device, self.precision):
            fx = self.model.discriminator_features(x)
            fr = self.model.discriminator_features(recon)
        return (fx.float() - fr.float()).pow(2).flatten(1).mean(1)

    @torch.no_grad()
    def maps(self, images: Tensor, masks: Tensor) -> AnomalyMaps:
        """Reconstruction (clamped to [-1, 1]) and the raw maps of the computed components."""
        check_pair(images, masks)
        x = images.to(self.device, torch.float32)
        with eval_mode(self.model, self.perceptual):
            with autocast(self.device, self.precision):
                recon = self.model.reconstruct(x)
            recon = recon.float().clamp(-1.0, 1.0)
            diff = x - recon
            pixel = {"residual": diff.abs() if self.config.residual == "l1" else diff.pow(2)}
            image = {}
            if "ssim" in self.components:
                pixel["ssim"] = (1.0 - ssim_map(x, recon)) / 2.0
            if "perceptual" in self.components:
                pixel["perceptual"] = perceptual_map(self.perceptual, x, recon)
            if "discriminator" in self.components:
                image["discriminator"] = self._feature_residual(x, recon)
            if self.diagnostics and hasattr(self.model, "diagnostic_maps"):
                pixel.update(self.model.diagnostic_maps(x))
        return AnomalyMaps(pixel, image, recon)

    def scores(self, maps: AnomalyMaps, masks: Tensor) -> ImageScores:
        """Smoothed, masked residual map; each component aggregated inside the brain mask."""
        mask = masks.to(self.device).bool()
        empty = int((~mask.flatten(1).any(1)).sum())
        if empty:
            log.warning("%d image(s) have an empty brain mask; their scores are 0", empty)
        residual_map, residual = score_map(maps.pixel["residual"], mask, self.config)
        components = {"residual": residual}
        for name in ("ssim", "perceptual"):
            if name in self.components:
                components[name] = self._aggregate(maps.pixel[name], mask)
        components.update(maps.image)
        return ImageScores(components, residual_map)

    def _aggregate(self, maps: Tensor, mask: Tensor) -> Tensor:
        return aggregate(maps, mask, self.config.aggregate, self.config.topk_percent)
