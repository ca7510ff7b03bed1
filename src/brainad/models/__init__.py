"""Models: VQGAN+D (EMA vector quantiser), its token prior, and the DCGAN baseline with an
f-AnoGAN encoder.

All implement :class:`brainad.models.protocol.GANModule`. A checkpoint stores ``model.spec()``
beside the ``state_dict``; :func:`build_model` rebuilds the module from that spec alone.
"""

from __future__ import annotations

from typing import Any

from torch import nn

MODEL_NAMES = ("vqgan", "dcgan", "vqgan_prior")


def _model_class(name: str) -> type[nn.Module]:
    """Import only the requested model's module (so its DVC stage depends on its own code only)."""
    if name == "vqgan":
        from brainad.models.vqgan import VQGAN

        return VQGAN
    if name == "vqgan_prior":
        from brainad.models.prior import VQGANPrior

        return VQGANPrior
    from brainad.models.dcgan import DCGAN

    return DCGAN


def build_model(name: str, spec: dict[str, Any]) -> nn.Module:
    """Rebuild the model ``name`` from its stored ``spec()`` (configs as dicts, image size).

    Raises:
        ValueError: unknown ``name``, or a spec with missing/unknown keys or invalid values.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known models: {list(MODEL_NAMES)}")
    cls = _model_class(name)
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


__all__ = ["MODEL_NAMES", "build_model"]
