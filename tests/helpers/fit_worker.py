"""Run :func:`brainad.training.loop.fit` on the toy GAN in a subprocess (kill/resume and DDP tests).

Usage: ``python tests/helpers/fit_worker.py OUT_DIR --epochs 6 --checkpoint-every 2 --sleep 0.1``
(also under ``torchrun``). Writes ``OUT_DIR/state_rank<R>.pt`` (the final state_dict of rank R)
and, on rank 0, ``OUT_DIR/result.json`` with ``resumed_from`` and the history's epochs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from toy_gan import ToyGAN, toy_config, toy_data  # noqa: E402

from brainad.training.loop import FitPaths, fit  # noqa: E402
from brainad.utils import write_json  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--checkpoint-every", type=int, default=2)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = ToyGAN(sleep=args.sleep)
    out: Path = args.out
    paths = FitPaths(out / "ckpt", out / "final.pt", out / "best.pt", out / "samples", out / "live")
    config = toy_config(epochs=args.epochs, checkpoint_every=args.checkpoint_every)
    data = toy_data()
    result = fit(module, data, config, paths, sample_batch=data[:4], device=torch.device("cpu"))
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save(module.state_dict(), out / f"state_rank{rank}.pt")
    if rank == 0:
        epochs = [entry["epoch"] for entry in result.history]
        write_json(out / "result.json", {"resumed_from": result.resumed_from, "epochs": epochs})
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
