"""Functional core: split counts, weighted random permutations and the three-way split.

Everything here is batched, sync-free and shape-static, so it runs under
``torch.compile(fullgraph=True)`` and CUDA graph capture. The maskers in
:mod:`maskkit.maskers` only store options and call :func:`sample_split`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .split import MaskSplit

__all__ = [
    "SplitCounts",
    "check_ratios",
    "split_counts",
    "flatten_weights",
    "validate_weights",
    "priority_keys",
    "split_from_priorities",
    "sample_split",
]

# Zero-weight patches are pushed below every positive one. Positive float32 weights give
# priorities log(w) + Gumbel in about [-108, 106] (Gumbel noise from float32 uniforms lies
# in [-4.5, 16.7]), so any offset beyond that range keeps the two groups apart.
_ZERO_WEIGHT_OFFSET = 1024.0
_TINY = torch.finfo(torch.float32).tiny


class SplitCounts(tuple[int, int, int]):
    """Per-sample counts ``(n_visible, n_masked, n_thrown)``; they sum to L."""

    __slots__ = ()

    def __new__(cls, n_visible: int, n_masked: int, n_thrown: int) -> SplitCounts:
        return super().__new__(cls, (n_visible, n_masked, n_thrown))

    @property
    def visible(self) -> int:
        """Patches the encoder sees, K."""
        return self[0]

    @property
    def masked(self) -> int:
        """Patches reconstructed and in the loss, M."""
        return self[1]

    @property
    def thrown(self) -> int:
        """Patches dropped from encoder, decoder and loss, T."""
        return self[2]


def check_ratios(mask_ratio: float, throw_ratio: float) -> None:
    """Raise ``ValueError`` unless both ratios lie in [0, 1] and sum to at most 1."""
    for name, value in (("mask_ratio", mask_ratio), ("throw_ratio", throw_ratio)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__}")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    if mask_ratio + throw_ratio > 1.0:
        raise ValueError(
            f"mask_ratio + throw_ratio must be at most 1, got {mask_ratio} + {throw_ratio} = "
            f"{mask_ratio + throw_ratio}; lower one of them"
        )


def split_counts(num_patches: int, mask_ratio: float, throw_ratio: float = 0.0) -> SplitCounts:
    """Per-sample counts of visible, masked and thrown patches.

    MAE's rule fixes the visible count, ``int(L * (1 - mask_ratio - throw_ratio))``; then
    ``n_masked = int(L * mask_ratio)`` and the thrown patches take the rest. With
    ``throw_ratio == 0`` nothing is thrown and the masked patches take the rest, exactly as
    MAE's ``random_masking`` masks every patch it does not keep.

    Raises:
        ValueError: bad ratios, or a split that leaves no visible patch.
    """
    check_ratios(mask_ratio, throw_ratio)
    if isinstance(num_patches, bool) or not isinstance(num_patches, int) or num_patches < 1:
        raise ValueError(f"num_patches must be a positive int, got {num_patches!r}")
    n_visible = int(num_patches * (1.0 - mask_ratio - throw_ratio))
    if n_visible < 1:
        raise ValueError(
            f"mask_ratio={mask_ratio} and throw_ratio={throw_ratio} leave no visible patch out of "
            f"{num_patches}; lower the ratios or use more patches"
        )
    if throw_ratio == 0.0:
        return SplitCounts(n_visible, num_patches - n_visible, 0)
    n_masked = min(int(num_patches * mask_ratio), num_patches - n_visible)
    return SplitCounts(n_visible, n_masked, num_patches - n_visible - n_masked)


def flatten_weights(weights: Tensor, batch_size: int, num_patches: int) -> Tensor:
    """Check the shape and dtype of per-patch weights and return them as float32 (B, L).

    Args:
        weights: (B, L) or (B, gh, gw) with ``gh * gw == L``, any floating dtype.
        batch_size: B.
        num_patches: L.
    """
    if not isinstance(weights, Tensor):
        raise TypeError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(
            f"weights must have a floating dtype, got {weights.dtype}; convert with .float()"
        )
    shape = tuple(weights.shape)
    grid_ok = weights.dim() == 3 and shape[1] * shape[2] == num_patches
    if not ((weights.dim() == 2 and shape[1] == num_patches) or grid_ok) or (
        shape[0] != batch_size
    ):
        raise ValueError(
            f"weights of shape {shape} do not match batch_size={batch_size}, "
            f"num_patches={num_patches}; expected ({batch_size}, {num_patches}) or "
            f"({batch_size}, gh, gw) with gh * gw == {num_patches}"
        )
    return weights.reshape(batch_size, num_patches).float()


def validate_weights(weights: Tensor) -> None:
    """Reject NaN, infinite or negative weights without a host sync on CUDA.

    On CPU this raises ``ValueError``. On CUDA (and while compiling) it queues an
    asynchronous device assert instead, which fails at the next synchronisation point.
    """
    ok = torch.isfinite(weights).all() & (weights >= 0).all()
    if weights.is_cuda or torch.compiler.is_compiling():
        torch._assert_async(ok, "maskkit: weights must be finite and non-negative")
    elif not bool(ok):
        raise ValueError(
            "weights must be finite and non-negative (found NaN, Inf or a negative value); "
            "clean them first, e.g. with weights.nan_to_num(0).clamp_min(0)"
        )


def priority_keys(
    weights: Tensor | None,
    batch_size: int,
    num_patches: int,
    *,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random sampling priorities whose descending order is a weighted random permutation.

    Plackett-Luce: each next patch is drawn with probability proportional to its weight
    among those not yet drawn. Sorting ``log w + Gumbel`` noise in descending order draws
    exactly that (the Gumbel-top-k trick, also behind ``torch.multinomial`` without
    replacement), in float32 whatever the input dtype. Zero-weight patches get priorities
    below every positive one, in uniform random order among themselves; ``None`` weights
    (MAE's uniform noise) or an all-zero row give a uniform permutation.

    Args:
        weights: float32 (B, L) non-negative weights, or None for uniform sampling.
        batch_size: B.
        num_patches: L.
        device: device of the noise when ``weights`` is None.
        generator: optional RNG for reproducible draws.

    Returns:
        (B, L) float32 priorities; higher means drawn earlier, i.e. more likely masked.
    """
    if weights is not None:
        device = weights.device
    noise = torch.rand(
        batch_size, num_patches, device=device, dtype=torch.float32, generator=generator
    )
    if weights is None:
        return noise
    # Gumbel noise -log(-log(U)); clamping U away from 0 keeps every priority finite.
    gumbel = noise.clamp_min_(_TINY).log_().neg_().log_().neg_()
    return torch.where(weights > 0, weights.log() + gumbel, gumbel - _ZERO_WEIGHT_OFFSET)


