"""DCGAN baseline with an f-AnoGAN ``izi_f`` encoder (Schlegl et al. 2019).

Training has two phases, both run by the one training loop:

1. ``"gan"``: a DCGAN generator ``G: z ~ N(0, I) → image`` against a discriminator ``D``;
2. ``"encoder"``: ``G`` and ``D`` frozen; an encoder ``E`` is trained so that ``G(E(x)) ≈ x`` in
   image space and in ``D``'s last feature map (izi_f).

Reconstruction is ``G(E(x))``; :meth:`DCGAN.reconstruct_by_optimisation` refines ``E(x)`` by a
per-image latent search (AnoGAN) on the same objective.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from brainad.config import DCGANConfig, from_dict, to_dict
from brainad.models.blocks import bce_with_target
from brainad.models.protocol import StepOutput

Phase = Literal["gan", "encoder"]


def _widths(channels: int, image_size: int) -> list[int]:
    """Generator hidden widths at resolutions 4, 8, …, S/2 (doubling toward low resolution);
    the discriminator and the encoder use them in reverse order."""
    steps = int(math.log2(image_size)) - 2  # 2x steps from 4x4 to S x S
    return [channels * 2 ** (steps - 1 - i) for i in range(steps)]


def _init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """``z`` (B, latent_dim) → image (B, 1, S, S) in [-1, 1].

    Args:
        latent_dim: size of ``z``.
        widths: hidden widths at resolutions 4, 8, …, S/2 (see :func:`_widths`).
    """

    def __init__(self, latent_dim: int, widths: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),  # (B, w0, 4, 4)
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        ]
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [
                nn.ConvTranspose2d(width_in, width_out, 4, 2, 1, bias=False),  # doubles H, W
                nn.BatchNorm2d(width_out),
                nn.ReLU(),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], 1, 4, 2, 1), nn.Tanh()]  # (B, 1, S, S)
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z.view(z.shape[0], z.shape[1], 1, 1))  # (B, L) -> (B, L, 1, 1)


def _trunk(widths: list[int]) -> nn.Sequential:
    """(B, 1, S, S) → (B, widths[-1], 4, 4): conv 4/2/1 + [BatchNorm] + LeakyReLU(0.2) per step,
    no BatchNorm on the first layer; ``widths`` ordered from high to low resolution."""
    layers: list[nn.Module] = [nn.Conv2d(1, widths[0], 4, 2, 1), nn.LeakyReLU(0.2)]
    for width_in, width_out in zip(widths, widths[1:]):
        layers += [
            nn.Conv2d(width_in, width_out, 4, 2, 1, bias=False),  # halves H, W
            nn.BatchNorm2d(width_out),
            nn.LeakyReLU(0.2),
        ]
    return nn.Sequential(*layers)


class Discriminator(nn.Module):
    """Image (B, 1, S, S) → one logit per image (B,).

    Args:
        widths: widths from high to low resolution (S/2, …, 4).
    """

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.trunk = _trunk(widths)  # (B, w_top, 4, 4)
        self.head = nn.Conv2d(widths[-1], 1, 4, 1, 0)  # (B, 1, 1, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last 4x4 feature map (B, w_top, 4, 4)."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)).flatten()  # (B,)


class Encoder(nn.Module):
    """f-AnoGAN encoder: the discriminator's architecture (own BatchNorm statistics) ending in a
    linear layer to the latent space, image (B, 1, S, S) → z (B, latent_dim).

    Args:
        latent_dim: size of ``z``.
        widths: widths from high to low resolution (S/2, …, 4).
    """

    def __init__(self, latent_dim: int, widths: list[int]) -> None:
        super().__init__()
        self.trunk = _trunk(widths)  # (B, w_top, 4, 4)
        self.head = nn.Linear(widths[-1] * 16, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).flatten(1))  # (B, w_top*16) -> (B, latent_dim)


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode for the block, then restore each one's previous mode."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class DCGAN(nn.Module):
    """DCGAN generator/discriminator plus the f-AnoGAN izi_f encoder, in two training phases.

    Args:
        config: the ``dcgan.model`` section.
        image_size: side of the square images; a power of two, at least 8.
    """

    name = "dcgan"
    spec_keys = ("config", "image_size")

    def __init__(self, config: DCGANConfig, image_size: int) -> None:
        super().__init__()
        _validate(config, image_size)
        self.config = config
        self.image_size = image_size
        widths = _widths(config.channels, image_size)
        self.generator = Generator(config.latent_dim, widths)
        self.discriminator = Discriminator(widths[::-1])
        self.encoder = Encoder(config.latent_dim, widths[::-1])
        self.apply(_init_weights)
        self.phase: Phase = "gan"
        self.set_phase("gan")

    def set_phase(self, phase: Phase) -> None:
        """``"gan"``: train G and D. ``"encoder"``: freeze G and D (no gradients, eval mode even
        when :meth:`train` is called) and train E."""
        if phase not in ("gan", "encoder"):
            raise ValueError(f"DCGAN.set_phase: phase must be 'gan' or 'encoder', got {phase!r}")
        self.phase = phase
        frozen = phase == "encoder"
        self.generator.requires_grad_(not frozen)
        self.discriminator.requires_grad_(not frozen)
        self.encoder.requires_grad_(frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> DCGAN:
        super().train(mode)
        if self.phase == "encoder":  # frozen networks keep their BatchNorm running statistics
            self.generator.eval()
            self.discriminator.eval()
        return self

    # ------------------------------------------------------------------------------ protocol
    def networks(self) -> dict[str, nn.Module]:
        if self.phase == "encoder":
            return {"generator": self.encoder}
        return {"generator": self.generator, "discriminator": self.discriminator}

    def generator_step(self, real: torch.Tensor, epoch: int) -> StepOutput:
        if self.phase == "encoder":
            return self._encoder_step(real)
        z = torch.randn(real.shape[0], self.config.latent_dim, device=real.device)  # global RNG
        fake = self.generator(z)  # (B, 1, S, S)
        loss = bce_with_target(self.discriminator(fake), 1.0)
        return StepOutput(loss, {"adv_g": loss.detach()}, fake)

    def _encoder_step(self, real: torch.Tensor) -> StepOutput:
        """izi_f: ``mse(G(E(x)), x) + kappa * mse(f_D(G(E(x))), f_D(x))``."""
        recon = self.generator(self.encoder(real))
        image = F.mse_loss(recon.float(), real.float())
        feature = F.mse_loss(
            self.discriminator.features(recon).float(), self.discriminator.features(real).float()
        )
        loss = image + self.config.encoder_kappa * feature
        logs = {"image_mse": image.detach(), "feature_mse": feature.detach()}
        return StepOutput(loss, logs, recon)

    def discriminator_step(
        self, real: torch.Tensor, fake: torch.Tensor, epoch: int
    ) -> StepOutput | None:
        if self.phase == "encoder":
            return None
        d_real = bce_with_target(self.discriminator(real), 1.0)
        d_fake = bce_with_target(self.discriminator(fake), 0.0)
        loss = d_real + d_fake
        logs = {"d_loss": loss, "d_real": d_real, "d_fake": d_fake}
        return StepOutput(loss, {k: v.detach() for k, v in logs.items()})

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``G(E(x))`` with E and G in eval mode (their modes are restored afterwards); with
        ``latent_steps > 0`` refined by the AnoGAN latent search (its cost per image is in the
        evaluate stage's ``evaluation.json``)."""
        if self.config.latent_steps > 0:
            return self.reconstruct_by_optimisation(
                x, self.config.latent_steps, self.config.latent_lr
            )
        with torch.no_grad(), _eval_mode(self.encoder, self.generator):
            return self.generator(self.encoder(x))

    def discriminator_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator.features(x)

    def epoch_logs(self) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------------------------- extras
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images ``G(z)``, ``z ~ N(0, I)`` drawn from ``generator`` (or the global RNG)."""
        device = next(self.generator.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        with _eval_mode(self.generator):
            return self.generator(z)

    def reconstruct_by_optimisation(self, x: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
        """AnoGAN latent search: start at ``E(x)`` and minimise the izi_f objective per image
        over ``z`` with Adam for ``steps`` steps; returns ``G(z)``. Network weights and their
        ``.grad`` are untouched; images do not interact (all networks in eval mode)."""
        if steps < 0 or lr <= 0:
            raise ValueError(
                f"dcgan.model: latent_steps must be >= 0 and latent_lr > 0, got {steps}, {lr}"
            )
        kappa = self.config.encoder_kappa
        with _eval_mode(self.encoder, self.generator, self.discriminator), torch.enable_grad():
            with torch.no_grad():
                z0 = self.encoder(x)  # (B, latent_dim)
                target = self.discriminator.features(x)
            z = z0.clone().requires_grad_(True)
            optimiser = torch.optim.Adam([z], lr=lr)
            for _ in range(steps):
                recon = self.generator(z)
                image = (recon - x).pow(2).flatten(1).mean(1)  # (B,)
                feature = (self.discriminator.features(recon) - target).pow(2).flatten(1).mean(1)
                (z.grad,) = torch.autograd.grad((image + kappa * feature).sum(), [z])
                optimiser.step()
            with torch.no_grad():
                return self.generator(z)

    # ---------------------------------------------------------------------------- checkpoint
    def spec(self) -> dict[str, Any]:
        return {"config": to_dict(self.config), "image_size": self.image_size}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> DCGAN:
        """Rebuild from :meth:`spec` output; use :func:`brainad.models.registry.build_model`, which checks
        the keys first."""
        return cls(from_dict(DCGANConfig, spec["config"], "spec.config"), spec["image_size"])


def _validate(config: DCGANConfig, image_size: int) -> None:
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or image_size < 8
        or image_size & (image_size - 1)
    ):
        raise ValueError(
            f"DCGAN: image size must be a power of two >= 8, got {image_size!r} "
            "(set preprocess.image_size to e.g. 64 or 128)"
        )
    if config.latent_dim < 1 or config.channels < 1:
        raise ValueError(
            f"dcgan.model: latent_dim ({config.latent_dim}) and channels ({config.channels}) "
            "must be >= 1"
        )
    if config.encoder_kappa < 0:
        raise ValueError(f"dcgan.model.encoder_kappa must be >= 0, got {config.encoder_kappa}")
