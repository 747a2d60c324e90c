"""Per-iteration learning rate: linear warm-up, then a half-cycle cosine (MAE, SGDR)."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["WarmupCosineSchedule"]


@dataclass(frozen=True)
class WarmupCosineSchedule:
    """Learning rate at a fractional epoch: warm-up from 0, then cosine decay to ``min_lr``.

    The schedule is a pure function of the fractional epoch ``epoch + step / steps``, so a
    resumed run continues it exactly; :meth:`state_dict` stores the settings so that a resume
    can tell when they changed.

    Args:
        lr: peak (absolute) learning rate, reached at the end of the warm-up.
        min_lr: floor of the cosine.
        warmup_epochs: epochs of linear warm-up (0 = none).
        epochs: total training epochs.
    """

    lr: float
    min_lr: float
    warmup_epochs: float
    epochs: int

    def __post_init__(self) -> None:
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.epochs < 1 or not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(
                f"need epochs >= 1 and 0 <= warmup_epochs <= epochs, got "
                f"warmup_epochs={self.warmup_epochs}, epochs={self.epochs}"
            )

    def __call__(self, epoch: float) -> float:
        """The learning rate at fractional epoch ``epoch`` (e.g. ``3 + step / steps``)."""
        if epoch < self.warmup_epochs:
            return self.lr * epoch / self.warmup_epochs
        progress = (epoch - self.warmup_epochs) / max(self.epochs - self.warmup_epochs, 1e-12)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return self.min_lr + (self.lr - self.min_lr) * cosine

    def apply(self, optimizer: torch.optim.Optimizer, epoch: float) -> float:
        """Set every group's lr to the schedule's, times its ``lr_scale`` (layer decay)."""
        lr = self(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def state_dict(self) -> dict[str, Any]:
        """The settings, as plain types."""
        return asdict(self)

    def warn_if_changed(self, saved: dict[str, Any]) -> None:
        """Warn when a resumed run's settings differ from a checkpoint's :meth:`state_dict`."""
        changed = {k: (saved.get(k), v) for k, v in self.state_dict().items() if saved.get(k) != v}
        if changed:
            warnings.warn(
                f"resuming with a different lr schedule, (checkpoint, now): {changed}",
                stacklevel=2,
            )