def split_from_priorities(priorities: Tensor, counts: SplitCounts) -> MaskSplit:
    """Mask the highest priorities, throw the next ones, keep the lowest visible.

    Sorting ascending puts the visible patches first, so with uniform noise the visible
    set and ``ids_shuffle`` are exactly MAE's ``ids_keep`` and ``ids_shuffle``.

    Args:
        priorities: (B, L) float sampling priorities from :func:`priority_keys`.
        counts: per-sample ``(n_visible, n_masked, n_thrown)``.
    """
    n_visible, n_masked, n_thrown = counts
    ascending = torch.argsort(priorities, dim=1)
    visible = ascending[:, :n_visible]
    thrown = ascending[:, n_visible : n_visible + n_thrown]
    masked = ascending[:, n_visible + n_thrown :]
    ids_shuffle = torch.cat([visible, masked, thrown], dim=1) if n_thrown else ascending
    batch_size, num_patches = ascending.shape
    positions = torch.arange(num_patches, device=ascending.device).expand(batch_size, num_patches)
    # The inverse of a permutation by scatter: cheaper than MAE's second argsort.
    ids_restore = torch.empty_like(ids_shuffle).scatter_(1, ids_shuffle, positions)
    group_of_position = torch.cat(
        [
            torch.zeros(n_visible, dtype=torch.int8, device=ascending.device),
            torch.ones(n_masked, dtype=torch.int8, device=ascending.device),
            torch.full((n_thrown,), -1, dtype=torch.int8, device=ascending.device),
        ]
    )
    labels = group_of_position.expand(batch_size, num_patches).gather(1, ids_restore)
    return MaskSplit(
        visible=visible,
        masked=masked,
        thrown=thrown,
        ids_shuffle=ids_shuffle,
        ids_restore=ids_restore,
        labels=labels,
    )


def _same_device(requested: torch.device, actual: torch.device) -> bool:
    # "cuda" names whichever CUDA device is current, so it matches any index.
    return requested.type == actual.type and requested.index in (None, actual.index)


def sample_split(
    batch_size: int,
    num_patches: int,
    weights: Tensor | None = None,
    *,
    mask_ratio: float,
    throw_ratio: float = 0.0,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    validate: bool = True,
) -> MaskSplit:
    """Sample a visible / masked / thrown split for a batch.

    High-weight patches tend to be drawn first and so masked; low-weight ones tend to stay
    visible (MSMAE eq. 6-7, AMT).

    Args:
        batch_size: B.
        num_patches: L, patch tokens per sample (no prefix tokens).
        weights: optional non-negative (B, L) or (B, gh, gw) masking weights.
        mask_ratio: share of patches masked (reconstructed).
        throw_ratio: share of patches thrown (dropped from encoder, decoder and loss).
        device: where to sample when ``weights`` is None; must match ``weights.device`` if both.
        generator: optional RNG for reproducible draws (on the sampling device).
        validate: check the weights' values (finite, non-negative). On CUDA the check is an
            asynchronous device assert; turn it off to skip the extra kernels.

    Returns:
        A :class:`MaskSplit` on the weights' (or ``device``'s) device.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    counts = split_counts(num_patches, mask_ratio, throw_ratio)
    flat_weights = None
    if weights is not None:
        if device is not None and not _same_device(torch.device(device), weights.device):
            raise ValueError(
                f"device={device} differs from weights.device={weights.device}; move the "
                "weights with .to(device) or drop the device argument"
            )
        flat_weights = flatten_weights(weights, batch_size, num_patches)
        if validate:
            validate_weights(flat_weights)
    device = torch.device(device) if device is not None else None
    priorities = priority_keys(
        flat_weights, batch_size, num_patches, device=device, generator=generator
    )
    return split_from_priorities(priorities, counts)
