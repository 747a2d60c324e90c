"""Block-wise masking (BEiT) and unit masking (SimMIM), batched and sync-free.

Both rank the patches by priorities: the patches with the highest priority are masked, the
next ones thrown, the rest stay visible, so every sample gets exactly the counts of
:func:`maskkit.functional.split_counts`. Neither sorts all L priorities: blocks are split by
a top-k selection (:func:`maskkit.functional.labels_from_priorities`, then
:func:`~maskkit.functional.split_from_labels`: groups in patch order), units by their
ranks, known from a permutation of the units (:func:`~maskkit.functional.split_from_ranks`:
groups in priority order, as from :func:`~maskkit.functional.split_from_priorities`). Every
step is a device kernel over the whole batch (no Python loop over samples, no host sync,
static shapes), so the maskers run under ``torch.compile(fullgraph=True)`` and replay
bit-for-bit from a ``torch.Generator``.

- :class:`BlockMasker`: BEiT's block-wise masking (Bao et al., 2022, arXiv:2106.08254;
  microsoft/unilm ``beit/masking_generator.py``, mmpretrain ``BEiTMaskGenerator``).
- :class:`UnitMasker`: SimMIM's masking of k x k patch units (Xie et al., 2022,
  arXiv:2111.09886; microsoft/SimMIM ``MaskGenerator``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import check_int, check_pair, check_positive
from .functional import (
    check_ratios,
    labels_from_priorities,
    split_from_labels,
    split_from_ranks,
)
from .maskers import Masker
from .split import MaskSplit

__all__ = [
    "BlockMasker",
    "Blocks",
    "UnitMasker",
    "block_priorities",
    "sample_blocks",
    "unit_priorities",
]


# ---- shared helpers (also used by maskkit.noise, maskkit.attmask, maskkit.hardpatch) ------


def _check_grid(grid: object) -> tuple[int, int] | None:
    """``None`` or ``(gh, gw)`` as two positive ints."""
    return None if grid is None else check_pair("grid", grid)


def _resolve_grid(num_patches: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    """The patch grid of L patches: ``grid`` if given (checked against L), else a square."""
    if grid is not None:
        gh, gw = grid
        if gh * gw != num_patches:
            raise ValueError(
                f"grid={grid} has {gh * gw} patches but num_patches={num_patches}; pass the "
                "grid of the images being masked, e.g. maskkit.patch_grid((H, W), patch_size)"
            )
        return gh, gw
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"num_patches={num_patches} is not a square, so the grid is ambiguous; build the "
            "masker with grid=(gh, gw)"
        )
    return side, side


def _check_call(batch_size: int, num_patches: int) -> None:
    check_int("batch_size", batch_size, minimum=1)
    check_int("num_patches", num_patches, minimum=1)


def _refuse_weights(masker: str, source: str, weights: Tensor | None) -> None:
    if weights is not None:
        raise ValueError(
            f"{masker} draws its masks from {source} and takes no weights; use SAMMasker or "
            "AMTMasker for weighted masking"
        )


# ---- BEiT blocks -------------------------------------------------------------------------

MAX_BLOCKS = 52  # block_priorities keeps one bit per block, plus one, in a float64 mantissa
_ASPECT = "a finite ratio > 0"
_AREA = "a finite area > 0 in patches"


class Blocks(NamedTuple):
    """Candidate blocks, N per sample, in the order they are laid on the grid.

    A block is the rectangle of rows ``[top, top + height)`` and columns
    ``[left, left + width)``. ``area`` and ``aspect`` are the drawn target area and
    height/width ratio the integer sides come from (see :func:`sample_blocks`). Blocks that
    do not fit inside the grid have ``valid`` False and cover nothing.

    Attributes:
        top: (B, N) int64 first row.
        left: (B, N) int64 first column.
        height: (B, N) int64 rows.
        width: (B, N) int64 columns.
        area: (B, N) float32 drawn target area, in patches.
        aspect: (B, N) float32 drawn aspect ratio (height / width).
        valid: (B, N) bool, the block fits inside the grid.
    """

    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor
    area: Tensor
    aspect: Tensor
    valid: Tensor


def sample_blocks(
    batch_size: int,
    grid: tuple[int, int],
    *,
    num_blocks: int,
    min_num_patches: float,
    max_num_patches: float,
    min_aspect: float = 0.3,
    max_aspect: float | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Blocks:
    """Draw N random blocks per sample, as BEiT draws each of its blocks.

    For each block: a target area ``A ~ U[min_num_patches, max_num_patches]`` and an aspect
    ratio ``a`` log-uniform in ``[min_aspect, max_aspect]`` (BEiT's draws); integer sides
    ``height = max(1, round(sqrt(A * a)))`` and ``width = ceil(A / height)``, so
    ``height * width >= A >= min_num_patches`` (BEiT rounds both sides, which can fall
    below ``min_num_patches``); a uniform position among those that keep the block inside
    the grid. A block taller or wider than the grid is not valid and covers nothing (BEiT
    retries such a draw).

    Args:
        batch_size: B.
        grid: (gh, gw) patch grid.
        num_blocks: N, candidate blocks per sample.
        min_num_patches: smallest target area.
        max_num_patches: largest target area.
        min_aspect: smallest height/width ratio.
        max_aspect: largest ratio; ``None`` means ``1 / min_aspect`` (needs
            ``min_aspect <= 1``).
        device: where to draw.
        generator: optional RNG on ``device``.

    Returns:
        :class:`Blocks` of (B, N) tensors.

    Raises:
        TypeError: a count, area or ratio of the wrong type.
        ValueError: a count below 1, a bad grid, an area or ratio that is not finite and
            positive, or a range whose largest value is below its smallest.
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    grid = check_pair("grid", grid)
    num_blocks = check_int("num_blocks", num_blocks, minimum=1)
    min_area = check_positive("min_num_patches", min_num_patches, form=_AREA)
    max_area = check_positive("max_num_patches", max_num_patches, form=_AREA)
    if max_area < min_area:
        raise ValueError(
            f"max_num_patches={max_num_patches} is below min_num_patches={min_num_patches}; "
            "swap them"
        )
    min_aspect, max_aspect = _check_aspects(min_aspect, max_aspect)
    offset, sides, area, aspect, valid = _draw_blocks(
        batch_size,
        grid,
        num_blocks,
        min_area,
        max_area,
        min_aspect,
        max_aspect,
        device,
        generator,
    )
    offset, sides = offset.long(), sides.long()
    return Blocks(
        top=offset[..., 0],
        left=offset[..., 1],
        height=sides[..., 0],
        width=sides[..., 1],
        area=area,
        aspect=aspect,
        valid=valid,
    )


def _draw_blocks(
    batch_size: int,
    grid: tuple[int, int],
    num_blocks: int,
    min_num_patches: float,
    max_num_patches: float,
    min_aspect: float,
    max_aspect: float,
    device: torch.device | str | None,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(offset, sides, area, aspect, valid)``: (B, N, 2) float (row, column) offsets and
    sides (integer-valued), (B, N) area and aspect draws, (B, N) bool fits-the-grid."""
    draws = torch.rand(
        batch_size, num_blocks, 4, device=device, dtype=torch.float32, generator=generator
    )
    area = min_num_patches + draws[..., 0] * (max_num_patches - min_num_patches)
    log_low, log_high = math.log(min_aspect), math.log(max_aspect)
    aspect = torch.exp(log_low + draws[..., 1] * (log_high - log_low))
    height = torch.sqrt(area * aspect).round_().clamp_min_(1.0)
    width = torch.ceil(area / height)
    sides = torch.stack([height, width], dim=-1)
    room = torch.stack([grid[0] - height, grid[1] - width], dim=-1)
    valid = (room >= 0).all(dim=-1)
    # Uniform integer offsets in [0, room]; the clamps guard the float rounding of draws
    # close to 1 and the blocks that do not fit (room < 0, offset 0, covering nothing).
    offset = torch.floor(draws[..., 2:] * (room + 1)).minimum(room).clamp_min_(0.0)
    return offset, sides, area, aspect, valid


def block_priorities(
    blocks: Blocks, grid: tuple[int, int], *, generator: torch.Generator | None = None
) -> Tensor:
    """Priorities that mask the blocks one after another, in their order.

    A patch's level is set by the first valid block covering it: patches of block 0 come
    first, then the patches block 1 adds, and so on; patches no block covers come last, in
    uniform random order. Within one block's patches, those nearest the block's centre
    (in the block's own scale, ``((r - r0) / h)^2 + ((c - c0) / w)^2``) come first, ties
    in random order. Cut at any count, the result is whole blocks plus, at most, the
    central part of one more block (a smaller block of about the same shape), and random
    patches only when the blocks cover fewer patches than asked for.

    Args:
        blocks: candidate blocks from :func:`sample_blocks`.
        grid: (gh, gw) patch grid.
        generator: optional RNG for the tie-break and uncovered-patch order.

    Returns:
        (B, L) float32 priorities, L = gh * gw; higher = masked first.
    """
    offset = torch.stack([blocks.top, blocks.left], dim=-1).float()
    sides = torch.stack([blocks.height, blocks.width], dim=-1).float()
    return _block_priorities(offset, sides, blocks.valid, grid, generator)


def _block_priorities(
    offset: Tensor,
    sides: Tensor,
    valid: Tensor,
    grid: tuple[int, int],
    generator: torch.Generator | None,
) -> Tensor:
    gh, gw = grid
    batch_size, num_blocks, _ = offset.shape
    device = offset.device
    size, num_patches = max(gh, gw), gh * gw
    # Block n owns bit N - n (block 0 the highest) and bit 0 is set everywhere. A row's bit
    # set (the blocks spanning it) is a running sum of +bit at a block's first row and -bit
    # past its last (likewise for columns); a cell's set is the AND of its row's and its
    # column's, and its first block is the highest set bit, read exactly from the exponent
    # of the float64 value (N + 1 <= 53 bits): level j = exponent - 1023 = N - n, 0 if none.
    bits = torch.pow(2, torch.arange(num_blocks, 0, -1, device=device, dtype=torch.int64))
    bits = bits * valid
    ends = (offset + sides).clamp_max(size)
    index = torch.cat([offset, ends], dim=1).transpose(1, 2).long()  # (B, 2, 2N)
    values = torch.cat([bits, -bits], dim=1)[:, None, :].expand(batch_size, 2, 2 * num_blocks)
    delta = torch.zeros(batch_size, 2, size + 1, device=device, dtype=torch.int64)
    sets = delta.scatter_add_(2, index, values).cumsum_(dim=2).bitwise_or_(1)  # (B, 2, size + 1)
    cover = sets[:, 0, :gh, None] & sets[:, 1, None, :gw]  # (B, gh, gw)
    level = (cover.view(batch_size, num_patches).double().view(torch.int64) >> 52) - 1023
    # Each cell's squared distance to the centre of its first block, in units of the
    # block's sides: the block's (centre, 1 / sides) gathered per cell from a table whose
    # row j holds level j's block (blocks reversed, a zero row for uncovered cells).
    params = torch.cat([offset + (sides - 1) / 2, sides.reciprocal()], dim=-1)  # (B, N, 4)
    params = torch.nn.functional.pad(params.transpose(1, 2).flip(2), (1, 0))  # (B, 4, N + 1)
    cell = params.gather(2, level[:, None, :].expand(batch_size, 4, num_patches))  # (B, 4, L)
    cells = torch.arange(num_patches, device=device, dtype=torch.float32)
    rows = torch.div(cells, gw, rounding_mode="floor")
    along_r = (rows - cell[:, 0]).mul_(cell[:, 2])
    along_c = (cells - rows * gw - cell[:, 1]).mul_(cell[:, 3])
    dist = along_r.square_().add_(along_c.square_())  # (B, L)
    # dist < 0.5 inside a block, so a covered cell's value lies in (level, level + 0.5];
    # uncovered cells get 0.5 (dist 0). The noise (below 0.01) breaks ties within a block
    # and orders the uncovered cells uniformly at random.
    noise = torch.rand(
        batch_size, num_patches, device=device, dtype=torch.float32, generator=generator
    )
    picked = (level.float() + 0.5).sub_(dist)
    return picked.add_(noise, alpha=0.01)


class BlockMasker(Masker):
    """BEiT's block-wise masking with exact counts (Bao et al., 2022, arXiv:2106.08254).

    BEiT (microsoft/unilm ``masking_generator.py``) lays random blocks on the patch grid
    one sample at a time, in a numpy loop: each block has a target area in
    ``[min_num_patches, remaining]`` and a log-uniform aspect ratio in ``[0.3, 1 / 0.3]``,
    is retried up to 10 times when it would overshoot, and the loop stops when a block
    cannot be placed, so a sample can end with fewer masked patches than asked for.

    maskkit draws ``num_blocks`` candidate blocks per sample at once
    (:func:`sample_blocks`, area in ``[min_num_patches, max_num_patches]``) and turns them
    into priorities (:func:`block_priorities`). The exact-count rule: blocks are masked
    whole, in the order drawn, while they fit in the count; the block that would overshoot
    is cut to its central patches (so the last block is smaller, as BEiT's last blocks are);
    if all blocks together cover fewer patches than the count, uniformly random uncovered
    patches top it up. With ``throw_ratio > 0`` the blocks cover masked and thrown patches
    together: the first blocks are masked, the next thrown.

    Args:
        mask_ratio: share of patches masked. BEiT masks 75 of 196 patches (about 0.4).
        throw_ratio: share of patches thrown after the masked ones (default none).
        min_num_patches: smallest block area (BEiT: 16).
        max_num_patches: largest block area; ``None`` means the number of patches to cover
            per sample (BEiT's default, its ``num_masking_patches``).
        min_aspect: smallest height/width ratio (BEiT: 0.3).
        max_aspect: largest ratio; ``None`` means ``1 / min_aspect`` (needs
            ``min_aspect <= 1``).
        num_blocks: candidate blocks per sample; more lowers the chance of a random top-up
            and costs O(B * num_blocks * L) work.
        grid: (gh, gw) patch grid; ``None`` takes a square grid from L at each call.

    Raises:
        TypeError, ValueError: an option of the wrong type or outside its range.
    """

    def __init__(
        self,
        mask_ratio: float = 0.4,
        *,
        throw_ratio: float = 0.0,
        min_num_patches: int = 16,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        num_blocks: int = 24,
        grid: tuple[int, int] | None = None,
    ) -> None:
        self.mask_ratio, self.throw_ratio = check_ratios(mask_ratio, throw_ratio)
        self.min_num_patches = check_int("min_num_patches", min_num_patches, minimum=1)
        if max_num_patches is not None:
            check_int("max_num_patches", max_num_patches, minimum=min_num_patches)
        self.max_num_patches = max_num_patches
        self.min_aspect, self.max_aspect = _check_aspects(min_aspect, max_aspect)
        self.num_blocks = check_int("num_blocks", num_blocks, minimum=1)
        if self.num_blocks > MAX_BLOCKS:
            raise ValueError(
                f"num_blocks must be at most {MAX_BLOCKS} (one bit each of a float64 mantissa)"
                f", got {num_blocks}; a few dozen blocks already cover any grid"
            )
        self.grid = _check_grid(grid)

    def __call__(
        self,
        batch_size: int,
        num_patches: int,
        weights: Tensor | None = None,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> MaskSplit:
        """Sample block-wise splits for a batch.

        Args:
            batch_size: B.
            num_patches: L, patch tokens per sample (prefix tokens excluded).
            weights: must be None.
            device: where to sample.
            generator: optional RNG on ``device``, for reproducible splits.

        Returns:
            A :class:`~maskkit.MaskSplit` with the counts of :meth:`counts`; each group in
            patch order (:func:`~maskkit.functional.split_from_labels`).

        Raises:
            ValueError: weights were passed, or L does not match the grid.
        """
        _refuse_weights("BlockMasker", "random blocks", weights)
        _check_call(batch_size, num_patches)
        grid = _resolve_grid(num_patches, self.grid)
        counts = self.counts(num_patches)
        target = counts.masked + counts.thrown
        largest = max(self.max_num_patches or target, self.min_num_patches)
        offset, sides, _, _, valid = _draw_blocks(
            batch_size,
            grid,
            self.num_blocks,
            self.min_num_patches,
            largest,
            self.min_aspect,
            self.max_aspect,
            device,
            generator,
        )
        priorities = _block_priorities(offset, sides, valid, grid, generator)
        return split_from_labels(labels_from_priorities(priorities, counts), counts)

    def __repr__(self) -> str:
        return (
            f"BlockMasker(mask_ratio={self.mask_ratio}, throw_ratio={self.throw_ratio}, "
            f"min_num_patches={self.min_num_patches}, max_num_patches={self.max_num_patches}, "
            f"min_aspect={self.min_aspect}, max_aspect={self.max_aspect}, "
            f"num_blocks={self.num_blocks}, grid={self.grid})"
        )


def _check_aspects(min_aspect: object, max_aspect: object) -> tuple[float, float]:
    """``(min_aspect, max_aspect)`` as finite positive floats in order; a ``None`` maximum
    is ``1 / min_aspect``."""
    low = check_positive("min_aspect", min_aspect, form=_ASPECT)
    if max_aspect is None:
        if low > 1.0:
            raise ValueError(
                f"min_aspect={min_aspect} is above 1, so the default max_aspect = 1 / "
                f"min_aspect = {1.0 / low:.4g} is below it; pass min_aspect <= 1 (e.g. "
                f"{1.0 / low:.4g} for the range [{1.0 / low:.4g}, {low:.4g}]) or an explicit "
                f"max_aspect >= {low:.4g}"
            )
        return low, 1.0 / low
    high = check_positive("max_aspect", max_aspect, form=_ASPECT)
    if high < low:
        # None only helps when 1 / min_aspect lies above min_aspect.
        alternative = " or pass max_aspect=None for 1 / min_aspect" if low < 1.0 else ""
        raise ValueError(
            f"max_aspect={max_aspect} is below min_aspect={min_aspect}; swap them{alternative}"
        )
    return low, high


# ---- SimMIM units ------------------------------------------------------------------------


def unit_priorities(
    batch_size: int,
    grid: tuple[int, int],
    unit: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Priorities that mask whole ``unit x unit`` squares of patches in random order.

    Units tile the grid from the top-left corner; when ``unit`` does not divide a side, the
    last row (column) of units is cut to the ``gh % unit`` (``gw % unit``) patches left.
    Every unit, whole or cut, gets a rank from a uniform random permutation of the units,
    shared by all its patches; within a unit, patches follow raster order. Cut at any
    count, the result is whole units plus, at most, part of one unit.

    Args:
        batch_size: B.
        grid: (gh, gw) patch grid.
        unit: k, the unit's side in patches (SimMIM: 32 px units over 16 px patches, 2).
        device: where to draw.
        generator: optional RNG on ``device``.

    Returns:
        (B, L) float32 priorities; higher = masked first.

    Raises:
        TypeError: ``batch_size`` or ``unit`` is not an int.
        ValueError: ``batch_size`` or ``unit`` below 1, a bad grid, or a grid that one unit
            covers whole (``unit >= max(gh, gw)``: no random order is left).
    """
    check_int("batch_size", batch_size, minimum=1)
    grid = check_pair("grid", grid)
    unit = check_int("unit", unit, minimum=1)
    _check_units(unit, grid)
    gh, gw = grid
    units_w = -(-gw // unit)
    order = _unit_order(batch_size, grid, unit, device, generator)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)  # a uniform permutation
    rows = torch.arange(gh, device=order.device)
    cols = torch.arange(gw, device=order.device)
    unit_of_patch = ((rows // unit)[:, None] * units_w + (cols // unit)[None, :]).reshape(-1)
    # Raster position inside the unit, scaled into [0, 0.5): ranks stay apart.
    inside = ((rows % unit)[:, None] * unit + (cols % unit)[None, :]).reshape(-1)
    offset = (unit * unit - 1 - inside).float() * (0.5 / (unit * unit))
    per_patch = rank.gather(1, unit_of_patch.expand(batch_size, gh * gw))
    return per_patch.float() + offset


def _check_units(unit: int, grid: tuple[int, int]) -> None:
    """Reject a grid that a single unit covers.

    Units are cut at the grid's edges, so a unit at least as large as both sides is the
    whole grid: its one rank is no draw, and every sample would mask the same patches.
    """
    gh, gw = grid
    if unit >= gh and unit >= gw:
        side = max(gh, gw)
        fix = f"pass unit <= {side - 1}" if side > 1 else "mask a grid of more than one patch"
        raise ValueError(
            f"unit={unit} covers the whole {gh} x {gw} grid as a single unit, so every draw "
            f"would mask the same patches (units are cut at the grid's edges); {fix}"
        )


def _unit_order(
    batch_size: int,
    grid: tuple[int, int],
    unit: int,
    device: torch.device | str | None,
    generator: torch.Generator | None,
) -> Tensor:
    """(B, U) int64: the units by increasing priority, a uniform random permutation."""
    num_units = -(-grid[0] // unit) * -(-grid[1] // unit)
    noise = torch.rand(
        batch_size, num_units, device=device, dtype=torch.float32, generator=generator
    )
    return torch.argsort(noise, dim=1)


def _unit_ranks(
    batch_size: int,
    grid: tuple[int, int],
    unit: int,
    device: torch.device | str | None,
    generator: torch.Generator | None,
) -> Tensor:
    """Each patch's rank in the ascending order of :func:`unit_priorities` (same draw), (B, L).

    A unit's patches take the ranks from the patches of the units before it; inside a
    unit of ``tall x wide`` patches, patch (i, j) ranks ``tall * wide - 1 - (i * wide + j)``
    (raster order comes last, i.e. is masked first).
    """
    gh, gw = grid
    order = _unit_order(batch_size, grid, unit, device, generator)
    device = order.device
    rows = torch.arange(gh, device=device)
    cols = torch.arange(gw, device=device)
    tall = (gh - rows // unit * unit).clamp_max(unit)  # rows of each patch row's unit
    wide = (gw - cols // unit * unit).clamp_max(unit)
    unit_of_patch = ((rows // unit)[:, None] * -(-gw // unit) + (cols // unit)[None, :]).reshape(-1)
    inside = (rows % unit)[:, None] * wide + (cols % unit)[None, :]
    within = (tall[:, None] * wide - 1 - inside).reshape(-1)
    sizes = (tall[::unit, None] * wide[::unit]).reshape(-1)  # (U,) patches per unit
    ordered_sizes = sizes.expand_as(order).gather(1, order)
    start = ordered_sizes.cumsum(1) - ordered_sizes
    first = torch.empty_like(start).scatter_(1, order, start)  # each unit's first rank
    return first.gather(1, unit_of_patch.expand(batch_size, gh * gw)) + within


class UnitMasker(Masker):
    """SimMIM's uniform masking of k x k patch units (Xie et al., 2022, arXiv:2111.09886).

    SimMIM (microsoft/SimMIM ``MaskGenerator``) masks ``ceil(units * mask_ratio)`` random
    units of ``mask_patch_size`` pixels (32) over the model's patches (e.g. 16 px, so
    ``unit=2``), per sample in numpy, and needs the image to be a multiple of the unit.

    maskkit ranks the units by one random permutation per sample
    (:func:`unit_priorities`). The rules:

    - *Any grid.* Units tile the grid from the top-left; when ``unit`` does not divide
      ``gh`` (``gw``), the last row (column) of units is cut to the patches left, and these
      smaller units are drawn like the others. A grid that one unit covers whole
      (``unit >= max(gh, gw)``) leaves nothing to draw and is rejected.
    - *Exact count.* The per-sample counts are :func:`~maskkit.split_counts`'s, in patches:
      whole units are masked in random order while they fit; the unit that would overshoot
      is cut (its patches masked in raster order from its top-left). So every unit is fully
      in or out of the masked set except at most one (one more at the thrown / visible
      border when ``throw_ratio > 0``). SimMIM's own count, whole units only, is the special
      case where ``L - int(L * (1 - mask_ratio))`` is a multiple of ``unit ** 2``.

    Args:
        mask_ratio: share of patches masked (SimMIM: 0.6).
        unit: k, the unit's side in patches (SimMIM: 32 px / 16 px = 2).
        throw_ratio: share of patches thrown after the masked ones (default none).
        grid: (gh, gw) patch grid; ``None`` takes a square grid from L at each call. It
            must hold more than one unit (``unit < max(gh, gw)``), else no draw is left.

    Raises:
        TypeError, ValueError: an option of the wrong type or outside its range, or a
            ``grid`` that one unit covers whole.
    """

    def __init__(
        self,
        mask_ratio: float = 0.6,
        unit: int = 2,
        *,
        throw_ratio: float = 0.0,
        grid: tuple[int, int] | None = None,
    ) -> None:
        self.mask_ratio, self.throw_ratio = check_ratios(mask_ratio, throw_ratio)
        self.unit = check_int("unit", unit, minimum=1)
        self.grid = _check_grid(grid)
        if self.grid is not None:
            _check_units(self.unit, self.grid)

    def __call__(
        self,
        batch_size: int,
        num_patches: int,
        weights: Tensor | None = None,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> MaskSplit:
        """Sample unit-masking splits for a batch.

        Args:
            batch_size: B.
            num_patches: L, patch tokens per sample (prefix tokens excluded).
            weights: must be None.
            device: where to sample.
            generator: optional RNG on ``device``, for reproducible splits.

        Returns:
            A :class:`~maskkit.MaskSplit` with the counts of :meth:`counts`; each group in
            increasing priority, as ``split_from_priorities(unit_priorities(...))`` with
            the same generator gives.

        Raises:
            ValueError: weights were passed, L does not match the grid, or the unit covers
                the whole grid.
        """
        _refuse_weights("UnitMasker", "random units", weights)
        _check_call(batch_size, num_patches)
        grid = _resolve_grid(num_patches, self.grid)
        if self.grid is None:
            _check_units(self.unit, grid)
        ranks = _unit_ranks(batch_size, grid, self.unit, device, generator)
        return split_from_ranks(ranks, self.counts(num_patches))

    def __repr__(self) -> str:
        return (
            f"UnitMasker(mask_ratio={self.mask_ratio}, unit={self.unit}, "
            f"throw_ratio={self.throw_ratio}, grid={self.grid})"
        )
