"""Training corruptions of healthy slices: the denoising autoencoder's coarse noise and the
segmenter's synthetic anomalies.

All functions take (B, 1, S, S) images in [-1, 1] whose background is exactly -1 (the brain is
where ``x > -1 + BRAIN_EPS``) and draw their random numbers from ``generator`` (a fixed-seed
``torch.Generator`` for validation) or, if it is None, from the global torch RNG on the images'
device (which the training loop seeds and checkpoints).

The segmenter's anomalies are deliberately unlike the lesions the evaluation implants
(:mod:`brainad.evaluation.lesions`: soft-edged ellipses with harmonic boundaries, a constant
offset, a ring or another tissue's intensity). Here the region (``regions``, one drawn per image)
is a union of axis-aligned rectangles with hard edges, or a thresholded low-frequency random field
(irregular hard-edged blobs of any number and size, as DRAEM's Perlin masks), and the content is
either

* a **foreign patch** (FPI, Tan et al. 2020): the same region of ANOTHER healthy slice of the
  batch blended in with a factor ``alpha ~ U(0.1, 1)``; target ``alpha`` where a pixel changed;
* a **smooth intensity field**: a low-frequency random field of both signs added to the slice;
  target ``|change| / field_strength`` (at most 1).

With ``edge_softness`` > 0 the region's edges are softened before blending (one Gaussian
sigma per batch, drawn from [0, ``edge_softness``] px of a 128-px slice): the corruption fades in
over a few pixels, as a Poisson-blended patch does, and the target fades with it
(``alpha × the softened region`` for a foreign patch). The region shapes stay rectangles or noise
blobs.

The target is 0 outside the brain and wherever the corruption did not change the pixel.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from brainad.config import SegmenterConfig

BRAIN_EPS = 1e-3  # a pixel is brain where x > -1 + BRAIN_EPS (the background is exactly -1)
CHANGE_EPS = 1e-4  # a pixel belongs to the target only if the corruption changed it by more
ALPHA_RANGE = (0.1, 1.0)  # blending factor of a foreign patch; amplitude factor of a field
RECTANGLES = 3  # rectangles per region (their union)
RECTANGLE_SIDE = (0.06, 0.3)  # full side of a rectangle, as a fraction of the image side
PATCH_SHARE = 0.5  # of the corrupted images, the share given a foreign patch (else a field)
REGIONS = ("rectangles", "noise")
NOISE_REGION_RES = (3, 8)  # grid side range of a noise region's field, relative to 64 px
NOISE_REGION_LEVEL = (0.35, 0.75)  # the field (uniform in [-1, 1]) above this is the region
SOFT_FLOOR = 0.01  # a softened region's pixels below this weight are left unchanged


class Corrupted(NamedTuple):
    """Synthetic anomalies of a batch.

    Args:
        images: (B, 1, S, S) corrupted images in [-1, 1].
        target: (B, 1, S, S) float in [0, 1]: how anomalous each pixel is; 0 outside the brain
            and where nothing changed.
    """

    images: torch.Tensor
    target: torch.Tensor


def brain_of(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) bool: the brain pixels of images whose background is -1."""
    return x > -1.0 + BRAIN_EPS


def random_numbers(shape: tuple[int, ...], generator: torch.Generator | None, device, normal=False):
    """Uniform [0, 1) (or standard normal) numbers from ``generator`` (on its own device) or
    from the global RNG, returned on ``device``."""
    draw = torch.randn if normal else torch.rand
    if generator is None:
        return draw(shape, device=device)
    return draw(shape, generator=generator, device=generator.device).to(device)


