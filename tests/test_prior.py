"""The token prior: block partition, masking, NLL without self-visibility, calibration, healing."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from brainad.config import PerceptualConfig, PriorConfig, VQGANConfig
from brainad.models.prior import VQGANPrior, block_partition, random_block_masks
from brainad.models.registry import build_model
from brainad.models.vqgan import VQGAN

VQ = VQGANConfig(
    channels=8, channel_mult=(1, 2, 2), res_blocks=1, embedding_dim=8, codebook_size=16,
    ema_decay=0.99, commitment_weight=0.25, dead_code_threshold=0.01, disc_channels=8,
    disc_layers=2, l1_weight=1.0, perceptual_weight=0.1, adv_start=0.1, adv_slope=0.0,
    adv_cap=0.5,
)  # fmt: skip
PERCEPTUAL = PerceptualConfig(kind="fixed", channels=4, scales=2, seed=0, vgg16_weights="")
PRIOR = PriorConfig(
    dim=16, layers=1, heads=2, dropout=0.0, train_block_range=(1, 3), train_blocks=2,
    mask_block=2, resample_quantile=0.9,
)  # fmt: skip


def make_prior(config: PriorConfig = PRIOR) -> VQGANPrior:
    torch.manual_seed(0)
    vqgan = VQGAN(VQ, PERCEPTUAL, 32)  # 32 px, three stages -> 8x8 token grid
    with torch.no_grad():  # a spread-out codebook, so different images give different tokens
        vqgan.generator["quantizer"].embedding.normal_()
    prior = VQGANPrior(vqgan.spec(), config)
    prior.vqgan.load_state_dict(vqgan.state_dict())
    return prior.eval()


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 32, 32, generator=generator) * 2 - 1


@pytest.mark.parametrize(("grid", "block"), [(8, 2), (8, 4), (5, 2), (16, 3)])
def test_block_partition_hides_every_position_exactly_once(grid: int, block: int) -> None:
    passes = block_partition(grid, block)
    assert passes.shape[1] == grid * grid
    assert torch.equal(passes.sum(0), torch.ones(grid * grid, dtype=torch.long))


def test_random_block_masks_hide_squares_within_the_configured_sides() -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(PRIOR, train_blocks=1, train_block_range=(2, 3))
    masks = random_block_masks(200, 8, config, torch.device("cpu")).view(200, 8, 8)
    counts = masks.flatten(1).sum(1)
    assert set(counts.tolist()) == {4, 9}  # exactly one 2x2 or 3x3 square per image
    rows = masks.any(2).sum(1)
    assert torch.equal(rows * rows, counts)  # squares, not rectangles


def test_a_tokens_prediction_does_not_see_its_own_block() -> None:
    model = make_prior()
    tokens = model.tokens(images(2))
    nll, best = model.token_nll(tokens)
    block = model.passes[0]  # the first 2x2 block
    changed = tokens.clone()
    changed[:, block] = (changed[:, block] + 5) % VQ.codebook_size
    nll2, best2 = model.token_nll(changed)
    # the predictions for the hidden block come from the (unchanged) context only
    assert torch.equal(best2[:, block], best[:, block])
    # tokens outside the block do see it, so their predictions may change; their NLL stays finite
    assert torch.isfinite(nll2).all() and (nll2 >= 0).all()


def test_without_resampling_the_healed_reconstruction_is_the_vqgan_reconstruction() -> None:
    model = make_prior()  # nll_threshold starts at +inf: no token is replaced
    x = images()
    # equal up to float rounding: VQGAN+D decodes the straight-through z + (e - z)
    assert torch.allclose(model.reconstruct(x), model.vqgan.reconstruct(x), atol=1e-5)


def test_calibration_sets_the_quantile_and_resampling_replaces_the_unlikely_tokens() -> None:
    model = make_prior()
    x = images(6)
    masks = torch.ones_like(x, dtype=torch.bool)
    stats = model.calibrate(x, masks)
    nll, best = model.token_nll(model.tokens(x))
    assert stats["nll_threshold"] == pytest.approx(float(torch.quantile(nll.flatten(), 0.9)))
    healed, nll2 = model.heal(x)
    replaced = nll > stats["nll_threshold"]
    assert replaced.any() and not replaced.all()
    assert torch.equal(healed[replaced], best[replaced])
    assert torch.equal(healed[~replaced], model.tokens(x)[~replaced])
    assert torch.equal(nll2, nll)


@pytest.mark.parametrize(
    ("field", "value"),
    [("mask_block", 0), ("resample_quantile", 1.0), ("train_block_range", (3, 2)), ("heads", 3)],
)
def test_bad_prior_settings_name_the_key(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        make_prior(dataclasses.replace(PRIOR, **{field: value}))


def test_calibration_counts_only_brain_tokens() -> None:
    model = make_prior()
    x = images(3)
    empty = torch.zeros_like(x, dtype=torch.bool)
    with pytest.raises(ValueError, match="no brain tokens"):
        model.calibrate(x, empty)


def test_training_step_updates_only_the_prior_and_spec_round_trips() -> None:
    model = make_prior().train()
    assert not model.vqgan.training  # frozen VQGAN+D stays in eval mode
    before = {k: v.clone() for k, v in model.vqgan.state_dict().items()}
    optimizer = torch.optim.Adam(model.networks()["generator"].parameters(), lr=1e-2)
    out = model.generator_step(images(8), epoch=0)
    out.loss.backward()
    optimizer.step()
    assert out.fake is None and model.discriminator_step(images(2), images(2), 0) is None
    assert all(torch.equal(before[k], v) for k, v in model.vqgan.state_dict().items())
    rebuilt = build_model("vqgan_prior", model.spec())
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.nll_threshold, model.nll_threshold)


def test_the_prior_learns_a_token_that_its_context_determines() -> None:
    """On a token world where every image is one repeated token, a trained prior predicts the
    hidden block from its context, and flags a foreign token as the most unlikely one."""
    model = make_prior(dataclasses.replace(PRIOR, train_blocks=1, train_block_range=(1, 2)))
    transformer = model.networks()["generator"]
    optimizer = torch.optim.Adam(transformer.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(150):
        tokens = torch.randint(0, 4, (32, 1)).expand(32, 64)  # constant grids of tokens 0..3
        hidden = random_block_masks(32, 8, model.config, torch.device("cpu"))
        logits = transformer(tokens.masked_fill(hidden, transformer.hidden_token))
        loss = torch.nn.functional.cross_entropy(logits[hidden], tokens[hidden])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    grid = torch.full((1, 64), 2)
    grid[0, 27] = 9  # a token never seen in training
    nll, best = model.token_nll(grid)
    assert int(nll.argmax()) == 27
    assert int(best[0, 27]) == 2  # healed to what the context says
