"""The segmentation detector: scores images by a model's own anomaly probability map.

It depends on a model only through ``model.probability(x)`` ((B, 1, S, S) in [0, 1]; see
:class:`brainad.models.segmenter.Segmenter`). Per image, one raw component (HIGHER = MORE
ANOMALOUS):

* ``segmentation``: the probability map inside the brain mask, smoothed (``score.smoothing``,
  ``score.smoothing_px``) and aggregated (``score.aggregate``, ``score.topk_percent``) exactly as
  the reconstruction detector treats its residual map (:func:`brainad.scoring.maps.score_map`).

The ``score.weight_*`` and ``score.residual`` settings belong to the reconstruction components
and do not apply: ``segmentation`` has weight 1 and is standardised on healthy validation scans
like every model component.

In fast mode (not :func:`~brainad.runtime.kernels_pinned`) the forward pass runs in the
channels-last memory format on CPU, which oneDNN's convolutions prefer; deterministic mode keeps
the model's own format, so its numbers do not change.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from brainad.config import ScoreConfig
from brainad.runtime import kernels_pinned
from brainad.scoring.detector import AnomalyMaps, ImageScores, check_pair
from brainad.scoring.gan import autocast, channels_last, eval_mode
from brainad.scoring.maps import check_settings, score_map

COMPONENTS = ("segmentation",)


class SegmenterDetector:
    """Scores images by the anomaly probability a trained segmenter predicts.

    Args:
        name: the model's name (``segmenter``).
        model: the trained model with ``probability(x)`` (moved to ``device``; eval mode while
            scoring, its previous mode restored afterwards).
        config: the ``score`` section (smoothing, aggregation, batch size).
        device: where to compute.
        precision: ``fp32``, ``bf16`` or ``fp16``; reduced precision autocasts the forward pass
            only, the maps are float32.
    """

    kind = "model"
    standardise = True
    components = COMPONENTS

    def __init__(
        self,
        name: str,
        model: nn.Module,
        config: ScoreConfig,
        device: torch.device,
        precision: str = "fp32",
    ) -> None:
        autocast(torch.device(device), precision)  # validates the precision
        if config.batch_size < 1:
            raise ValueError(f"score.batch_size must be >= 1, got {config.batch_size}")
        check_settings(config)
        self.name = name
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.config = config
        self.precision = precision
        self.batch_size = config.batch_size
        self.weights = {"segmentation": 1.0}

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        """Nothing to fit: the model was trained by the training loop."""

    @torch.no_grad()
    def maps(self, images: Tensor, masks: Tensor) -> AnomalyMaps:
        """The anomaly probability inside the brain mask (0 outside); no reconstruction."""
        check_pair(images, masks)
        x = images.to(self.device, torch.float32)
        fast = self.device.type == "cpu" and not kernels_pinned()
        with eval_mode(self.model), channels_last(self.model, fast):
            with autocast(self.device, self.precision):
                probability = self.model.probability(x)
        inside = masks.to(self.device).bool()
        return AnomalyMaps({"segmentation": probability.float() * inside}, {}, None)

    def scores(self, maps: AnomalyMaps, masks: Tensor) -> ImageScores:
        """Smoothed, masked probability map and its aggregate inside the brain mask."""
        reported, value = score_map(maps.pixel["segmentation"], masks, self.config)
        return ImageScores({"segmentation": value}, reported)
