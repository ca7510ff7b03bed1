"""Masked-region inpainting: a context model that never sees the pixels it predicts.

The slice is tiled into square cells of side ``cell``; a **phase** ``(a, b)`` hides every cell
whose row index is ``a`` and column index is ``b`` modulo 2, a quarter of the cells, each
surrounded by eight visible ones. The UNet sees the slice with the hidden cells set to
:data:`FILL`, the hidden-cell mask and (with ``mirror_channel``) the left-right mirror of that
same masked slice, so the contralateral twin of a hidden cell is visible but nothing hidden
is, not even through the mirror. It predicts the whole slice; only the hidden pixels count.

Training: one random phase and one random grid offset (0 … ``cell`` − 1 px per axis) per healthy
slice; the loss is the mean absolute (or squared) error over the hidden brain pixels.

Scoring: ``reconstruct(x)`` runs the four phases of the unshifted grid, so every pixel is hidden
exactly once, and assembles each pixel from the pass that hid it (four forward passes per
slice). A lesion can therefore not be copied through: where it sits, the network only knows its
surroundings and its mirror twin. The reconstruction detector
(:class:`brainad.scoring.gan.GANDetector`) scores the residual like every reconstruction model.
"""

from __future__ import annotations

import torch

from brainad.config import InpainterConfig
from brainad.models.blocks import masked_mean
from brainad.models.corruptions import brain_of, random_numbers
from brainad.models.protocol import StepOutput
from brainad.models.unet import UNetModel

FILL = 0.0
"""Value of the hidden pixels in the input (mid-grey on the [-1, 1] scale; the background is -1)."""
PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))
"""The four phases (row, column parity of the hidden cells); together they hide every cell once."""


def cell_masks(
    size: int, cell: int, phase: torch.Tensor, offset: torch.Tensor, device
) -> torch.Tensor:
    """(B, 1, S, S) bool: the hidden cells of each image.

    Args:
        size: image side S.
        cell: cell side in pixels.
        phase: (B, 2) long, the row and column parity (0 or 1) of the hidden cells.
        offset: (B, 2) long, the grid's shift in pixels along rows and columns.
        device: where the masks are made.
    """
    coords = torch.arange(size, device=device)
    rows = ((coords[None, :] + offset[:, :1].to(device)) // cell) % 2  # (B, S)
    cols = ((coords[None, :] + offset[:, 1:].to(device)) // cell) % 2
    hidden_rows = rows == phase[:, :1].to(device)
    hidden_cols = cols == phase[:, 1:].to(device)
    return (hidden_rows[:, :, None] & hidden_cols[:, None, :])[:, None]


class Inpainter(UNetModel):
    """A UNet that predicts hidden cells of a slice from their surroundings (and mirror twin).

    Args:
        config: the ``inpainter.model`` section.
        image_size: side of the square input images; divisible by ``2**(len(channels)-1)``.
    """

    name = "inpainter"
    config_class = InpainterConfig

    def __init__(self, config: InpainterConfig, image_size: int) -> None:
        super().__init__(config, image_size, in_channels=3 if config.mirror_channel else 2)
        if not 1 <= config.cell <= image_size // 2:
            raise ValueError(
                f"inpainter.model.cell must be in [1, half the image size {image_size // 2}] "
                f"(two cells per side at least), got {config.cell}"
            )

    # ----------------------------------------------------------------------------- public API
    def inputs(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """(B, 2 or 3, S, S): the slice with ``hidden`` pixels set to :data:`FILL`, the mask,
        and (with ``mirror_channel``) the mirror of the masked slice."""
        masked = torch.where(hidden, torch.full_like(x, FILL), x)
        channels = [masked, hidden.to(x.dtype)]
        if self.config.mirror_channel:
            channels.append(masked.flip(-1))
        return torch.cat(channels, dim=1)

    def predict(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) the network's prediction of slices ``x`` from their visible pixels."""
        return self.unet(self.inputs(x, hidden))

    def training_masks(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One random phase and grid offset per slice of ``x`` (random numbers from
        ``generator`` or the global RNG)."""
        batch, cell = x.shape[0], self.config.cell
        phase = (random_numbers((batch, 2), generator, x.device) * 2).long().clamp(max=1)
        offset = (random_numbers((batch, 2), generator, x.device) * cell).long().clamp(max=cell - 1)
        return cell_masks(x.shape[-1], cell, phase, offset, x.device)

    # ------------------------------------------------------------------------------ protocol
    def generator_step(self, real: torch.Tensor, epoch: int) -> StepOutput:
        hidden = self.training_masks(real)
        error = self.predict(real, hidden).float() - real.float()
        error = error.abs() if self.config.loss == "l1" else error.pow(2)
        loss = masked_mean(error, hidden & brain_of(real))
        return StepOutput(loss, {"inpaint": loss.detach()}, None)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Every pixel predicted by the pass that hid it (four passes), clipped to [-1, 1]."""
        batch = x.shape[0]
        offset = torch.zeros(batch, 2, dtype=torch.long)
        out = torch.empty_like(x)
        for phase in PHASES:
            phases = torch.tensor(phase, dtype=torch.long).expand(batch, 2)
            hidden = cell_masks(x.shape[-1], self.config.cell, phases, offset, x.device)
            out = torch.where(hidden, self.predict(x, hidden).to(x.dtype), out)
        return out.clamp(-1.0, 1.0)
