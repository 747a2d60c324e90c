"""Distributed data parallel set-up for torchrun (NCCL on GPU, gloo on CPU); rank 0 writes."""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "all_gather_objects",
    "all_reduce_mean",
    "all_reduce_sum",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "print0",
]


class DistributedContext:
    """Where this process runs: its rank, the world size and its device.

    Attributes:
        rank: global rank (0 without torchrun).
        world_size: number of processes (1 without torchrun).
        local_rank: rank on this node, which picks the CUDA device.
        device: the device this process trains on.
        distributed: whether a process group was initialised here.
    """

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.device = device
        self.distributed = world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only process that writes files."""
        return self.rank == 0

    def close(self) -> None:
        """Tear the process group down, so that ``main`` can run again in the same process."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str, *, timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Without those variables this is a single process. NCCL is used for CUDA, gloo for CPU.

    Args:
        device: ``"cuda"`` or ``"cpu"``.
        timeout_s: how long collectives wait for a missing rank before failing.

    Raises:
        ValueError: ``device="cuda"`` without a CUDA device.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but no CUDA device is visible; use --device cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device(device)
    if world_size > 1:
        dist.init_process_group(
            backend="nccl" if torch_device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistributedContext(rank, world_size, local_rank, torch_device)


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank, 0 when not distributed."""
    return dist.get_rank() if _initialised() else 0


def get_world_size() -> int:
    """The number of processes, 1 when not distributed."""
    return dist.get_world_size() if _initialised() else 1


def is_main_process() -> bool:
    """True on rank 0."""
    return get_rank() == 0


def print0(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only."""
    if is_main_process():
        print(*args, **kwargs, flush=True)


def _reduce_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all ranks (a copy; the input unchanged when not distributed)."""
    if get_world_size() == 1:
        return tensor.clone()
    total = tensor.detach().to(_reduce_device(), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Mean of each value over all ranks, in one collective."""
    if get_world_size() == 1 or not values:
        return dict(values)
    stacked = torch.tensor(list(values.values()), dtype=torch.float64)
    mean = all_reduce_sum(stacked) / get_world_size()
    return dict(zip(values, mean.tolist(), strict=True))


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` when not distributed."""
    if get_world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
