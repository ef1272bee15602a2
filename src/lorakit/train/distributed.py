"""Data-parallel setup on torch.distributed: torchrun sets the environment, this joins the group and wraps the model.

A plain `python -m lorakit train` is the one-process case of the same code: world size 1, no process group.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and shows progress."""
        return self.rank == 0


def setup(device_name: str) -> Dist:
    """Join the torchrun job if there is one (gloo on CPU, nccl on CUDA) and pick this process's device."""
    from lorakit.models import resolve_device

    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(rank=0, world=1, device=device)
    if device.type == "cuda":
        # One GPU per process: torchrun's LOCAL_RANK picks it, whatever index the config named.
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def wrap(model: nn.Module, where: Dist) -> nn.Module:
    """The module to call in training: DistributedDataParallel over `model` when there are several processes."""
    if where.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [where.device.index] if where.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def no_sync(module: nn.Module, last: bool) -> AbstractContextManager:
    """Skip DDP's gradient all-reduce on every accumulation micro-batch but the last, which reduces the sum."""
    if last or not hasattr(module, "no_sync"):
        return nullcontext()
    return module.no_sync()


def sum_all(values: torch.Tensor, where: Dist) -> torch.Tensor:
    """The element-wise sum of `values` over all processes (itself with one process)."""
    if where.world > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(where: Dist) -> None:
    """Wait until every process gets here (e.g. until rank 0 has written a checkpoint the others will read)."""
    if where.world > 1:
        dist.barrier()


def teardown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()
