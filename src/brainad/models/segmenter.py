"""Self-supervised anomaly segmenter: a UNet that finds synthetic corruptions of healthy slices.

Training: each healthy slice of the batch is corrupted (or left clean) by
:func:`brainad.models.corruptions.synthetic_anomalies` — foreign patches from other healthy slices
and smooth intensity fields inside hard-edged rectangle unions, unlike the lesions the evaluation
implants — and the UNet predicts the per-pixel soft target with a binary cross-entropy inside the
brain. With ``mirror_channel`` the left-right mirrored slice is a second input channel, so the
network can compare each region with its contralateral twin.

Scoring: :meth:`Segmenter.probability` (sigmoid of the logit map) is the anomaly map of
:class:`brainad.scoring.segmenter.SegmenterDetector`. There is no reconstruction: ``reconstruct``
draws the probability map as an image for the training loop's sample grids only.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from brainad.config import SegmenterConfig
from brainad.models.blocks import masked_mean
from brainad.models.corruptions import Corrupted, brain_of, synthetic_anomalies
from brainad.models.protocol import StepOutput
from brainad.models.unet import UNetModel


class Segmenter(UNetModel):
    """A UNet from the slice (and its mirror) to one anomaly logit per pixel.

    Args:
        config: the ``segmenter.model`` section.
        image_size: side of the square input images; divisible by ``2**(len(channels)-1)``.
    """

    name = "segmenter"
    config_class = SegmenterConfig
    spec_defaults: ClassVar[dict[str, Any]] = {"edge_softness": 0.0}
    """A checkpoint written before ``edge_softness`` existed was trained with hard edges."""

    def __init__(self, config: SegmenterConfig, image_size: int) -> None:
        super().__init__(config, image_size, in_channels=2 if config.mirror_channel else 1)
        if not 1 <= config.field_res <= image_size:
            raise ValueError(
                f"segmenter.model.field_res must be in [1, image size {image_size}], got "
                f"{config.field_res}"
            )

    # ----------------------------------------------------------------------------- public API
    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) slices → (B, 2, S, S) [slice, left-right mirror] or the slice itself."""
        return torch.cat([x, x.flip(-1)], dim=1) if self.config.mirror_channel else x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) anomaly logits of slices ``x`` (B, 1, S, S)."""
        return self.unet(self.inputs(x))

    @torch.no_grad()
    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) anomaly probability in [0, 1], float32."""
        return torch.sigmoid(self.logits(x).float())

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Corrupted:
        """Synthetic anomalies of healthy slices ``x`` with their soft targets."""
        return synthetic_anomalies(x, self.config, generator)

    def loss(self, corrupted: Corrupted, brain: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of the logits of ``corrupted.images`` against the soft target,
        averaged over the ``brain`` pixels (of the clean slices)."""
        logits = self.logits(corrupted.images).float()
        bce = F.binary_cross_entropy_with_logits(logits, corrupted.target, reduction="none")
        return masked_mean(bce, brain)

    # ------------------------------------------------------------------------------ protocol
    def generator_step(self, real: torch.Tensor, epoch: int) -> StepOutput:
        corrupted = self.corrupt(real)
        loss = self.loss(corrupted, brain_of(real))
        anomalous = (corrupted.target > 0).float().mean()
        return StepOutput(loss, {"bce": loss.detach(), "target_fraction": anomalous}, None)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """NOT a reconstruction: the anomaly probability drawn as an image in [-1, 1] (the
        training loop's sample grids show it under each input). Score with
        :class:`brainad.scoring.segmenter.SegmenterDetector`."""
        return self.probability(x) * 2.0 - 1.0
