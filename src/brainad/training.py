"""The ONE training loop for every GAN (:class:`~brainad.models.protocol.GANModule`).

:func:`fit` owns everything that is not model-specific: device, precision, optimisers, seeded
batches and augmentation, the generator/discriminator step order, multi-process data parallelism
under ``torchrun``, divergence guards, resumable checkpoints, sample grids, the best model and
per-epoch logging (rich progress bar + DVCLive).

Reproducibility: batch order and augmentation are functions of ``(seed, epoch, rank)``; the global
torch RNG (model noise, dead-code restarts) is seeded from ``seed`` on a fresh start and saved in
every checkpoint and restored on resume. With ``deterministic: true`` on CPU a run that is killed
and resumed ends with bit-identical weights to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from brainad.checkpoint import CheckpointError, load_checkpoint, restore_rng, save_checkpoint
from brainad.config import FitConfig, to_dict
from brainad.data.dataset import augment_batch, batch_indices
from brainad.models.protocol import StepOutput
from brainad.utils import atomic_path, console, select_device, write_text

log = logging.getLogger("brainad")

LAST = "last.pt"
BEST_COPY = "best.pt"
HIGHER_IS_BETTER = frozenset({"val_auroc"})
# Settings that change when things happen, not what is computed: changing them keeps last.pt.
SCHEDULE_ONLY = ("epochs", "checkpoint_every", "sample_every", "extra_sample_epochs")


class TrainingDiverged(RuntimeError):
    """A loss became NaN/inf or exploded; the last good checkpoint is kept."""


class FitPaths(NamedTuple):
    """Where :func:`fit` writes.

    Args:
        checkpoint_dir: resumable state (``last.pt``, ``best.pt``); keep it across runs
            (DVC ``persist: true``). Use one directory per model and phase.
        final: final model (checkpoint format, no optimisers).
        best: best model by ``config.select_metric`` (the final model if there is no validation).
        samples_dir: PNG grids of sample inputs over their reconstructions.
        live_dir: DVCLive directory; ``None`` disables DVCLive.
    """

    checkpoint_dir: Path
    final: Path
    best: Path
    samples_dir: Path
    live_dir: Path | None


class FitResult(NamedTuple):
    """What :func:`fit` produced.

    Args:
        final: path of the final model.
        best: path of the best model.
        history: one dict of floats per epoch (``epoch`` is 1-based).
        resumed_from: completed epochs of the checkpoint resumed from, or ``None`` if fresh.
    """

    final: Path
    best: Path
    history: list[dict]
    resumed_from: int | None


class DistContext(NamedTuple):
    """This process' place in a ``torchrun`` job.

    Args:
        rank: global rank.
        world: number of processes.
        local_rank: rank on this node (selects the GPU).
        enabled: whether a process group is in use (``world > 1``).
    """

    rank: int
    world: int
    local_rank: int
    enabled: bool

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and logs."""
        return self.rank == 0


class Precision(NamedTuple):
    """Numeric precision of the forward passes.

    Args:
        name: ``fp32``, ``bf16`` or ``fp16`` (``fp16`` uses a gradient scaler).
        dtype: autocast dtype, ``None`` for plain fp32.
    """

    name: str
    dtype: torch.dtype | None


# ------------------------------------------------------------------------- precision / devices
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


def distributed_context() -> DistContext:
    """Join the ``torchrun`` process group described by ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``.

    Initialises the group once (gloo on CPU, nccl on CUDA); a plain run is ``world == 1``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, 0, False)
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        log.info("joined %s process group: rank %d of %d", backend, dist.get_rank(), world)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, True)


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
    """sha256 of the source files that determine training: this loop, checkpoints, batching and
    augmentation, and every model module."""
    root = Path(__file__).resolve().parent
    files = [root / "training.py", root / "checkpoint.py", root / "data" / "dataset.py"]
    files += sorted((root / "models").glob("*.py"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def fit_fingerprint(module: nn.Module, train: torch.Tensor, config: FitConfig, phase: str) -> str:
    """What a resumable checkpoint must match.

    The fit config without its schedule-only keys (:data:`SCHEDULE_ONLY`, so ``epochs`` can be
    raised and training continues), the model name, ``spec()`` and its weights at the start of the
    fit (a DCGAN encoder phase must not resume on top of a different generator), the phase, the
    training data (shape, dtype, checksum) and the training code (:func:`code_checksum`: a
    checkpoint written by different code is not resumed, so a code change really re-trains).
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
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------ DDP helpers
def _flat_groups(tensors: list[torch.Tensor]) -> dict[torch.dtype, list[torch.Tensor]]:
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault(tensor.dtype, []).append(tensor)
    return groups


