"""`MaskSplit`: the visible / masked / thrown partition of a batch of patch tokens."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import holds

__all__ = ["MaskSplit", "check_indices", "gather_tokens", "labels_of"]

VISIBLE, MASKED, THROWN = 0, 1, -1


def check_indices(name: str, indices: Tensor, num_patches: int, *, distinct: bool = False) -> None:
    """Patch indices must be integers in [0, L) (and, if ``distinct``, differ per row).

    Out-of-range indices would otherwise read a neighbouring sample's token from a
    flattened batch, and repeated ones encode or scatter a patch twice. On CPU this raises
    ``ValueError``; on CUDA (and while compiling) it queues an asynchronous device assert
    instead, so no host sync is added.

    Raises:
        TypeError: ``indices`` is not an integer tensor (e.g. a bool mask).
    """
    if not isinstance(indices, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(indices).__name__}")
    if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
        raise TypeError(
            f"{name} must hold integer patch indices, got dtype {indices.dtype}; from a "
            "MaskSplit pass split.visible (or .masked), not the bool masks of split.is_visible()"
        )
    if indices.numel() == 0:
        return
    low, high = indices.aminmax()
    ok = (low >= 0) & (high < num_patches)
    if distinct and indices.shape[-1] > 1:
        ordered = indices.sort(dim=-1).values
        ok &= (ordered[..., 1:] != ordered[..., :-1]).all()
    if not holds(ok, f"{name} must be distinct patch indices in [0, L)"):
        if not (int(low) >= 0 and int(high) < num_patches):
            raise ValueError(
                f"{name} must lie in [0, {num_patches}) (L = {num_patches} patches), found "
                f"values from {int(low)} to {int(high)}; indices count patch tokens only, "
                "without the cls or other prefix tokens"
            )
        raise ValueError(f"{name} repeats a patch index within a sample; each must be distinct")


def gather_tokens(x: Tensor, indices: Tensor, *, distinct: bool = False) -> Tensor:
    """Select tokens per sample by index, without boolean indexing.

    Args:
        x: (B, L, D) tokens (or (B, L) per-patch values).
        indices: (B, K) int64 patch indices in [0, L).
        distinct: also require the indices of each sample to differ (e.g. the visible
            patches an encoder sees).

    Returns:
        (B, K, D) (or (B, K)) tokens in the order of ``indices``.

    Raises:
        TypeError: ``x`` is not a tensor, or ``indices`` is not an integer tensor.
        ValueError: ``x`` and ``indices`` differ in B, ``indices`` is not 2-D, or an index
            lies outside [0, L) or, with ``distinct``, repeats (on CUDA: a device assert,
            see :func:`check_indices`).
    """
    if not isinstance(x, Tensor) or not isinstance(indices, Tensor):
        raise TypeError(
            f"x and indices must be torch.Tensors, got {type(x).__name__} and "
            f"{type(indices).__name__}"
        )
    if indices.dim() != 2 or x.dim() < 2 or x.shape[0] != indices.shape[0]:
        raise ValueError(
            f"gather_tokens needs x (B, L, ...) and indices (B, K) with the same B, got x "
            f"{tuple(x.shape)} and indices {tuple(indices.shape)}"
        )
    check_indices("indices", indices, x.shape[1], distinct=distinct)
    indices = indices.long()
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

    Indices count patch tokens only (no cls or other prefix tokens). The order within each
    group depends on the builder. From :func:`~maskkit.functional.split_from_priorities`
    (``RandomMasker``, ``AMTMasker``, ``SAMMasker``, ``AttMaskMasker``,
    ``NoisePatternMasker``) and :func:`~maskkit.functional.split_from_ranks`
    (``UnitMasker``), indices run from lowest to highest sampling priority (not sorted by
    patch); for uniform masking ``visible`` is exactly MAE's ``ids_keep``. From
    :func:`~maskkit.functional.split_from_labels` (``BlockMasker``, ``HardPatchMasker``),
    they run in increasing patch index, the order of boolean indexing. Either way
    ``ids_shuffle`` is ``cat([visible, masked, thrown], 1)`` and ``ids_restore`` its
    inverse. Per patch, ``labels`` says
    which group it is in; :meth:`is_visible`, :meth:`is_masked` and :meth:`is_thrown` give
    the same as bool masks and :meth:`loss_mask` as MAE's float loss mask.

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

    def check_tokens(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is (B, L, ...) for this split's B and L.

        A shape check only (no host sync): tokens with the cls token still in, or of
        another batch, would otherwise gather shifted or foreign tokens silently.
        """
        batch_size, num_patches = self.ids_shuffle.shape
        if x.dim() >= 2 and tuple(x.shape[:2]) == (batch_size, num_patches):
            return
        hint = ""
        if x.dim() >= 2 and x.shape[0] == batch_size and x.shape[1] > num_patches:
            extra = x.shape[1] - num_patches
            hint = (
                f"; it has {extra} token(s) too many: drop the prefix (cls, register) tokens "
                f"first, e.g. x[:, {extra}:]"
            )
        raise ValueError(
            f"tokens of shape {tuple(x.shape)} do not match the split of {batch_size} samples "
            f"x {num_patches} patches; expected ({batch_size}, {num_patches}, ...){hint}"
        )

    def gather_visible(self, x: Tensor) -> Tensor:
        """Visible tokens of ``x`` (B, L, D) → (B, K, D), in the order of ``visible``."""
        self.check_tokens(x)
        return gather_tokens(x, self.visible)

    def gather_masked(self, x: Tensor) -> Tensor:
        """Masked tokens (or reconstruction targets) of ``x`` (B, L, D) → (B, M, D)."""
        self.check_tokens(x)
        return gather_tokens(x, self.masked)

    def loss_mask(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """MAE's ``mask`` (B, L): 1 on masked patches, 0 on visible and thrown ones.

        MAE averages its per-patch loss with this mask, so thrown patches stay out of the
        loss, as AMT and MSMAE require. Note that MAE's own ``mask`` is 1 on every patch it
        does not keep; with ``throw_ratio = 0`` the two agree.
        """
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
        return (self.labels == MASKED).to(dtype)

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


def labels_of(split_or_labels: MaskSplit | Tensor) -> Tensor:
    """(B, L) int labels (0 visible, 1 masked, -1 thrown) of a split or of labels.

    A label tensor's values are checked (on the host, where figures and metrics read them;
    a device assert on CUDA): any other value would fall in no group.
    """
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
    unknown = (labels != VISIBLE) & (labels != MASKED) & (labels != THROWN)
    if not holds(~unknown.any(), "labels must be 0, 1 or -1"):
        raise ValueError(
            f"labels must be 0 (visible), 1 (masked) or -1 (thrown), found "
            f"{labels[unknown].unique().tolist()}; pass MaskSplit.labels"
        )
    return labels
