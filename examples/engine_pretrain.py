"""One epoch of MSMAE pre-training (MAE reconstruction + λ · supervised cross-entropy)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from msmae_util.runtime import all_reduce_mean, optimizer_step
from timm.scheduler.scheduler import Scheduler
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from maskkit import AMTMasker, MaskWeightBank, RandomMasker, SAMMasker, align_weights

__all__ = ["train_one_epoch"]


def train_one_epoch(
    model: nn.Module,
    data_loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    loss_scaler: torch.amp.GradScaler,
    lr_scheduler: Scheduler,
    *,
    masker: RandomMasker | SAMMasker | AMTMasker,
    bank: MaskWeightBank | None = None,
    amp_dtype: torch.dtype | None = None,
    clip_grad: float | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train a :class:`maskkit.mae.MaskedAutoencoder` (maybe DDP-wrapped) for one epoch.

    The learning rate is set every iteration (``lr_scheduler.step_update``). Each batch's
    split is drawn by ``masker``, from the ``bank``'s maps aligned on the device with each
    view's crop and flip, or uniformly without a bank. A non-finite loss stops the run
    with exit status 1, as in MAE.

    Args:
        model: ``model(images, targets, split)`` gives a ``PretrainOutput``.
        data_loader: batches ``(images, targets, crops, indices)`` of a
            :class:`maskkit.CropDataset`: crops are collated :class:`maskkit.CropParams`,
            indices the dataset indices of the bank's maps.
        optimizer: the optimizer.
        device: where to train.
        epoch: the epoch index (from 0).
        loss_scaler: ``torch.amp.GradScaler``, enabled for float16 autocast only.
        lr_scheduler: a timm scheduler stepped per iteration.
        masker: draws each batch's split.
        bank: the whole-image maps to mask by, or None for uniform weights.
        amp_dtype: autocast dtype on CUDA, or None for full precision.
        clip_grad: max gradient norm, or None.
        progress: show a tqdm bar.

    Returns:
        Epoch means over all ranks: ``loss``, ``recon_loss``, ``cls_loss``, ``cls_acc``, and
        the last ``lr``.
    """
    model.train()
    grid = (model.module if isinstance(model, DistributedDataParallel) else model).grid
    totals = dict.fromkeys(("loss", "recon_loss", "cls_loss", "cls_acc"), 0.0)
    steps = len(data_loader)  # type: ignore[arg-type]
    bar = tqdm(data_loader, desc=f"pretrain {epoch}", disable=not progress)
    for step, (images, targets, crops, indices) in enumerate(bar):
        lr_scheduler.step_update(epoch * steps + step)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        weights = None
        if bank is not None:  # the bank holds whole-image maps: move them with each crop
            weights = align_weights(bank[indices].to(device), crops, out_grid=grid)
        split = masker(images.shape[0], grid[0] * grid[1], weights, device=device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(images, targets, split)
        where = f"epoch {epoch}, step {step}"
        loss_value = optimizer_step(out.loss, optimizer, loss_scaler, model, clip_grad, where=where)

        totals["loss"] += loss_value
        totals["recon_loss"] += out.recon_loss.item()
        totals["cls_loss"] += out.cls_loss.item()
        totals["cls_acc"] += (out.logits.argmax(-1) == targets).float().mean().item()
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    stats = all_reduce_mean({name: total / max(steps, 1) for name, total in totals.items()})
    return {**stats, "lr": max(group["lr"] for group in optimizer.param_groups)}