def _collective(tensors: list[torch.Tensor], average: bool, world: int) -> None:
    """In-place average (all-reduce) or broadcast from rank 0, one flat buffer per dtype."""
    for group in _flat_groups(tensors).values():
        flat = _flatten_dense_tensors([t.detach() for t in group])
        if average:
            dist.all_reduce(flat)
            flat /= world
        else:
            dist.broadcast(flat, src=0)
        for tensor, value in zip(group, _unflatten_dense_tensors(flat, group)):
            tensor.detach().copy_(value)


def _broadcast_state(module: nn.Module) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    _collective(list(module.state_dict().values()), average=False, world=1)


def _sync_buffers(module: nn.Module, world: int) -> None:
    """Epoch end: average float buffers (BatchNorm, EMA codebooks); broadcast the others."""
    buffers = [b for b in module.buffers() if b.numel()]
    _collective([b for b in buffers if b.is_floating_point()], average=True, world=world)
    _collective([b for b in buffers if not b.is_floating_point()], average=False, world=world)


def _allreduce_grads(params: list[nn.Parameter], world: int) -> None:
    """Average the gradients of one network over ranks (missing gradients count as zero)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    _collective([p.grad for p in params], average=True, world=world)


# ------------------------------------------------------------------------------- run state
@dataclass
class _Run:
    """Mutable state of one :func:`fit` call."""

    module: nn.Module
    config: FitConfig
    paths: FitPaths
    phase: str
    device: torch.device
    ctx: DistContext
    precision: Precision
    fingerprint: str
    train: torch.Tensor
    optimizers: dict[str, torch.optim.Optimizer]
    params: dict[str, list[nn.Parameter]]
    scaler: torch.amp.GradScaler
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    first_g_loss: float | None = None

    @property
    def last_path(self) -> Path:
        return Path(self.paths.checkpoint_dir) / LAST

    @property
    def best_copy(self) -> Path:
        return Path(self.paths.checkpoint_dir) / BEST_COPY

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.precision.dtype)

    def extra(self) -> dict:
        return {
            "fit_config": to_dict(self.config),
            "phase": self.phase,
            "fingerprint": self.fingerprint,
            "precision": self.precision.name,
            "world": self.ctx.world,
            "history": self.history,
            "best": self.best,
            "first_g_loss": self.first_g_loss,
            "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
        }


def _check_inputs(module: nn.Module, train: torch.Tensor, config: FitConfig, world: int) -> None:
    if not isinstance(train, torch.Tensor) or train.ndim != 4 or not train.is_floating_point():
        got = tuple(train.shape) if isinstance(train, torch.Tensor) else type(train).__name__
        raise ValueError(f"fit: train must be a float tensor (N, C, H, W), got {got}")
    if len(train) < config.batch_size * world:
        raise ValueError(
            f"fit: {len(train)} training images is fewer than fit.batch_size ({config.batch_size})"
            f" x {world} process(es); lower fit.batch_size in params.yaml"
        )
    for key in ("epochs", "checkpoint_every", "sample_every"):
        if getattr(config, key) < 1:
            raise ValueError(f"fit.{key}: must be >= 1, got {getattr(config, key)}")
    if "generator" not in module.networks():
        raise ValueError(f"{type(module).__name__}.networks() must contain a 'generator' entry")


def _prepare(
    module: nn.Module, train: torch.Tensor, config: FitConfig, device: torch.device
) -> tuple[torch.Tensor, dict[str, list[nn.Parameter]]]:
    """Move module and data to the device once, set memory format, optionally compile."""
    module.to(device)
    if config.channels_last:
        module.to(memory_format=torch.channels_last)
    module.train()
    params: dict[str, list[nn.Parameter]] = {}
    for name, net in module.networks().items():
        if config.compile:
            net.compile()
        params[name] = [p for p in net.parameters() if p.requires_grad]
        if not params[name]:
            raise ValueError(
                f"{type(module).__name__}.networks()['{name}'] has no trainable parameters"
            )
    return train.to(device), params


def _new_run(
    module: nn.Module, train: torch.Tensor, config: FitConfig, paths: FitPaths, phase: str,
    device: torch.device, ctx: DistContext,
) -> _Run:  # fmt: skip
    """Fingerprint (before anything moves), precision, device placement and optimisers."""
    fingerprint = fit_fingerprint(module, train, config, phase)
    requested = config.precision
    if config.deterministic and requested not in ("fp32", "auto"):
        log.warning("fit.deterministic is true: precision %s is replaced by fp32", requested)
    precision = choose_precision("fp32" if config.deterministic else requested, device)
    train, params = _prepare(module, train, config, device)
    betas = (config.beta1, config.beta2)
    return _Run(
        module=module, config=config, paths=paths, phase=phase, device=device, ctx=ctx,
        precision=precision, fingerprint=fingerprint, train=train, params=params,
        optimizers={  # fused: one kernel per step instead of a per-parameter loop on CPU
            n: torch.optim.Adam(p, lr=config.lr, betas=betas, fused=True)
            for n, p in params.items()
        },
        scaler=torch.amp.GradScaler(device.type, enabled=precision.name == "fp16"),
    )  # fmt: skip


# ------------------------------------------------------------------------------ resume logic
def _stale_name(path: Path, epoch: int | str) -> Path:
    stem, suffix = path.name.rsplit(".", 1)
    candidate = path.with_name(f"{stem}.stale-{epoch}.{suffix}")
    count = 1
    while candidate.exists():
        candidate = path.with_name(f"{stem}.stale-{epoch}.{count}.{suffix}")
        count += 1
    return candidate


def _read_resumable(run: _Run) -> dict | None:
    """The payload of ``last.pt`` if it can be resumed; rename it if it is stale."""
    if not run.last_path.exists():
        return None
    try:
        payload = load_checkpoint(run.last_path)
    except CheckpointError as exc:
        payload, reason = {"epoch": "unreadable", "extra": {}}, f"unreadable ({exc})"
    else:
        same = payload["extra"].get("fingerprint") == run.fingerprint
        if same and payload["epoch"] <= run.config.epochs:
            return payload
        reason = "settings, model, phase or data changed" if not same else "it is beyond fit.epochs"
    if run.ctx.enabled:
        dist.barrier()  # every rank has read it before it is renamed
    if run.ctx.is_main:
        for path in (run.last_path, run.best_copy):
            if path.exists():
                stale = _stale_name(path, payload["epoch"])
                os.replace(path, stale)
                log.warning("%s: %s; kept as %s, starting fresh", path, reason, stale.name)
    return None


def _restore(run: _Run, payload: dict) -> int:
    run.module.load_state_dict(payload["state_dict"])
    for name, optimizer in run.optimizers.items():
        optimizer.load_state_dict(payload["optimizers"][name])
    extra = payload["extra"]
    if extra.get("grad_scaler") and run.scaler.is_enabled():
        run.scaler.load_state_dict(extra["grad_scaler"])
    run.history = list(extra.get("history", []))
    run.best = extra.get("best")
    run.first_g_loss = extra.get("first_g_loss")
    restore_rng(payload["rng"])
    return int(payload["epoch"])


def _start(run: _Run) -> int:
    """Resume from a matching ``last.pt`` or seed a fresh start; returns completed epochs."""
    payload = _read_resumable(run)
    start = 0
    if payload is not None:
        start = _restore(run, payload)
        if run.ctx.is_main:
            name = f"{run.module.name} ({run.phase})"
            log.info("resuming %s from %s at epoch %d", name, run.last_path, start)
    else:
        torch.manual_seed(derived_seed(run.config.seed, "global", run.ctx.rank))
    if run.ctx.enabled:
        agreed = torch.tensor([start], dtype=torch.int64, device=run.device)
        dist.broadcast(agreed, src=0)
        if int(agreed) != start:
            raise RuntimeError(
                f"rank {run.ctx.rank} would start at epoch {start} but rank 0 at {int(agreed)}: "
                "the checkpoint_dir must be on a filesystem shared by all processes"
            )
        _broadcast_state(run.module)
    return start


# ------------------------------------------------------------------------------ training step
def _backward_and_step(run: _Run, network: str, loss: torch.Tensor) -> None:
    run.scaler.scale(loss).backward()
    if run.ctx.enabled:
        _allreduce_grads(run.params[network], run.ctx.world)
    run.scaler.step(run.optimizers[network])


def _train_step(run: _Run, real: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
    """Generator step (steps only the generator), then discriminator step on ``fake.detach()``."""
    for optimizer in run.optimizers.values():
        optimizer.zero_grad(set_to_none=True)
    with run.autocast():
        g_out: StepOutput = run.module.generator_step(real, epoch)
    _backward_and_step(run, "generator", g_out.loss)
    logs = {"g_loss": g_out.loss.detach(), **g_out.logs}
    if g_out.fake is not None:
        if "discriminator" in run.optimizers:
            run.optimizers["discriminator"].zero_grad(set_to_none=True)
        with run.autocast():
            d_out = run.module.discriminator_step(real, g_out.fake.detach(), epoch)
        if d_out is not None:
            if "discriminator" not in run.optimizers:
                raise ValueError(
                    "discriminator_step returned a loss but networks() has no discriminator"
                )
            _backward_and_step(run, "discriminator", d_out.loss)
            logs.update({"d_loss": d_out.loss.detach(), **d_out.logs})
    run.scaler.update()
    return logs


def _epoch_means(
    sums: dict[str, torch.Tensor], counts: dict[str, int], ctx: DistContext
) -> dict[str, float]:
    """Per-epoch means of the step logs: ONE host sync (and one all-reduce under DDP)."""
    if not sums:
        return {}
    names = sorted(sums)
    means = torch.stack([sums[n] / counts[n] for n in names])
    if ctx.enabled:
        dist.all_reduce(means)
        means /= ctx.world
    return dict(zip(names, means.tolist()))


def _run_batches(
    run: _Run, epoch: int, on_batch: Callable[[], None]
) -> tuple[dict[str, float], int]:
    """Train one epoch; returns (mean step logs, images seen by this process)."""
    config, ctx = run.config, run.ctx
    batches = batch_indices(
        len(run.train), config.batch_size, config.seed, epoch, ctx.rank, ctx.world
    )
    generator = torch.Generator().manual_seed(derived_seed(config.seed, "augment", epoch, ctx.rank))
    if ctx.enabled and ctx.rank > 0:  # rank 0's stream is checkpointed; others re-derive theirs
        torch.manual_seed(derived_seed(config.seed, "global", epoch, ctx.rank))
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    images = 0
    for index in batches:
        real = run.train.index_select(0, index.to(run.device, non_blocking=True)).float()
        real = augment_batch(real, config.augment, generator)
        if config.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        for name, value in _train_step(run, real, epoch).items():
            value = value.detach().float()
            sums[name] = sums[name] + value if name in sums else value
            counts[name] = counts.get(name, 0) + 1
        images += len(index)
        on_batch()
    return _epoch_means(sums, counts, ctx), images


def _loss_first(name: str) -> tuple[bool, str]:
    return (not name.endswith("loss"), name)


def _check_divergence(run: _Run, epoch: int, logs: dict[str, float]) -> None:
    """NaN/inf in any logged training value, or an exploded generator loss → TrainingDiverged."""
    where = f"epoch {epoch + 1}/{run.config.epochs} of {run.module.name} ({run.phase})"
    keep = (
        f"the last good checkpoint {run.last_path} is kept"
        if run.last_path.exists()
        else "no checkpoint was written"
    )
    bad = sorted((k for k, v in logs.items() if not math.isfinite(v)), key=_loss_first)
    if bad:
        shown = ", ".join(f"{k}={logs[k]}" for k in bad)
        raise TrainingDiverged(
            f"{where}: non-finite {shown}; {keep}. Lower fit.lr or set fit.precision: fp32 "
            "in params.yaml and re-run."
        )
    g_loss = logs.get("g_loss")
    if g_loss is None:
        return
    if run.first_g_loss is None:
        run.first_g_loss = g_loss
    elif run.first_g_loss > 0 and g_loss > run.config.divergence_factor * run.first_g_loss:
        raise TrainingDiverged(
            f"{where}: g_loss {g_loss:.4g} exceeds fit.divergence_factor "
            f"({run.config.divergence_factor}) x its first-epoch value {run.first_g_loss:.4g}; "
            f"{keep}. Lower fit.lr or set fit.precision: fp32 in params.yaml and re-run."
        )


# --------------------------------------------------------------------------- epoch outputs
def _validate(
    run: _Run, validate: Callable[[nn.Module], dict[str, float]] | None
) -> dict[str, float]:
    if validate is None or not run.ctx.is_main:
        return {}
    run.module.eval()
    try:
        results = {k: float(v) for k, v in validate(run.module).items()}
    finally:
        run.module.train()
    if run.config.select_metric not in results:
        raise ValueError(
            f"fit.select_metric: validate() returned {sorted(results)}, without "
            f"{run.config.select_metric!r}; return it or change fit.select_metric"
        )
    return results


def _update_best(run: _Run, epoch: int, entry: dict[str, float]) -> None:
    """Keep the best model by ``select_metric`` in ``checkpoint_dir/best.pt`` (rank 0)."""
    metric = run.config.select_metric
    value = entry.get(metric)
    if value is None or not math.isfinite(value) or not run.ctx.is_main:
        return
    if run.best is not None:
        previous = run.best["value"]
        better = value > previous if metric in HIGHER_IS_BETTER else value < previous
        if not better:
            return
    run.best = {"metric": metric, "value": value, "epoch": epoch + 1}
    save_checkpoint(run.best_copy, run.module, epoch=epoch + 1, extra=run.extra())


def _wants_samples(config: FitConfig, done: int) -> bool:
    return (
        done % config.sample_every == 0
        or done in config.extra_sample_epochs
        or done == config.epochs
    )


def save_sample_grid(module: nn.Module, batch: torch.Tensor, path: Path) -> None:
    """PNG grid: the inputs (top row) over ``module.reconstruct`` of them (bottom row)."""
    from torchvision.utils import save_image

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            recon = module.reconstruct(batch)
    finally:
        module.train(was_training)
    grid = torch.cat([batch.float(), recon.float()]).clamp(-1, 1).add(1).div(2).cpu()
    with atomic_path(path) as tmp:
        save_image(grid, tmp, nrow=len(batch), padding=2, format="png")


def _save_last(run: _Run, done: int) -> None:
    if run.ctx.is_main and (done % run.config.checkpoint_every == 0 or done == run.config.epochs):
        save_checkpoint(
            run.last_path, run.module, optimizers=run.optimizers, epoch=done, extra=run.extra()
        )


def _finish(run: _Run) -> None:
    """Write the final model and the best one (the final model if nothing was validated)."""
    if not run.ctx.is_main:
        return
    save_checkpoint(run.paths.final, run.module, epoch=run.config.epochs, extra=run.extra())
    source = run.best_copy if run.best is not None and run.best_copy.exists() else run.paths.final
    if run.best is None:
        log.info("no validation metric: the best model is the final one")
    with atomic_path(run.paths.best) as tmp:
        shutil.copyfile(source, tmp)


# ---------------------------------------------------------------------------------- logging
class _Reporter:
    """Rich progress bar and DVCLive, on the main process only.

    Args:
        run: the run being reported.
        start: completed epochs before this call (DVCLive step of the next epoch).
    """

    def __init__(self, run: _Run, start: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.enabled = run.ctx.is_main
        self.live = (
            _open_live(run.paths.live_dir, start) if self.enabled and run.paths.live_dir else None
        )
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            disable=not self.enabled,
            console=console(),
        )
        self.epochs = self.progress.add_task(
            f"{run.module.name} {run.phase}", total=run.config.epochs, completed=start
        )
        self.batches = self.progress.add_task("  batches", total=None)

    def __enter__(self) -> _Reporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
        if self.live is not None:
            self.live.end()

    def new_epoch(self, batches: int) -> None:
        self.progress.reset(self.batches, total=batches)

    def advance_batch(self) -> None:
        self.progress.advance(self.batches)

    def end_epoch(self, entry: dict[str, float]) -> None:
        self.progress.advance(self.epochs)
        if not self.enabled:
            return
        shown = " ".join(f"{k}={v:.4g}" for k, v in entry.items() if k != "epoch")
        log.info("epoch %d: %s", entry["epoch"], shown)
        if self.live is not None:
            for name, value in entry.items():
                if name != "epoch":
                    self.live.log_metric(name, value, plot=True)
            self.live.next_step()


def _truncate_live(live_dir: Path, start: int) -> None:
    """Drop DVCLive rows of steps >= ``start`` (epochs logged after the checkpoint, then killed)."""
    for tsv in sorted((Path(live_dir) / "plots" / "metrics").rglob("*.tsv")):
        lines = tsv.read_text(encoding="utf-8").splitlines()
        if not lines or "step" not in lines[0].split("\t"):
            continue
        column = lines[0].split("\t").index("step")
        rows = [ln for ln in lines[1:] if ln and int(ln.split("\t")[column]) < start]
        if len(rows) != len(lines) - 1:
            write_text(tsv, "\n".join([lines[0], *rows]) + "\n")


def _open_live(live_dir: Path, start: int) -> Any:
    """DVCLive continuing at step ``start`` (fresh when ``start == 0``)."""
    from dvclive import Live

    if start > 0:
        _truncate_live(live_dir, start)
    live = Live(str(live_dir), resume=start > 0, save_dvc_exp=False, dvcyaml=None)
    live.step = start
    return live


# ------------------------------------------------------------------------------------- fit
@contextlib.contextmanager
def _deterministic(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic algorithms for the duration of the fit (restored afterwards)."""
    if not enabled:
        yield
        return
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous[2]


