"""Strict typed config: every study of params.yaml loads; bad keys fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from brainad.config import ConfigError, StudyConfig, load_study, study_names, to_dict

ROOT = Path(__file__).resolve().parents[1]


def write_params(tmp_path: Path, mutate) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_every_study_loads_and_demo_overrides_apply() -> None:
    names = study_names(ROOT / "params.yaml")
    assert {"demo", "brain-tumor-mri", "thesis"} <= set(names)
    configs = {n: load_study(n, ROOT / "params.yaml") for n in names}
    assert all(isinstance(c, StudyConfig) for c in configs.values())
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert (
        configs["demo"].preprocess.image_size == raw["studies"]["demo"]["preprocess"]["image_size"]
    )
    assert configs["thesis"].preprocess.image_size == raw["defaults"]["preprocess"]["image_size"]
    assert configs["demo"].source.kind == "synthetic"
    assert isinstance(configs["demo"].vqgan.model.channel_mult, tuple)


def test_thesis_study_keeps_the_reproduced_settings() -> None:
    thesis = load_study("thesis", ROOT / "params.yaml")
    assert thesis.preprocess.image_size == 128
    assert thesis.vqgan.fit.epochs == 1000
    assert (thesis.vqgan.fit.lr, thesis.vqgan.fit.beta1, thesis.vqgan.fit.beta2) == (
        2e-4,
        0.5,
        0.999,
    )
    assert thesis.vqgan.fit.extra_sample_epochs == (500,)
    assert thesis.preprocess.normalisation == "thesis"


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda p: p["defaults"]["vqgan"]["fit"].update(epocs=3), "epocs"),
        (lambda p: p["defaults"]["split"].pop("seed"), "seed"),
        (lambda p: p["defaults"]["vqgan"]["fit"].update(epochs="ten"), "vqgan.fit.epochs"),
        (lambda p: p["defaults"]["preprocess"].update(skull_strip="yes"), "preprocess.skull_strip"),
        (lambda p: p["defaults"]["preprocess"].update(normalisation="minmax"), "normalisation"),
        (lambda p: p["defaults"]["preprocess"].update(percentiles=[1.0]), "preprocess.percentiles"),
        (lambda p: p["defaults"]["vqgan"]["fit"].update(batch_size=True), "batch_size"),
        (
            lambda p: p["studies"]["demo"]["split"].update(hash_distanc=4),
            "studies.demo.split.hash_distanc",
        ),
        (lambda p: p["studies"]["demo"].pop("score"), "score"),
    ],
)
def test_bad_keys_fail_naming_the_key(tmp_path: Path, mutate, needle: str) -> None:
    path = write_params(tmp_path, mutate)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_study("demo", path)


def test_unknown_study_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such study"):
        load_study("nope", ROOT / "params.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_study("demo", tmp_path / "missing.yaml")


def test_ints_are_accepted_for_floats_and_config_is_frozen() -> None:
    config = load_study("demo", ROOT / "params.yaml")
    assert isinstance(config.vqgan.model.adv_cap, float)
    with pytest.raises(AttributeError):
        config.split.seed = 3  # type: ignore[misc]
    assert to_dict(config)["vqgan"]["model"]["channel_mult"] == list(
        config.vqgan.model.channel_mult
    )
