"""One epoch of SETR fine-tuning, the evaluation (Dice / F1 and IoU) and the overlay figure.

Loss (MSMAE, Mao et al., Appendix C.1, eq. 9): ``L = dice(o, t) + λ bce(o, t)`` with
λ = 0.5, on one foreground logit per pixel; with K > 2 mask classes, ``dice`` is the mean
Dice loss of the foreground classes on the softmax and ``bce`` becomes the cross-entropy
over the K classes. The Dice loss is the soft Dice of Milletari et al., "V-Net" (2016),
``1 - (2 Σ p t + s) / (Σ p + Σ t + s)``, summed over every pixel of the batch, s = 1.

Metrics (percent), for each foreground class, from the predicted labels (binary: logit > 0,
i.e. probability > 0.5; multi-class: argmax), with TP, FP, FN pixel counts:

- ``dice_dataset`` / ``iou_dataset``: one score from the counts summed over every pixel of
  the split, ``2 TP / (2 TP + FP + FN)`` and ``TP / (TP + FP + FN)``;
- ``dice_per_image`` / ``iou_per_image``: the same scores per image, averaged over images.

A score whose denominator is 0 (no ground truth and no prediction: a correct empty mask)
is 100, as segmentation_models_pytorch's ``zero_division=1``. For binary masks Dice is
the F1 score of the foreground pixels. With several foreground classes, the headline
numbers are the means over those classes, and ``per_class`` holds each one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from msmae_util.runtime import all_reduce_mean, all_reduce_sum, optimizer_step, world_size
from PIL import Image, ImageDraw
from timm.scheduler.scheduler import Scheduler
from torch import Tensor, nn
from tqdm import tqdm

from maskkit.files import atomic_write

__all__ = [
    "METRIC_DEFINITIONS",
    "SegmentationLoss",
    "SegmentationMeter",
    "broadcast_buffers",
    "dice_iou",
    "dice_loss",
    "evaluate",
    "pixel_counts",
    "predict",
    "save_overlays",
    "segmentation_loss",
    "train_one_epoch",
]

METRIC_DEFINITIONS = {
    "dice_dataset": "Dice (= F1 for binary masks), in percent, from TP/FP/FN pixels summed "
    "over the whole split: 2TP / (2TP + FP + FN)",
    "iou_dataset": "IoU in percent from TP/FP/FN pixels summed over the whole split: "
    "TP / (TP + FP + FN)",
    "dice_per_image": "Dice in percent of each image, averaged over the images",
    "iou_per_image": "IoU in percent of each image, averaged over the images",
    "empty": "a score with a zero denominator (no ground truth, no prediction) is 100",
    "classes": "multi-class: the mean over the foreground classes; per_class: each class",
    "resolution": "masks and predictions at --input_size (masks resized nearest-neighbour)",
}


# ---------------------------------------------------------------------------------- loss


class SegmentationLoss(NamedTuple):
    """``loss = dice + bce_weight * bce`` and its two terms (``bce``: the cross-entropy
    over the classes when there are several)."""

    loss: Tensor
    dice: Tensor
    bce: Tensor


def dice_loss(probs: Tensor, targets: Tensor, *, smooth: float = 1.0) -> Tensor:
    """Soft Dice loss, per class over the whole batch, averaged over the classes.

    Args:
        probs: (B, C, H, W) probabilities.
        targets: (B, C, H, W) 0/1 floats.
        smooth: s in ``1 - (2 Σ p t + s) / (Σ p + Σ t + s)``.

    Returns:
        A scalar.
    """
    dims = (0, 2, 3)
    overlap = (probs * targets).sum(dims)
    total = probs.sum(dims) + targets.sum(dims)
    return (1.0 - (2.0 * overlap + smooth) / (total + smooth)).mean()


def segmentation_loss(
    logits: Tensor, masks: Tensor, *, bce_weight: float = 0.5, smooth: float = 1.0
) -> SegmentationLoss:
    """MSMAE's eq. 9, ``dice + λ bce``, or ``dice + λ ce`` for several classes.

    Args:
        logits: (B, 1, H, W) foreground logits (binary) or (B, K, H, W) class logits.
        masks: (B, H, W) int64 class indices (binary: 0 and 1).
        bce_weight: λ (MSMAE: 0.5).
        smooth: the Dice loss's s.
    """
    if logits.shape[1] == 1:
        targets = (masks > 0).to(logits.dtype)[:, None]
        dice = dice_loss(torch.sigmoid(logits), targets, smooth=smooth)
        bce = F.binary_cross_entropy_with_logits(logits, targets)
    else:
        onehot = F.one_hot(masks, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
        probs = logits.softmax(dim=1)
        dice = dice_loss(probs[:, 1:], onehot[:, 1:], smooth=smooth)  # foreground classes
        bce = F.cross_entropy(logits, masks)
    return SegmentationLoss(dice + bce_weight * bce, dice, bce)


# ------------------------------------------------------------------------------- metrics


def predict(logits: Tensor) -> Tensor:
    """(B, H, W) int64 labels: logit > 0 for one channel, else the argmax."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def pixel_counts(predictions: Tensor, masks: Tensor, num_classes: int) -> Tensor:
    """TP, FP and FN pixels of each image and foreground class.

    Args:
        predictions: (B, H, W) int64 labels.
        masks: (B, H, W) int64 ground truth.
        num_classes: K, background included (binary: 2).

    Returns:
        (3, B, K - 1) int64: TP, FP, FN for classes 1 to K - 1.
    """
    classes = torch.arange(1, num_classes, device=masks.device).view(-1, 1, 1, 1)
    predicted, actual = predictions[None] == classes, masks[None] == classes  # (K-1, B, H, W)
    tp = (predicted & actual).sum((2, 3))
    fp = (predicted & ~actual).sum((2, 3))
    fn = (~predicted & actual).sum((2, 3))
    return torch.stack([tp, fp, fn]).transpose(1, 2).long()


