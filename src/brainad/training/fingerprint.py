"""What a resumable checkpoint must match (settings, model, data and the training code) and the
seeds derived per epoch and rank."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from torch import nn

from brainad.codebase import files_digest, import_closure
from brainad.config import FitConfig, to_dict
from brainad.runtime import ENVIRONMENT, environment_pinned

# Settings that change when things happen, not what is computed: changing them keeps last.pt.
SCHEDULE_ONLY = ("epochs", "checkpoint_every", "sample_every", "extra_sample_epochs")


def derived_seed(seed: int, *parts: int | str) -> int:
    """A 63-bit seed derived from ``seed`` and ``parts`` (e.g. ``"augment", epoch, rank``)."""
    words = [int(seed)] + [
        int(p) if isinstance(p, int) else int.from_bytes(p.encode()[:8].ljust(8, b"\0"), "little")
        for p in parts
    ]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint64)
    return int(state[0]) & (2**63 - 1)


def tensor_checksum(tensor: torch.Tensor) -> str:
    """BLAKE2 digest of the tensor's bytes (about 1 s per GB; a GPU tensor is copied once)."""
    flat = tensor.detach().reshape(-1).contiguous().cpu()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def state_checksum(module: nn.Module) -> str:
    """Digest of the module's ``state_dict`` (names, dtypes, shapes and values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor_checksum(tensor).encode())
    return digest.hexdigest()


def code_checksum() -> str:
    """sha256 of the library files the train stages run: the static import closure of
    :mod:`brainad.training.runner` (:func:`brainad.codebase.import_closure`, the same closure the
    DVC dependency test checks ``dvc.yaml`` against)."""
    return files_digest(import_closure(["brainad.training.runner"]))


def fit_fingerprint(module: nn.Module, train: torch.Tensor, config: FitConfig, phase: str) -> str:
    """What a resumable checkpoint must match.

    The fit config without its schedule-only keys (:data:`SCHEDULE_ONLY`, so ``epochs`` can be
    raised and training continues), the model name, ``spec()`` and its weights at the start of the
    fit (a DCGAN encoder phase must not resume on top of a different generator), the phase, the
    training data (shape, dtype, checksum), the training code (:func:`code_checksum`: a
    checkpoint written by different code is not resumed, so a code change really re-trains) and,
    in deterministic mode, whether the kernels were pinned and how.
    """
    settings = {k: v for k, v in to_dict(config).items() if k not in SCHEDULE_ONLY}
    document = {
        "code": code_checksum(),
        "config": settings,
        "model": module.name,
        "spec": module.spec(),
        "initial_state": state_checksum(module),
        "phase": phase,
        "train_shape": list(train.shape),
        "train_dtype": str(train.dtype),
        "train_checksum": tensor_checksum(train),
        # a deterministic run resumes only under the same pinned kernels (brainad.runtime)
        "kernels": {"pinned": environment_pinned(), **ENVIRONMENT}
        if config.deterministic
        else None,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
