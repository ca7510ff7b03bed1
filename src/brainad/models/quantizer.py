"""EMA vector quantiser: nearest-code lookup, straight-through gradients, EMA codebook update.

The codebook is not learned by gradient descent. Each training step moves every used code toward
the mean of the encoder outputs assigned to it with exponential-moving-average statistics
(van den Oord et al. 2017, appendix; Razavi et al. 2019):

    N_k ← λ·N_k + (1-λ)·n_k            (EMA cluster size; n_k = vectors assigned in the batch)
    m_k ← λ·m_k + (1-λ)·Σ_{i→k} z_i     (EMA sum of the assigned vectors)
    e_k ← m_k / Ñ_k                     (Ñ = Laplace-smoothed N, so no code divides by zero)

At steady state (N_k = n_k) this is exactly ``e ← e + (1-λ)(z̄ − e)``. Every code starts with
``N = 0``, so the first training step initialises the codebook from the batch: codes that receive
vectors become their means, the others are "dead" and restarted from random encoder outputs.
All state lives in registered buffers, so a checkpoint's ``state_dict`` is complete.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class QuantizerOutput(NamedTuple):
    """Result of :meth:`EMAQuantizer.forward`.

    Args:
        quantized: nearest codes with straight-through gradients, (B, dim, h, w) float32.
        commitment: ``mse(z, sg(e))``, a float32 scalar (weighted by the caller).
        indices: index of the nearest code per position, (B, h, w) long.
        perplexity: ``exp(entropy)`` of the batch's code histogram, a scalar.
        usage: fraction of codes used at least once in the batch, a scalar.
        counts: vectors assigned to each code in the batch, (codebook_size,) float32; summed over
            all ranks when the codebook was updated under ``torch.distributed``.
    """

    quantized: torch.Tensor
    commitment: torch.Tensor
    indices: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor
    counts: torch.Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class EMAQuantizer(nn.Module):
    """Vector quantiser with an EMA-updated codebook and dead-code restarts.

    Args:
        codebook_size: number of codes ``K``.
        dim: dimension of each code (the encoder's output channels).
        decay: EMA decay ``λ`` in [0, 1).
        dead_code_threshold: a code whose EMA cluster size falls below this (after the update) is
            replaced by a random encoder output of the current batch; 0 disables restarts.
        eps: Laplace smoothing constant of the cluster sizes.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        decay: float,
        dead_code_threshold: float,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError(
                f"vqgan.model: codebook_size ({codebook_size}) and embedding_dim ({dim}) must be >= 1"
            )
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"vqgan.model.ema_decay must be in [0, 1), got {decay}")
        if dead_code_threshold < 0.0:
            raise ValueError(
                f"vqgan.model.dead_code_threshold must be >= 0 (0 disables restarts), "
                f"got {dead_code_threshold}"
            )
        if eps <= 0.0:
            raise ValueError(f"EMAQuantizer: eps must be > 0, got {eps}")
        self.codebook_size = codebook_size
        self.dim = dim
        self.decay = decay
        self.dead_code_threshold = dead_code_threshold
        self.eps = eps
        self.register_buffer("embedding", torch.randn(codebook_size, dim))  # (K, dim)
        self.register_buffer("cluster_size", torch.zeros(codebook_size))  # (K,) EMA counts N
        self.register_buffer("embed_sum", torch.zeros(codebook_size, dim))  # (K, dim) EMA sums m

    def forward(self, z: torch.Tensor, update: bool | None = None) -> QuantizerOutput:
        """Quantise ``z`` (B, dim, h, w).

        Args:
            z: encoder output.
            update: update the codebook; ``None`` means "in training mode only". Eval mode (or
                ``update=False``) never changes a buffer.
        """
        if z.dim() != 4 or z.shape[1] != self.dim:
            raise ValueError(
                f"EMAQuantizer expects z of shape (B, {self.dim}, h, w), got {tuple(z.shape)}"
            )
        update = self.training if update is None else update
        batch, _, height, width = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)  # (N = B*h*w, dim)
            indices = self._nearest(flat)  # (N,)
            one_hot = F.one_hot(indices, self.codebook_size).to(flat.dtype)  # (N, K)
            counts = one_hot.sum(0)  # (K,)
            codes = self.embedding[indices]  # (N, dim), a copy: unaffected by the update below
            codes = codes.view(batch, height, width, self.dim).permute(0, 3, 1, 2)  # (B, dim, h, w)
            commitment = F.mse_loss(z, codes.detach())
            if update:
                counts = self._ema_update(flat, one_hot, counts)
            quantized = z + (codes - z).detach()  # straight-through estimator
            probs = counts / counts.sum().clamp_min(1.0)
            perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
            usage = (counts > 0).float().mean()
        return QuantizerOutput(
            quantized=quantized,
            commitment=commitment,
            indices=indices.view(batch, height, width),
            perplexity=perplexity.detach(),
            usage=usage,
            counts=counts.detach(),
        )

    def _nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code by squared Euclidean distance, (N,)."""
        embedding = self.embedding.float()
        distances = (
            flat.pow(2).sum(1, keepdim=True)  # (N, 1)
            - 2.0 * flat @ embedding.t()  # (N, K)
            + embedding.pow(2).sum(1)[None, :]  # (1, K)
        )
        return distances.argmin(1)

    @torch.no_grad()
    def _ema_update(
        self, flat: torch.Tensor, one_hot: torch.Tensor, counts: torch.Tensor
    ) -> torch.Tensor:
        """EMA codebook update and dead-code restart; returns the (global) batch counts."""
        flat = flat.detach()
        sums = one_hot.t() @ flat  # (K, dim) sum of the vectors assigned to each code
        counts = counts.clone()
        if _distributed():  # one global batch: every rank applies the identical update
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        means = self.embed_sum / smoothed.clamp_min(self.eps)[:, None]  # (K, dim)
        seen = (self.cluster_size > 0)[:, None]  # a never-used code keeps its vector
        self.embedding.copy_(torch.where(seen, means, self.embedding))
        self._restart_dead_codes(flat)
        return counts

    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        """Replace codes with ``N < dead_code_threshold`` by random vectors of the batch.

        Sync-free: candidates are drawn for every code each step (the same number of random draws
        on every rank, so RNG streams stay aligned) and selected with ``torch.where``. Under
        ``torch.distributed`` rank 0's candidates are broadcast, so replicas stay identical.
        """
        if self.dead_code_threshold <= 0.0:
            return
        picks = torch.randint(0, flat.shape[0], (self.codebook_size,), device=flat.device)
        candidates = flat[picks].contiguous()  # (K, dim)
        if _distributed():
            dist.broadcast(candidates, src=0)
        dead = self.cluster_size < self.dead_code_threshold  # (K,), same on every rank
        self.embedding.copy_(torch.where(dead[:, None], candidates, self.embedding))
        self.embed_sum.copy_(torch.where(dead[:, None], candidates, self.embed_sum))
        # a restarted code counts as having been assigned one vector (itself)
        self.cluster_size.copy_(
            torch.where(dead, torch.ones_like(self.cluster_size), self.cluster_size)
        )
