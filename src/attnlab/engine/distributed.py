"""Distributed data-parallel training through torchrun (PyTorch DistributedDataParallel).

Under ``torchrun --nproc_per_node N -m attnlab train ...`` every process reads ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment, joins a process group (``nccl`` on
CUDA, ``gloo`` on CPU), trains on its shard of every global batch, and DDP averages the
gradients. Only rank 0 writes files and prints. Without those variables everything here is a
no-op and training runs in one process.

BatchNorm: on CUDA the model's BatchNorm layers become ``SyncBatchNorm``, so the statistics
are those of the global batch, as in one process. PyTorch's SyncBatchNorm has no CPU kernel:
on CPU each process normalises with the statistics of its own shard (the usual DDP behaviour),
so a BN network trained on 2 CPU processes is close to, not equal to, the 1-process run.

Example:
    >>> from attnlab.engine.distributed import setup
    >>> info = setup("cpu")  # no torchrun variables: a single process
    >>> info.rank, info.world_size, info.is_main
    (0, 1, True)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Sampler


@dataclass
class DistInfo:
    """Where this process stands: rank, world size, device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this process group was created by setup() (teardown ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA (this process's GPU) if available, else MPS, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if name == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def setup(device: str = "auto") -> DistInfo:
    """Joins the torchrun process group if the environment says so.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; under torchrun, ``cuda``
            and ``auto`` mean GPU ``LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(device=resolved)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, resolved, owns)


def teardown(info: DistInfo) -> None:
    """Leaves the process group if ``setup`` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP around ``model`` (already on ``info.device``), SyncBatchNorm on CUDA."""
    if not info.distributed:
        return model
    if info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index])
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP (state-dict keys without ``module.``)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def train_sampler(dataset: Dataset, info: DistInfo, seed: int) -> DistributedSampler:
    """Shuffled shards, a pure function of (seed, epoch): call ``set_epoch`` every epoch.

    Used in one process too, so the order of samples does not depend on the world size: with
    the same global batch, rank r of N sees items r, r+N, … of each 1-process batch.
    """
    return DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed
    )


class ShardSampler(Sampler[int]):
    """Items rank, rank + N, … in order, without padding (exact evaluation when reduced)."""

    def __init__(self, dataset: Dataset, info: DistInfo) -> None:
        self.indices = range(info.rank, len(dataset), info.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over processes (in place; returns ``values``)."""
    if info.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(value: object, info: DistInfo) -> object:
    """Rank 0's ``value`` on every rank."""
    if not info.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
