"""The one training loop, on a tiny toy GAN (CPU, 32 px, a few batches)."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.toy_gan import ToyGAN, build_toy, toy_config, toy_data
from PIL import Image

from brainad.config import AugmentConfig
from brainad.models import registry as models
from brainad.models.checkpoint import load_checkpoint, load_model
from brainad.runtime import deterministic_kernels
from brainad.training.batches import batch_indices
from brainad.training.loop import (
    FitPaths,
    Precision,
    TrainingDiverged,
    choose_precision,
    fit,
    fit_fingerprint,
)
from brainad.utils import read_json

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "helpers" / "fit_worker.py"
NO_AUGMENT = AugmentConfig(flip=False, rotate_deg=0.0, contrast=0.0)


def _paths(root: Path, live: bool = False) -> FitPaths:
    return FitPaths(
        root / "ckpt", root / "final.pt", root / "best.pt", root / "samples",
        root / "live" if live else None,
    )  # fmt: skip


def _toy(**kwargs) -> ToyGAN:
    torch.manual_seed(0)
    return ToyGAN(**kwargs)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _steps(live_dir: Path, metric: str) -> list[int]:
    rows = (live_dir / "plots" / "metrics" / f"{metric}.tsv").read_text().splitlines()[1:]
    return [int(row.split("\t")[0]) for row in rows]


# ----------------------------------------------------------------------------- basics
def test_same_seed_gives_same_losses_and_another_seed_does_not(tmp_path):
    config = toy_config(epochs=2)
    runs = [fit(_toy(), toy_data(), config, _paths(tmp_path / n), device=CPU) for n in "ab"]
    other = fit(
        _toy(), toy_data(), toy_config(epochs=2, seed=1), _paths(tmp_path / "c"), device=CPU
    )
    keys = ("g_loss", "d_loss", "recon", "adv")
    a, b = ([[e[k] for k in keys] for e in r.history] for r in runs)
    assert a == b
    assert [e["g_loss"] for e in other.history] != [e["g_loss"] for e in runs[0].history]
    assert [e["epoch"] for e in runs[0].history] == [1, 2]
    assert all(np.isfinite(v) for e in runs[0].history for v in e.values())


def test_one_batch_matches_a_manual_generator_then_discriminator_step(tmp_path):
    """G step updates only G; D is updated from the D loss alone (G's gradients do not leak)."""
    config = toy_config(epochs=1, augment=NO_AUGMENT)
    data = toy_data(n=8)
    module = _toy(noise=0.0)
    manual, leaky = copy.deepcopy(module), copy.deepcopy(module)
    fit(module, data, config, _paths(tmp_path), device=CPU)
    real = data[batch_indices(8, 8, config.seed, 0)[0]]
    for reference, zero_d in ((manual, True), (leaky, False)):
        betas = (config.beta1, config.beta2)
        opt_g = torch.optim.Adam(reference.generator.parameters(), lr=config.lr, betas=betas)
        opt_d = torch.optim.Adam(reference.discriminator.parameters(), lr=config.lr, betas=betas)
        with deterministic_kernels(config.deterministic):  # the kernels fit used
            out = reference.generator_step(real, 0)
            out.loss.backward()
            opt_g.step()
            if zero_d:
                opt_d.zero_grad(set_to_none=True)
            reference.discriminator_step(real, out.fake.detach(), 0).loss.backward()
            opt_d.step()
    torch.testing.assert_close(module.state_dict(), manual.state_dict(), rtol=0, atol=1e-7)
    leaked = leaky.discriminator.state_dict()
    assert not _states_equal(module.discriminator.state_dict(), leaked)


def test_generator_step_leaves_discriminator_weights_unchanged(tmp_path):
    module = _toy(use_disc=False)  # discriminator_step returns None: only G may change
    d_before = copy.deepcopy(module.discriminator.state_dict())
    g_before = copy.deepcopy(module.generator.state_dict())
    fit(module, toy_data(n=8), toy_config(epochs=1), _paths(tmp_path), device=CPU)
    assert _states_equal(module.discriminator.state_dict(), d_before)
    assert not _states_equal(module.generator.state_dict(), g_before)


# -------------------------------------------------------------------------- divergence
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    paths = _paths(tmp_path)
    with pytest.raises(TrainingDiverged) as info:
        fit(_toy(nan_at_epoch=2), toy_data(), toy_config(epochs=4), paths, device=CPU)
    message = str(info.value)
    assert "epoch 3/4" in message and "g_loss" in message and "fp32" in message
    payload = load_checkpoint(paths.checkpoint_dir / "last.pt")
    assert payload["epoch"] == 2
    assert all(
        torch.isfinite(t).all() for t in payload["state_dict"].values() if t.is_floating_point()
    )
    assert not paths.final.exists()


def test_exploding_generator_loss_stops(tmp_path):
    paths = _paths(tmp_path)
    with pytest.raises(TrainingDiverged, match="divergence_factor"):
        fit(_toy(explode_at_epoch=1), toy_data(), toy_config(epochs=3), paths, device=CPU)
    assert load_checkpoint(paths.checkpoint_dir / "last.pt")["epoch"] == 1


# ------------------------------------------------------------------ checkpoints / resume
def test_fingerprint_tracks_settings_model_phase_and_data_not_schedule():
    module, data, config = _toy(), toy_data(), toy_config()
    base = fit_fingerprint(module, data, config, "gan")
    assert fit_fingerprint(module, data, toy_config(epochs=9, sample_every=3), "gan") == base
    changed = [
        fit_fingerprint(module, data, toy_config(lr=1e-4), "gan"),
        fit_fingerprint(module, data, config, "encoder"),
        fit_fingerprint(_toy(channels=3), data, config, "gan"),
        fit_fingerprint(ToyGAN(), data, config, "gan"),  # other initial weights (unseeded)
        fit_fingerprint(module, data.clone().index_fill_(0, torch.tensor([0]), 0.5), config, "gan"),
    ]
    assert base not in changed and len(set(changed)) == 5


def test_fingerprint_changes_with_the_training_code(monkeypatch):
    """A checkpoint written by other code is not resumed: a code change really re-trains."""
    import brainad.training.fingerprint as training

    module, data, config = _toy(), toy_data(), toy_config()
    base = fit_fingerprint(module, data, config, "gan")
    assert len(training.code_checksum()) == 64
    monkeypatch.setattr(training, "code_checksum", lambda: "0" * 64)
    assert fit_fingerprint(module, data, config, "gan") != base


def test_stale_checkpoint_is_renamed_not_deleted(tmp_path):
    paths = _paths(tmp_path)
    fit(_toy(), toy_data(), toy_config(epochs=2), paths, device=CPU)
    old = (paths.checkpoint_dir / "last.pt").read_bytes()
    result = fit(_toy(), toy_data(), toy_config(epochs=2, lr=1e-3), paths, device=CPU)
    assert result.resumed_from is None
    assert (paths.checkpoint_dir / "last.stale-2.pt").read_bytes() == old
    assert (paths.checkpoint_dir / "last.pt").read_bytes() != old


def test_resume_continues_to_the_same_weights_in_process(tmp_path):
    straight = _toy()
    fit(straight, toy_data(), toy_config(epochs=3), _paths(tmp_path / "straight"), device=CPU)
    paths = _paths(tmp_path / "resumed")
    fit(_toy(), toy_data(), toy_config(epochs=2), paths, device=CPU)
    resumed = _toy()
    result = fit(resumed, toy_data(), toy_config(epochs=3), paths, device=CPU)
    assert result.resumed_from == 2
    assert [e["epoch"] for e in result.history] == [1, 2, 3]
    assert _states_equal(resumed.state_dict(), straight.state_dict())
    again = _toy()  # a finished run re-run: nothing to train, same final model
    assert fit(again, toy_data(), toy_config(epochs=3), paths, device=CPU).resumed_from == 3
    assert _states_equal(again.state_dict(), straight.state_dict())
    assert load_checkpoint(paths.final)["epoch"] == 3


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_is_bit_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, str(WORKER), str(reference)], check=True, env=env, timeout=120)
    killed = tmp_path / "killed"
    args = [sys.executable, str(WORKER), str(killed), "--sleep", "0.1"]
    process = subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL)
    last, deadline = killed / "ckpt" / "last.pt", time.monotonic() + 120
    try:
        while not (last.exists() and load_checkpoint(last)["epoch"] >= 2):
            assert process.poll() is None, "worker ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        assert process.poll() is None, "worker finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "final.pt").exists()
    subprocess.run([sys.executable, str(WORKER), str(killed)], check=True, env=env, timeout=120)
    result = read_json(killed / "result.json")
    assert result["resumed_from"] in (2, 4)
    assert result["epochs"] == [1, 2, 3, 4, 5, 6]
    want = torch.load(reference / "state_rank0.pt", weights_only=True)
    got = torch.load(killed / "state_rank0.pt", weights_only=True)
    assert _states_equal(got, want)
    assert _steps(killed / "live", "g_loss") == list(range(6))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_data_parallel_replicas_stay_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(WORKER), str(tmp_path), "--epochs", "2",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, timeout=180, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = torch.load(tmp_path / "state_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "state_rank1.pt", weights_only=True)
    assert _states_equal(rank0, rank1)
    initial = _toy().state_dict()
    assert not _states_equal(rank0, initial)
    # BatchNorm statistics came from different data on each rank and were averaged.
    assert not torch.equal(rank0["generator.1.running_mean"], initial["generator.1.running_mean"])
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["extra"]["world"] == 2


# ----------------------------------------------------------------------- outputs / logging
@pytest.mark.parametrize(("metric", "best_epoch"), [("val_recon", 2), ("val_auroc", 1)])
def test_best_model_follows_the_selection_metric(tmp_path, metric, best_epoch, monkeypatch):
    values, snapshots = iter([0.5, 0.2, 0.3]), []

    def validate(module: torch.nn.Module) -> dict[str, float]:
        assert not module.training
        snapshots.append(copy.deepcopy(module.state_dict()))
        return {metric: next(values)}

    paths = _paths(tmp_path)
    fit(
        _toy(),
        toy_data(),
        toy_config(epochs=3, select_metric=metric),
        paths,
        validate=validate,
        device=CPU,
    )
    best = load_checkpoint(paths.best)
    assert best["epoch"] == best_epoch and best["optimizers"] == {}
    assert _states_equal(best["state_dict"], snapshots[best_epoch - 1])
    assert load_checkpoint(paths.final)["epoch"] == 3
    monkeypatch.setattr(models, "build_model", build_toy)
    module, _ = load_model(paths.best)
    assert _states_equal(module.state_dict(), snapshots[best_epoch - 1])


def test_without_validation_best_is_the_final_model(tmp_path):
    paths = _paths(tmp_path)
    fit(_toy(), toy_data(), toy_config(epochs=1), paths, device=CPU)
    assert paths.best.read_bytes() == paths.final.read_bytes()


def test_validation_without_the_selection_metric_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="val_recon"):
        fit(_toy(), toy_data(), toy_config(epochs=1), _paths(tmp_path),
            validate=lambda m: {"val_auroc": 0.5}, device=CPU)  # fmt: skip


