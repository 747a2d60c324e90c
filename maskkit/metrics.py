"""Lesion hit rate: how much of the ground-truth lesion a masking strategy masks.

MSMAE's claim (Sec. 3.2, Figs. 2 and 5) is that SAM masks the lesion, where random
masking hits it only at the mask ratio. With ground-truth lesion masks (e.g.
:class:`maskkit.SyntheticLesions`) this module turns that claim into a number.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from .patches import patch_grid
from .split import MASKED, THROWN, VISIBLE, MaskSplit

__all__ = ["pixel_mask_to_patches", "lesion_hit_counts", "lesion_hit_rate"]

_GROUPS = {"visible": VISIBLE, "masked": MASKED, "thrown": THROWN}


def pixel_mask_to_patches(mask: Tensor, patch_size: int) -> Tensor:
    """Which patches a pixel mask touches.

    Args:
        mask: (..., H, W) bool pixel mask, e.g. a lesion segmentation.
        patch_size: side p of a square patch; H and W must be multiples of it.

    Returns:
        (..., L) bool in row-major patch order (timm's and :func:`maskkit.patchify`'s):
        True where at least one pixel of the patch is in the mask.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}; compare it, e.g. m > 0")
    height, width = mask.shape[-2:]
    patch_grid((height, width), patch_size)
    pixels = rearrange(
        mask, "... (gh p1) (gw p2) -> ... (gh gw) (p1 p2)", p1=patch_size, p2=patch_size
    )
    return pixels.any(dim=-1)


def _labels_of(split_or_labels: MaskSplit | Tensor) -> Tensor:
    """(B, L) int labels (0 visible, 1 masked, -1 thrown) of a split or of labels."""
    if isinstance(split_or_labels, MaskSplit):
        return split_or_labels.labels
    if not isinstance(split_or_labels, Tensor):
        raise TypeError(
            f"expected a MaskSplit or a (B, L) label tensor, got {type(split_or_labels).__name__}"
        )
    labels = split_or_labels
    if labels.dim() != 2 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be a (B, L) integer tensor (0 visible, 1 masked, -1 thrown), got "
            f"shape {tuple(labels.shape)} and dtype {labels.dtype}; pass MaskSplit.labels"
        )
    return labels


def lesion_hit_counts(
    split_or_labels: MaskSplit | Tensor, lesion_patches: Tensor, *, group: str = "masked"
) -> tuple[int, int]:
    """Lesion patches in ``group`` and all lesion patches, summed over the batch.

    Sum both counts over batches and divide to get a data set's hit rate.

    Args:
        split_or_labels: a :class:`~maskkit.MaskSplit`, or its (B, L) ``labels``.
        lesion_patches: (B, L) bool, True on patches that overlap the lesion
            (:meth:`SyntheticLesions.lesion_patches`, :func:`pixel_mask_to_patches`).
        group: ``"masked"`` (default), ``"thrown"`` or ``"visible"``.

    Returns:
        ``(hits, total)`` ints.
    """
    if group not in _GROUPS:
        raise ValueError(f"group must be one of {list(_GROUPS)}, got {group!r}")
    labels = _labels_of(split_or_labels)
    if not isinstance(lesion_patches, Tensor) or lesion_patches.dtype != torch.bool:
        raise TypeError("lesion_patches must be a bool tensor, True on lesion patches")
    if lesion_patches.shape != labels.shape:
        raise ValueError(
            f"lesion_patches of shape {tuple(lesion_patches.shape)} do not match the split's "
            f"(B, L) = {tuple(labels.shape)}; stack one (L,) row per sample"
        )
    lesion_patches = lesion_patches.to(labels.device)
    hits = (lesion_patches & (labels == _GROUPS[group])).sum()
    return int(hits), int(lesion_patches.sum())


def lesion_hit_rate(
    split_or_labels: MaskSplit | Tensor, lesion_patches: Tensor, *, group: str = "masked"
) -> float:
    """Share of ground-truth lesion patches that a split masks (or throws, or shows).

    Pooled over the batch: the number of lesion patches in ``group`` divided by the number
    of lesion patches, so samples without a lesion add nothing. A thrown lesion patch is
    not masked: it counts for ``group="thrown"``. Uniform random masking has an expected
    masked hit rate of ``M / L``.

    Args:
        split_or_labels: a :class:`~maskkit.MaskSplit`, or its (B, L) ``labels``.
        lesion_patches: (B, L) bool, True on patches that overlap the lesion.
        group: ``"masked"`` (default), ``"thrown"`` or ``"visible"``.

    Returns:
        The hit rate in [0, 1].

    Raises:
        ValueError: no lesion patch in the batch (the rate is undefined; accumulate
            :func:`lesion_hit_counts` over batches instead), or mismatched shapes.
    """
    hits, total = lesion_hit_counts(split_or_labels, lesion_patches, group=group)
    if total == 0:
        raise ValueError(
            "the batch has no lesion patch, so the hit rate is undefined; include samples "
            "with lesions or sum lesion_hit_counts over several batches"
        )
    return hits / total
