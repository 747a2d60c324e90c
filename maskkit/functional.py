"""Functional core: split counts, weighted random permutations and the three-way split.

Everything here is batched, sync-free and shape-static, so it runs under
``torch.compile(fullgraph=True)`` and CUDA graph capture. The maskers in
:mod:`maskkit.maskers` only store options and call :func:`sample_split`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_int, check_ratio, holds
from .split import MASKED, THROWN, MaskSplit

__all__ = [
    "SplitCounts",
    "check_ratios",
    "split_counts",
    "flatten_weights",
    "validate_weights",
    "priority_keys",
    "split_from_priorities",
    "labels_from_priorities",
    "split_from_labels",
    "split_from_ranks",
    "sample_split",
    "check_device",
    "check_finite",
]

# Zero-weight patches are pushed below every positive one. Positive float64 weights give
# priorities log(w) + Gumbel in about [-750, 727] (float32: [-108, 106]; Gumbel noise from
# float32 uniforms lies in [-4.5, 16.7]), so an offset of 1024 keeps the two groups apart.
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


def check_ratios(mask_ratio: float, throw_ratio: float) -> tuple[float, float]:
    """Return the ratios as floats if both lie in [0, 1] and their sum is below 1.

    A sum of 1 (or more) leaves no patch visible for any L, so it is rejected here, where a
    masker is built, rather than at its first call.

    Raises:
        TypeError: a ratio is not a real number.
        ValueError: a ratio outside [0, 1], or ``mask_ratio + throw_ratio >= 1``.
    """
    mask_ratio = check_ratio("mask_ratio", mask_ratio)
    throw_ratio = check_ratio("throw_ratio", throw_ratio)
    total = mask_ratio + throw_ratio
    # Within 1e-9 of 1 counts as 1 (0.7 + 0.3 is 0.9999999999999999 in floats); no math.*
    # call, which torch.compile cannot trace on a symbolic float.
    if total >= 1.0 - 1e-9:
        raise ValueError(
            f"mask_ratio + throw_ratio must be below 1, got {mask_ratio} + {throw_ratio} = "
            f"{total}: no patch would stay visible; lower one of them"
        )
    return mask_ratio, throw_ratio


def split_counts(num_patches: int, mask_ratio: float, throw_ratio: float = 0.0) -> SplitCounts:
    """Per-sample counts of visible, masked and thrown patches.

    The visible count is MAE's and Hugging Face ViTMAE's, computed with the same float
    expression, ``int(L * (1 - (mask_ratio + throw_ratio)))``, so a masker with ratios
    ``(m, t)`` keeps exactly the patches those models keep with ``mask_ratio = m + t``.
    Then ``n_masked = int(L * mask_ratio)`` (capped so that nothing goes negative) and the
    thrown patches take the rest. With ``throw_ratio == 0`` the masked patches take the
    rest, as MAE's ``random_masking`` masks every patch it does not keep.

    AMT (guijiejie/AMT) cuts its order at ``int(L * m)`` and ``int(L * (m + t))`` instead,
    which can keep one patch more or fewer than this rule; maskkit follows MAE for every
    masker so that visible counts agree with the host model.

    Raises:
        ValueError: bad ratios, or a split that leaves no visible patch.
    """
    mask_ratio, throw_ratio = check_ratios(mask_ratio, throw_ratio)
    num_patches = check_int("num_patches", num_patches, minimum=1)
    n_visible = int(num_patches * (1 - (mask_ratio + throw_ratio)))
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
    """Check the shape and dtype of per-patch weights and return them as (B, L).

    Args:
        weights: (B, L) or (B, gh, gw) with ``gh * gw == L``, any floating dtype (kept).
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
    return weights.reshape(batch_size, num_patches)