def test_sample_grids_at_schedule_extra_and_last_epochs(tmp_path):
    paths = _paths(tmp_path)
    batch = toy_data()[:4]
    config = toy_config(epochs=3, sample_every=2, extra_sample_epochs=(1,))
    fit(_toy(), toy_data(), config, paths, sample_batch=batch, device=CPU)
    names = sorted(p.name for p in paths.samples_dir.iterdir())
    assert names == ["epoch_0001.png", "epoch_0002.png", "epoch_0003.png"]
    grid = np.asarray(Image.open(paths.samples_dir / "epoch_0003.png").convert("L"), dtype=float)
    assert grid.shape == (2 * 34 + 2, 4 * 34 + 2)  # 2 rows x 4 images of 32 px, 2 px padding
    first_input = (batch[0, 0].numpy() + 1) / 2 * 255
    assert np.abs(grid[2:34, 2:34] - first_input).max() <= 1.0


def test_dvclive_metrics_and_resume_continue_step_numbers(tmp_path):
    paths = _paths(tmp_path, live=True)
    validate = lambda m: {"val_recon": 0.1}  # noqa: E731
    fit(_toy(), toy_data(), toy_config(epochs=2), paths, validate=validate, device=CPU)
    for metric in (
        "g_loss",
        "d_loss",
        "recon",
        "bn_mean",
        "images_per_s",
        "epoch_seconds",
        "val_recon",
    ):
        assert _steps(paths.live_dir, metric) == [0, 1], metric
    saved = (paths.checkpoint_dir / "last.pt").read_bytes()
    fit(_toy(), toy_data(), toy_config(epochs=3), paths, validate=validate, device=CPU)
    assert _steps(paths.live_dir, "g_loss") == [0, 1, 2]
    # Emulate a run killed after logging epoch 3 but before checkpointing it: resume from epoch 2.
    (paths.checkpoint_dir / "last.pt").write_bytes(saved)
    result = fit(_toy(), toy_data(), toy_config(epochs=4), paths, validate=validate, device=CPU)
    assert result.resumed_from == 2
    assert _steps(paths.live_dir, "g_loss") == [0, 1, 2, 3]
    assert read_json(paths.live_dir / "metrics.json")["step"] == 3


