"""VQGAN+D: convolutional encoder → EMA vector quantiser → decoder, with a PatchGAN discriminator.

Read top to bottom: :func:`adversarial_weight` (the study's linear schedule), :class:`Encoder`,
:class:`Decoder`, then :class:`VQGAN`, which implements the training protocol of
:mod:`brainad.models.protocol` (losses, logs, codebook health, reconstruction).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from brainad.config import PerceptualConfig, VQGANConfig, from_dict, to_dict
from brainad.models.blocks import Downsample, ResBlock, Upsample, bce_with_target, group_norm
from brainad.models.discriminator import PatchDiscriminator
from brainad.models.perceptual import build_perceptual, perceptual_distance
from brainad.models.protocol import StepOutput
from brainad.models.quantizer import EMAQuantizer, QuantizerOutput


def adversarial_weight(epoch: int, config: VQGANConfig) -> float:
    """The study's adversarial weight: ``min(adv_start + adv_slope * epoch, adv_cap)``."""
    return min(config.adv_start + config.adv_slope * epoch, config.adv_cap)


class Encoder(nn.Module):
    """Image (B, 1, S, S) → latent grid (B, embedding_dim, S/2**(n-1), S/2**(n-1)), n stages.

    Args:
        config: the ``vqgan.model`` section (``channels``, ``channel_mult``, ``res_blocks``,
            ``embedding_dim``).
    """

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        widths = [config.channels * m for m in config.channel_mult]
        self.conv_in = nn.Conv2d(1, widths[0], 3, padding=1)  # (B, w0, S, S)
        layers: list[nn.Module] = []
        width = widths[0]
        for stage, out in enumerate(widths):
            for _ in range(config.res_blocks):
                layers.append(ResBlock(width, out))
                width = out
            if stage < len(widths) - 1:
                layers.append(Downsample(width))  # halves the resolution between stages
        self.body = nn.Sequential(*layers)  # (B, w_last, S/2**(n-1), S/2**(n-1))
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, config.embedding_dim, 1)  # (B, embedding_dim, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(x))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent grid (B, embedding_dim, h, w) → image (B, 1, h·2**(n-1), ...) in [-1, 1].

    Mirrors :class:`Encoder`: stages in reverse order, nearest upsampling + conv between them.

    Args:
        config: the ``vqgan.model`` section.
    """

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        widths = [config.channels * m for m in config.channel_mult]
        width = widths[-1]
        self.conv_in = nn.Conv2d(config.embedding_dim, width, 3, padding=1)  # (B, w_last, h, w)
        layers: list[nn.Module] = []
        for stage in reversed(range(len(widths))):
            for _ in range(config.res_blocks):
                layers.append(ResBlock(width, widths[stage]))
                width = widths[stage]
            if stage > 0:
                layers.append(Upsample(width))  # doubles the resolution between stages
        self.body = nn.Sequential(*layers)  # (B, w0, S, S)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, 1, 3, padding=1)  # (B, 1, S, S)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(z))
        return torch.tanh(self.conv_out(F.silu(self.norm_out(h))))


def _validate(config: VQGANConfig, image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"VQGAN: image_size must be a positive integer, got {image_size!r}")
    if not config.channel_mult or min(config.channel_mult) < 1:
        raise ValueError(
            f"vqgan.model.channel_mult must be a non-empty list of positive integers, "
            f"got {list(config.channel_mult)}"
        )
    if config.channels < 1 or config.res_blocks < 1:
        raise ValueError("vqgan.model: channels and res_blocks must be >= 1")
    factor = 2 ** (len(config.channel_mult) - 1)
    if image_size % factor:
        raise ValueError(
            f"vqgan.model.channel_mult has {len(config.channel_mult)} stages, so the image size "
            f"must be divisible by {factor}; got image_size={image_size} (change "
            "preprocess.image_size or channel_mult)"
        )


class VQGAN(nn.Module):
    """VQGAN+D trained with L1 + perceptual + commitment + scheduled adversarial losses.

    Args:
        config: the ``vqgan.model`` section.
        perceptual: the ``perceptual`` section; its frozen network is a submodule (in the
            ``state_dict``) but not part of ``networks()["generator"]``.
        image_size: side of the square input images.
    """

    name = "vqgan"
    spec_keys = ("config", "perceptual", "image_size")

    def __init__(self, config: VQGANConfig, perceptual: PerceptualConfig, image_size: int) -> None:
        super().__init__()
        _validate(config, image_size)
        self.config = config
        self.perceptual_config = perceptual
        self.image_size = image_size
        self.generator = nn.ModuleDict(
            {
                "encoder": Encoder(config),
                "quantizer": EMAQuantizer(
                    config.codebook_size,
                    config.embedding_dim,
                    config.ema_decay,
                    config.dead_code_threshold,
                ),
                "decoder": Decoder(config),
            }
        )
        self.discriminator = PatchDiscriminator(
            config.disc_channels, config.disc_layers, image_size
        )
        self.perceptual_net = build_perceptual(perceptual)
        self.perceptual_net.requires_grad_(False)
        # code histogram of the current epoch; on device, not part of the checkpoint
        self.register_buffer("code_counts", torch.zeros(config.codebook_size), persistent=False)

    # ------------------------------------------------------------------------------ protocol
    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def model_input(self, real: torch.Tensor) -> torch.Tensor:
        """What the encoder sees in training: the healthy slice itself (a subclass may corrupt
        it; the losses always compare the reconstruction with ``real``)."""
        return real

    def generator_step(self, real: torch.Tensor, epoch: int) -> StepOutput:
        z = self.generator["encoder"](self.model_input(real))  # (B, embedding_dim, h, w)
        quant = self.generator["quantizer"](z)
        recon = self.generator["decoder"](quant.quantized)  # (B, 1, S, S)
        l1 = F.l1_loss(recon.float(), real.float())
        perceptual = perceptual_distance(self.perceptual_net, recon, real).mean()
        adv_g = bce_with_target(self.discriminator(recon), 1.0)
        weight = adversarial_weight(epoch, self.config)
        loss = (
            self.config.l1_weight * l1
            + self.config.perceptual_weight * perceptual
            + self.config.commitment_weight * quant.commitment
            + weight * adv_g
        )
        if self.training:
            self.code_counts += quant.counts  # stays on device: no host sync per step
        logs = {
            "l1": l1,
            "perceptual": perceptual,
            "commitment": quant.commitment,
            "adv_g": adv_g,
            "adv_weight": torch.tensor(weight, device=real.device),
            "perplexity": quant.perplexity,
            "usage": quant.usage,
        }
        return StepOutput(loss, {k: v.detach() for k, v in logs.items()}, recon)

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, epoch: int) -> StepOutput:
        d_real = bce_with_target(self.discriminator(real), 1.0)
        d_fake = bce_with_target(self.discriminator(fake), 0.0)
        loss = 0.5 * (d_real + d_fake)
        logs = {"d_loss": loss, "d_real": d_real, "d_fake": d_fake}
        return StepOutput(loss, {k: v.detach() for k, v in logs.items()})

    # ---------------------------------------------------------------------------- public API
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) images → (B, embedding_dim, h, w) continuous latents."""
        return self.generator["encoder"](x)

    def quantize(self, z: torch.Tensor) -> QuantizerOutput:
        """Nearest codes of latents ``z`` (B, dim, h, w); never updates the codebook."""
        return self.generator["quantizer"](z, update=False)

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """(B, dim, h, w) quantised latents → (B, 1, S, S) images."""
        return self.generator["decoder"](quantized)

    def decode_codes(self, tokens: torch.Tensor, grid: int) -> torch.Tensor:
        """(B, grid·grid) codebook indices → (B, 1, S, S) images."""
        codes = self.generator["quantizer"].embedding[tokens]  # (B, L, dim)
        latents = codes.view(len(tokens), grid, grid, -1).permute(0, 3, 1, 2)
        return self.decode(latents.contiguous())

    @torch.no_grad()
    def code_distance(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w): distance of each encoder output to its nearest code (how far the
        encoder is from anything the codebook holds)."""
        z = self.encode(x)  # (B, dim, h, w)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        distance = torch.cdist(flat, self.generator["quantizer"].embedding).min(1).values
        return distance.view(len(x), 1, *z.shape[-2:])

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(quantize(encode(x)))``; never updates the codebook, even in train mode."""
        return self.decode(self.quantize(self.encode(x)).quantized)

    @torch.no_grad()
    def diagnostic_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model-specific raw anomaly maps at image size (the ablation measures them)."""
        grid = self.code_distance(x).float()
        return {"quantisation distance": F.interpolate(grid, size=x.shape[-2:], mode="nearest")}

    def discriminator_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator.features(x)

    def epoch_logs(self) -> dict[str, float]:
        """Codebook perplexity and fraction of codes used over the training steps since the last
        call (then reset); ``{}`` if there were none."""
        total = self.code_counts.sum()
        if total.item() == 0:
            return {}
        probs = self.code_counts / total
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        usage = (self.code_counts > 0).float().mean()
        self.code_counts.zero_()
        return {"codebook_perplexity": perplexity.item(), "codebook_usage": usage.item()}

    # ---------------------------------------------------------------------------- checkpoint
    def spec(self) -> dict[str, Any]:
        return {
            "config": to_dict(self.config),
            "perceptual": to_dict(self.perceptual_config),
            "image_size": self.image_size,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> VQGAN:
        """Rebuild from :meth:`spec` output; use :func:`brainad.models.registry.build_model`, which checks
        the keys first."""
        return cls(
            from_dict(VQGANConfig, spec["config"], "spec.config"),
            from_dict(PerceptualConfig, spec["perceptual"], "spec.perceptual"),
            spec["image_size"],
        )
