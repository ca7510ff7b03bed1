"""Map operations shared by every detector: smoothing, SSIM, aggregation inside a mask.

All maps are (B, 1, H, W) float tensors, HIGHER = MORE ANOMALOUS; aggregation turns a map into
one value per image over the True pixels of its brain mask (``score.aggregate``: the mean, the
mean of the top ``topk_percent`` % pixels, or the maximum).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from brainad.config import ScoreConfig

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_C1, _C2 = 0.01**2, 0.03**2  # data range 1 (images mapped to [0, 1])


# --------------------------------------------------------------------------- map operations
def _gaussian_kernel(size: int, sigma: float, device: torch.device) -> Tensor:
    coords = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(maps: Tensor, size: int, sigma: float) -> Tensor:
    """Separable Gaussian filter of (B, C, H, W) maps with reflect padding, same shape."""
    if size <= 1:
        return maps
    channels, pad = maps.shape[1], size // 2
    kernel = _gaussian_kernel(size, sigma, maps.device)
    out = F.pad(maps, (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, size).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, size, 1).repeat(channels, 1, 1, 1), groups=channels)


def median_filter(maps: Tensor, size: int, chunk: int = 16) -> Tensor:
    """Exact ``size``×``size`` median filter of (B, 1, H, W) maps (reflect padding) via unfold;
    processed ``chunk`` images at a time to bound memory (B·size²·H·W floats per chunk)."""
    if size <= 1:
        return maps
    pad, (height, width) = size // 2, maps.shape[-2:]
    out = []
    for part in maps.split(chunk):
        padded = F.pad(part, (pad, pad, pad, pad), mode="reflect")
        patches = F.unfold(padded, size)  # (b, size², H·W)
        out.append(patches.median(dim=1).values.view(part.shape[0], 1, height, width))
    return torch.cat(out)


def smooth(maps: Tensor, config: ScoreConfig) -> Tensor:
    """Apply ``score.smoothing`` (``none``/``gaussian`` σ = px/4/``median``) to (B, 1, H, W)."""
    if config.smoothing == "none":
        return maps
    if config.smoothing_px < 1 or config.smoothing_px % 2 == 0:
        raise ValueError(
            f"score.smoothing_px must be an odd integer >= 1, got {config.smoothing_px}"
        )
    if config.smoothing == "gaussian":
        return gaussian_blur(maps, config.smoothing_px, config.smoothing_px / 4.0)
    if config.smoothing == "median":
        return median_filter(maps, config.smoothing_px)
    raise ValueError(f"score.smoothing: unknown {config.smoothing!r}; use none, gaussian or median")


def masked_gaussian(maps: np.ndarray, masks: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing (σ px) of (N, 1, H, W) maps inside the brain only (normalised
    convolution: values outside ``masks`` never bleed in); 0 outside. σ 0 only masks."""
    masks = np.asarray(masks, bool)
    inside = np.where(masks, maps, 0.0).astype(np.float32)
    if sigma <= 0:
        return inside
    out = np.zeros_like(inside)
    for i in range(len(inside)):
        weight = cv2.GaussianBlur(masks[i, 0].astype(np.float32), (0, 0), sigma)
        blurred = cv2.GaussianBlur(inside[i, 0], (0, 0), sigma)
        out[i, 0] = np.where(masks[i, 0], blurred / np.maximum(weight, 1e-6), 0.0)
    return out


def check_settings(config: ScoreConfig) -> None:
    """ValueError naming the ``score`` key unless its smoothing and aggregation settings are
    valid (every detector checks them before any work)."""
    smooth(torch.zeros(1, 1, 8, 8), config)
    aggregate(
        torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), config.aggregate, config.topk_percent
    )


def ssim_map(x: Tensor, y: Tensor) -> Tensor:
    """Per-pixel SSIM of (B, 1, H, W) images in [-1, 1] (11-px Gaussian window, σ = 1.5).

    Computed on the images mapped to [0, 1]: the luminance term assumes non-negative
    intensities and is unstable for local means near 0, which [-1, 1] images have.
    """
    x, y = (x.float() + 1.0) / 2.0, (y.float() + 1.0) / 2.0
    stats = gaussian_blur(torch.cat([x, y, x * x, y * y, x * y], 1), SSIM_WINDOW, SSIM_SIGMA)
    mu_x, mu_y, xx, yy, xy = stats.split(1, dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + _C1) * (2 * cov + _C2)
    return numerator / ((mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2))


def aggregate(maps: Tensor, masks: Tensor, method: str, topk_percent: float = 1.0) -> Tensor:
    """Per-image aggregate (B,) of (B, 1, H, W) ``maps`` over the True pixels of ``masks``.

    ``mean``: mean over mask pixels; ``topk``: mean of the highest ``ceil(topk_percent/100·n)``
    mask pixels (at least one); ``max``: maximum. An empty mask gives 0.
    """
    values, inside = maps.flatten(1).float(), masks.flatten(1).bool()
    count = inside.sum(1)
    if method == "mean":
        out = (values * inside).sum(1) / count.clamp(min=1)
    elif method in ("topk", "max"):
        if method == "max":
            k = torch.ones_like(count)
        else:
            if not 0.0 < topk_percent <= 100.0:
                raise ValueError(f"score.topk_percent must be in (0, 100], got {topk_percent}")
            k = torch.ceil(count * (topk_percent / 100.0)).long().clamp(min=1)
        k_max = int(min(int(k.max()), values.shape[1]))
        top = values.masked_fill(~inside, float("-inf")).topk(k_max, dim=1).values
        keep = torch.arange(k_max, device=values.device)[None, :] < k[:, None]
        out = torch.where(keep, top, torch.zeros_like(top)).sum(1) / k
    else:
        raise ValueError(f"score.aggregate: unknown {method!r}; use mean, topk or max")
    return torch.where(count > 0, out, torch.zeros_like(out))


def score_map(raw: Tensor, masks: Tensor, config: ScoreConfig) -> tuple[Tensor, Tensor]:
    """The reported anomaly map of a raw (B, 1, H, W) map — ``score.smoothing`` applied, 0
    outside ``masks`` — and its per-image aggregate (B,) inside the mask (``score.aggregate``)."""
    mask = masks.to(raw.device).bool()
    reported = smooth(raw, config) * mask
    return reported, aggregate(reported, mask, config.aggregate, config.topk_percent)
