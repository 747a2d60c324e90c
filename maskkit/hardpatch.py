"""Hard-patch mining (HPM): mask the patches predicted hardest, the rest at random.

Wang et al., "Hard Patches Mining for Masked Image Modeling", CVPR 2023
(arXiv:2304.05919; Haochen-Wang409/HPM ``models_mae_learn_loss.py``, ``generate_mask``).
An extra decoder head predicts each patch's reconstruction loss (on the full image, with
the EMA model); the ``int(alpha * M)`` patches with the highest predicted loss are masked
and the other masked patches are drawn uniformly from the rest, with ``alpha`` growing
linearly over training. HPM does the draw in a Python loop over the batch with
``.cpu().numpy()`` per sample; here it is two batched top-k selections (the hardest, then
the rest at random) and no sort or host sync.
A training step that produces the predictions is in ``examples/hpm_step.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_int, check_ratio
from .functional import (
    _topk_keys,
    check_device,
    check_finite,
    check_ratios,
    flatten_weights,
    labels_from_priorities,
    split_from_labels,
)
from .maskers import Masker
from .split import MaskSplit

__all__ = ["HardPatchMasker", "HardPatchSchedule", "hard_patch_count", "hard_patch_priorities"]


def hard_patch_count(num_masked: int, alpha: float) -> int:
    """HPM's number of hardest patches masked: ``int(num_masked * alpha)`` (rounded down)."""
    return int(num_masked * alpha)


