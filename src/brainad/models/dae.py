"""Coarse-noise denoising autoencoder (Kascenas et al., "Denoising autoencoders for unsupervised
anomaly detection in brain MRI", MIDL 2022), sized for a CPU.

Training: healthy slice ``x`` → ``x + coarse noise`` (:func:`brainad.models.corruptions.coarse_noise`:
Gaussian noise drawn on a coarse grid and upsampled, added inside the brain only) → UNet → the
clean ``x``; the loss is the mean absolute (or squared) error inside the brain. Low-frequency noise
is what makes a lesion-sized change something the network learns to remove instead of copying.

Scoring: ``reconstruct(x)`` is the UNet applied to the clean input, clipped to [-1, 1], so the
reconstruction detector (:class:`brainad.scoring.gan.GANDetector`) scores it like every other
reconstruction model. There is no discriminator: a score with a discriminator component is refused.
"""

from __future__ import annotations

import torch

from brainad.config import DAEConfig
from brainad.models.blocks import masked_mean
from brainad.models.corruptions import brain_of, coarse_noise
from brainad.models.protocol import StepOutput
from brainad.models.unet import UNetModel


class DenoisingAE(UNetModel):
    """A UNet trained to remove coarse noise from healthy slices.

    Args:
        config: the ``dae.model`` section.
        image_size: side of the square input images; divisible by ``2**(len(channels)-1)``.
    """

    name = "dae"
    config_class = DAEConfig

    def __init__(self, config: DAEConfig, image_size: int) -> None:
        super().__init__(config, image_size, in_channels=1)
        if not 1 <= config.noise_res <= image_size:
            raise ValueError(
                f"dae.model.noise_res must be in [1, image size {image_size}], got "
                f"{config.noise_res}"
            )
        if config.noise_std < 0:
            raise ValueError(f"dae.model.noise_std must be >= 0, got {config.noise_std}")

    # ------------------------------------------------------------------------------ protocol
    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x`` plus its coarse training noise (random numbers from ``generator`` or the
        global RNG)."""
        return x + coarse_noise(x, self.config.noise_res, self.config.noise_std, generator)

    def generator_step(self, real: torch.Tensor, epoch: int) -> StepOutput:
        denoised = self.unet(self.corrupt(real))  # (B, 1, S, S)
        error = denoised.float() - real.float()
        error = error.abs() if self.config.loss == "l1" else error.pow(2)
        loss = masked_mean(error, brain_of(real))
        return StepOutput(loss, {"denoise": loss.detach()}, None)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The UNet applied to the clean input (no noise), clipped to [-1, 1]."""
        return self.unet(x).clamp(-1.0, 1.0)
