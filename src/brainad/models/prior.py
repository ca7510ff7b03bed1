"""A token prior for VQGAN+D: hide each block of the latent grid, predict it from its context.

VQGAN+D alone reconstructs a lesion about as well as healthy tissue: the encoder sees the lesion
and the decoder draws it back. The prior is a small transformer over the grid of codebook tokens,
trained on healthy scans only to predict the tokens of a hidden block from the tokens around it.

Scoring (:meth:`VQGANPrior.reconstruct`):

1. encode and quantise the image with the frozen VQGAN+D → token grid (h, w);
2. hide the grid one ``mask_block``×``mask_block`` block at a time (a partition of the grid, so
   each token is judged exactly once, by context that does not contain its own block) and take
   each token's negative log-likelihood under the prior;
3. replace every token whose NLL exceeds ``nll_threshold`` by the prior's most likely token (the
   threshold is the ``resample_quantile`` of the NLL of brain tokens of healthy VALIDATION scans,
   set by :meth:`VQGANPrior.calibrate` at every validation, so the selected checkpoint carries
   the threshold of its own epoch);
4. decode the healed grid. A lesion that the prior finds unlikely is drawn as healthy tissue, so
   the residual ``|x − healed|`` is large exactly there.

This follows published VQ-VAE + transformer work on brain MRI (token likelihood, resampling before
decoding), with a masked (bidirectional) model instead of an autoregressive one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from brainad.config import PriorConfig, from_dict, to_dict
from brainad.models.protocol import StepOutput

# brain tokens: a token cell counts as brain if at least this fraction of its pixels is brain
BRAIN_TOKEN_FRACTION = 0.25
SCORE_CHUNK = 256  # sequences per transformer call while scoring (bounds memory)


def block_partition(grid: int, block: int) -> torch.Tensor:
    """(P, grid·grid) bool: pass ``p`` hides the ``p``-th ``block``×``block`` block of the grid
    (raster order; edge blocks are smaller when ``block`` does not divide ``grid``). Every
    position is hidden in exactly one pass."""
    if block < 1:
        raise ValueError(f"prior.model.mask_block must be >= 1, got {block}")
    masks = []
    for top in range(0, grid, block):
        for left in range(0, grid, block):
            mask = torch.zeros(grid, grid, dtype=torch.bool)
            mask[top : top + block, left : left + block] = True
            masks.append(mask.flatten())
    return torch.stack(masks)


def random_block_masks(
    batch: int, grid: int, config: PriorConfig, device: torch.device
) -> torch.Tensor:
    """(batch, grid·grid) bool training masks: ``train_blocks`` random squares per image, sides
    drawn uniformly from ``train_block_range`` (tokens, at most the grid), anywhere on the grid. Uses the
    global torch RNG, which the training loop seeds and checkpoints."""
    low, high = (min(side, grid) for side in config.train_block_range)
    yy = torch.arange(grid, device=device).view(1, grid, 1)
    xx = torch.arange(grid, device=device).view(1, 1, grid)
    mask = torch.zeros(batch, grid, grid, dtype=torch.bool, device=device)
    for _ in range(config.train_blocks):
        side = torch.randint(low, high + 1, (batch, 1, 1)).to(device)
        top = (torch.rand(batch, 1, 1) * (grid - side.cpu() + 1)).long().to(device)
        left = (torch.rand(batch, 1, 1) * (grid - side.cpu() + 1)).long().to(device)
        mask |= (yy >= top) & (yy < top + side) & (xx >= left) & (xx < left + side)
    return mask.flatten(1)


class TokenTransformer(nn.Module):
    """Bidirectional transformer: token grid with hidden positions → logits over the codebook.

    Args:
        codebook_size: ``K``; token ``K`` is the hidden-position token.
        length: tokens per image (``h·w``).
        config: the ``prior.model`` section (``dim``, ``layers``, ``heads``, ``dropout``).
    """

    def __init__(self, codebook_size: int, length: int, config: PriorConfig) -> None:
        super().__init__()
        self.hidden_token = codebook_size
        self.embed = nn.Embedding(codebook_size + 1, config.dim)
        self.position = nn.Parameter(torch.randn(1, length, config.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            config.dim,
            config.heads,
            4 * config.dim,
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.body = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, codebook_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) long → (B, L, K) logits."""
        return self.head(self.norm(self.body(self.embed(tokens) + self.position)))


