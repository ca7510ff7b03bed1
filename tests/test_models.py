"""VQGAN+D and DCGAN/f-AnoGAN: the shared training protocol, gradients, isolation, rebuild.
(The token prior has no discriminator: its protocol and rebuild are tested in test_prior.py.)"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from brainad.config import DCGANConfig, InputNoiseConfig, PerceptualConfig, VQGANConfig
from brainad.models.dcgan import DCGAN
from brainad.models.protocol import GANModule
from brainad.models.registry import MODEL_NAMES, build_model
from brainad.models.vqgan import VQGAN, adversarial_weight
from brainad.models.vqgan_denoise import DenoisingVQGAN

SIZE = 32

VQ_CONFIG = VQGANConfig(
    channels=8,
    channel_mult=(1, 2),
    res_blocks=1,
    embedding_dim=8,
    codebook_size=16,
    ema_decay=0.9,
    commitment_weight=0.25,
    dead_code_threshold=0.01,
    disc_channels=8,
    disc_layers=2,
    l1_weight=1.0,
    perceptual_weight=0.1,
    adv_start=0.1,
    adv_slope=0.0005,
    adv_cap=0.5,
)
PERCEPTUAL = PerceptualConfig(kind="fixed", channels=4, scales=2, seed=0, vgg16_weights="")
DC_CONFIG = DCGANConfig(latent_dim=8, channels=4, encoder_kappa=1.0, latent_steps=0, latent_lr=0.05)
NOISE = InputNoiseConfig(noise_res=4, noise_std=0.2)
GAN_MODELS = ("vqgan", "dcgan", "vqgan_denoise")


def test_gan_models_are_the_registered_models_with_a_discriminator() -> None:
    """The other registered models have none: the token prior (test_prior.py), the denoising
    autoencoder (test_dae.py), the inpainter (test_inpainter.py) and the segmenter
    (test_segmenter.py). The VQGAN+D on corrupted inputs has the VQGAN+D's."""
    assert set(MODEL_NAMES) == {*GAN_MODELS, "vqgan_prior", "dae", "inpainter", "segmenter"}


