"""One epoch of MSMAE pre-training (MAE reconstruction + λ · supervised cross-entropy)."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from util.distributed import all_reduce_mean, is_main_process
from util.lr_sched import WarmupCosineSchedule

from maskkit import AMTMasker, RandomMasker, SAMMasker

__all__ = ["train_one_epoch"]


def train_one_epoch(
    model: nn.Module,
    data_loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    loss_scaler: torch.amp.GradScaler,
    *,
    masker: RandomMasker | SAMMasker | AMTMasker,
    use_weights: bool,
    num_patches: int,
    lr_schedule: WarmupCosineSchedule,
    amp_dtype: torch.dtype | None = None,
    clip_grad: float | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train ``model`` (an :class:`~models_msmae.MSMAE`, maybe DDP-wrapped) for one epoch.

    The learning rate is set every iteration (warm-up + cosine over fractional epochs).
    A non-finite loss stops the run with exit status 1, as in MAE.

    Args:
        model: MSMAE model; ``model(images, targets, split)`` gives a ``PretrainOutput``.
        data_loader: batches ``(images, targets, weights, indices)``; ``weights`` (B, gh, gw)
            are the bank's maps aligned to each crop.
        optimizer: the optimizer, its groups possibly carrying ``lr_scale``.
        device: where to train.
        epoch: the epoch index (from 0).
        loss_scaler: ``torch.amp.GradScaler``, enabled for float16 autocast only.
        masker: draws each batch's split.
        use_weights: pass the batch's weights to ``masker`` (False: uniform random masking).
        num_patches: L, patches per image.
        lr_schedule: the per-iteration schedule.
        amp_dtype: autocast dtype on CUDA, or None for full precision.
        clip_grad: max gradient norm, or None.
        progress: show a tqdm bar (on rank 0).

    Returns:
        Epoch means over all ranks: ``loss``, ``recon_loss``, ``cls_loss``, ``cls_acc`` and
        the last ``lr``.
    """
    model.train()
    totals = {"loss": 0.0, "recon_loss": 0.0, "cls_loss": 0.0, "cls_acc": 0.0}
    steps = len(data_loader)  # type: ignore[arg-type]
    lr = 0.0
    bar = tqdm(data_loader, desc=f"pretrain {epoch}", disable=not (progress and is_main_process()))
    for step, (images, targets, weights, _) in enumerate(bar):
        lr = lr_schedule.apply(optimizer, epoch + step / steps)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        split = masker(
            images.shape[0],
            num_patches,
            weights.to(device, non_blocking=True) if use_weights else None,
            device=device,
        )
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(images, targets, split)
        loss_value = out.loss.item()
        if not math.isfinite(loss_value):
            sys.exit(f"loss is {loss_value} at epoch {epoch}, step {step}; stopping training")
        optimizer.zero_grad(set_to_none=True)
        loss_scaler.scale(out.loss).backward()
        if clip_grad is not None:
            loss_scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        loss_scaler.step(optimizer)
        loss_scaler.update()

        totals["loss"] += loss_value
        totals["recon_loss"] += out.recon_loss.item()
        totals["cls_loss"] += out.cls_loss.item()
        totals["cls_acc"] += (out.logits.argmax(-1) == targets).float().mean().item()
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
    stats = all_reduce_mean({name: total / max(steps, 1) for name, total in totals.items()})
    return {**stats, "lr": lr}
