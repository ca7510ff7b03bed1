"""The GPU check's data-parallel part: :func:`brainad.training.loop.fit` under ``torchrun``, over
NCCL on CUDA (one process per visible GPU) and over gloo on CPU, the code path the train stages
take (:mod:`brainad.training.distributed`: the process group, flattened all-reduce of gradients
and buffers, broadcast of the initial state).

    python -m benchmarks.gpu_ddp OUT --work DIR --device cuda --precisions bf16 fp16  # one rank

:func:`run_ddp` launches it and compares the ranks: after training, every rank must hold the same
weights (sha of the state dict), trained on its own device in the requested precision, in a
process group of the expected backend and size. With one process (one GPU) ``fit`` runs without a
process group, so each rank also runs the collectives once in a world of 1 over the backend
(``collectives``): NCCL itself and the library's collectives on CUDA tensors are then still
exercised, though not their averaging across GPUs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from benchmarks.gpu_micro import (
    BATCH,
    IMAGE_SIZE,
    finite,
    fit_settings,
    micro_config,
    phantom_split,
)
from benchmarks.gpu_setup import child_env, run_logged
from brainad.models import registry
from brainad.training.batches import to_tensor
from brainad.training.distributed import _allreduce_grads, _broadcast_state, _sync_buffers
from brainad.training.fingerprint import state_checksum
from brainad.training.loop import FitPaths, fit
from brainad.utils import select_device, setup_logging, write_json

log = logging.getLogger("brainad")

MODEL = "vqgan"  # default: EMA codebook buffers (averaged at epoch ends) and a discriminator
EPOCHS = 2  # buffers are synchronised at the end of each epoch


def backend_for(device_type: str) -> str:
    """What :func:`brainad.training.distributed.distributed_context` picks (NCCL iff CUDA)."""
    return "nccl" if device_type == "cuda" else "gloo"


def _train(name: str, precision: str, device: torch.device, world: int, out: Path) -> dict:
    """:func:`fit` of model ``name`` at the micro size, each phase :data:`EPOCHS` epochs of 3
    steps on every rank (no validation: it runs on rank 0 alone and may change its copy)."""
    config = micro_config()
    torch.manual_seed(0)  # the same start on every rank (fit broadcasts rank 0's anyway)
    module = registry.new_model(name, config, IMAGE_SIZE)
    train = to_tensor(phantom_split(BATCH * world * 4, seed=11), torch.device("cpu"), True)
    started = time.perf_counter()
    for phase in registry.entry(name).phases:
        if hasattr(module, "set_phase"):
            module.set_phase(phase)
        root = out / precision / phase
        paths = FitPaths(root / "ckpt", root / "final.pt", root / "best.pt", root / "samples", None)
        settings = fit_settings(config, name, phase, precision, epochs=EPOCHS)
        result = fit(module, train, settings, paths, phase=phase, device=device)
    last = result.history[-1]
    return {
        "seconds": time.perf_counter() - started,
        "weights": state_checksum(module),
        "devices": sorted({p.device.type for p in module.parameters()}),
        "losses_finite": all(finite(v) for k, v in last.items() if k.endswith("loss")),
        "g_loss": last.get("g_loss"),
        "module": module,
    }


def _collectives(module: nn.Module, device: torch.device) -> dict:
    """The library's collectives once in a world of 1 (``torchrun`` set ``MASTER_ADDR``/``PORT``):
    broadcast and average must leave every tensor as it was."""
    backend = backend_for(device.type)
    dist.init_process_group(backend=backend, rank=0, world_size=1)
    try:
        state = {k: v.clone() for k, v in module.state_dict().items()}
        _broadcast_state(module)
        params = [p for p in module.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p)
        grads = [p.grad.clone() for p in params]
        _allreduce_grads(params, 1)
        _sync_buffers(module, 1)
        same_state = all(torch.equal(state[k], v) for k, v in module.state_dict().items())
        same_grads = all(torch.equal(a, p.grad) for a, p in zip(grads, params))
        return {"backend": dist.get_backend(), "world": 1, "ok": same_state and same_grads}
    finally:
        dist.destroy_process_group()


def worker(argv: Sequence[str] | None = None) -> int:
    """One rank: train in each precision (checkpoints under ``--work``), write
    ``OUT/rank<R>.json``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_ddp")
    parser.add_argument("out", type=Path)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp16"])
    parser.add_argument("--model", choices=registry.MODEL_NAMES, default=MODEL)
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(1)
    device = select_device() if args.device == "cuda" else torch.device("cpu")  # cuda:LOCAL_RANK
    world = int(os.environ.get("WORLD_SIZE", "1"))
    runs = {p: _train(args.model, p, device, world, args.work) for p in args.precisions}
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    report = {
        "rank": rank,
        "world": dist.get_world_size() if dist.is_initialized() else 1,
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "device": str(device),
        "model": args.model,
        "runs": {p: {k: v for k, v in r.items() if k != "module"} for p, r in runs.items()},
    }
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    else:
        report["collectives"] = _collectives(runs[args.precisions[-1]]["module"], device)
    write_json(args.out / f"rank{rank}.json", report)
    return 0


def compare_ranks(reports: list[dict], device_type: str, nproc: int) -> list[str]:
    """What is wrong across the ranks' reports (empty: nothing)."""
    wrong = []
    if len(reports) != nproc:
        wrong.append(f"{len(reports)} rank report(s) for {nproc} process(es)")
    for report in reports:
        where = f"rank {report['rank']}"
        if report["world"] != nproc:
            wrong.append(f"{where}: world {report['world']}, expected {nproc}")
        backend = report["backend"] or report.get("collectives", {}).get("backend")
        if backend != backend_for(device_type):
            wrong.append(f"{where}: backend {backend}, expected {backend_for(device_type)}")
        if "collectives" in report and not report["collectives"]["ok"]:
            wrong.append(f"{where}: world-1 collectives changed the tensors")
        for precision, run in report["runs"].items():
            if run["devices"] != [device_type]:
                wrong.append(f"{where} {precision}: parameters on {run['devices']}")
            if not run["losses_finite"]:
                wrong.append(f"{where} {precision}: non-finite losses")
    for precision in reports[0]["runs"] if reports else []:
        weights = {r["runs"][precision]["weights"] for r in reports}
        if len(weights) != 1:
            wrong.append(f"{precision}: the ranks' weights differ after training ({len(weights)})")
    return wrong


def run_ddp(
    out: Path,
    work: Path,
    device_type: str,
    nproc: int,
    precisions: Sequence[str],
    model: str = MODEL,
    timeout: float = 240,
) -> dict:
    """``torchrun --standalone --nproc_per_node NPROC -m benchmarks.gpu_ddp``: reports and log
    (``ddp.log``) into ``out``, checkpoints into ``work``; the ranks' reports and what is wrong
    with them."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rank*.json"):
        old.unlink()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "benchmarks.gpu_ddp",
        str(out),
        "--work",
        str(work),
        "--device",
        device_type,
        "--model",
        model,
        "--precisions",
        *precisions,
    ]
    env = child_env(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if device_type == "cpu":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    result = run_logged(command, out / "ddp.log", timeout, env)
    result.update(nproc=nproc, expected_backend=backend_for(device_type))
    if result["exit_code"] != 0:
        return result
    reports = sorted(
        (json.loads(p.read_text()) for p in out.glob("rank*.json")), key=lambda r: r["rank"]
    )
    return {**result, "ranks": reports, "failures": compare_ranks(reports, device_type, nproc)}


if __name__ == "__main__":
    sys.exit(worker())