def _validate(config: PriorConfig, grid: int) -> None:
    low, high = config.train_block_range
    if not 1 <= low <= high:
        raise ValueError(
            f"prior.model.train_block_range must satisfy 1 <= min <= max, got {[low, high]} "
            f"(sides above the latent grid, {grid}, hide the whole grid)"
        )
    if config.mask_block < 1:
        raise ValueError(f"prior.model.mask_block must be >= 1, got {config.mask_block}")
    if not 0.0 < config.resample_quantile < 1.0:
        raise ValueError(
            f"prior.model.resample_quantile must be in (0, 1), got {config.resample_quantile}"
        )
    if config.dim % config.heads:
        raise ValueError(
            f"prior.model.dim ({config.dim}) must be divisible by heads ({config.heads})"
        )


class VQGANPrior(nn.Module):
    """A frozen VQGAN+D with a token prior; scores through the healed reconstruction.

    Implements :class:`brainad.models.protocol.GANModule`: the one training loop trains only the
    prior (``networks()["generator"]``) with masked-token cross-entropy; there is no discriminator.

    Args:
        vqgan_spec: ``spec()`` of the trained VQGAN+D (its weights are loaded by the caller or
            come with this module's ``state_dict``).
        config: the ``prior.model`` section.
    """

    name = "vqgan_prior"
    spec_keys = ("vqgan", "config")

    def __init__(self, vqgan_spec: dict[str, Any], config: PriorConfig) -> None:
        super().__init__()
        from brainad.models.vqgan import VQGAN

        self.vqgan = VQGAN.from_spec(vqgan_spec)
        self.vqgan.requires_grad_(False)
        vq = self.vqgan.config
        self.grid = self.vqgan.image_size // 2 ** (len(vq.channel_mult) - 1)
        _validate(config, self.grid)
        self.config = config
        self.prior = TokenTransformer(vq.codebook_size, self.grid * self.grid, config)
        self.register_buffer("nll_threshold", torch.tensor(float("inf")))
        self.register_buffer(
            "passes", block_partition(self.grid, config.mask_block), persistent=False
        )

    # ------------------------------------------------------------------------------ protocol
    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.prior}

    def train(self, mode: bool = True) -> VQGANPrior:
        """Train mode for the prior only: the VQGAN+D stays frozen in eval mode."""
        super().train(mode)
        self.vqgan.eval()
        return self

    @torch.no_grad()
    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) images → (B, h·w) codebook indices (the codebook is never updated).

        The encoder and quantiser run in float32 even under autocast: in bf16, nearest-code
        search picks a different code at a few % of positions."""
        with torch.autocast(x.device.type, enabled=False):
            return self.vqgan.quantize(self.vqgan.encode(x.float())).indices.flatten(1)

    def generator_step(self, real: torch.Tensor, epoch: int) -> StepOutput:
        tokens = self.tokens(real)  # (B, L)
        hidden = random_block_masks(len(tokens), self.grid, self.config, tokens.device)
        logits = self.prior(tokens.masked_fill(hidden, self.prior.hidden_token))
        picked, target = logits[hidden].float(), tokens[hidden]
        loss = F.cross_entropy(picked, target)
        accuracy = (picked.argmax(-1) == target).float().mean()
        return StepOutput(loss, {"token_nll": loss.detach(), "token_accuracy": accuracy}, None)

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, epoch: int) -> None:
        return None

    @torch.no_grad()
    def token_nll(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token NLL and the prior's most likely token, each (B, L), every token predicted
        with its own block hidden (one pass per block of :func:`block_partition`)."""
        batch, length = tokens.shape
        passes = self.passes.to(tokens.device)  # (P, L)
        n_passes = passes.shape[0]
        nll = torch.zeros(batch, length, device=tokens.device)
        best = tokens.clone()
        per_call = max(1, SCORE_CHUNK // n_passes)
        for start in range(0, batch, per_call):
            part = tokens[start : start + per_call]  # (b, L)
            b = part.shape[0]
            hidden = passes.unsqueeze(0).expand(b, -1, -1)  # (b, P, L)
            inputs = torch.where(hidden, self.prior.hidden_token, part.unsqueeze(1))
            logits = self.prior(inputs.reshape(b * n_passes, length)).float()
            logp = logits.log_softmax(-1).view(b, n_passes, length, -1)
            own = logp.gather(-1, part.view(b, 1, length, 1).expand(-1, n_passes, -1, 1))
            weights = hidden.float()
            nll[start : start + b] = -(own.squeeze(-1) * weights).sum(1)
            top = logp.argmax(-1)  # (b, P, L)
            best[start : start + b] = (top * hidden).sum(1)
        return nll, best

    def brain_tokens(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) brain masks → (B, h·w) bool: token cells that are mostly brain."""
        fraction = F.adaptive_avg_pool2d(masks.float(), self.grid)
        return (fraction >= BRAIN_TOKEN_FRACTION).flatten(1)

    @torch.no_grad()
    def brain_token_nll(self, images: torch.Tensor, masks: torch.Tensor, batch: int = 64):
        """NLL of every brain token of ``images`` (1-D)."""
        values = []
        for start in range(0, len(images), batch):
            x = images[start : start + batch]
            nll, _ = self.token_nll(self.tokens(x))
            values.append(nll[self.brain_tokens(masks[start : start + batch])])
        nll = torch.cat(values).float()
        if nll.numel() == 0:
            raise ValueError("token prior: these healthy validation scans have no brain tokens")
        return nll

    def calibrate(self, images: torch.Tensor, masks: torch.Tensor) -> dict:
        """Set ``nll_threshold`` to the ``resample_quantile`` of the brain-token NLL of ``images``
        (healthy VALIDATION scans); returns ``{"val_nll", "nll_threshold"}``."""
        nll = self.brain_token_nll(images, masks)
        threshold = torch.quantile(nll, self.config.resample_quantile)
        self.nll_threshold.fill_(float(threshold))
        return {"val_nll": float(nll.mean()), "nll_threshold": float(threshold)}

    @torch.no_grad()
    def heal(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(healed token grid (B, L), per-token NLL (B, L)) of images ``x``."""
        tokens = self.tokens(x)
        nll, best = self.token_nll(tokens)
        return torch.where(nll > self.nll_threshold, best, tokens), nll

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token grid → (B, 1, S, S) image through the VQGAN+D decoder."""
        return self.vqgan.decode_codes(tokens, self.grid)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The healed reconstruction: decode the token grid after resampling unlikely tokens."""
        healed, _ = self.heal(x)
        return self.decode(healed)

    @torch.no_grad()
    def diagnostic_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw maps at image size: the token NLL, and the restoration |VQGAN+D reconstruction −
        healed reconstruction| (what the prior changed)."""
        direct = self.vqgan.reconstruct(x).float().clamp(-1, 1)
        healed, nll = self.heal(x)
        size = x.shape[-2:]
        grid = nll.view(len(x), 1, self.grid, self.grid).float()
        restoration = (direct - self.decode(healed).float().clamp(-1, 1)).abs()
        return {
            "token_nll": F.interpolate(grid, size=size, mode="nearest"),
            "restoration": restoration,
        }

    def discriminator_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vqgan.discriminator_features(x)

    def epoch_logs(self) -> dict[str, float]:
        return {}

    # ---------------------------------------------------------------------------- checkpoint
    def spec(self) -> dict[str, Any]:
        return {"vqgan": self.vqgan.spec(), "config": to_dict(self.config)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> VQGANPrior:
        return cls(spec["vqgan"], from_dict(PriorConfig, spec["config"], "spec.config"))