def validate_weights(weights: Tensor) -> None:
    """Reject NaN, infinite or negative weights; no host sync on CUDA.

    On CPU this raises ``ValueError`` naming the first problem found. On CUDA (and while
    compiling) it queues one asynchronous device assert instead, which fails at the next
    synchronisation point.
    """
    finite = torch.isfinite(weights)
    if holds(finite.all() & (weights >= 0).all(), "weights must be finite and non-negative"):
        return
    if bool(weights.isnan().any()):
        raise ValueError(
            "weights contain NaN; attention maps come out NaN when the images fed to the "
            "extractor hold NaN pixels or the model has diverged: check those first"
        )
    if not bool(finite.all()):
        raise ValueError("weights contain Inf; pass finite weights, e.g. normalised to [0, 1]")
    raise ValueError(
        f"weights must be non-negative, found {float(weights.min())}; masking weights "
        "are unnormalised probabilities, e.g. attention maps or their min-max rescaling"
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
    replacement), in float32 whatever the input dtype. float64 weights are logged before
    the cast, so any positive finite float64 keeps its relative size (tiny or huge weights
    neither underflow to 0 nor overflow to Inf). Zero-weight patches get priorities
    below every positive one, in uniform random order among themselves; ``None`` weights
    (MAE's uniform noise) or an all-zero row give a uniform permutation.

    Args:
        weights: (B, L) non-negative floating weights, or None for uniform sampling.
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
    if weights.dtype != torch.float64:
        weights = weights.float()
    log_weights = weights.log().float()
    return torch.where(weights > 0, log_weights + gumbel, gumbel - _ZERO_WEIGHT_OFFSET)


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


def _split_from_restore(ids_restore: Tensor, labels: Tensor, counts: SplitCounts) -> MaskSplit:
    """The split whose patch ``l`` sits at ``ids_restore[:, l]`` of ``ids_shuffle``."""
    n_visible, n_masked, _ = counts
    batch_size, num_patches = ids_restore.shape
    patches = torch.arange(num_patches, device=ids_restore.device).expand(batch_size, num_patches)
    ids_shuffle = torch.empty_like(ids_restore).scatter_(1, ids_restore, patches)
    return MaskSplit(
        visible=ids_shuffle[:, :n_visible],
        masked=ids_shuffle[:, n_visible : n_visible + n_masked],
        thrown=ids_shuffle[:, n_visible + n_masked :],
        ids_shuffle=ids_shuffle,
        ids_restore=ids_restore,
        labels=labels,
    )


def split_from_ranks(ranks: Tensor, counts: SplitCounts) -> MaskSplit:
    """:func:`split_from_priorities` for priorities already ranked: no sort.

    For strategies whose order is known without sorting (e.g. SimMIM's units, whose
    order is a permutation of a few units): the result equals
    ``split_from_priorities(ranks.float(), counts)``, within-group order included.

    Args:
        ranks: (B, L) int64, each row a permutation of ``0 .. L - 1``: each patch's
            position in ascending priority order (0 = lowest priority, kept first).
            Not checked (that would need a host sync).
        counts: per-sample ``(n_visible, n_masked, n_thrown)``.
    """
    n_visible, n_masked, n_thrown = counts
    num_patches = ranks.shape[1]
    device = ranks.device
    # Lookup tables by rank. Ascending order is visible, thrown, masked, while ids_shuffle
    # is visible, masked, thrown: thrown ranks move M places on, masked ones T places back.
    group = torch.zeros(num_patches, dtype=torch.int8, device=device)
    group[n_visible : n_visible + n_thrown] = THROWN
    group[n_visible + n_thrown :] = MASKED
    labels = group.expand_as(ranks).gather(1, ranks)
    ids_restore = ranks
    if n_thrown:
        position = torch.arange(num_patches, device=device)
        position[n_visible : n_visible + n_thrown] += n_masked
        position[n_visible + n_thrown :] -= n_thrown
        ids_restore = position.expand_as(ranks).gather(1, ranks)
    return _split_from_restore(ids_restore, labels, counts)


def _topk_keys(values: Tensor) -> Tensor:
    """``values`` or, for float32 on CPU, int32 keys in the same order (for ``torch.topk``).

    A float32's bits read as an int32 grow with the float when it is non-negative and
    shrink when it is negative; flipping the low 31 bits of the negative ones makes the
    order the float order (-0.0 then sorts just below 0.0). ``torch.topk`` on CPU selects
    int32 keys about 1.3x faster than floats, whose comparison also checks for NaN.
    Elsewhere the values are returned unchanged.
    """
    if values.dtype != torch.float32 or values.device.type != "cpu":
        return values
    bits = values.view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def labels_from_priorities(priorities: Tensor, counts: SplitCounts) -> Tensor:
    """The groups :func:`split_from_priorities` would make, as labels, without its sort.

    The ``n_masked`` highest priorities are masked, the next ``n_thrown`` thrown and the
    rest visible, selected with ``torch.topk``, which is several times cheaper than a full
    sort on CPU. Ties between priorities may be broken differently from the sort.

    Args:
        priorities: (B, L) float sampling priorities; higher = masked first.
        counts: per-sample ``(n_visible, n_masked, n_thrown)``.

    Returns:
        (B, L) int8 labels: 0 visible, 1 masked, -1 thrown (``MaskSplit.labels``).
    """
    _, n_masked, n_thrown = counts
    top = torch.topk(_topk_keys(priorities), n_masked + n_thrown, dim=1, sorted=False)
    labels = torch.zeros(priorities.shape, dtype=torch.int8, device=priorities.device)
    # scatter_ from a tensor rather than a Python number: about 2.5x faster on CPU.
    if n_thrown == 0:
        return labels.scatter_(
            1, top.indices, torch.full_like(top.indices, MASKED, dtype=torch.int8)
        )
    highest = top.indices.gather(1, torch.topk(top.values, n_masked, dim=1, sorted=False).indices)
    labels.scatter_(1, top.indices, torch.full_like(top.indices, THROWN, dtype=torch.int8))
    return labels.scatter_(1, highest, torch.full_like(highest, MASKED, dtype=torch.int8))


def split_from_labels(labels: Tensor, counts: SplitCounts) -> MaskSplit:
    """The split with the given labels, each group in patch order: no sort.

    For strategies that decide each patch's group directly (e.g. with
    :func:`labels_from_priorities`). Each group is compacted in increasing patch index, the
    order boolean indexing (``x[split.is_visible()]``) gives, by a running count per group
    and one scatter: O(L) per sample.

    Args:
        labels: (B, L) int8, 0 visible, 1 masked, -1 thrown, with exactly ``counts`` of each
            in every row. Not checked (that would need a host sync): other counts give a
            corrupt split.
        counts: per-sample ``(n_visible, n_masked, n_thrown)``.

    Returns:
        A :class:`MaskSplit` whose ``visible``, ``masked`` and ``thrown`` are sorted by patch.
    """
    n_visible, n_masked, n_thrown = counts
    patch = torch.arange(labels.shape[1], device=labels.device, dtype=torch.int32)
    # Position in ids_shuffle: the group's offset plus the patches of the group up to this
    # one, minus one. Written with ops that are vectorised on CPU: int32 arithmetic rather
    # than torch.where, logical_not / clamp_min rather than == on int8 (10x slower).
    visible = labels.logical_not()  # label 0
    seen_visible = visible.cumsum(1, dtype=torch.int32)
    if n_thrown == 0:
        other = (patch + n_visible) - seen_visible  # masked: K + (l + 1 - seen_visible) - 1
    else:
        masked = labels.clamp_min(0).bool()  # label 1
        seen_masked = masked.cumsum(1, dtype=torch.int32)
        other = (patch + (n_visible + n_masked)) - seen_visible - seen_masked  # thrown
        other += masked * ((seen_masked + (n_visible - 1)) - other)
    position = other + visible * ((seen_visible - 1) - other)
    return _split_from_restore(position.long(), labels, counts)


def _same_device(requested: torch.device, actual: torch.device) -> bool:
    # "cuda" names whichever CUDA device is current, so it matches any index.
    return requested.type == actual.type and requested.index in (None, actual.index)


def check_device(name: str, values: Tensor, device: torch.device | str | None) -> None:
    """``device`` must be None or name the device ``values`` live on."""
    if device is not None and not _same_device(torch.device(device), values.device):
        raise ValueError(
            f"device={device} differs from {name}.device={values.device}; move the {name} "
            "with .to(device) or drop the device argument"
        )


def check_finite(name: str, values: Tensor) -> None:
    """Reject NaN or infinite values: ``ValueError`` on CPU, an async device assert on CUDA
    and while compiling (no host sync)."""
    if not holds(torch.isfinite(values).all(), f"{name} must be finite"):
        raise ValueError(
            f"{name} holds NaN or Inf; check the model that produced it (a diverged model or "
            "NaN inputs), or clean it with torch.nan_to_num"
        )


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
    check_int("batch_size", batch_size, minimum=1)
    counts = split_counts(num_patches, mask_ratio, throw_ratio)
    flat_weights = None
    if weights is not None:
        check_device("weights", weights, device)
        flat_weights = flatten_weights(weights, batch_size, num_patches)
        if validate:
            validate_weights(flat_weights)
    device = torch.device(device) if device is not None else None
    priorities = priority_keys(
        flat_weights, batch_size, num_patches, device=device, generator=generator
    )
    return split_from_priorities(priorities, counts)
