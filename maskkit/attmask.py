"""AttMask: mask the tokens a teacher attends to most (or least), batched and sync-free.

Kakogeorgiou et al., "What to Hide from Your Students: Attention-Guided Masked Image
Modeling", ECCV 2022 (arXiv:2203.12719; gkakogeorgiou/attmask ``attmask.py``). The teacher's
cls-token attention on the *same* augmented view (e.g. from
:meth:`maskkit.AttentionExtractor.capture` around the teacher's forward) ranks the patches;
no weight bank and no crop alignment are needed.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ._checks import check_choice, check_ratio
from .functional import (
    check_device,
    check_finite,
    check_ratios,
    flatten_weights,
    split_from_priorities,
)
from .maskers import Masker
from .split import MaskSplit

__all__ = ["AttMaskMasker", "AttMaskMode", "attmask_priorities"]

AttMaskMode = Literal["high", "hints", "low"]
_MODES = ("high", "hints", "low")


def attmask_priorities(
    attention: Tensor,
    *,
    mode: AttMaskMode = "high",
    num_hints: int = 0,
    hint_pool: int = 0,
    masking_prob: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """AttMask's ranking of the patches as priorities for a split.

    - ``"high"``: the most attended patches first (deterministic; ties broken by the sort).
    - ``"hints"``: as ``"high"``, but ``num_hints`` patches drawn uniformly from the
      ``hint_pool`` most attended are moved last (revealed: they stay visible).
    - ``"low"``: the least attended patches first.

    Each sample follows the attention with probability ``masking_prob``; the others get a
    uniform random order (AttMask leaves them unmasked, which fixed counts cannot express).

    Args:
        attention: (B, L) float scores, e.g. cls attention over the patches.
        mode: ``"high"``, ``"hints"`` or ``"low"``.
        num_hints: R, revealed patches per sample (``"hints"`` only).
        hint_pool: H >= R, the most attended patches the hints are drawn from.
        masking_prob: chance that a sample follows its attention.
        generator: optional RNG on the attention's device.

    Returns:
        ``(priorities, guided)``: (B, L) float32 priorities (higher = masked first) and
        (B,) bool, True where the sample follows its attention.

    Raises:
        ValueError: an unknown mode, attention that is not (B, L), or hint counts outside
            ``0 <= num_hints <= hint_pool <= L``.
    """
    check_choice("mode", mode, _MODES)
    if attention.dim() != 2:
        raise ValueError(
            f"attention must be (B, L) scores, one row per sample, got shape "
            f"{tuple(attention.shape)}; flatten a (B, gh, gw) map with attention.flatten(1)"
        )
    batch_size, num_patches = attention.shape
    if mode == "hints" and not 0 <= num_hints <= hint_pool <= num_patches:
        raise ValueError(
            f"need 0 <= num_hints <= hint_pool <= L, got num_hints={num_hints}, "
            f"hint_pool={hint_pool}, L={num_patches}"
        )
    device = attention.device
    draws = torch.rand(batch_size, num_patches + 1, device=device, generator=generator)
    guided = draws[:, 0] < masking_prob
    noise = draws[:, 1:]  # the uniform order of the unguided samples
    scores = attention.float()
    if mode == "low":
        scores = -scores
    if mode == "hints" and num_hints > 0:
        # R uniform draws without replacement among the H most attended patches: those
        # with the R largest of H uniform keys. Revealed patches go last (stay visible).
        pool = torch.topk(scores, hint_pool, dim=1, sorted=False).indices  # (B, H)
        keys = torch.rand(batch_size, hint_pool, device=device, generator=generator)
        chosen = pool.gather(1, torch.topk(keys, num_hints, dim=1, sorted=False).indices)
        revealed = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, chosen, True)
        scores = scores.masked_fill(revealed, float("-inf"))
    return torch.where(guided[:, None], scores, noise), guided


class AttMaskMasker(Masker):
    """AttMask's attention-guided masking with exact counts (arXiv:2203.12719).

    Takes the teacher's attention as ``weights`` at each call (B, L) or (B, gh, gw), on the
    same view the student sees. Modes, with M = the masked count of
    :func:`~maskkit.split_counts`:

    - ``"high"`` (AttMask-High): the M most attended patches are masked, exactly (a
      deterministic top-k); with ``throw_ratio`` the next most attended are thrown.
    - ``"hints"`` (AttMask-Hints): R = ``int(show_ratio * L)`` of the H =
      ``int(show_max * L)`` most attended patches, drawn uniformly, are revealed (kept
      visible) and the M most attended of the rest are masked: the top M + R minus the R
      hints. AttMask masks its top N minus the hints, N - R patches; maskkit keeps the
      count at M, which is AttMask with ``N = M + R``. Needs ``R <= H <= M + R``.
    - ``"low"`` (AttMask-Low): the M least attended patches are masked.

    Each sample is guided by its attention with probability ``masking_prob`` (AttMask: 0.5);
    AttMask leaves the other samples unmasked, but a :class:`~maskkit.MaskSplit` has the
    same counts for every sample, so here they are masked uniformly at random with the
    same counts (``masking_prob=1`` guides every sample).

    Args:
        mask_ratio: share of patches masked (AttMask's ``pred_ratio``, 0.3 on average).
        mode: ``"high"``, ``"hints"`` or ``"low"``.
        masking_prob: chance that a sample follows its attention (AttMask: 0.5).
        show_max: share of most attended patches the hints come from (AttMask: 0.1).
        show_ratio: share of patches revealed as hints; ``None`` means
            ``show_max * mask_ratio``, as AttMask sets it.
        throw_ratio: share of patches thrown after the masked ones (default none).
        validate: check that the attention is finite (a device assert on CUDA).

    Raises:
        TypeError, ValueError: an option of the wrong type or outside its range.
    """

    def __init__(
        self,
        mask_ratio: float = 0.3,
        *,
        mode: AttMaskMode = "high",
        masking_prob: float = 0.5,
        show_max: float = 0.1,
        show_ratio: float | None = None,
        throw_ratio: float = 0.0,
        validate: bool = True,
    ) -> None:
        self.mask_ratio, self.throw_ratio = check_ratios(mask_ratio, throw_ratio)
        self.mode: AttMaskMode = check_choice("mode", mode, _MODES)
        self.masking_prob = check_ratio("masking_prob", masking_prob)
        self.show_max = check_ratio("show_max", show_max)
        self.show_ratio = (
            self.show_max * self.mask_ratio
            if show_ratio is None
            else check_ratio("show_ratio", show_ratio)
        )
        if self.show_ratio > self.show_max:
            raise ValueError(
                f"show_ratio={self.show_ratio} exceeds show_max={self.show_max}: the hints are "
                "drawn from the show_max most attended patches; lower show_ratio"
            )
        if not isinstance(validate, bool):
            raise TypeError(f"validate must be a bool, got {type(validate).__name__}")
        self.validate = validate

    def hint_counts(self, num_patches: int) -> tuple[int, int]:
        """``(R, H)``: hints revealed and the pool they come from, for L patches (``"hints"``).

        Raises:
            ValueError: the pool cannot hold the hints or reaches past the top M + R.
        """
        num_hints = int(self.show_ratio * num_patches)
        pool = int(self.show_max * num_patches)
        counts = self.counts(num_patches)
        if num_hints > pool or pool > counts.masked + num_hints:
            raise ValueError(
                f"with L={num_patches}: {num_hints} hints from the {pool} most attended "
                f"patches do not fit {counts.masked} masked ones (need hints <= pool <= "
                "masked + hints); lower show_max or raise mask_ratio"
            )
        if num_hints + counts.masked + counts.thrown > num_patches:
            raise ValueError(
                f"with L={num_patches}: {num_hints} hints leave fewer than the "
                f"{counts.visible} visible patches; lower show_ratio"
            )
        return num_hints, pool

    def __call__(
        self,
        batch_size: int,
        num_patches: int,
        weights: Tensor | None = None,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> MaskSplit:
        """Mask a batch by its attention maps.

        Args:
            batch_size: B.
            num_patches: L, patch tokens per sample (prefix tokens excluded).
            weights: the teacher's attention, (B, L) or (B, gh, gw), any floating dtype;
                required.
            device: must be None or the attention's device.
            generator: optional RNG on the attention's device (hints and the per-sample
                coin).

        Returns:
            A :class:`~maskkit.MaskSplit` with the counts of :meth:`counts`.

        Raises:
            TypeError: no attention was passed.
            ValueError: the attention has the wrong shape or device, or holds NaN/Inf
                (on CPU; a device assert on CUDA).
        """
        if weights is None:
            raise TypeError(
                "AttMaskMasker needs the teacher's attention as weights, e.g. "
                "masker(B, L, captured.maps) with captured from AttentionExtractor.capture()"
            )
        attention = flatten_weights(weights, batch_size, num_patches)
        check_device("attention", attention, device)
        if self.validate:
            check_finite("attention", attention)
        counts = self.counts(num_patches)
        num_hints, pool = self.hint_counts(num_patches) if self.mode == "hints" else (0, 0)
        priorities, _ = attmask_priorities(
            attention,
            mode=self.mode,
            num_hints=num_hints,
            hint_pool=pool,
            masking_prob=self.masking_prob,
            generator=generator,
        )
        return split_from_priorities(priorities, counts)

    def __repr__(self) -> str:
        return (
            f"AttMaskMasker(mask_ratio={self.mask_ratio}, mode={self.mode!r}, "
            f"masking_prob={self.masking_prob}, show_max={self.show_max}, "
            f"show_ratio={self.show_ratio}, throw_ratio={self.throw_ratio})"
        )