def smooth_field(
    batch: int, res: int, size: int, generator: torch.Generator | None, device, normal: bool
) -> torch.Tensor:
    """(batch, 1, size, size): random values on a ``res``×``res`` grid, bilinearly upsampled
    (standard normal if ``normal``, else uniform in [-1, 1])."""
    if not 1 <= res <= size:
        raise ValueError(f"noise grid side must be in [1, image size {size}], got {res}")
    coarse = random_numbers((batch, 1, res, res), generator, device, normal)
    if not normal:
        coarse = coarse * 2.0 - 1.0
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def coarse_noise(
    x: torch.Tensor, noise_res: int, noise_std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The denoising autoencoder's training noise for images ``x``: Gaussian with std
    ``noise_std`` on a ``noise_res``×``noise_res`` grid, bilinearly upsampled, 0 outside the
    brain. Returns the noise (B, 1, S, S); the noisy input is ``x + noise``."""
    field = smooth_field(len(x), noise_res, x.shape[-1], generator, x.device, normal=True)
    return noise_std * field * brain_of(x)


def rectangle_union(
    batch: int, size: int, generator: torch.Generator | None, device
) -> torch.Tensor:
    """(batch, 1, size, size) bool: per image the union of :data:`RECTANGLES` random
    axis-aligned rectangles, sides in :data:`RECTANGLE_SIDE` × ``size``, centred near one point
    (so the union is one irregular, connected-looking region)."""
    low, high = RECTANGLE_SIDE
    centre = 0.2 + 0.6 * random_numbers(
        (batch, 1, 2), generator, device
    )  # (B, 1, [y, x]) in [0.2, 0.8]
    offset = (random_numbers((batch, RECTANGLES, 2), generator, device) - 0.5) * high
    half = (low + (high - low) * random_numbers((batch, RECTANGLES, 2), generator, device)) / 2
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size  # (S,)
    lo, hi = centre + offset - half, centre + offset + half  # (B, R, 2)
    inside_y = (coords >= lo[..., 0:1]) & (coords < hi[..., 0:1])  # (B, R, S)
    inside_x = (coords >= lo[..., 1:2]) & (coords < hi[..., 1:2])  # (B, R, S)
    boxes = inside_y[..., :, None] & inside_x[..., None, :]  # (B, R, S, S)
    return boxes.any(dim=1, keepdim=True)  # (B, 1, S, S)


def noise_region(batch: int, size: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """(batch, 1, size, size) bool: per image a low-frequency random field (grid side drawn from
    :data:`NOISE_REGION_RES`, scaled with ``size``) above a random level from
    :data:`NOISE_REGION_LEVEL`: irregular blobs, from one small spot to several large ones."""
    low, high = (max(2, round(r * size / 64)) for r in NOISE_REGION_RES)
    res = low + int(random_numbers((1,), generator, device).item() * (high - low + 1))
    field = smooth_field(batch, min(res, size), size, generator, device, normal=False)
    lo, hi = NOISE_REGION_LEVEL
    level = lo + (hi - lo) * random_numbers((batch, 1, 1, 1), generator, device)
    return field > level


def soften(region: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 1, S, S) float in [0, 1]: the bool ``region`` blurred by a separable Gaussian of
    ``sigma`` px (``sigma`` <= 0.3: the region as 0/1)."""
    soft = region.float()
    if sigma <= 0.3:
        return soft
    radius = int(3 * sigma + 1)
    t = torch.arange(-radius, radius + 1, device=region.device, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    soft = F.conv2d(soft, kernel.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(soft, kernel.view(1, 1, -1, 1), padding=(radius, 0))


def _regions(
    regions: tuple[str, ...], batch: int, size: int, generator: torch.Generator | None, device
) -> torch.Tensor:
    """One region per image, its shape drawn uniformly from ``regions`` (:data:`REGIONS`)."""
    unknown = sorted(set(regions) - set(REGIONS))
    if not regions or unknown:
        raise ValueError(
            f"segmenter.model.regions must be a non-empty list of {list(REGIONS)}, got {list(regions)}"
        )
    shapes = {
        "rectangles": lambda: rectangle_union(batch, size, generator, device),
        "noise": lambda: noise_region(batch, size, generator, device),
    }
    drawn = [shapes[name]() for name in regions]
    if len(drawn) == 1:
        return drawn[0]
    pick = (
        (random_numbers((batch,), generator, device) * len(drawn)).long().clamp(max=len(drawn) - 1)
    )
    stacked = torch.stack(drawn)  # (R, B, 1, S, S)
    return stacked[pick, torch.arange(batch, device=device)]


def synthetic_anomalies(
    x: torch.Tensor, config: SegmenterConfig, generator: torch.Generator | None = None
) -> Corrupted:
    """The segmenter's training corruption of a batch of healthy slices ``x`` (B, 1, S, S).

    Per image: with probability ``config.clean_fraction`` unchanged; otherwise a foreign patch
    (share :data:`PATCH_SHARE`) or a smooth intensity field inside a random rectangle union
    of a shape drawn from ``config.regions`` within the brain (see the module docstring).

    Raises:
        ValueError: ``clean_fraction`` outside [0, 1], ``field_strength`` not > 0 or
            ``edge_softness`` < 0.
    """
    if not 0.0 <= config.clean_fraction <= 1.0:
        raise ValueError(
            f"segmenter.model.clean_fraction must be in [0, 1], got {config.clean_fraction}"
        )
    if config.field_strength <= 0:
        raise ValueError(f"segmenter.model.field_strength must be > 0, got {config.field_strength}")
    if config.edge_softness < 0:
        raise ValueError(f"segmenter.model.edge_softness must be >= 0, got {config.edge_softness}")
    batch, size, device = len(x), x.shape[-1], x.device
    x = x.float()
    choice = random_numbers((batch, 2), generator, device)  # (corrupted?, patch or field?)
    amount = ALPHA_RANGE[0] + (ALPHA_RANGE[1] - ALPHA_RANGE[0]) * random_numbers(
        (batch,), generator, device
    )
    amount = amount.view(-1, 1, 1, 1)
    region = _regions(tuple(config.regions), batch, size, generator, device) & brain_of(x)
    region &= (choice[:, 0] >= config.clean_fraction).view(-1, 1, 1, 1)
    weight = region.float()  # how much of the corruption each pixel gets
    if config.edge_softness > 0:  # (no extra random draw otherwise: hard-edged runs unchanged)
        sigma = (
            float(random_numbers((1,), generator, device).item())
            * config.edge_softness
            * size
            / 128
        )
        weight = soften(region, sigma) * brain_of(x)
        region = weight > SOFT_FLOOR
    patch = (choice[:, 1] < PATCH_SHARE).view(-1, 1, 1, 1)
    field = smooth_field(batch, config.field_res, size, generator, device, normal=False)
    blended = (1.0 - amount) * x + amount * x.roll(1, dims=0)  # another slice of the batch
    shifted = (x + amount * config.field_strength * field).clamp(-1.0, 1.0)
    content = torch.where(patch, blended, shifted)
    images = torch.where(region, x + weight * (content - x), x)
    change = (images - x).abs()
    level = torch.where(patch, amount * weight, change / config.field_strength).clamp(max=1.0)
    target = torch.where(region & (change > CHANGE_EPS), level, torch.zeros_like(level))
    return Corrupted(images, target)
