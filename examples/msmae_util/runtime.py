"""How a recipe runs: torchrun processes (NCCL on GPU, gloo on CPU) and their collectives,
mixed precision, and MAE's learning-rate schedule on timm's scheduler."""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from timm.scheduler import CosineLRScheduler


class UsageError(ValueError):
    """Options (or files they name) that cannot work, found before training starts: the
    entry point (``msmae_util.runs.run_main``) prints the message as one ``error:`` line
    and exits with status 2, as argparse does, without a traceback."""


class DistributedContext(NamedTuple):
    """This process's rank, the number of processes, the device it trains on, and whether
    this run started the process group (else its caller did, e.g. the ablation runner)."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = True

    @property
    def is_main(self) -> bool:
        """Rank 0, the only process that writes files."""
        return self.rank == 0

    def close(self) -> None:
        """Leave the process group this run started, so that ``main`` can run again here."""
        if self.owns_group and self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str, *, timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    which picks the GPU), if any; a group the caller initialised already is used as is."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was given but no CUDA device is visible; use --device cpu")
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        torch_device = torch.device(device)
    except RuntimeError as err:  # torch lists the device types it knows
        raise UsageError(f"--device {device}: {err}") from None
    if torch_device.type == "cuda":
        torch_device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(torch_device)
    if world_size > 1 and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), torch_device, False)
    if world_size > 1:
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(rank, world_size, torch_device)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a file the others read)."""
    if world_size() > 1:
        dist.barrier()


def print0(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only."""
    if world_size() == 1 or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all ranks, as a copy on ``tensor``'s device."""
    if world_size() == 1:
        return tensor.clone()
    # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
    total = tensor.detach().to("cuda" if dist.get_backend() == "nccl" else "cpu", copy=True)
    dist.all_reduce(total)
    return total.to(tensor.device)


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Mean of each value over all ranks, in one collective."""
    total = all_reduce_sum(torch.tensor(list(values.values()), dtype=torch.float64))
    return dict(zip(values, (total / world_size()).tolist(), strict=True))


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order."""
    gathered: list[Any] = [value] * world_size()
    if world_size() > 1:
        dist.all_gather_object(gathered, value)
    return gathered


def amp_settings(amp: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler]:
    """The autocast dtype (None: full precision) and gradient scaler for ``--amp``: ``auto``
    is bfloat16 where the GPU supports it, else float16; a CPU runs in float32."""
    if device.type != "cuda" and amp in ("bf16", "fp16"):
        raise UsageError(f"--amp {amp} needs a CUDA device; CPU runs use --amp none (or auto)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}.get(amp)
    if device.type != "cuda":
        dtype = None
    elif amp == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # Only float16 needs loss scaling; bfloat16 has float32's range.
    return dtype, torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def resolve_schedule(args: argparse.Namespace, world_size: int) -> None:
    """Set ``--lr`` where not given by MAE's linear scaling rule, ``--blr`` * effective
    batch (``--batch_size`` * ``world_size``) / 256, and refuse a schedule that cannot run
    as :func:`cosine_scheduler` describes: a warm-up longer than the run, or a cosine floor
    (``--min_lr``) above its peak (the lr would rise instead of decay)."""
    if args.warmup_epochs > args.epochs:
        raise UsageError(
            f"--warmup_epochs {args.warmup_epochs} exceeds --epochs {args.epochs}: the lr "
            "would never reach its peak; lower --warmup_epochs to --epochs or fewer"
        )
    if args.lr is None:
        batch = args.batch_size * world_size
        args.lr = args.blr * batch / 256
        peak = f"the lr {args.lr:g} (--blr {args.blr:g} * effective batch {batch} / 256)"
    else:
        peak = f"--lr {args.lr:g}"
    if args.min_lr > args.lr:
        raise UsageError(
            f"--min_lr {args.min_lr:g} is above the peak lr, {peak}: the cosine would rise "
            "instead of decay; lower --min_lr or raise the lr"
        )


def cosine_scheduler(
    optimizer: torch.optim.Optimizer, args: argparse.Namespace, steps_per_epoch: int
) -> CosineLRScheduler:
    """MAE's per-iteration lr: linear warm-up from 0 over ``--warmup_epochs``, then a half
    cycle of cosine to ``--min_lr`` at ``--epochs``, times each group's ``lr_scale`` (layer
    decay). Call ``step_update(epoch * steps_per_epoch + step)`` before every step."""
    warmup = args.warmup_epochs * steps_per_epoch
    return CosineLRScheduler(
        optimizer,
        t_initial=max(args.epochs * steps_per_epoch - warmup, 1),
        lr_min=args.min_lr,
        warmup_t=warmup,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    model: torch.nn.Module,
    clip_grad: float | None,
    *,
    where: str,
) -> float:
    """MAE's step: stop on a non-finite loss (exit status 1), else scaled backward, optional
    gradient clipping and the optimizer step. Returns the loss as a float."""
    value = loss.item()
    if not math.isfinite(value):
        sys.exit(f"loss is {value} at {where}; stopping training")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    return value
