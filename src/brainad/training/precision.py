"""Numeric precision of training: bf16/fp16 autocast where the device does it fast, else fp32."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Precision(NamedTuple):
    """Numeric precision of the forward passes.

    Args:
        name: ``fp32``, ``bf16`` or ``fp16`` (``fp16`` uses a gradient scaler).
        dtype: autocast dtype, ``None`` for plain fp32.
    """

    name: str
    dtype: torch.dtype | None


def _cpu_has_fast_bf16() -> bool:
    """Native bf16 on this CPU (AVX512-BF16 or AMX), else the oneDNN bf16 check."""
    native = [
        getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    if any(fn is not None for fn in native):
        return any(bool(fn()) for fn in native if fn is not None)
    if torch.backends.cpu.get_cpu_capability() in ("AMX", "AVX512_BF16"):
        return True
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def choose_precision(requested: str, device: torch.device) -> Precision:
    """Resolve ``fit.precision`` for ``device`` (callers force ``fp32`` for deterministic runs).

    ``auto`` → bf16 autocast where the device does bf16 fast (CUDA with bf16, CPU with
    AVX512-BF16/AMX), fp16 with a gradient scaler on CUDA without bf16, else fp32.

    Raises:
        ValueError: an unknown precision name.
    """
    explicit = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if requested in explicit:
        return Precision(requested, explicit[requested])
    if requested != "auto":
        raise ValueError(f"fit.precision: {requested!r} is not one of auto, fp32, bf16, fp16")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", torch.bfloat16)
        return Precision("fp16", torch.float16)
    if device.type == "cpu" and _cpu_has_fast_bf16():
        return Precision("bf16", torch.bfloat16)
    return Precision("fp32", None)