def _epoch(
    run: _Run,
    epoch: int,
    reporter: _Reporter,
    validate: Callable | None,
    samples: torch.Tensor | None,
) -> None:
    """One epoch: train, check, sync buffers, validate, best, samples, checkpoint, log."""
    started = time.perf_counter()
    reporter.new_epoch(len(run.train) // run.ctx.world // run.config.batch_size)
    logs, images = _run_batches(run, epoch, reporter.advance_batch)
    train_seconds = time.perf_counter() - started
    _check_divergence(run, epoch, logs)
    if run.ctx.enabled:
        _sync_buffers(run.module, run.ctx.world)
    done = epoch + 1
    entry = {"epoch": done, **logs, **{k: float(v) for k, v in run.module.epoch_logs().items()}}
    entry["images_per_s"] = images * run.ctx.world / max(train_seconds, 1e-9)
    entry.update(_validate(run, validate))
    run.history.append(entry)
    _update_best(run, epoch, entry)
    if samples is not None and run.ctx.is_main and _wants_samples(run.config, done):
        save_sample_grid(run.module, samples, Path(run.paths.samples_dir) / f"epoch_{done:04d}.png")
    entry["epoch_seconds"] = time.perf_counter() - started
    _save_last(run, done)
    reporter.end_epoch(entry)


def _clear_old_samples(samples_dir: Path) -> None:
    """A fresh (not resumed) run starts with no sample grids of an earlier run (the folder is a
    DVC ``persist`` output so that a resumed run keeps its own earlier grids)."""
    for old in samples_dir.glob("epoch_*.png"):
        old.unlink()


def fit(
    module: nn.Module,
    train: torch.Tensor,
    config: FitConfig,
    paths: FitPaths,
    *,
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    sample_batch: torch.Tensor | None = None,
    phase: str = "main",
    device: torch.device | None = None,
) -> FitResult:
    """Train ``module`` (a :class:`~brainad.models.protocol.GANModule`) on ``train``.

    Args:
        module: the model; its current ``networks()`` are optimised (one Adam each).
        train: the whole healthy training set, float (N, C, H, W) in [-1, 1], in memory.
        config: the fit settings of this model/phase.
        paths: output locations; ``paths.checkpoint_dir`` must be specific to this phase.
        validate: ``validate(module) -> {"val_recon": ..., "val_auroc": ...}`` run every epoch
            on the main process (module in eval mode).
        sample_batch: a few images whose reconstructions are saved as PNG grids.
        phase: training phase name (e.g. DCGAN ``gan``/``encoder``); part of the fingerprint.
        device: defaults to :func:`brainad.utils.select_device`.

    Under ``torchrun`` each process trains on its shard of every epoch's batches with averaged
    gradients; only rank 0 writes files and logs. Rank 0's global RNG stream is checkpointed;
    the other ranks re-seed theirs each epoch from ``(seed, epoch, rank)``.

    Raises:
        TrainingDiverged: a loss became NaN/inf or exceeded ``divergence_factor`` x its first value.
        ValueError: bad inputs (shape, too few images, missing ``select_metric``).
    """
    ctx = distributed_context()
    _check_inputs(module, train, config, ctx.world)
    device = torch.device(device) if device is not None else select_device()
    with _deterministic(config.deterministic, device):
        run = _new_run(module, train, config, paths, phase, device, ctx)
        start = _start(run)
        if ctx.is_main:
            log.info(
                "training %s (%s) on %s in %s, %d process(es), epochs %d..%d",
                module.name, phase, device, run.precision.name, ctx.world, start + 1, config.epochs,
            )  # fmt: skip
        if start == 0 and ctx.is_main:
            _clear_old_samples(Path(paths.samples_dir))
        samples = sample_batch.to(device) if sample_batch is not None else None
        with _Reporter(run, start) as reporter:
            for epoch in range(start, config.epochs):
                _epoch(run, epoch, reporter, validate, samples)
        _finish(run)
    return FitResult(Path(paths.final), Path(paths.best), run.history, start if start else None)
