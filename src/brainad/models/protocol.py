"""The small protocol that lets ONE training loop (:func:`brainad.training.loop.fit`) train every GAN.

A trainable module is an ``nn.Module`` that splits its parameters into named networks, each with
its own Adam optimiser, and computes its own losses:

1. ``generator_step(real, epoch)`` → :class:`StepOutput` with the generator loss and the fake
   (reconstructed or generated) batch; the loop back-propagates it and steps only the optimiser of
   ``networks()["generator"]`` (the discriminator is not updated by it).
2. ``discriminator_step(real, fake.detach(), epoch)`` → :class:`StepOutput`, or ``None`` for a
   phase without a discriminator (DCGAN encoder training); the loop steps ``networks()["discriminator"]``.

Reconstruction scoring needs only ``reconstruct`` and ``discriminator_features`` (a model without
a discriminator raises a ValueError naming ``score.weight_discriminator``); the segmenter is
scored by its own ``probability`` map (:mod:`brainad.scoring.segmenter`), chosen by the
registry's ``detector`` kind.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn


class StepOutput(NamedTuple):
    """One loss computation.

    Args:
        loss: scalar loss to back-propagate.
        logs: detached scalar tensors to log (the loop syncs them to host once per epoch).
        fake: the generated/reconstructed batch (generator step only).
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor]
    fake: torch.Tensor | None = None


@runtime_checkable
class GANModule(Protocol):
    """What :func:`brainad.training.loop.fit` and :mod:`brainad.scoring.maps` need from a model."""

    name: str

    def networks(self) -> dict[str, nn.Module]:
        """``{"generator": …, "discriminator": …}`` for the current phase (discriminator optional)."""

    def generator_step(self, real: torch.Tensor, epoch: int) -> StepOutput: ...

    def discriminator_step(
        self, real: torch.Tensor, fake: torch.Tensor, epoch: int
    ) -> StepOutput | None: ...

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` (B, 1, H, W) in [-1, 1], same shape."""

    def discriminator_features(self, x: torch.Tensor) -> torch.Tensor:
        """Intermediate discriminator feature maps (B, C, h, w) used for feature residuals."""

    def epoch_logs(self) -> dict[str, float]:
        """Model-specific health numbers for the epoch just finished (e.g. codebook usage)."""

    def spec(self) -> dict:
        """JSON-ready constructor arguments: ``build_model(name, spec)`` rebuilds the module."""