def dice_iou(tp: Tensor, fp: Tensor, fn: Tensor) -> tuple[Tensor, Tensor]:
    """Dice ``2TP / (2TP + FP + FN)`` and IoU ``TP / (TP + FP + FN)`` as float64 fractions;
    1 where the denominator is 0 (nothing to find and nothing found)."""
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    union = tp + fp + fn
    dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), 1.0)
    iou = torch.where(union > 0, tp / union.clamp_min(1), 1.0)
    return dice, iou


class SegmentationMeter:
    """Sums what the metrics need, batch by batch; :meth:`report` sums over ranks.

    Args:
        num_classes: K, background included (binary: 2).
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.counts = torch.zeros(3, num_classes - 1, dtype=torch.int64)  # summed TP, FP, FN
        self.image_scores = torch.zeros(2, num_classes - 1, dtype=torch.float64)
        self.totals = torch.zeros(3, dtype=torch.float64)  # images, empty masks, loss sum

    def update(self, predictions: Tensor, masks: Tensor, loss: float | None = None) -> None:
        """Add a batch: (B, H, W) labels and ground truth, and the batch's mean loss."""
        counts = pixel_counts(predictions, masks, self.num_classes).cpu()
        self.counts += counts.sum(dim=1)
        dice, iou = dice_iou(*counts)
        self.image_scores += torch.stack([dice.sum(0), iou.sum(0)])
        batch = masks.shape[0]
        empty = int((masks.flatten(1) == 0).all(dim=1).sum())
        self.totals += torch.tensor([batch, empty, 0.0 if loss is None else loss * batch])

    def report(self, class_names: Sequence[str]) -> dict[str, Any]:
        """The metrics over every rank's images (see the module docstring), in percent."""
        counts = all_reduce_sum(self.counts)
        image_scores = all_reduce_sum(self.image_scores)
        images, empty, loss_sum = all_reduce_sum(self.totals).tolist()
        dice, iou = dice_iou(*counts)
        per_image = image_scores / max(images, 1)
        per_class = {
            name: {
                "dice_dataset": 100 * float(dice[k]),
                "iou_dataset": 100 * float(iou[k]),
                "dice_per_image": 100 * float(per_image[0, k]),
                "iou_per_image": 100 * float(per_image[1, k]),
            }
            for k, name in enumerate(class_names[1:])
        }
        report: dict[str, Any] = {
            key: sum(scores[key] for scores in per_class.values()) / len(per_class)
            for key in ("dice_dataset", "iou_dataset", "dice_per_image", "iou_per_image")
        }
        report.update(loss=loss_sum / max(images, 1), num_images=int(images))
        report["num_empty_masks"] = int(empty)
        if len(per_class) > 1:
            report["per_class"] = per_class
        return report


# ------------------------------------------------------------------------------ training


