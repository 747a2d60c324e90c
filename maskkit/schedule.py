"""When to mask at random and when to refresh the mask-weight bank."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MaskingSchedule"]


@dataclass(frozen=True)
class MaskingSchedule:
    """Warm-up with random masking, then attention maps refreshed every K epochs.

    Epochs count from 0. Epochs ``< warmup_epochs`` use plain random masking; the maps are
    refreshed before epoch ``warmup_epochs`` trains and then before every ``refresh_every``
    epochs after it. MSMAE (paper, Tab. 4-5): ``MaskingSchedule(40, 40)`` in pre-training
    (random masking for the first 40 epochs, as in AMT) and a refresh every 20 epochs in
    fine-tuning, e.g. ``MaskingSchedule(0, 20)`` to start from the pre-trained model's maps.

    A training loop::

        for epoch in range(start_epoch, epochs):
            if schedule.should_refresh(epoch):
                bank.refresh(extractor, eval_loader)
            train_one_epoch(..., random_masking=schedule.use_random(epoch))

    Args:
        warmup_epochs: Epochs of random masking before the first refresh; 0 refreshes
            before the first epoch.
        refresh_every: K, epochs between refreshes.

    Raises:
        ValueError: a negative ``warmup_epochs`` or a ``refresh_every`` below 1.
    """

    warmup_epochs: int = 40
    refresh_every: int = 40

    def __post_init__(self) -> None:
        if not _is_int(self.warmup_epochs) or self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an int >= 0, got {self.warmup_epochs!r}")
        if not _is_int(self.refresh_every) or self.refresh_every < 1:
            raise ValueError(f"refresh_every must be an int >= 1, got {self.refresh_every!r}")

    def use_random(self, epoch: int) -> bool:
        """True during warm-up (``epoch < warmup_epochs``): mask at random, no maps yet."""
        _check_epoch(epoch)
        return epoch < self.warmup_epochs

    def should_refresh(self, epoch: int) -> bool:
        """True at ``warmup_epochs + n * refresh_every``: refresh before this epoch trains."""
        _check_epoch(epoch)
        since = epoch - self.warmup_epochs
        return since >= 0 and since % self.refresh_every == 0

    def last_refresh(self, epoch: int) -> int | None:
        """The epoch whose refresh produced the maps used in ``epoch``; None during warm-up.

        On resuming without the bank's state, refresh when this is not None.
        """
        _check_epoch(epoch)
        if self.use_random(epoch):
            return None
        since = epoch - self.warmup_epochs
        return epoch - since % self.refresh_every


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_epoch(epoch: int) -> None:
    if not _is_int(epoch) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0 (epochs count from 0), got {epoch!r}")
