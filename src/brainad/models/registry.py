"""THE model registry: one name per model, used for its stage (``train_<name>``), its params
section, its files, its metrics and its reports.

Stages, the benchmark and the CLI read it; nothing else maps a model name to a class, a params
section or a file name. File names under ``models/<study>/`` and ``reports/<study>/train/`` follow
the helpers below, and ``tests/test_layout.py`` checks that ``dvc.yaml`` writes the same paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from brainad.config import FitConfig, StudyConfig
from brainad.models.dae import DenoisingAE
from brainad.models.dcgan import DCGAN
from brainad.models.inpainter import Inpainter
from brainad.models.prior import VQGANPrior
from brainad.models.segmenter import Segmenter
from brainad.models.vqgan import VQGAN
from brainad.models.vqgan_denoise import DenoisingVQGAN

DetectorKind = Literal["reconstruction", "segmentation"]


@dataclass(frozen=True)
class ModelEntry:
    """One trainable model.

    Args:
        name: the one name (stage ``train_<name>``, params section ``<name>``, metrics key).
        cls: the class; it implements :class:`brainad.models.protocol.GANModule` (imported
            statically, so the import closure of every stage sees the model code it runs).
        phases: training phases in order (each is one call of the training loop, with its
            DVCLive folder ``live_<phase>``); the last one is validated and selects the model.
        base: name of the model whose best checkpoint this one is built on, or None.
        detector: how the model is scored (:func:`brainad.scoring.bundle.make_detector`):
            ``reconstruction`` (residuals of ``reconstruct``) or ``segmentation`` (the model's
            own anomaly probability map).
    """

    name: str
    cls: type[nn.Module]
    phases: tuple[str, ...]
    base: str | None = None
    detector: DetectorKind = "reconstruction"


REGISTRY: dict[str, ModelEntry] = {
    "vqgan": ModelEntry("vqgan", VQGAN, ("main",)),
    "vqgan_prior": ModelEntry("vqgan_prior", VQGANPrior, ("main",), base="vqgan"),
    "dcgan": ModelEntry("dcgan", DCGAN, ("gan", "encoder")),
    "dae": ModelEntry("dae", DenoisingAE, ("main",)),
    "segmenter": ModelEntry("segmenter", Segmenter, ("main",), detector="segmentation"),
    "vqgan_denoise": ModelEntry("vqgan_denoise", DenoisingVQGAN, ("main",)),
    "inpainter": ModelEntry("inpainter", Inpainter, ("main",)),
}
"""In the order evaluation reports them (metrics, ``scores.csv``, figures)."""
MODEL_NAMES = tuple(REGISTRY)


def entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; ValueError naming the known models otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {list(MODEL_NAMES)}")
    return REGISTRY[name]


def model_class(name: str) -> type[nn.Module]:
    """The class of ``name``."""
    return entry(name).cls


def fit_config(name: str, config: StudyConfig) -> FitConfig:
    """The fit settings of the model's last (validated) phase: ``<name>.fit`` in params (the
    DCGAN's encoder phase has its own, ``dcgan.encoder_fit``)."""
    section = getattr(config, entry(name).name)
    return section.encoder_fit if name == "dcgan" else section.fit


def new_model(
    name: str, config: StudyConfig, image_size: int, base: nn.Module | None = None
) -> nn.Module:
    """A freshly initialised model from the study's params (``base``: the trained model it is
    built on, for entries with a ``base``; an untrained one is made if None). Every model without
    a base except the two VQGAN+Ds is built as ``cls(config.<name>.model, image_size)``."""
    cls = model_class(name)
    if name == "vqgan":
        return cls(config.vqgan.model, config.perceptual, image_size)
    if name == "vqgan_denoise":
        section = config.vqgan_denoise
        return cls(section.model, section.noise, config.perceptual, image_size)
    if entry(name).base is None:
        return cls(getattr(config, name).model, image_size)
    if base is None:
        base = new_model(entry(name).base, config, image_size)
    module = cls(base.spec(), config.vqgan_prior.model)
    module.vqgan.load_state_dict(base.state_dict())
    return module


def build_model(name: str, spec: dict[str, Any]) -> nn.Module:
    """Rebuild the model ``name`` from its stored ``spec()`` (configs as dicts, image size).

    Raises:
        ValueError: unknown ``name``, or a spec with missing/unknown keys or invalid values.
    """
    cls = model_class(name)
    if not isinstance(spec, dict):
        raise ValueError(f"model spec for {name!r} must be a mapping, got {type(spec).__name__}")
    missing = [k for k in cls.spec_keys if k not in spec]
    unknown = sorted(set(spec) - set(cls.spec_keys))
    if missing or unknown:
        raise ValueError(
            f"model spec for {name!r}: missing keys {missing}, unknown keys {unknown}; the "
            "checkpoint was written by an incompatible version of brainad — retrain the model"
        )
    return cls.from_spec(spec)


# ------------------------------------------------------------------------- file naming
def final_file(model_dir: Path, name: str) -> Path:
    """``models/<study>/<name>.pt``: the model after its last epoch."""
    return Path(model_dir) / f"{entry(name).name}.pt"


def best_file(model_dir: Path, name: str) -> Path:
    """``models/<study>/<name>-best.pt``: the model selected on validation (evaluation uses it)."""
    return Path(model_dir) / f"{entry(name).name}-best.pt"


def scorer_file(scorers_dir: Path, name: str) -> Path:
    """``models/<study>/scorers/<name>.pt``: the scorer bundle ``brainad score`` reads."""
    return Path(scorers_dir) / f"{entry(name).name}.pt"


def live_dir(report_dir: Path, phase: str) -> Path:
    """DVCLive folder of one training phase under ``reports/<study>/train/<name>/``."""
    return Path(report_dir) / f"live_{phase}"


def samples_dir(report_dir: Path, phase: str) -> Path:
    """Sample grids of one training phase under ``reports/<study>/train/<name>/``."""
    return Path(report_dir) / f"samples_{phase}"
