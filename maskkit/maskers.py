"""Maskers: thin option holders around :func:`maskkit.functional.sample_split`."""

from __future__ import annotations

import torch
from torch import Tensor

from .functional import SplitCounts, check_ratios, sample_split, split_counts
from .split import MaskSplit

__all__ = ["AMTMasker", "Masker", "RandomMasker", "SAMMasker"]


class Masker:
    """What every maskkit masker shares: its ratios, its exact counts and its call.

    ``masker(batch_size, num_patches, weights=None, *, device=None, generator=None)``
    returns a :class:`~maskkit.MaskSplit` with :meth:`counts` per sample; a strategy that
    builds its own priorities overrides ``__call__`` and keeps that signature.
    """

    mask_ratio: float
    throw_ratio: float
    validate: bool = True

    def counts(self, num_patches: int) -> SplitCounts:
        """The per-sample ``(n_visible, n_masked, n_thrown)`` for L patches."""
        return split_counts(num_patches, self.mask_ratio, self.throw_ratio)

    def __call__(
        self,
        batch_size: int,
        num_patches: int,
        weights: Tensor | None = None,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> MaskSplit:
        """Sample a split of ``num_patches`` patches for each of ``batch_size`` samples.

        Args:
            batch_size: B.
            num_patches: L, patch tokens per sample (prefix tokens excluded).
            weights: optional non-negative masking weights, (B, L) or (B, gh, gw) with
                ``gh * gw == L``; higher weight = more likely masked. None samples uniformly.
            device: where to sample when ``weights`` is None.
            generator: optional RNG on the sampling device, for reproducible splits.

        Returns:
            A :class:`~maskkit.MaskSplit` of int64 indices on the sampling device.
        """
        return sample_split(
            batch_size,
            num_patches,
            weights,
            mask_ratio=self.mask_ratio,
            throw_ratio=self.throw_ratio,
            device=device,
            generator=generator,
            validate=self.validate,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mask_ratio={self.mask_ratio}, "
            f"throw_ratio={self.throw_ratio}, validate={self.validate})"
        )


class RandomMasker(Masker):
    """MAE's uniform random masking (He et al., 2022): no weights, nothing thrown.

    ``int(L * (1 - mask_ratio))`` patches stay visible and the rest are masked, exactly
    as in MAE's ``random_masking``, so it drops into MAE code unchanged.

    Args:
        mask_ratio: share of patches masked, in [0, 1).

    Raises:
        ValueError: ``mask_ratio`` outside [0, 1).
    """

    def __init__(self, mask_ratio: float = 0.75) -> None:
        self.mask_ratio, _ = check_ratios(mask_ratio, 0.0)
        self.throw_ratio = 0.0
        self.validate = True

    def __call__(
        self,
        batch_size: int,
        num_patches: int,
        weights: Tensor | None = None,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> MaskSplit:
        """Sample MAE's uniform split: K visible and L - K masked patches per sample.

        Args:
            batch_size: B.
            num_patches: L, patch tokens per sample (prefix tokens excluded).
            weights: must be None; uniform masking takes no weights.
            device: where to sample.
            generator: optional RNG on ``device``; the same seed as MAE's ``torch.rand``
                noise gives MAE's exact ``ids_keep``, ``mask`` and ``ids_restore``.

        Raises:
            ValueError: weights were passed.
        """
        if weights is not None:
            raise ValueError(
                "RandomMasker samples uniformly and takes no weights; use SAMMasker or "
                "AMTMasker for weighted masking"
            )
        return super().__call__(batch_size, num_patches, device=device, generator=generator)

    def __repr__(self) -> str:
        return f"RandomMasker(mask_ratio={self.mask_ratio})"


class _WeightedMasker(Masker):
    """Weighted masking-and-throwing; AMTMasker and SAMMasker differ only in defaults."""

    def __init__(self, mask_ratio: float, throw_ratio: float, *, validate: bool = True) -> None:
        self.mask_ratio, self.throw_ratio = check_ratios(mask_ratio, throw_ratio)
        if not isinstance(validate, bool):
            raise TypeError(f"validate must be a bool, got {type(validate).__name__}")
        self.validate = validate


class AMTMasker(_WeightedMasker):
    """AMT's attention-driven masking and throwing (Gui et al., 2022, arXiv:2211.15362).

    Patches are ordered by a weighted random permutation of self-supervised attention
    weights: the first ``int(L * mask_ratio)`` are masked, then thrown, and the
    ``int(L * (1 - (mask_ratio + throw_ratio)))`` last stay visible (MAE's visible count;
    AMT's own code cuts at ``int(L * (mask_ratio + throw_ratio))``, see
    :func:`~maskkit.split_counts`).

    The same class as :class:`SAMMasker` with AMT's default ratios: what makes a split AMT
    or SAM is where the weights come from (a self-supervised MAE's attention, or a
    supervised encoder's).

    Args:
        mask_ratio: share of patches masked (AMT default 0.45).
        throw_ratio: share of patches thrown (AMT default 0.40).
        validate: check weight values (a device assert on CUDA); off skips the check.

    Raises:
        ValueError: a ratio outside [0, 1] or ``mask_ratio + throw_ratio >= 1``.
    """

    def __init__(
        self, mask_ratio: float = 0.45, throw_ratio: float = 0.40, *, validate: bool = True
    ) -> None:
        super().__init__(mask_ratio, throw_ratio, validate=validate)


class SAMMasker(_WeightedMasker):
    """MSMAE's supervised attention-driven masking, SAM (Mao et al., MSMAE, eq. 6-7).

    The same weighted masking-and-throwing as :class:`AMTMasker` (the two classes differ
    only in their default ratios), driven by the cls attention of a supervised encoder,
    which points at the lesion; defaults from MSMAE Table 4.

    Args:
        mask_ratio: share of patches masked (MSMAE default 0.45).
        throw_ratio: share of patches thrown (MSMAE default 0.30).
        validate: check weight values (a device assert on CUDA); off skips the check.

    Raises:
        ValueError: a ratio outside [0, 1] or ``mask_ratio + throw_ratio >= 1``.
    """

    def __init__(
        self, mask_ratio: float = 0.45, throw_ratio: float = 0.30, *, validate: bool = True
    ) -> None:
        super().__init__(mask_ratio, throw_ratio, validate=validate)