def hard_patch_priorities(
    losses: Tensor, num_hard: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """Priorities that put the ``num_hard`` highest losses first, the rest in random order.

    Args:
        losses: (B, L) predicted per-patch losses (any real values; higher = harder).
        num_hard: k, patches taken by loss; the others follow in uniform random order.
        generator: optional RNG on the losses' device.

    Returns:
        (B, L) float32 priorities: the k hardest in [1, 2), the rest in [0, 1).

    Raises:
        TypeError: ``num_hard`` is not an int.
        ValueError: losses that are not (B, L), or ``num_hard`` outside [0, L].
    """
    if losses.dim() != 2:
        raise ValueError(
            f"losses must be (B, L) predicted losses, one row per sample, got shape "
            f"{tuple(losses.shape)}; flatten a (B, gh, gw) map with losses.flatten(1)"
        )
    batch_size, num_patches = losses.shape
    check_int("num_hard", num_hard)
    if not 0 <= num_hard <= num_patches:
        raise ValueError(
            f"num_hard must lie in [0, L] = [0, {num_patches}] (the losses have L="
            f"{num_patches} patches per sample), got {num_hard}; take it from "
            "hard_patch_count(num_masked, alpha)"
        )
    noise = torch.rand(
        batch_size, num_patches, device=losses.device, dtype=torch.float32, generator=generator
    )
    if num_hard == 0:
        return noise
    hardest = torch.topk(_topk_keys(losses), num_hard, dim=1, sorted=False).indices
    return noise.scatter_add_(1, hardest, torch.ones_like(hardest, dtype=noise.dtype))


@dataclass(frozen=True)
class HardPatchSchedule:
    """HPM's share of hard patches, growing linearly over training.

    ``alpha(epoch) = start + (end - start) * min(epoch + 1, total_epochs) / total_epochs``
    for epochs counted from 0: HPM's ``keep_ratio = (epoch + 1) / total_epoch * 0.5``
    (``guide=True``), i.e. ``start=0``, ``end=0.5``, reached at the last epoch. The paper
    writes ``alpha_t = alpha_0 + t / T * (alpha_T - alpha_0)``.

    Args:
        total_epochs: T, epochs of pre-training.
        start: alpha_0 (HPM: 0).
        end: alpha_T (HPM: 0.5).

    Raises:
        TypeError, ValueError: a non-int or non-positive ``total_epochs``, or a share
            outside [0, 1].
    """

    total_epochs: int
    start: float = 0.0
    end: float = 0.5

    def __post_init__(self) -> None:
        check_int("total_epochs", self.total_epochs, minimum=1)
        object.__setattr__(self, "start", check_ratio("start", self.start))
        object.__setattr__(self, "end", check_ratio("end", self.end))

    def __call__(self, epoch: int) -> float:
        """alpha for ``epoch`` (from 0); past the last epoch it stays at ``end``."""
        epoch = check_int("epoch", epoch, minimum=0)
        progress = min(epoch + 1, self.total_epochs) / self.total_epochs
        return self.start + (self.end - self.start) * progress


class HardPatchMasker(Masker):
    """HPM's hard-patch masking with exact counts (Wang et al., 2023, arXiv:2304.05919).

    Takes predicted per-patch losses as ``weights`` at each call, (B, L) or (B, gh, gw).
    With M the masked count of :func:`~maskkit.split_counts` and
    k = :func:`hard_patch_count` ``(M, alpha) = int(M * alpha)`` (HPM rounds down):

    - the k patches with the highest predicted loss are always masked;
    - the other M - k masked patches are uniform among the remaining L - k, and so are the
      visible (and thrown) ones, exactly as HPM's shuffle of the remaining patches.

    ``alpha`` is fixed at construction and can be overridden per call (``alpha=``), e.g.
    from :class:`HardPatchSchedule`. k is a Python int, so under ``torch.compile`` each
    distinct k gets its own graph (at most M + 1).

    Args:
        mask_ratio: share of patches masked (HPM: 0.75).
        alpha: share of the masked patches chosen by loss (HPM's last epoch: 0.5).
        throw_ratio: share of patches thrown, drawn at random from the non-hard ones.
        validate: check that the losses are finite (a device assert on CUDA).

    Raises:
        TypeError, ValueError: an option of the wrong type or outside its range.
    """

    def __init__(
        self,
        mask_ratio: float = 0.75,
        *,
        alpha: float = 0.5,
        throw_ratio: float = 0.0,
        validate: bool = True,
    ) -> None:
        self.mask_ratio, self.throw_ratio = check_ratios(mask_ratio, throw_ratio)
        self.alpha = check_ratio("alpha", alpha)
        if not isinstance(validate, bool):
            raise TypeError(f"validate must be a bool, got {type(validate).__name__}")
        self.validate = validate

    def __call__(
        self,
        batch_size: int,
        num_patches: int,
        weights: Tensor | None = None,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        alpha: float | None = None,
    ) -> MaskSplit:
        """Mask the predicted hardest patches of a batch, the rest at random.

        Args:
            batch_size: B.
            num_patches: L, patch tokens per sample (prefix tokens excluded).
            weights: predicted per-patch losses, (B, L) or (B, gh, gw), any floating
                dtype, any sign; higher = harder. Required.
            device: must be None or the losses' device.
            generator: optional RNG on the losses' device.
            alpha: this call's share of hard patches; None uses the masker's.

        Returns:
            A :class:`~maskkit.MaskSplit` with the counts of :meth:`counts`; each group in
            patch order (:func:`~maskkit.functional.split_from_labels`).

        Raises:
            TypeError: no losses were passed.
            ValueError: the losses have the wrong shape or device, or hold NaN/Inf (on CPU;
                a device assert on CUDA).
        """
        if weights is None:
            raise TypeError(
                "HardPatchMasker needs predicted per-patch losses as weights, e.g. the loss "
                "head of the EMA model on the full image (see examples/hpm_step.py)"
            )
        losses = flatten_weights(weights, batch_size, num_patches)
        check_device("losses", losses, device)
        if self.validate:
            check_finite("losses", losses)
        share = self.alpha if alpha is None else check_ratio("alpha", alpha)
        counts = self.counts(num_patches)
        num_hard = hard_patch_count(counts.masked, share)
        priorities = hard_patch_priorities(losses, num_hard, generator=generator)
        return split_from_labels(labels_from_priorities(priorities, counts), counts)

    def __repr__(self) -> str:
        return (
            f"HardPatchMasker(mask_ratio={self.mask_ratio}, alpha={self.alpha}, "
            f"throw_ratio={self.throw_ratio})"
        )
