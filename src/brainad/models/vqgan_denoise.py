"""VQGAN+D on corrupted inputs: the thesis architecture, trained so that it cannot copy a lesion.

Training: healthy slice ``x`` → ``x + coarse noise`` (:func:`brainad.models.corruptions.coarse_noise`,
the dae's corruption: Gaussian noise on a coarse grid, bilinearly upsampled, inside the brain only)
→ encoder → quantiser → decoder; every loss of :class:`brainad.models.vqgan.VQGAN` (L1, perceptual,
commitment, adversarial) compares the reconstruction with the CLEAN ``x``, and the discriminator
judges that reconstruction. A lesion-sized, low-frequency change is what the model learns to
remove; a small codebook and a coarse latent grid (its ``model`` section) leave it little room to
carry one through.

Scoring: ``reconstruct(x)`` encodes the clean input, like the VQGAN+D's, so the reconstruction
detector scores it like every other reconstruction model.
"""

from __future__ import annotations

from typing import Any

import torch

from brainad.config import InputNoiseConfig, PerceptualConfig, VQGANConfig, from_dict, to_dict
from brainad.models.corruptions import coarse_noise
from brainad.models.vqgan import VQGAN


class DenoisingVQGAN(VQGAN):
    """A VQGAN+D whose training inputs carry coarse noise (targets stay clean).

    Args:
        config: the ``vqgan_denoise.model`` section (the VQGAN+D's keys).
        noise: the ``vqgan_denoise.noise`` section.
        perceptual: the ``perceptual`` section.
        image_size: side of the square input images.
    """

    name = "vqgan_denoise"
    spec_keys = ("config", "noise", "perceptual", "image_size")

    def __init__(
        self,
        config: VQGANConfig,
        noise: InputNoiseConfig,
        perceptual: PerceptualConfig,
        image_size: int,
    ) -> None:
        super().__init__(config, perceptual, image_size)
        if not 1 <= noise.noise_res <= image_size:
            raise ValueError(
                f"vqgan_denoise.noise.noise_res must be in [1, image size {image_size}], got "
                f"{noise.noise_res}"
            )
        if noise.noise_std < 0:
            raise ValueError(f"vqgan_denoise.noise.noise_std must be >= 0, got {noise.noise_std}")
        self.noise_config = noise

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x`` plus its coarse training noise (random numbers from ``generator`` or the
        global RNG)."""
        noise = self.noise_config
        return x + coarse_noise(x, noise.noise_res, noise.noise_std, generator)

    def model_input(self, real: torch.Tensor) -> torch.Tensor:
        """The corrupted slice in training; the clean one in evaluation mode (validation
        reconstructions are of what will be scored)."""
        return self.corrupt(real) if self.training else real

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "noise": to_dict(self.noise_config)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> DenoisingVQGAN:
        """Rebuild from :meth:`spec` output; use :func:`brainad.models.registry.build_model`,
        which checks the keys first."""
        return cls(
            from_dict(VQGANConfig, spec["config"], "spec.config"),
            from_dict(InputNoiseConfig, spec["noise"], "spec.noise"),
            from_dict(PerceptualConfig, spec["perceptual"], "spec.perceptual"),
            spec["image_size"],
        )
