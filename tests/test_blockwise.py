"""Block-wise (BEiT) and unit (SimMIM) masking: counts, partitions, block shapes, units."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit.blockwise import (
    MAX_BLOCKS,
    BlockMasker,
    UnitMasker,
    block_priorities,
    sample_blocks,
    unit_priorities,
)
from maskkit.functional import split_counts, split_from_priorities
from maskkit.split import MaskSplit


def check_partition(split: MaskSplit, batch_size: int, num_patches: int) -> None:
    """visible ∪ masked ∪ thrown = arange(L), each exactly once, and consistent labels."""
    every = torch.cat([split.visible, split.masked, split.thrown], dim=1)
    assert torch.equal(every, split.ids_shuffle)
    expected = torch.arange(num_patches, device=every.device).expand(batch_size, num_patches)
    assert torch.equal(every.sort(dim=1).values, expected)
    assert torch.equal(split.ids_shuffle.gather(1, split.ids_restore), expected)
    for indices, code in ((split.visible, 0), (split.masked, 1), (split.thrown, -1)):
        assert (split.labels.gather(1, indices) == code).all()


def assert_frequency(observed: float, expected: float, draws: int) -> None:
    # Six binomial standard errors: a false alarm is about 1e-9.
    bound = 6 * math.sqrt(max(expected * (1 - expected), 1e-12) / draws) + 1e-9
    assert abs(observed - expected) <= bound, (observed, expected, bound)


ratio_pairs = st.tuples(st.floats(0.0, 0.9), st.floats(0.0, 0.5)).filter(
    lambda pair: pair[0] + pair[1] < 0.95
)


# ---- BEiT blocks ---------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    batch_size=st.integers(1, 5),
    grid=st.tuples(st.integers(1, 16), st.integers(1, 16)),
    ratios=ratio_pairs,
    min_num_patches=st.integers(1, 12),
    num_blocks=st.integers(1, 30),
    seed=st.integers(0, 2**31 - 1),
)
def test_block_counts_are_exact_and_partition_the_grid(
    batch_size: int,
    grid: tuple[int, int],
    ratios: tuple[float, float],
    min_num_patches: int,
    num_blocks: int,
    seed: int,
) -> None:
    num_patches = grid[0] * grid[1]
    mask_ratio, throw_ratio = ratios
    if int(num_patches * (1 - (mask_ratio + throw_ratio))) < 1:
        return  # no visible patch: split_counts' own error, tested in test_functional
    masker = BlockMasker(
        mask_ratio,
        throw_ratio=throw_ratio,
        min_num_patches=min_num_patches,
        num_blocks=num_blocks,
        grid=grid,
    )
    split = masker(batch_size, num_patches, generator=torch.Generator().manual_seed(seed))
    check_partition(split, batch_size, num_patches)
    counts = split_counts(num_patches, mask_ratio, throw_ratio)
    assert split.masked.shape == (batch_size, counts.masked)
    assert split.thrown.shape == (batch_size, counts.thrown)
    again = masker(batch_size, num_patches, generator=torch.Generator().manual_seed(seed))
    assert all(torch.equal(a, b) for a, b in zip(split, again))


def test_blocks_follow_beits_draws() -> None:
    draws, grid = 20_000, (14, 14)
    blocks = sample_blocks(
        draws // 10,
        grid,
        num_blocks=10,
        min_num_patches=16,
        max_num_patches=75,
        generator=torch.Generator().manual_seed(0),
    )
    area, aspect = blocks.area, blocks.aspect
    assert (area >= 16).all() and (area <= 75).all()
    assert (aspect >= 0.3 * (1 - 1e-6)).all() and (aspect <= (1 / 0.3) * (1 + 1e-6)).all()
    # The documented integer sides: h = max(1, round(sqrt(A a))), w = ceil(A / h) >= A / h.
    expected_h = torch.sqrt(area * aspect).round().clamp_min(1)
    assert torch.equal(blocks.height.float(), expected_h)
    assert torch.equal(blocks.width.float(), torch.ceil(area / expected_h))
    assert (blocks.height * blocks.width >= 16).all()  # blocks of at least min_num_patches
    # Valid iff the block fits; valid blocks lie inside the grid.
    fits = (blocks.height <= 14) & (blocks.width <= 14)
    assert torch.equal(blocks.valid, fits)
    inside = (blocks.top >= 0) & (blocks.left >= 0)
    inside &= (blocks.top + blocks.height <= 14) & (blocks.left + blocks.width <= 14)
    assert inside[blocks.valid].all()
    # Log-uniform aspect: log(a) uniform on [log 0.3, -log 0.3], ten equal bins.
    position = (aspect.log() - math.log(0.3)) / (-2 * math.log(0.3))
    counts = torch.histc(position, bins=10, min=0, max=1) / draws
    for share in counts.tolist():
        assert_frequency(share, 0.1, draws)
    # Uniform area in [16, 75].
    area_bins = torch.histc(area, bins=5, min=16, max=75) / draws
    for share in area_bins.tolist():
        assert_frequency(share, 0.2, draws)
    # Uniform offsets for the most frequent block shape: 14 - h + 1 rows, 14 - w + 1 columns.
    shapes = blocks.height * 100 + blocks.width
    mode = int(shapes[blocks.valid].mode().values)
    height, width = divmod(mode, 100)
    chosen = blocks.valid & (shapes == mode)
    total = int(chosen.sum())
    assert total > 300
    for offsets, positions in ((blocks.top, 15 - height), (blocks.left, 15 - width)):
        shares = torch.bincount(offsets[chosen], minlength=positions).double() / total
        assert shares.numel() == positions
        for share in shares.tolist():
            assert_frequency(share, 1 / positions, total)


def _levels(blocks, grid: tuple[int, int], row: int) -> torch.Tensor:
    """Reference: per cell, the index of the first valid block covering it (N if none)."""
    gh, gw = grid
    num_blocks = blocks.top.shape[1]
    first = torch.full((gh, gw), num_blocks, dtype=torch.long)
    for n in reversed(range(num_blocks)):
        if not blocks.valid[row, n]:
            continue
        t, left = int(blocks.top[row, n]), int(blocks.left[row, n])
        h, w = int(blocks.height[row, n]), int(blocks.width[row, n])
        first[t : t + h, left : left + w] = n
    return first.reshape(-1)


@pytest.mark.parametrize(
    ("mask_ratio", "num_blocks", "grid"),
    [(0.4, 24, (14, 14)), (0.75, 24, (14, 14)), (0.5, 2, (10, 12)), (0.3, 8, (28, 28))],
)
def test_masks_are_whole_blocks_in_order_then_one_cut_block_then_random(
    mask_ratio: float, num_blocks: int, grid: tuple[int, int]
) -> None:
    batch_size, num_patches = 64, grid[0] * grid[1]
    masker = BlockMasker(mask_ratio, num_blocks=num_blocks, grid=grid)
    split = masker(batch_size, num_patches, generator=torch.Generator().manual_seed(3))
    # The masker draws the blocks first from its generator: the same seed gives them back.
    blocks = sample_blocks(
        batch_size,
        grid,
        num_blocks=num_blocks,
        min_num_patches=16,
        max_num_patches=split_counts(num_patches, mask_ratio).masked,
        generator=torch.Generator().manual_seed(3),
    )
    num_masked = split.masked.shape[1]
    topped_up = 0
    for row in range(batch_size):
        first = _levels(blocks, grid, row)
        masked = split.is_masked()[row]
        before = 0
        for n in range(num_blocks + 1):
            cells = first == n
            size = int(cells.sum())
            if n == num_blocks:  # uncovered cells: only a random top-up
                assert int(masked[cells].sum()) == max(num_masked - before, 0)
                topped_up += int(num_masked > before)
                break
            if before + size <= num_masked:
                assert masked[cells].all(), "a block that fits the count is masked whole"
            elif before < num_masked:
                # The cut block keeps its central cells: every masked cell of it is at most
                # the tie-break (0.01) farther from the centre than any unmasked one.
                assert int(masked[cells].sum()) == num_masked - before
                t, left = int(blocks.top[row, n]), int(blocks.left[row, n])
                h, w = int(blocks.height[row, n]), int(blocks.width[row, n])
                r = torch.arange(num_patches) // grid[1]
                c = torch.arange(num_patches) % grid[1]
                dist = ((r - t - (h - 1) / 2) / h) ** 2 + ((c - left - (w - 1) / 2) / w) ** 2
                inside, outside = dist[cells & masked], dist[cells & ~masked]
                assert inside.max() <= outside.min() + 0.01 + 1e-6
            else:
                assert not masked[cells].any(), "blocks past the count stay unmasked"
            before += size
    if num_blocks >= 8 and grid == (14, 14) and mask_ratio <= 0.4:
        assert topped_up == 0  # the defaults cover BEiT's 40% without random patches


def test_top_up_is_uniform_over_uncovered_patches() -> None:
    # One 1 x 1 block (area 1, aspect 1) at a uniform position; the rest is random top-up.
    draws, grid = 20_000, (3, 3)
    masker = BlockMasker(
        0.45, min_num_patches=1, max_num_patches=1, min_aspect=1.0, num_blocks=1, grid=grid
    )
    split = masker(draws, 9, generator=torch.Generator().manual_seed(4))
    assert split.masked.shape[1] == 5
    # By symmetry each patch is masked with probability 5 / 9.
    for share in split.is_masked().double().mean(0).tolist():
        assert_frequency(share, 5 / 9, draws)


def test_block_priorities_order_levels_then_centres() -> None:
    blocks = sample_blocks(
        16, (14, 14), num_blocks=6, min_num_patches=4, max_num_patches=30,
        generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    priorities = block_priorities(blocks, (14, 14), generator=torch.Generator().manual_seed(6))
    assert priorities.shape == (16, 196) and priorities.dtype == torch.float32
    for row in range(16):
        first = _levels(blocks, (14, 14), row)
        level = torch.where(first < 6, 6 - first, 0)
        assert torch.equal(priorities[row].floor().long(), level)


@pytest.mark.parametrize(
    ("mask_ratio", "throw_ratio", "grid"), [(0.4, 0.0, (14, 14)), (0.5, 0.2, (10, 12))]
)
def test_block_masker_makes_the_groups_of_its_priorities(
    mask_ratio: float, throw_ratio: float, grid: tuple[int, int]
) -> None:
    """The top-k split has the groups the full sort of block_priorities would give."""
    batch_size, num_patches = 64, grid[0] * grid[1]
    masker = BlockMasker(mask_ratio, throw_ratio=throw_ratio, grid=grid)
    split = masker(batch_size, num_patches, generator=torch.Generator().manual_seed(11))
    counts = masker.counts(num_patches)
    generator = torch.Generator().manual_seed(11)  # the masker's draws, in its order
    blocks = sample_blocks(
        batch_size,
        grid,
        num_blocks=24,
        min_num_patches=16,
        max_num_patches=counts.masked + counts.thrown,
        generator=generator,
    )
    priorities = block_priorities(blocks, grid, generator=generator)
    reference = split_from_priorities(priorities, counts)
    # Exact ties (float32 keys near a level of ~20 keep ~12 bits of the tie-break noise)
    # may be broken differently by the selection and the sort; nothing else may differ.
    tied = (priorities.sort(dim=1).values.diff(dim=1) == 0).any(dim=1)
    same = (split.labels == reference.labels).all(dim=1)
    assert (same | tied).all() and same.float().mean() > 0.9
    for got, want in zip(split[:3], reference[:3]):  # groups in patch order
        assert torch.equal(got[same], want[same].sort(dim=1).values)


def test_block_masker_options_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="min_num_patches must be an int >= 1"):
        BlockMasker(min_num_patches=0)
    with pytest.raises(TypeError, match="min_num_patches must be an int"):
        BlockMasker(min_num_patches=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_num_patches must be an int >= 16"):
        BlockMasker(max_num_patches=8)
    with pytest.raises(ValueError, match="min_aspect must be a finite ratio > 0"):
        BlockMasker(min_aspect=0.0)
    with pytest.raises(ValueError, match="max_aspect=0.2 is below min_aspect"):
        BlockMasker(min_aspect=0.3, max_aspect=0.2)
    with pytest.raises(ValueError, match="max_aspect=2.0 is below min_aspect=3.0; swap them$"):
        BlockMasker(min_aspect=3.0, max_aspect=2.0)
    with pytest.raises(ValueError, match=f"at most {MAX_BLOCKS}"):
        BlockMasker(num_blocks=MAX_BLOCKS + 1)
    with pytest.raises(ValueError, match="grid must be two positive ints"):
        BlockMasker(grid=(14, 0))
    with pytest.raises(ValueError, match="below 1"):
        BlockMasker(0.7, throw_ratio=0.3)
    assert "num_blocks=24" in repr(BlockMasker())


def test_min_aspect_above_one_without_max_aspect_names_the_cause() -> None:
    # The default max_aspect, 1 / min_aspect, falls below a min_aspect above 1.
    cause = r"min_aspect=3.0 is above 1, so the default max_aspect = 1 / min_aspect = 0.3333"
    fix = r"pass min_aspect <= 1 \(e.g. 0.3333 for the range \[0.3333, 3\]\)"
    with pytest.raises(ValueError, match=f"{cause} is below it; {fix}"):
        BlockMasker(min_aspect=3.0)
    with pytest.raises(ValueError, match=cause):
        sample_blocks(2, (4, 4), num_blocks=3, min_num_patches=2, max_num_patches=5, min_aspect=3.0)
    assert BlockMasker(min_aspect=1.0).max_aspect == 1.0  # square blocks only
    assert BlockMasker(min_aspect=3.0, max_aspect=4.0).max_aspect == 4.0


def test_sample_blocks_checks_its_arguments() -> None:
    def draw(**options: object) -> None:
        defaults: dict[str, object] = {"num_blocks": 3, "min_num_patches": 2, "max_num_patches": 5}
        sample_blocks(2, (4, 4), **{**defaults, **options})  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="max_num_patches=2 is below min_num_patches=5; swap"):
        draw(min_num_patches=5, max_num_patches=2)
    for name in ("min_aspect", "max_aspect"):
        for bad in (0, -1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"{name} must be a finite ratio > 0, got"):
                draw(**{name: bad})
    with pytest.raises(ValueError, match="max_aspect=0.5 is below min_aspect=0.6; swap them"):
        draw(min_aspect=0.6, max_aspect=0.5)
    for name in ("min_num_patches", "max_num_patches"):
        for bad in (0, -3.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"{name} must be a finite area > 0 in patches"):
                draw(**{name: bad})
        area_type = f"{name} must be a finite area > 0 in patches, got str"
        with pytest.raises(TypeError, match=area_type):
            draw(**{name: "4"})
    with pytest.raises(ValueError, match="num_blocks must be an int >= 1, got 0"):
        draw(num_blocks=0)
    with pytest.raises(ValueError, match="grid must be two positive ints"):
        sample_blocks(2, (4, 0), num_blocks=3, min_num_patches=2, max_num_patches=5)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        sample_blocks(0, (4, 4), num_blocks=3, min_num_patches=2, max_num_patches=5)
    # Equal bounds are a fixed area and a fixed aspect.
    blocks = sample_blocks(
        2,
        (4, 4),
        num_blocks=3,
        min_num_patches=4,
        max_num_patches=4,
        min_aspect=1.0,
        max_aspect=1.0,
    )
    assert (blocks.height == 2).all() and (blocks.width == 2).all()


def test_block_masker_call_errors_name_the_fix() -> None:
    masker = BlockMasker()
    with pytest.raises(ValueError, match="takes no weights"):
        masker(2, 196, torch.rand(2, 196))
    with pytest.raises(ValueError, match="not a square.*grid=\\(gh, gw\\)"):
        masker(2, 200)
    with pytest.raises(ValueError, match="grid=\\(14, 14\\) has 196 patches but num_patches=100"):
        BlockMasker(grid=(14, 14))(2, 100)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        masker(0, 196)


def test_block_masker_uses_the_global_rng_without_a_generator() -> None:
    torch.manual_seed(0)
    first = BlockMasker()(4, 196)
    torch.manual_seed(0)
    assert torch.equal(first.ids_shuffle, BlockMasker()(4, 196).ids_shuffle)
    other = BlockMasker()(4, 196, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(first.ids_shuffle, other.ids_shuffle)


# ---- SimMIM units --------------------------------------------------------------------------


def _unit_ids(grid: tuple[int, int], unit: int) -> torch.Tensor:
    gh, gw = grid
    units_w = -(-gw // unit)
    rows, cols = torch.arange(gh)[:, None] // unit, torch.arange(gw)[None, :] // unit
    return (rows * units_w + cols).reshape(-1)


@settings(max_examples=80, deadline=None)
@given(
    batch_size=st.integers(1, 4),
    grid=st.tuples(st.integers(1, 13), st.integers(1, 13)),
    unit=st.integers(1, 5),
    ratios=ratio_pairs,
    seed=st.integers(0, 2**31 - 1),
)
def test_units_are_masked_whole_except_at_the_count_borders(
    batch_size: int, grid: tuple[int, int], unit: int, ratios: tuple[float, float], seed: int
) -> None:
    num_patches = grid[0] * grid[1]
    mask_ratio, throw_ratio = ratios
    if int(num_patches * (1 - (mask_ratio + throw_ratio))) < 1 or unit >= max(grid):
        return  # no visible patch, or a single unit: errors tested below
    masker = UnitMasker(mask_ratio, unit, throw_ratio=throw_ratio, grid=grid)
    split = masker(batch_size, num_patches, generator=torch.Generator().manual_seed(seed))
    check_partition(split, batch_size, num_patches)
    counts = split_counts(num_patches, mask_ratio, throw_ratio)
    assert split.masked.shape[1] == counts.masked and split.thrown.shape[1] == counts.thrown
    ids = _unit_ids(grid, unit)
    borders = (counts.masked > 0 and counts.visible + counts.thrown > 0) + (
        counts.thrown > 0 and counts.visible > 0
    )
    for row in range(batch_size):
        labels = split.labels[row]
        mixed = [u for u in ids.unique().tolist() if labels[ids == u].unique().numel() > 1]
        assert len(mixed) <= borders
        if throw_ratio == 0 and mixed:
            # The cut unit is masked in raster order from its top-left corner.
            cells = labels[ids == mixed[0]]
            assert torch.equal(cells, cells.sort(descending=True).values)


def test_each_unit_is_equally_likely_and_simmim_counts_give_whole_units() -> None:
    draws = 20_000
    # 4 x 6 grid, 2 x 2 units: 6 units of 4 patches; 0.5 masks 12 patches = 3 whole units.
    split = UnitMasker(0.5, 2, grid=(4, 6))(draws, 24, generator=torch.Generator().manual_seed(7))
    ids = _unit_ids((4, 6), 2)
    per_unit = torch.stack([split.is_masked()[:, ids == u].all(1) for u in range(6)], 1)
    assert (per_unit.sum(1) == 3).all()  # SimMIM's whole-unit count: nothing cut
    for share in per_unit.double().mean(0).tolist():
        assert_frequency(share, 0.5, draws)


def test_grid_not_divisible_by_the_unit_cuts_the_last_row_and_column() -> None:
    ids = _unit_ids((5, 7), 2)
    assert ids.unique().numel() == 3 * 4
    sizes = torch.bincount(ids).reshape(3, 4)
    assert sizes.tolist() == [[4, 4, 4, 2], [4, 4, 4, 2], [2, 2, 2, 1]]
    priorities = unit_priorities(3, (5, 7), 2, generator=torch.Generator().manual_seed(8))
    for row in range(3):
        rank = priorities[row].floor().long()
        for u in range(12):  # one rank per unit, all units distinct
            assert rank[ids == u].unique().numel() == 1
        assert sorted(rank.unique().tolist()) == list(range(12))


@pytest.mark.parametrize(
    ("grid", "unit", "throw_ratio"), [((14, 14), 2, 0.0), ((13, 14), 3, 0.2), ((5, 7), 2, 0.1)]
)
def test_unit_masker_is_the_sort_of_its_priorities(
    grid: tuple[int, int], unit: int, throw_ratio: float
) -> None:
    """Ranks from the unit permutation give exactly the split of sorting unit_priorities."""
    num_patches = grid[0] * grid[1]
    masker = UnitMasker(0.5, unit, throw_ratio=throw_ratio, grid=grid)
    split = masker(32, num_patches, generator=torch.Generator().manual_seed(12))
    priorities = unit_priorities(32, grid, unit, generator=torch.Generator().manual_seed(12))
    reference = split_from_priorities(priorities, masker.counts(num_patches))
    assert all(torch.equal(a, b) for a, b in zip(split, reference))


def test_unit_masker_options_and_errors() -> None:
    with pytest.raises(ValueError, match="unit must be an int >= 1"):
        UnitMasker(0.6, 0)
    with pytest.raises(TypeError, match="unit must be an int"):
        UnitMasker(0.6, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mask_ratio must lie in"):
        UnitMasker(1.5)
    with pytest.raises(ValueError, match="takes no weights"):
        UnitMasker()(2, 196, torch.rand(2, 196))
    with pytest.raises(ValueError, match="not a square"):
        UnitMasker()(2, 50)
    assert repr(UnitMasker()) == "UnitMasker(mask_ratio=0.6, unit=2, throw_ratio=0.0, grid=None)"


def test_a_grid_of_a_single_unit_is_rejected() -> None:
    # A unit as large as both sides covers the whole grid: nothing is left to draw.
    single = r"unit=8 covers the whole 4 x 4 grid as a single unit, so every draw would mask "
    with pytest.raises(ValueError, match=single + r"the same patches .*; pass unit <= 3"):
        UnitMasker(0.5, unit=8)(4, 16)  # grid known at the call
    with pytest.raises(ValueError, match=single):
        UnitMasker(0.5, unit=8, grid=(4, 4))  # grid known at construction
    with pytest.raises(ValueError, match="unit=4 covers the whole 4 x 4 grid"):
        unit_priorities(2, (4, 4), 4)
    with pytest.raises(ValueError, match="unit=1 covers the whole 1 x 1 grid.*more than one patch"):
        UnitMasker(0.0, unit=1, grid=(1, 1))
    # Cut units still count: unit 4 on a 4 x 5 grid leaves a 4 x 4 and a 4 x 1 unit.
    split = UnitMasker(0.5, unit=4, grid=(4, 5))(64, 20, generator=torch.Generator().manual_seed(0))
    assert split.masked.shape == (64, 10)
    assert len({tuple(row) for row in split.masked.sort(dim=1).values.tolist()}) > 1


def test_unit_priorities_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="unit must be an int >= 1, got 0"):
        unit_priorities(2, (4, 4), unit=0)
    with pytest.raises(TypeError, match="unit must be an int, got float 2.0"):
        unit_priorities(2, (4, 4), unit=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grid must be two positive ints"):
        unit_priorities(2, (4, 0), unit=2)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        unit_priorities(0, (4, 4), unit=2)


# ---- compile and CUDA ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("masker", [BlockMasker(), UnitMasker()], ids=["block", "unit"])
def test_torch_compile_fullgraph_matches_eager(masker) -> None:
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()  # a fresh cache: each masker gets its own graph

    def sample(batch_size: int) -> MaskSplit:
        return masker(batch_size, 196)

    compiled = torch.compile(sample, fullgraph=True)
    with inductor_config.patch(fallback_random=True):
        torch.manual_seed(0)
        got = compiled(8)
    torch.manual_seed(0)
    expected = sample(8)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCuda:
    @pytest.fixture(autouse=True)
    def sync_errors(self):
        torch.cuda.set_sync_debug_mode("error")
        yield
        torch.cuda.set_sync_debug_mode("default")

    @pytest.mark.parametrize(
        "masker",
        [
            BlockMasker(),
            BlockMasker(0.5, throw_ratio=0.2),
            UnitMasker(),
            UnitMasker(0.6, 3, grid=(13, 14)),
        ],
    )
    def test_sampling_never_syncs_and_replays(self, masker) -> None:
        num_patches = 182 if masker.grid == (13, 14) else 196
        first = masker(
            64, num_patches, device="cuda", generator=torch.Generator("cuda").manual_seed(0)
        )
        again = masker(
            64, num_patches, device="cuda", generator=torch.Generator("cuda").manual_seed(0)
        )
        torch.cuda.set_sync_debug_mode("default")
        assert first.visible.is_cuda
        check_partition(first, 64, num_patches)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_benchmark_references_follow_beit_and_simmim(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-sample generators benchmarks/bench_strategies.py times against."""
    import importlib
    from pathlib import Path

    # The benchmark scripts import each other (common, bench_masking) as top-level modules.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("bench_strategies")
    beit = bench.beit_reference(bench._BEiTGenerator((14, 14), 75), 200, torch.device("cpu"))
    counts = beit.sum(1)
    assert beit.shape == (200, 196) and (counts <= 75).all() and (counts >= 50).all()
    assert (counts < 75).any()  # BEiT's count varies per sample: the reason for our rule
    simmim = bench.simmim_reference((14, 14), 2, 0.6, 50, torch.device("cpu"))
    assert (simmim.sum(1) == 30 * 4).all()  # ceil(49 * 0.6) = 30 whole 2 x 2 units
    per_unit = simmim.view(50, 7, 2, 7, 2).float().mean(dim=(2, 4))
    assert ((per_unit == 0) | (per_unit == 1)).all()
