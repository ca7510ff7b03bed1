"""Checkpoints: round trip, RNG capture, safe loading (no code execution), model rebuild."""

from __future__ import annotations

import os
import pickle
import random
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.toy_gan import ToyGAN, build_toy

from brainad.models import registry as models
from brainad.models.checkpoint import (
    FORMAT,
    CheckpointError,
    capture_rng,
    load_checkpoint,
    load_model,
    restore_rng,
    save_checkpoint,
)


class _Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture()
def trained_toy() -> tuple[ToyGAN, torch.optim.Adam]:
    torch.manual_seed(0)
    module = ToyGAN(channels=3)
    optimizer = torch.optim.Adam(module.generator.parameters(), lr=1e-3)
    loss = module.generator_step(torch.rand(4, 1, 16, 16) * 2 - 1, 0).loss
    loss.backward()
    optimizer.step()
    return module, optimizer


def _draws() -> tuple[torch.Tensor, np.ndarray, float]:
    return torch.rand(5), np.random.rand(5), random.random()


def test_round_trip_keeps_weights_optimiser_and_extra(tmp_path, trained_toy):
    module, optimizer = trained_toy
    path = tmp_path / "sub" / "ck.pt"
    extra = {"history": [{"epoch": 1, "g_loss": 0.5}], "phase": "gan", "best": None}
    save_checkpoint(path, module, optimizers={"generator": optimizer}, epoch=3, extra=extra)
    payload = load_checkpoint(path)
    assert payload["format"] == FORMAT
    assert (payload["model_name"], payload["spec"], payload["epoch"]) == ("toy", module.spec(), 3)
    assert payload["extra"] == extra
    for key, value in module.state_dict().items():
        assert torch.equal(payload["state_dict"][key], value), key
    fresh = torch.optim.Adam(ToyGAN(channels=3).generator.parameters(), lr=1e-3)
    fresh.load_state_dict(payload["optimizers"]["generator"])
    assert int(fresh.state_dict()["state"][0]["step"]) == 1
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["ck.pt"]  # no temp left


def test_rng_capture_and_restore_repeat_every_generator(tmp_path, trained_toy):
    state = capture_rng()
    first = _draws()
    restore_rng(state)
    second = _draws()
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1]) and first[2] == second[2]
    module, _ = trained_toy
    save_checkpoint(tmp_path / "ck.pt", module, epoch=1)
    after_save = _draws()
    _draws()
    restore_rng(load_checkpoint(tmp_path / "ck.pt")["rng"])  # through weights_only=True loading
    assert torch.equal(_draws()[0], after_save[0])


def test_non_json_extra_is_refused_and_existing_file_kept(tmp_path, trained_toy):
    module, _ = trained_toy
    path = tmp_path / "ck.pt"
    save_checkpoint(path, module, epoch=1)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"extra\.scores"):
        save_checkpoint(path, module, epoch=2, extra={"scores": np.zeros(3)})
    assert path.read_bytes() == before


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_without_executing(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"format": FORMAT, "state_dict": {}, "evil": _Evil(marker)}
    path = tmp_path / "evil.pt"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "execute code" in message
    assert not marker.exists()
    # Control: an unrestricted unpickler WOULD run the payload, so the check above is meaningful.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Evil(control)))
    assert control.exists()


def test_truncated_and_foreign_files_raise_checkpoint_error(tmp_path, trained_toy):
    module, _ = trained_toy
    good = tmp_path / "good.pt"
    save_checkpoint(good, module, epoch=1)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    for path in (truncated, text, foreign):
        with pytest.raises(CheckpointError, match=path.name):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_load_model_rebuilds_from_the_file_alone(tmp_path, trained_toy, monkeypatch):
    monkeypatch.setattr(models, "build_model", build_toy)
    module, optimizer = trained_toy
    module.eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, module, optimizers={"generator": optimizer}, epoch=5)
    loaded, payload = load_model(path)
    assert isinstance(loaded, ToyGAN) and not loaded.training
    assert loaded.spec() == module.spec() and payload["epoch"] == 5
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.equal(loaded.reconstruct(x), module.reconstruct(x))


def test_load_model_with_mismatched_weights_names_the_file(tmp_path, trained_toy, monkeypatch):
    module, _ = trained_toy
    path = tmp_path / "model.pt"
    save_checkpoint(path, module, epoch=1)
    monkeypatch.setattr(models, "build_model", lambda name, spec: ToyGAN(channels=5))
    with pytest.raises(CheckpointError, match="model.pt"):
        load_model(path)
