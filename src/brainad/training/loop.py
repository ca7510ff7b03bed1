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
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from brainad.config import FitConfig, to_dict
from brainad.models.protocol import StepOutput
from brainad.runtime import describe, deterministic_kernels
from brainad.training.batches import augment_batch, batch_indices
from brainad.training.distributed import (
    DistContext,
    _allreduce_grads,
    _sync_buffers,
    distributed_context,
)
from brainad.training.fingerprint import derived_seed, fit_fingerprint, state_checksum
from brainad.training.precision import Precision, choose_precision
from brainad.training.reporting import _Reporter, save_sample_grid
from brainad.training.resume import (
    BEST_COPY,
    LAST,
    _finish,
    _save_last,
    _start,
    _update_best,
    _validate,
    _wants_samples,
)
from brainad.utils import select_device

log = logging.getLogger("brainad")


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
            "runtime": describe(self.config.deterministic),
            "weights": state_checksum(self.module),  # compare across machines without the file
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


def step_runner(
    module: nn.Module, batch: torch.Tensor, config: FitConfig, device: torch.device
) -> Callable[[], dict[str, torch.Tensor]]:
    """THE training step of :func:`fit` — same preparation, optimisers, precision, step order and
    gradient scaler — as a callable on one fixed ``batch``, for the benchmark to time without the
    epoch loop (batch indexing and augmentation are not part of it)."""
    ctx = DistContext(rank=0, world=1, local_rank=0, enabled=False)
    nowhere = Path(os.devnull)
    paths = FitPaths(nowhere, nowhere, nowhere, nowhere, None)
    run = _new_run(module, batch, config, paths, "benchmark", device, ctx)
    real = run.train.float()
    if config.channels_last:
        real = real.contiguous(memory_format=torch.channels_last)
    return lambda: _train_step(run, real, 0)


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


# ------------------------------------------------------------------------------------- fit
@contextlib.contextmanager
def _deterministic(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic algorithms and, on CPU, pinned kernels (:mod:`brainad.runtime`) for the
    duration of the fit (restored afterwards)."""
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
        with deterministic_kernels(device.type == "cpu"):
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
