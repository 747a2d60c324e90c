"""`MaskSplit`: the visible / masked / thrown partition of a batch of patch tokens."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["MaskSplit", "gather_tokens"]

VISIBLE, MASKED, THROWN = 0, 1, -1


def gather_tokens(x: Tensor, indices: Tensor) -> Tensor:
    """Select tokens per sample by index, without boolean indexing.

    Args:
        x: (B, L, D) tokens (or (B, L) per-patch values).
        indices: (B, K) int64 patch indices.

    Returns:
        (B, K, D) (or (B, K)) tokens in the order of ``indices``.
    """
    if x.dim() == 2:
        return x.gather(1, indices)
    batch_size, num_patches = x.shape[:2]
    # Whole-row copies from the flattened batch: on CPU several times faster than
    # ``gather`` with an index expanded over D (benchmarks/bench_masking.py).
    offsets = torch.arange(batch_size, device=x.device).unsqueeze(1) * num_patches
    rows = (indices + offsets).reshape(-1)
    selected = x.reshape(batch_size * num_patches, *x.shape[2:]).index_select(0, rows)
    return selected.view(*indices.shape, *x.shape[2:])


class MaskSplit(NamedTuple):
    """One batch's split of L patches into visible, masked and thrown sets.

    Indices count patch tokens only (no cls or other prefix tokens). Within each group,
    indices run from lowest to highest sampling priority (not sorted by patch); for
    uniform masking ``visible`` is exactly MAE's ``ids_keep``.

    Attributes:
        visible: (B, K) int64, patches the encoder sees.
        masked: (B, M) int64, patches the decoder reconstructs (in the loss).
        thrown: (B, T) int64, patches dropped from encoder, decoder and loss (AMT/MSMAE).
        ids_shuffle: (B, L) int64, ``cat([visible, masked, thrown], 1)``.
        ids_restore: (B, L) int64, ``argsort(ids_shuffle)`` (MAE's convention): position
            of each patch in ``ids_shuffle``.
        labels: (B, L) int8 per patch: 0 = visible, 1 = masked, -1 = thrown.
    """

    visible: Tensor
    masked: Tensor
    thrown: Tensor
    ids_shuffle: Tensor
    ids_restore: Tensor
    labels: Tensor

    @property
    def num_patches(self) -> int:
        """L, the number of patches per sample."""
        return self.ids_shuffle.shape[1]

    def gather_visible(self, x: Tensor) -> Tensor:
        """Visible tokens of ``x`` (B, L, D) → (B, K, D), in the order of ``visible``."""
        return gather_tokens(x, self.visible)

    def gather_masked(self, x: Tensor) -> Tensor:
        """Masked tokens (or reconstruction targets) of ``x`` (B, L, D) → (B, M, D)."""
        return gather_tokens(x, self.masked)

    def mask(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """MAE-style loss mask (B, L): 1 on masked patches, 0 on visible and thrown ones.

        MAE averages its per-patch loss with this mask, so thrown patches stay out of the
        loss, as AMT and MSMAE require.
        """
        return (self.labels == MASKED).to(dtype)

    def kept(self) -> Tensor:
        """Sorted indices of the non-thrown (visible and masked) patches, (B, K + M).

        AMT's decoder and loss see only these patches.
        """
        num_kept = self.visible.shape[1] + self.masked.shape[1]
        return torch.sort(self.ids_shuffle[:, :num_kept], dim=1).values

    def is_visible(self) -> Tensor:
        """(B, L) bool, True on visible patches."""
        return self.labels == VISIBLE

    def is_masked(self) -> Tensor:
        """(B, L) bool, True on masked patches."""
        return self.labels == MASKED

    def is_thrown(self) -> Tensor:
        """(B, L) bool, True on thrown patches."""
        return self.labels == THROWN

    def to(self, device: torch.device | str) -> MaskSplit:
        """Copy every index tensor to ``device``."""
        return MaskSplit(*(t.to(device) for t in self))