def make(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if name == "vqgan":
        return VQGAN(VQ_CONFIG, PERCEPTUAL, SIZE)
    if name == "dcgan":
        return DCGAN(DC_CONFIG, SIZE)
    if name == "vqgan_denoise":
        return DenoisingVQGAN(VQ_CONFIG, NOISE, PERCEPTUAL, SIZE)
    raise ValueError(f"no test model for {name!r}")


@pytest.fixture
def images() -> torch.Tensor:
    """Four 32-px 'brains': background -1, a bright noisy disc of varying radius."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    radius = torch.tensor([8.0, 10.0, 12.0, 13.0]).view(4, 1, 1, 1)
    disc = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2).sqrt() < radius  # (4, 1, S, S)
    texture = 0.3 + 0.2 * torch.randn(4, 1, SIZE, SIZE, generator=gen)
    return torch.where(disc, texture.clamp(-1, 1), torch.tensor(-1.0))


def _adam(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(module.parameters(), lr=1e-3, betas=(0.5, 0.999))


def _train_steps(model: nn.Module, images: torch.Tensor, steps: int) -> list[float]:
    """What the training loop does: G step on networks()['generator'], then D step."""
    nets = model.networks()
    opt_g = _adam(nets["generator"])
    opt_d = _adam(nets["discriminator"]) if "discriminator" in nets else None
    model.train()
    losses = []
    for epoch in range(steps):
        model.zero_grad(set_to_none=True)
        out = model.generator_step(images, epoch)
        out.loss.backward()
        opt_g.step()
        model.zero_grad(set_to_none=True)
        d_out = model.discriminator_step(images, out.fake.detach(), epoch)
        if d_out is not None and opt_d is not None:
            d_out.loss.backward()
            opt_d.step()
            losses.append(d_out.loss.item())
        losses.append(out.loss.item())
    return losses


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_all_grads_nonzero(module: nn.Module) -> None:
    for name, param in module.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert param.grad.abs().sum() > 0, f"{name} got a zero gradient"


# ------------------------------------------------------------------------- shared protocol
@pytest.mark.parametrize("name", GAN_MODELS)
def test_steps_shapes_and_reconstruction_range(name: str, images: torch.Tensor) -> None:
    model = make(name).train()
    assert isinstance(model, GANModule) and model.name == name
    out = model.generator_step(images, epoch=0)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.fake.shape == images.shape and torch.isfinite(out.fake).all()
    assert all(v.dim() == 0 and not v.requires_grad for v in out.logs.values())
    d_out = model.discriminator_step(images, out.fake.detach(), epoch=0)
    assert torch.isfinite(d_out.loss) and set(d_out.logs) == {"d_loss", "d_real", "d_fake"}
    model.eval()
    recon = model.reconstruct(images)
    assert recon.shape == images.shape and torch.isfinite(recon).all()
    assert recon.min() >= -1.0 and recon.max() <= 1.0
    features = model.discriminator_features(images)
    assert features.dim() == 4 and features.shape[0] == 4


def test_vqgan_logs() -> None:
    model = make("vqgan").train()
    x = torch.rand(4, 1, SIZE, SIZE) * 2 - 1
    out = model.generator_step(x, epoch=100)
    expected = {"l1", "perceptual", "commitment", "adv_g", "adv_weight", "perplexity", "usage"}
    assert set(out.logs) == expected
    assert out.logs["adv_weight"].item() == pytest.approx(0.15)
    assert out.logs["l1"].item() == pytest.approx((out.fake - x).abs().mean().item(), rel=1e-5)


@pytest.mark.parametrize("name", GAN_MODELS)
def test_every_parameter_gets_a_gradient(name: str, images: torch.Tensor) -> None:
    model = make(name).train()
    nets = model.networks()
    out = model.generator_step(images, epoch=0)
    out.loss.backward()
    _assert_all_grads_nonzero(nets["generator"])
    model.zero_grad(set_to_none=True)
    model.discriminator_step(images, out.fake.detach(), epoch=0).loss.backward()
    _assert_all_grads_nonzero(nets["discriminator"])
    assert all(p.grad is None for p in nets["generator"].parameters())  # fake was detached


@pytest.mark.parametrize("name", GAN_MODELS)
def test_generator_update_leaves_discriminator_weights(name: str, images: torch.Tensor) -> None:
    model = make(name).train()
    nets = model.networks()
    disc_before = {k: v.detach().clone() for k, v in nets["discriminator"].named_parameters()}
    gen_before = _snapshot(nets["generator"])
    opt = _adam(nets["generator"])
    model.generator_step(images, epoch=0).loss.backward()
    opt.step()
    for key, value in nets["discriminator"].named_parameters():
        assert torch.equal(value, disc_before[key]), key
    changed = [
        k for k, v in nets["generator"].state_dict().items() if not torch.equal(v, gen_before[k])
    ]
    assert changed  # the generator did move


def test_vqgan_generator_step_changes_no_discriminator_state(images: torch.Tensor) -> None:
    model = make("vqgan").train()
    before = _snapshot(model.discriminator)
    model.generator_step(images, epoch=0)
    for key, value in model.discriminator.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_vqgan_perceptual_net_frozen_and_outside_generator() -> None:
    model = make("vqgan")
    generator_ids = {id(p) for p in model.networks()["generator"].parameters()}
    perceptual = list(model.perceptual_net.parameters())
    assert perceptual and not any(p.requires_grad for p in perceptual)
    assert not generator_ids & {id(p) for p in perceptual}
    model.train()
    assert not model.perceptual_net.training


# ------------------------------------------------------------------------------- VQGAN extras
@pytest.mark.parametrize(
    ("epoch", "expected"), [(0, 0.1), (1, 0.1005), (400, 0.3), (800, 0.5), (2000, 0.5)]
)
def test_adversarial_weight_schedule(epoch: int, expected: float) -> None:
    assert adversarial_weight(epoch, VQ_CONFIG) == pytest.approx(expected)


def test_vqgan_epoch_logs_accumulate_and_reset(images: torch.Tensor) -> None:
    model = make("vqgan").train()
    for epoch in range(2):
        model.generator_step(images, epoch)
    logs = model.epoch_logs()
    assert 1.0 <= logs["codebook_perplexity"] <= VQ_CONFIG.codebook_size
    assert 0.0 < logs["codebook_usage"] <= 1.0
    assert model.epoch_logs() == {}  # reset after reading
    model.eval()
    model.generator_step(images, 2)  # evaluation steps are not counted
    assert model.epoch_logs() == {}


def test_vqgan_reconstruct_never_updates_codebook(images: torch.Tensor) -> None:
    model = make("vqgan").train()
    before = _snapshot(model.generator["quantizer"])
    model.reconstruct(images)
    for key, value in model.generator["quantizer"].state_dict().items():
        assert torch.equal(value, before[key]), key


def test_vqgan_rejects_bad_image_size() -> None:
    with pytest.raises(ValueError, match="divisible by 2"):
        VQGAN(VQ_CONFIG, PERCEPTUAL, 30)


# ------------------------------------------------------------------------------- DCGAN extras
def test_vqgan_denoise_encodes_a_corrupted_copy_in_training_only(images: torch.Tensor) -> None:
    """In training the encoder sees the slice plus coarse noise inside the brain (the losses
    compare with the clean slice); in evaluation, and for scoring, it sees the slice itself."""
    model = make("vqgan_denoise").train()
    seen: list[torch.Tensor] = []
    model.generator["encoder"].register_forward_hook(lambda _m, i, _o: seen.append(i[0]))
    torch.manual_seed(3)
    model.generator_step(images, epoch=0)
    change = seen[-1] - images
    brain = images > -1.0 + 1e-3
    assert change[brain].abs().mean() > 0.05 and torch.all(change[~brain] == 0)
    model.eval()
    model.generator_step(images, epoch=0)
    model.reconstruct(images)
    assert torch.equal(seen[-2], images) and torch.equal(seen[-1], images)


def test_vqgan_denoise_without_noise_trains_as_the_vqgan(images: torch.Tensor) -> None:
    """With noise_std 0 the corrupted-input model's step is the thesis VQGAN+D's, to the bit
    (one step: drawing the zero noise still consumes random numbers that later steps would use)."""
    silent = dataclasses.replace(NOISE, noise_std=0.0)
    torch.manual_seed(0)
    quiet = DenoisingVQGAN(VQ_CONFIG, silent, PERCEPTUAL, SIZE)
    noisy = make("vqgan_denoise")
    thesis = _train_steps(make("vqgan"), images, steps=1)
    assert _train_steps(quiet, images, steps=1) == thesis
    assert _train_steps(noisy, images, steps=1) != thesis


@pytest.mark.parametrize(
    ("noise", "match"),
    [
        (InputNoiseConfig(noise_res=0, noise_std=0.2), "noise_res"),
        (InputNoiseConfig(noise_res=64, noise_std=0.2), "noise_res"),
        (InputNoiseConfig(noise_res=4, noise_std=-0.1), "noise_std"),
    ],
)
def test_vqgan_denoise_rejects_bad_noise(noise: InputNoiseConfig, match: str) -> None:
    with pytest.raises(ValueError, match=f"vqgan_denoise.noise.{match}"):
        DenoisingVQGAN(VQ_CONFIG, noise, PERCEPTUAL, SIZE)


def test_dcgan_encoder_phase_trains_only_the_encoder(images: torch.Tensor) -> None:
    model = make("dcgan")
    model.set_phase("encoder")
    model.train()
    assert not model.generator.training and not model.discriminator.training
    assert model.encoder.training
    assert set(model.networks()) == {"generator"} and model.networks()["generator"] is model.encoder
    frozen_before = {"g": _snapshot(model.generator), "d": _snapshot(model.discriminator)}
    encoder_before = _snapshot(model.encoder)
    opt = _adam(model.networks()["generator"])
    out = model.generator_step(images, epoch=0)
    assert set(out.logs) == {"image_mse", "feature_mse"}
    out.loss.backward()
    _assert_all_grads_nonzero(model.encoder)
    assert all(p.grad is None for p in model.generator.parameters())
    opt.step()
    assert model.discriminator_step(images, out.fake.detach(), epoch=0) is None
    for part, net in (("g", model.generator), ("d", model.discriminator)):
        for key, value in net.state_dict().items():  # weights and BatchNorm running statistics
            assert torch.equal(value, frozen_before[part][key]), (part, key)
    assert any(not torch.equal(v, encoder_before[k]) for k, v in model.encoder.state_dict().items())


def test_dcgan_sample_is_seeded() -> None:
    model = make("dcgan")
    a = model.sample(3, torch.Generator().manual_seed(5))
    b = model.sample(3, torch.Generator().manual_seed(5))
    c = model.sample(3, torch.Generator().manual_seed(6))
    assert a.shape == (3, 1, SIZE, SIZE) and torch.equal(a, b) and not torch.equal(a, c)
    assert model.training  # sampling restored the mode


def test_latent_optimisation_lowers_the_residual(images: torch.Tensor) -> None:
    model = make("dcgan").eval()
    with torch.no_grad():
        target = model.sample(2, torch.Generator().manual_seed(1))  # reachable images
    start = model.reconstruct_by_optimisation(target, steps=0, lr=0.05)
    assert torch.allclose(start, model.reconstruct(target))  # zero steps = G(E(x))
    refined = model.reconstruct_by_optimisation(target, steps=30, lr=0.05)
    before = (start - target).pow(2).flatten(1).mean(1)
    after = (refined - target).pow(2).flatten(1).mean(1)
    assert torch.all(after < before)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="latent_steps"):
        model.reconstruct_by_optimisation(target, steps=-1, lr=0.05)


def test_latent_steps_make_reconstruct_use_the_latent_search_even_under_no_grad() -> None:
    torch.manual_seed(0)
    plain = DCGAN(DC_CONFIG, 32).eval()
    searching = DCGAN(dataclasses.replace(DC_CONFIG, latent_steps=20), 32).eval()
    searching.load_state_dict(plain.state_dict())
    with torch.no_grad():
        target = plain.sample(2, torch.Generator().manual_seed(1))
        quick = plain.reconstruct(target)
        refined = searching.reconstruct(target)  # scoring calls reconstruct inside no_grad
    assert torch.all(
        (refined - target).pow(2).flatten(1).mean(1) < (quick - target).pow(2).flatten(1).mean(1)
    )


def test_dcgan_rejects_bad_image_size_and_phase() -> None:
    with pytest.raises(ValueError, match="power of two"):
        DCGAN(DC_CONFIG, 48)
    with pytest.raises(ValueError, match="phase"):
        make("dcgan").set_phase("gen")  # type: ignore[arg-type]


# -------------------------------------------------------------------- reproducibility, rebuild
@pytest.mark.parametrize("name", GAN_MODELS)
def test_same_seed_same_losses(name: str, images: torch.Tensor) -> None:
    def run(seed: int) -> list[float]:
        model = make(name, seed)
        return _train_steps(model, images, steps=3)

    first = run(0)
    assert first == run(0)
    assert first != run(1)


@pytest.mark.parametrize("name", GAN_MODELS)
def test_build_model_from_spec_reproduces_outputs(name: str, images: torch.Tensor) -> None:
    model = make(name)
    _train_steps(model, images, steps=2)  # non-trivial weights, EMA buffers, BN statistics
    model.eval()
    spec = json.loads(json.dumps(model.spec()))  # the checkpoint stores it as JSON-ready data
    rebuilt = build_model(name, spec)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    assert torch.equal(rebuilt.reconstruct(images), model.reconstruct(images))
    assert torch.equal(rebuilt.discriminator_features(images), model.discriminator_features(images))


def test_build_model_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="known models"):
        build_model("vae", {})
    spec = make("dcgan").spec()
    with pytest.raises(ValueError, match="missing keys \\['image_size'\\]"):
        build_model("dcgan", {"config": spec["config"]})
    with pytest.raises(ValueError, match="spec.config.latent_dim"):
        build_model("dcgan", {**spec, "config": {**spec["config"], "latent_dim": "8"}})