# -------------------------------------------------------------------------------- precision
def test_choose_precision(monkeypatch):
    assert choose_precision("fp32", CPU) == Precision("fp32", None)
    assert choose_precision("bf16", CPU).dtype == torch.bfloat16
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose_precision("auto", cuda) == Precision("fp16", torch.float16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_precision("auto", cuda) == Precision("bf16", torch.bfloat16)
    assert choose_precision("auto", torch.device("mps")).name == "fp32"
    with pytest.raises(ValueError, match="fit.precision"):
        choose_precision("fp8", CPU)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_train_finite(tmp_path, precision):
    paths = _paths(tmp_path)
    config = toy_config(epochs=1, precision=precision, deterministic=False, channels_last=True)
    result = fit(_toy(), toy_data(), config, paths, device=CPU)
    assert np.isfinite(result.history[0]["g_loss"])
    extra = load_checkpoint(paths.checkpoint_dir / "last.pt")["extra"]
    assert extra["precision"] == precision
    assert bool(extra["grad_scaler"]) == (precision == "fp16")


def test_deterministic_forces_fp32_and_restores_global_flag(tmp_path):
    config = toy_config(epochs=1, precision="bf16", deterministic=True)
    paths = _paths(tmp_path)
    fit(_toy(), toy_data(), config, paths, device=CPU)
    assert load_checkpoint(paths.final)["extra"]["precision"] == "fp32"
    assert not torch.are_deterministic_algorithms_enabled()


def test_too_few_images_for_one_batch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        fit(_toy(), toy_data(n=4), toy_config(), _paths(tmp_path), device=CPU)


# ------------------------------------------------------------------------- real models
def _tiny_vqgan() -> torch.nn.Module:
    from brainad.config import PerceptualConfig, VQGANConfig
    from brainad.models.vqgan import VQGAN

    config = VQGANConfig(
        channels=8, channel_mult=(1, 2), res_blocks=1, embedding_dim=8, codebook_size=16,
        ema_decay=0.9, commitment_weight=0.25, dead_code_threshold=0.01, disc_channels=8,
        disc_layers=2, l1_weight=1.0, perceptual_weight=0.1, adv_start=0.1, adv_slope=0.0,
        adv_cap=0.5,
    )  # fmt: skip
    perceptual = PerceptualConfig(kind="fixed", channels=4, scales=2, seed=0, vgg16_weights="")
    torch.manual_seed(0)
    return VQGAN(config, perceptual, 32)


def test_real_vqgan_trains_logs_codebook_health_and_reloads(tmp_path):
    paths = _paths(tmp_path, live=True)
    module = _tiny_vqgan()
    data = toy_data(n=16)
    result = fit(module, data, toy_config(epochs=1), paths, sample_batch=data[:2], device=CPU)
    assert {"codebook_usage", "codebook_perplexity", "g_loss", "d_loss"} <= set(result.history[0])
    assert _steps(paths.live_dir, "codebook_usage") == [0]
    loaded, payload = load_model(paths.final)
    assert type(loaded).__name__ == "VQGAN" and payload["epoch"] == 1
    assert _states_equal(loaded.state_dict(), module.state_dict())


def test_real_dcgan_two_phases_train_only_their_networks(tmp_path):
    from brainad.config import DCGANConfig
    from brainad.models.dcgan import DCGAN

    torch.manual_seed(0)
    module = DCGAN(DCGANConfig(latent_dim=8, channels=4, encoder_kappa=1.0, latent_steps=0,
                               latent_lr=0.05), 32)  # fmt: skip
    data, config = toy_data(n=16), toy_config(epochs=1)
    module.set_phase("gan")
    fit(module, data, config, _paths(tmp_path / "gan"), phase="gan", device=CPU)
    generator = copy.deepcopy(module.generator.state_dict())
    encoder = copy.deepcopy(module.encoder.state_dict())
    module.set_phase("encoder")
    enc_paths = _paths(tmp_path / "encoder")
    fit(module, data, config, enc_paths, phase="encoder", device=CPU)
    assert _states_equal(module.generator.state_dict(), generator)
    assert not _states_equal(module.encoder.state_dict(), encoder)
    extra = load_checkpoint(enc_paths.final)["extra"]
    assert extra["phase"] == "encoder" and "image_mse" in extra["history"][0]
    loaded, _ = load_model(enc_paths.final)
    x = data[:2]
    assert torch.allclose(loaded.reconstruct(x), module.reconstruct(x))
