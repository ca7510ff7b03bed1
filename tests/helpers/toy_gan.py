"""A tiny GAN implementing the training protocol, for fast tests of :func:`brainad.training.loop.fit`.

Generator: a 2-layer conv autoencoder (with BatchNorm, so buffers are exercised); discriminator:
a 2-layer conv PatchGAN. The generator input gets Gaussian noise from the global torch RNG, so
a resume that forgot to restore the RNG would change the weights.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from brainad.config import AugmentConfig, FitConfig
from brainad.models.protocol import StepOutput


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class ToyGAN(nn.Module):
    """Toy GAN for loop tests.

    Args:
        channels: hidden width.
        noise: std of the input noise drawn from the global torch RNG (0 disables it).
        adv_weight: weight of the adversarial term in the generator loss.
        use_disc: if false, ``discriminator_step`` returns ``None`` (no D update).
        nan_at_epoch: 0-based epoch whose generator loss becomes NaN (-1: never).
        explode_at_epoch: 0-based epoch from which the generator loss is multiplied by 1e6.
        sleep: seconds to sleep per generator step (makes a subprocess run killable).
    """

    name = "toy"

    def __init__(
        self,
        channels: int = 4,
        noise: float = 0.05,
        adv_weight: float = 0.1,
        use_disc: bool = True,
        nan_at_epoch: int = -1,
        explode_at_epoch: int = -1,
        sleep: float = 0.0,
    ) -> None:
        super().__init__()
        self.settings = {
            "channels": channels,
            "noise": noise,
            "adv_weight": adv_weight,
            "use_disc": use_disc,
            "nan_at_epoch": nan_at_epoch,
            "explode_at_epoch": explode_at_epoch,
        }
        self.sleep = sleep  # not part of spec(): a killable run resumes with the same fingerprint
        self.generator = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1),
            nn.Tanh(),
        )
        self.discriminator = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 1, 3, padding=1),
        )

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def generator_step(self, real: torch.Tensor, epoch: int) -> StepOutput:
        s = self.settings
        if self.sleep:
            time.sleep(self.sleep)
        noisy = real + s["noise"] * torch.randn_like(real) if s["noise"] else real
        fake = self.generator(noisy)
        recon = (fake.float() - real.float()).abs().mean()
        adv = _bce(self.discriminator(fake).float(), 1.0)
        loss = recon + s["adv_weight"] * adv
        if epoch == s["nan_at_epoch"]:
            loss = loss * math.nan
        if 0 <= s["explode_at_epoch"] <= epoch:
            loss = loss * 1e6
        return StepOutput(loss, {"recon": recon.detach(), "adv": adv.detach()}, fake)

    def discriminator_step(
        self, real: torch.Tensor, fake: torch.Tensor, epoch: int
    ) -> StepOutput | None:
        if not self.settings["use_disc"]:
            return None
        real_logits = self.discriminator(real).float()
        loss = _bce(real_logits, 1.0) + _bce(self.discriminator(fake).float(), 0.0)
        return StepOutput(loss, {"d_real": torch.sigmoid(real_logits).mean().detach()})

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x)

    def discriminator_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator[:2](x)

    def epoch_logs(self) -> dict[str, float]:
        return {"bn_mean": float(self.generator[1].running_mean.mean())}

    def spec(self) -> dict[str, Any]:
        return dict(self.settings)


def build_toy(name: str, spec: dict[str, Any]) -> nn.Module:
    """``build_model`` replacement that knows the toy."""
    if name != "toy":
        raise ValueError(f"unknown model {name!r}")
    return ToyGAN(**spec)


def toy_data(n: int = 32, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random images (n, 1, size, size) in [-1, 1] with a -1 background border."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, size // 8, size // 8, generator=generator)
    images = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    images = images * 2 - 1
    images[..., :2, :] = -1
    images[..., :, :2] = -1
    return images.contiguous()


def toy_config(**overrides: Any) -> FitConfig:
    """A fast deterministic fit config; keyword arguments replace fields."""
    base = FitConfig(
        epochs=2,
        batch_size=8,
        lr=2e-3,
        beta1=0.5,
        beta2=0.999,
        precision="fp32",
        channels_last=False,
        compile=False,
        checkpoint_every=1,
        sample_every=100,
        extra_sample_epochs=(),
        select_metric="val_recon",
        divergence_factor=100.0,
        seed=0,
        deterministic=True,
        augment=AugmentConfig(flip=True, rotate_deg=5.0, contrast=0.1),
    )
    return dataclasses.replace(base, **overrides)
