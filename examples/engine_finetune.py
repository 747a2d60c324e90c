"""One epoch of MSMAE fine-tuning (SAM or random masking keeps a quarter of the tokens), with
an optional cls-token loss and weight EMA, and the evaluation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from msmae_util.runtime import all_reduce_mean, all_reduce_sum, optimizer_step
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from maskkit import MaskWeightBank, SAMMasker, align_weights

__all__ = ["classification_report", "evaluate", "train_one_epoch"]


def train_one_epoch(
    model: nn.Module,
    data_loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    loss_scaler: torch.amp.GradScaler,
    lr_scheduler: Scheduler,
    *,
    masker: SAMMasker | None = None,
    bank: MaskWeightBank | None = None,
    label_smoothing: float = 0.0,
    cls_loss_weight: float = 0.0,
    ema: ModelEmaV3 | None = None,
    amp_dtype: torch.dtype | None = None,
    clip_grad: float | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Fine-tune ``model`` for one epoch.

    With a masker (MSMAE Sec. 3.3) each batch is split by the ``bank``'s maps, aligned on
    the device with each view's crop and flip (uniform weights without a bank: random
    masking at the same counts), and only the visible tokens are encoded; masked and thrown
    tokens are simply dropped. Without a masker every token is encoded (plain fine-tuning).
    With ``cls_loss_weight`` > 0 the loss adds that weight times the cross-entropy of the
    model's cls-token head; with ``ema`` the moving average follows every step.

    Args:
        model: a :class:`~models_msmae.VisibleTokenClassifier` (maybe DDP-wrapped);
            ``model(images, visible)`` gives logits.
        data_loader: batches ``(images, targets, crops, indices)`` of a
            :class:`maskkit.CropDataset`.
        optimizer: the optimizer, groups carrying the layer-decay ``lr_scale``.
        device: where to train.
        epoch: the epoch index (from 0).
        loss_scaler: ``torch.amp.GradScaler``, enabled for float16 autocast only.
        lr_scheduler: a timm scheduler stepped per iteration.
        masker: SAM masker, or None to encode all tokens.
        bank: the whole-image maps to mask by.
        label_smoothing: cross-entropy label smoothing (MAE fine-tuning: 0.1).
        cls_loss_weight: weight of the cls-token head's loss (the model needs that head).
        ema: timm's ``ModelEmaV3`` of the unwrapped model, updated after each step with the
            global step count (so that a resumed run continues its warm-up exactly).
        amp_dtype: autocast dtype on CUDA, or None for full precision.
        clip_grad: max gradient norm, or None.
        progress: show a tqdm bar.

    Returns:
        Epoch means over all ranks: ``loss``, ``acc`` (on the training views), ``cls_loss``
        (with the cls-token head) and the last ``lr`` (of the top layer).
    """
    model.train()
    plain = model.module if isinstance(model, DistributedDataParallel) else model
    grid = plain.grid
    totals = {"loss": 0.0, "acc": 0.0} | ({"cls_loss": 0.0} if cls_loss_weight > 0 else {})
    steps = len(data_loader)  # type: ignore[arg-type]
    bar = tqdm(data_loader, desc=f"finetune {epoch}", disable=not progress)
    for step, (images, targets, crops, indices) in enumerate(bar):
        lr_scheduler.step_update(epoch * steps + step)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        visible = None
        if masker is not None:
            weights = None
            if bank is not None:  # whole-image maps, moved with each view's crop and flip
                weights = align_weights(bank[indices].to(device), crops, out_grid=grid)
            split = masker(images.shape[0], grid[0] * grid[1], weights, device=device)
            visible = split.visible
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if cls_loss_weight > 0:
                logits, cls_logits = model(images, visible, with_cls=True)
            else:
                logits = model(images, visible)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
        if cls_loss_weight > 0:
            cls_loss = F.cross_entropy(cls_logits.float(), targets, label_smoothing=label_smoothing)
            totals["cls_loss"] += cls_loss.item()
            loss = loss + cls_loss_weight * cls_loss
        where = f"epoch {epoch}, step {step}"
        loss_value = optimizer_step(loss, optimizer, loss_scaler, model, clip_grad, where=where)
        if ema is not None:
            ema.update(plain, step=epoch * steps + step + 1)

        totals["loss"] += loss_value
        totals["acc"] += (logits.argmax(-1) == targets).float().mean().item()
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{optimizer.param_groups[-1]['lr']:.2e}")
    stats = all_reduce_mean({name: total / max(steps, 1) for name, total in totals.items()})
    return {**stats, "lr": max(group["lr"] for group in optimizer.param_groups)}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data_loader: Iterable[Any],
    device: torch.device,
    *,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Evaluate on every token: loss, top-1 accuracy, per-class recall, confusion matrix.

    Each rank evaluates its own shard (no sample twice); the confusion matrix and the loss
    are summed over ranks, so the numbers are exact for the whole set.

    Args:
        model: ``model(images)`` gives logits (all tokens).
        data_loader: batches whose first two items are images and targets.
        device: where to run.
        num_classes: number of classes.
        amp_dtype: autocast dtype on CUDA, or None.

    Returns:
        :func:`classification_report` of the confusion matrix, plus ``loss``.
    """
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum = torch.zeros((), dtype=torch.float64)
    for images, targets, *_ in data_loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum").double().cpu()
        pairs = targets.cpu() * num_classes + logits.argmax(-1).cpu()
        confusion += torch.bincount(pairs, minlength=num_classes**2).view(num_classes, -1)
    confusion = all_reduce_sum(confusion)
    loss_sum = all_reduce_sum(loss_sum)
    report = classification_report(confusion)
    report["loss"] = float(loss_sum) / max(int(confusion.sum()), 1)
    return report


def classification_report(confusion: torch.Tensor) -> dict[str, Any]:
    """Top-1 accuracy, per-class recall and the matrix itself from a confusion matrix.

    Args:
        confusion: (C, C) int64 counts, rows = true class, columns = predicted class.

    Returns:
        ``acc1`` (percent), ``recall`` (C floats; None for a class with no sample),
        ``confusion`` (C lists of ints) and ``num_samples``.
    """
    total = int(confusion.sum())
    per_class = confusion.sum(dim=1)
    correct = confusion.diagonal()
    recall = [
        (float(c) / float(n)) if int(n) > 0 else None
        for c, n in zip(correct.tolist(), per_class.tolist(), strict=True)
    ]
    return {
        "acc1": 100.0 * float(correct.sum()) / total if total else 0.0,
        "recall": recall,
        "confusion": confusion.tolist(),
        "num_samples": total,
    }
