"""Processes started by ``torchrun``: who am I, how many of us, which device is mine.

One process (no ``WORLD_SIZE`` above 1 in the environment) is the common case and needs nothing set up.
Under ``torchrun`` the process group is initialised from its environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL when the processes run on CUDA, gloo otherwise.
Training, probe evaluation and dataset extraction all use this one helper.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Dist", "cuda_index", "init_distributed", "process_device", "shard"]


@dataclass(frozen=True)
class Dist:
    """This process's place among the ``world`` processes of a run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes shared outputs (reports, checkpoints) and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world > 1

    def gather(self, obj):
        """Every process's ``obj`` (picklable), in rank order; ``[obj]`` for a single process."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        parts: list = [None] * self.world
        dist.all_gather_object(parts, obj)
        return parts

    def max(self, value: int, device: torch.device | str = "cpu") -> int:
        """The largest of every process's integer ``value``; ``value`` for a single process. ``device``
        holds the exchanged tensor: the process's own GPU under NCCL, the CPU under gloo."""
        if not self.active:
            return value
        import torch.distributed as dist

        flag = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def sum(self, tensor: Tensor) -> Tensor:
        """Every process's ``tensor`` summed element-wise (a new tensor, on ``tensor``'s device; the input is
        not changed); ``tensor`` itself for a single process."""
        if not self.active:
            return tensor
        import torch.distributed as dist

        total = tensor.clone()
        dist.all_reduce(total)
        return total

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def init_distributed(device_hint: str | None = None) -> Dist:
    """The process group of a ``torchrun`` launch (initialised once), or a single-process :class:`Dist`.

    ``device_hint`` is the device the caller was asked to use: CUDA (or None with CUDA present) picks
    NCCL, anything else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and (device_hint is None or str(device_hint).startswith("cuda"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:  # NCCL's collectives run on the current device: make it this process's own GPU
        torch.cuda.set_device(cuda_index(local_rank))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


def cuda_index(local_rank: int) -> int:
    """The CUDA device of the process with ``local_rank``: ``LOCAL_RANK`` modulo the devices this process
    sees. Under torchrun every process sees every GPU of its node (index = local rank); a launcher that
    gives each process one visible GPU (``CUDA_VISIBLE_DEVICES`` per task) leaves it index 0."""
    count = torch.cuda.device_count()
    return local_rank % count if count else local_rank


def process_device(requested: str | torch.device | None, d: Dist) -> torch.device:
    """The device this process computes on: ``requested`` (default: CUDA when available, else the CPU);
    under torchrun a CUDA request means this process's own GPU (:func:`cuda_index`)."""
    if requested is None:
        return torch.device("cuda", cuda_index(d.local_rank)) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and d.world > 1:
        return torch.device("cuda", cuda_index(d.local_rank))
    return device


def shard(n: int, d: Dist) -> range:
    """This process's contiguous share of ``n`` items (shares differ in size by at most one; the first
    process gets the first items, so a single process's share is everything)."""
    return range(d.rank * n // d.world, (d.rank + 1) * n // d.world)
