"""Resumable checkpoints of a :func:`brainad.training.loop.fit` run: resume from a matching
``last.pt`` (a stale one is renamed, never deleted), keep the best model by the validation
criterion, write the final model. ``run`` is the loop's run state (``brainad.training.loop._Run``).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from brainad.config import FitConfig
from brainad.models.checkpoint import CheckpointError, load_checkpoint, restore_rng, save_checkpoint
from brainad.training.distributed import _broadcast_state
from brainad.training.fingerprint import derived_seed
from brainad.utils import atomic_path

log = logging.getLogger("brainad")

LAST = "last.pt"
BEST_COPY = "best.pt"
HIGHER_IS_BETTER = frozenset({"val_auroc"})


# ------------------------------------------------------------------------------ resume logic
def _stale_name(path: Path, epoch: int | str) -> Path:
    stem, suffix = path.name.rsplit(".", 1)
    candidate = path.with_name(f"{stem}.stale-{epoch}.{suffix}")
    count = 1
    while candidate.exists():
        candidate = path.with_name(f"{stem}.stale-{epoch}.{count}.{suffix}")
        count += 1
    return candidate


def _read_resumable(run: Any) -> dict | None:
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


def _restore(run: Any, payload: dict) -> int:
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


def _start(run: Any) -> int:
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


# --------------------------------------------------------------------------- epoch outputs
def _validate(
    run: Any, validate: Callable[[nn.Module], dict[str, float]] | None
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


def _update_best(run: Any, epoch: int, entry: dict[str, float]) -> None:
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


def _save_last(run: Any, done: int) -> None:
    if run.ctx.is_main and (done % run.config.checkpoint_every == 0 or done == run.config.epochs):
        save_checkpoint(
            run.last_path, run.module, optimizers=run.optimizers, epoch=done, extra=run.extra()
        )


def _finish(run: Any) -> None:
    """Write the final model and the best one (the final model if nothing was validated)."""
    if not run.ctx.is_main:
        return
    save_checkpoint(run.paths.final, run.module, epoch=run.config.epochs, extra=run.extra())
    source = run.best_copy if run.best is not None and run.best_copy.exists() else run.paths.final
    if run.best is None:
        log.info("no validation metric: the best model is the final one")
    with atomic_path(run.paths.best) as tmp:
        shutil.copyfile(source, tmp)
