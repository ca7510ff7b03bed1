"""What training reports: the rich progress bar and per-epoch log lines, DVCLive files that
resume cleanly, and sample grids."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainad.utils import atomic_path, console, write_text

log = logging.getLogger("brainad")


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


class _Reporter:
    """Rich progress bar and DVCLive, on the main process only.

    Args:
        run: the run being reported.
        start: completed epochs before this call (DVCLive step of the next epoch).
    """

    def __init__(self, run: Any, start: int) -> None:
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
