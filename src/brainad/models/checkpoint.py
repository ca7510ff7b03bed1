"""Checkpoints that rebuild a model from the file alone and never execute code when loaded.

A checkpoint is a ``torch.save`` file holding only tensors and plain containers::

    {"format": "brainad-checkpoint/1", "model_name": str, "spec": dict, "state_dict": {...},
     "optimizers": {network name: optimiser state_dict}, "epoch": int,
     "rng": {"torch": tensor, "cuda": [tensor, ...], "numpy": {...}, "python": [...]},
     "extra": JSON-like dict (fit config, history, phase, fingerprint, ...)}

It is always read with ``torch.load(weights_only=True)``: a file that would need to run code to be
unpickled (a crafted pickle) is refused with :class:`CheckpointError` before anything runs.
"""

from __future__ import annotations

import logging
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from brainad.utils import atomic_path

log = logging.getLogger("brainad")

FORMAT = "brainad-checkpoint/1"
REQUIRED_KEYS = (
    "format",
    "model_name",
    "spec",
    "state_dict",
    "optimizers",
    "epoch",
    "rng",
    "extra",
)


class CheckpointError(ValueError):
    """A file that is not a readable brainad checkpoint; the message names the file."""


class LoadedModel(NamedTuple):
    """A model rebuilt from a checkpoint.

    Args:
        module: the rebuilt module, in eval mode, on the requested device.
        payload: the whole checkpoint payload (``spec``, ``epoch``, ``extra``, ...).
    """

    module: nn.Module
    payload: dict


# ---------------------------------------------------------------------------------------- RNG
def capture_rng() -> dict:
    """The state of every random generator a training run uses, as weights-only-safe values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": [int(version), [int(v) for v in internal], gauss_next],
    }


def restore_rng(state: dict) -> None:
    """Restore the generators saved by :func:`capture_rng`.

    Raises:
        CheckpointError: if ``state`` lacks a generator.
    """
    missing = [k for k in ("torch", "cuda", "numpy", "python") if k not in state]
    if missing:
        raise CheckpointError(f"rng state: missing {missing}; the checkpoint is incomplete")
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    elif cuda:
        log.warning("checkpoint has CUDA RNG states for %d device(s); not restored", len(cuda))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


# --------------------------------------------------------------------------------------- save
def _check_json_like(value: Any, where: str) -> None:
    """Raise ValueError if ``value`` is not made of dicts with str keys, lists, str, numbers."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json_like(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} is not a string; use str keys")
            _check_json_like(item, f"{where}.{key}")
        return
    raise ValueError(
        f"{where}: {type(value).__name__} is not JSON-like; convert it to lists/numbers/str "
        "(checkpoints hold only tensors and plain containers)"
    )


def save_checkpoint(
    path: Path,
    module: nn.Module,
    *,
    optimizers: dict[str, Optimizer] | None = None,
    epoch: int,
    extra: dict | None = None,
) -> None:
    """Atomically write ``module`` (and optionally its optimisers) as a checkpoint.

    Args:
        path: destination file; replaced only once the new file is completely written.
        module: a :class:`~brainad.models.protocol.GANModule` (needs ``name`` and ``spec()``).
        optimizers: optimisers by network name (omit for final/best model files).
        epoch: completed epochs.
        extra: JSON-like metadata (fit config, history, phase, fingerprint, ...).

    Raises:
        ValueError: if ``spec()`` or ``extra`` contains something that is not JSON-like.
    """
    spec = module.spec()
    _check_json_like(spec, f"{type(module).__name__}.spec()")
    extra = dict(extra or {})
    _check_json_like(extra, "extra")
    payload = {
        "format": FORMAT,
        "model_name": str(module.name),
        "spec": spec,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "optimizers": {k: opt.state_dict() for k, opt in (optimizers or {}).items()},
        "epoch": int(epoch),
        "rng": capture_rng(),
        "extra": extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


# --------------------------------------------------------------------------------------- load
def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True, map_location="cpu")``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: if the file is truncated, not a brainad checkpoint, or would execute
            code when unpickled (it is refused before anything runs).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; run the training stage first")
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        culprit = [ln for ln in lines if "global" in ln.lower()]
        first = (culprit or lines)[0][:200]
        if "weights only" in str(exc).lower() or culprit:
            raise CheckpointError(
                f"{path}: refused to load: it contains objects whose unpickling would execute "
                f"code (brainad refuses to execute code from checkpoint files; only tensors and "
                f"plain containers are allowed). Do not use this file. Detail: {first}"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({first}); it is truncated or corrupt - "
            "re-run the training stage (brainad refuses to execute code from checkpoints)"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {_first_sentence(exc)}); "
            "it is truncated or corrupt - re-run the training stage (brainad refuses to execute "
            "code from checkpoints)"
        ) from None
    _check_payload(payload, path)
    return payload


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip().split(". ")[0]
    return text[:160] if text else "empty file"


def _check_payload(payload: Any, path: Path) -> None:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path}: not a brainad checkpoint (format {got!r}, expected {FORMAT!r}); "
            "pass a file written by brainad training"
        )
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}; re-run the training stage")
    if not isinstance(payload["state_dict"], dict) or not isinstance(payload["spec"], dict):
        raise CheckpointError(f"{path}: 'state_dict' and 'spec' must be mappings; file is corrupt")


def load_model(path: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model stored in ``path`` from the file alone.

    Uses ``brainad.models.registry.build_model(payload["model_name"], payload["spec"])`` and loads the
    weights strictly.

    Returns:
        ``(module in eval mode on device, payload)``.

    Raises:
        CheckpointError: if the file is unreadable or its weights do not fit the rebuilt model.
    """
    from brainad.models import registry

    payload = load_checkpoint(path)
    module = registry.build_model(payload["model_name"], payload["spec"])
    try:
        module.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not match model {payload['model_name']!r} built from its spec "
            f"(written by another code version?); re-run the training stage. {str(exc)[:300]}"
        ) from None
    module.to(device).eval()
    return LoadedModel(module, payload)


__all__ = [
    "FORMAT",
    "CheckpointError",
    "LoadedModel",
    "capture_rng",
    "load_checkpoint",
    "load_model",
    "restore_rng",
    "save_checkpoint",
]