def train_one_epoch(
    model: nn.Module,
    data_loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    loss_scaler: torch.amp.GradScaler,
    lr_scheduler: Scheduler,
    *,
    bce_weight: float = 0.5,
    amp_dtype: torch.dtype | None = None,
    clip_grad: float | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train ``model`` for one epoch on ``dice + bce_weight * bce`` (MSMAE eq. 9).

    Args:
        model: images (B, 3, H, W) → logits (B, C, H, W) (maybe DDP-wrapped).
        data_loader: batches ``(images, masks, indices)``.
        optimizer: the optimizer.
        device: where to train.
        epoch: the epoch index (from 0).
        loss_scaler: ``torch.amp.GradScaler``, enabled for float16 autocast only.
        lr_scheduler: a timm scheduler stepped per iteration.
        bce_weight: λ.
        amp_dtype: autocast dtype on CUDA, or None for full precision.
        clip_grad: max gradient norm, or None.
        progress: show a tqdm bar.

    Returns:
        Epoch means over all ranks: ``loss``, ``dice_loss``, ``bce_loss`` (the
        cross-entropy for several classes) and the last ``lr``.
    """
    model.train()
    totals = {"loss": 0.0, "dice_loss": 0.0, "bce_loss": 0.0}
    steps = len(data_loader)  # type: ignore[arg-type]
    bar = tqdm(data_loader, desc=f"segment {epoch}", disable=not progress)
    for step, (images, masks, _) in enumerate(bar):
        lr_scheduler.step_update(epoch * steps + step)
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        terms = segmentation_loss(logits.float(), masks, bce_weight=bce_weight)
        loss_value = optimizer_step(
            terms.loss,
            optimizer,
            loss_scaler,
            model,
            clip_grad,
            where=f"epoch {epoch}, step {step}",
        )

        totals["loss"] += loss_value
        totals["dice_loss"] += terms.dice.item()
        totals["bce_loss"] += terms.bce.item()
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    stats = all_reduce_mean({name: total / max(steps, 1) for name, total in totals.items()})
    return {**stats, "lr": max(group["lr"] for group in optimizer.param_groups)}


def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics, which each rank updated
    with its own batches), so that every shard is evaluated by the same model."""
    if world_size() > 1:
        for buffer in model.buffers():
            if dist.get_backend() == "nccl" or buffer.device.type == "cpu":
                dist.broadcast(buffer, src=0)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data_loader: Iterable[Any],
    device: torch.device,
    *,
    class_names: Sequence[str],
    bce_weight: float = 0.5,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Loss and metrics (module docstring) on every image of a split.

    Each rank evaluates its own shard (no image twice) and the sums are reduced over the
    ranks, so the numbers are exact for the whole split.

    Args:
        model: images → logits (not DDP-wrapped).
        data_loader: batches ``(images, masks, indices)``.
        device: where to run.
        class_names: the K mask classes, background first (binary: 2 names).
        bce_weight: λ of the reported loss.
        amp_dtype: autocast dtype on CUDA, or None.

    Returns:
        :meth:`SegmentationMeter.report`.
    """
    model.eval()
    meter = SegmentationMeter(len(class_names))
    for images, masks, _ in data_loader:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images).float()
        loss = segmentation_loss(logits, masks, bce_weight=bce_weight).loss.item()
        meter.update(predict(logits), masks, loss)
    return meter.report(class_names)


# ------------------------------------------------------------------------------ overlays

# Class colours (RGB in [0, 1]); class 0, the background, is left unpainted.
_PALETTE = np.array(
    [
        *([0, 0, 0], [0.1, 0.9, 0.2], [1.0, 0.25, 0.2], [0.2, 0.5, 1.0], [1.0, 0.85, 0.1]),
        *([0.9, 0.3, 0.9], [0.1, 0.9, 0.9], [1.0, 0.6, 0.2]),
    ]
)
_BLEND = 0.5


def _paint(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    colours = _PALETTE[labels % len(_PALETTE)]
    painted = (1 - _BLEND) * image + _BLEND * colours
    return np.where((labels > 0)[..., None], painted, image)


def save_overlays(
    path: str | os.PathLike[str],
    images: Tensor,
    masks: Tensor,
    predictions: Tensor,
    *,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    scale: int = 1,
    pad: int = 2,
) -> None:
    """Write a PNG, one row per image: the image | its ground truth | the prediction.

    Classes are painted over the image in colour (lesion: green for binary masks); a
    legend under the grid names the columns and colours. Written atomically.

    Args:
        path: the PNG (its folder must exist).
        images: (N, 3, H, W) images normalised with ``mean`` and ``std``.
        masks: (N, H, W) int64 ground truth.
        predictions: (N, H, W) int64 predicted labels.
        class_names: the mask classes, background first.
        mean: per-channel mean to undo.
        std: per-channel standard deviation to undo.
        scale: integer upscaling (nearest), for tiny images.
        pad: white pixels between panels.
    """
    pixels = images.detach().cpu().double() * torch.tensor(std).view(3, 1, 1)
    pixels = (pixels + torch.tensor(mean).view(3, 1, 1)).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    rows = []
    for image, mask, prediction in zip(pixels, masks.cpu().numpy(), predictions.cpu().numpy()):
        rows.append([image, _paint(image, mask), _paint(image, prediction)])
    height, width = pixels.shape[1] * scale, pixels.shape[2] * scale
    canvas = np.full(
        (len(rows) * (height + pad) + pad, 3 * (width + pad) + pad, 3), 255, dtype=np.uint8
    )
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            big = panel.repeat(scale, axis=0).repeat(scale, axis=1)
            top, left = pad + r * (height + pad), pad + c * (width + pad)
            canvas[top : top + height, left : left + width] = np.rint(big * 255).astype(np.uint8)
    labels = ["columns: image | ground truth | prediction", *class_names[1:]]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend_width = sum(round(measure.textlength(label)) + 24 for label in labels) + pad
    figure = Image.new("RGB", (max(canvas.shape[1], legend_width), canvas.shape[0] + 16), "white")
    figure.paste(Image.fromarray(canvas), (0, 0))
    draw = ImageDraw.Draw(figure)
    x, top = pad, canvas.shape[0] + 1
    for k, label in enumerate(labels):
        if k > 0:
            colour = tuple(round(255 * v) for v in _PALETTE[k % len(_PALETTE)])
            draw.rectangle((x, top + 1, x + 9, top + 10), fill=colour)
            x += 13
        draw.text((x, top), label, fill="black")
        x += round(measure.textlength(label)) + 11
    with atomic_write(path) as file:
        figure.save(file, format="PNG")
