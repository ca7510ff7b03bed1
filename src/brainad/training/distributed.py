"""Multi-process data parallelism under ``torchrun``: this process' place in the job and the
collectives the training loop uses (flattened all-reduce of gradients and buffers, broadcast of
the initial state)."""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

log = logging.getLogger("brainad")


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
