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

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from brainad.config import SegmenterConfig, from_dict, to_dict
from brainad.models.blocks import masked_mean, no_discriminator
from brainad.models.corruptions import Corrupted, brain_of, synthetic_anomalies
from brainad.models.protocol import StepOutput
from brainad.models.unet import UNet, check_unet


class Segmenter(nn.Module):
    """A UNet from the slice (and its mirror) to one anomaly logit per pixel.

    Args:
        config: the ``segmenter.model`` section.
        image_size: side of the square input images; divisible by ``2**(len(channels)-1)``.
    """

    name = "segmenter"
    spec_keys = ("config", "image_size")

    def __init__(self, config: SegmenterConfig, image_size: int) -> None:
        super().__init__()
        check_unet(config.channels, image_size, "segmenter.model")
        if not 1 <= config.field_res <= image_size:
            raise ValueError(
                f"segmenter.model.field_res must be in [1, image size {image_size}], got "
                f"{config.field_res}"
            )
        self.config = config
        self.image_size = image_size
        in_channels = 2 if config.mirror_channel else 1
        self.unet = UNet(config.channels, in_channels=in_channels, out_channels=1)

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
    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.unet}

    def generator_step(self, real: torch.Tensor, epoch: int) -> StepOutput:
        corrupted = self.corrupt(real)
        loss = self.loss(corrupted, brain_of(real))
        anomalous = (corrupted.target > 0).float().mean()
        return StepOutput(loss, {"bce": loss.detach(), "target_fraction": anomalous}, None)

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, epoch: int) -> None:
        return None

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """NOT a reconstruction: the anomaly probability drawn as an image in [-1, 1] (the
        training loop's sample grids show it under each input). Score with
        :class:`brainad.scoring.segmenter.SegmenterDetector`."""
        return self.probability(x) * 2.0 - 1.0

    def discriminator_features(self, x: torch.Tensor) -> torch.Tensor:
        raise no_discriminator(self.name)

    def epoch_logs(self) -> dict[str, float]:
        return {}

    # ---------------------------------------------------------------------------- checkpoint
    def spec(self) -> dict[str, Any]:
        return {"config": to_dict(self.config), "image_size": self.image_size}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Segmenter:
        """Rebuild from :meth:`spec` output; use :func:`brainad.models.registry.build_model`,
        which checks the keys first. A checkpoint written before ``edge_softness`` existed was
        trained with hard edges (0)."""
        config = {"edge_softness": 0.0, **spec["config"]}
        return cls(from_dict(SegmenterConfig, config, "spec.config"), spec["image_size"])
