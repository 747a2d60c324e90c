"""Core sampling: counts, partitions, Plackett-Luce probabilities, zeros, determinism."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit import AMTMasker, MaskSplit, RandomMasker, SAMMasker, sample_split, split_counts
from maskkit.functional import (
    _topk_keys,
    labels_from_priorities,
    priority_keys,
    split_from_labels,
    split_from_priorities,
    split_from_ranks,
)


def exact_group_probabilities(
    weights: list[float], n_masked: int, n_thrown: int
) -> tuple[list[float], list[float]]:
    """P(patch i masked), P(patch i thrown) by enumerating every Plackett-Luce order."""
    num = len(weights)
    p_masked = [0.0] * num
    p_thrown = [0.0] * num
    for order in itertools.permutations(range(num)):
        prob, remaining = 1.0, sum(weights)
        for patch in order:
            prob *= weights[patch] / remaining
            remaining -= weights[patch]
        for rank, patch in enumerate(order):
            if rank < n_masked:
                p_masked[patch] += prob
            elif rank < n_masked + n_thrown:
                p_thrown[patch] += prob
    return p_masked, p_thrown


def assert_frequencies_match(observed: torch.Tensor, expected: list[float], draws: int) -> None:
    # Six standard errors per cell (plus float slack): a false alarm is ~1e-8 per cell.
    for freq, prob in zip(observed.tolist(), expected):
        bound = 6 * math.sqrt(max(prob * (1 - prob), 1e-12) / draws) + 1e-9
        assert abs(freq - prob) <= bound, (observed.tolist(), expected)


def check_partition(split: MaskSplit, batch_size: int, num_patches: int) -> None:
    assert isinstance(split, MaskSplit)
    for tensor in (split.visible, split.masked, split.thrown, split.ids_shuffle, split.ids_restore):
        assert tensor.dtype == torch.int64 and tensor.shape[0] == batch_size
    every = torch.cat([split.visible, split.masked, split.thrown], dim=1)
    assert torch.equal(every, split.ids_shuffle)
    expected = torch.arange(num_patches).expand(batch_size, num_patches)
    assert torch.equal(every.sort(dim=1).values, expected)
    assert torch.equal(torch.argsort(split.ids_shuffle, dim=1), split.ids_restore)
    assert torch.equal(split.ids_shuffle.gather(1, split.ids_restore), expected)
    assert split.labels.dtype == torch.int8 and split.labels.shape == (batch_size, num_patches)
    for indices, code in ((split.visible, 0), (split.masked, 1), (split.thrown, -1)):
        assert (split.labels.gather(1, indices) == code).all()
        assert int((split.labels == code).sum()) == indices.numel()


ratio_pairs = st.tuples(
    st.floats(0.0, 1.0, allow_nan=False), st.floats(0.0, 1.0, allow_nan=False)
).filter(lambda pair: pair[0] + pair[1] < 1.0 and not math.isclose(pair[0] + pair[1], 1.0))


@settings(max_examples=150, deadline=None)
@given(
    batch_size=st.integers(1, 6),
    num_patches=st.integers(1, 80),
    ratios=ratio_pairs,
    weighted=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_partition_is_exact_and_counts_follow_rule(
    batch_size: int,
    num_patches: int,
    ratios: tuple[float, float],
    weighted: bool,
    seed: int,
) -> None:
    mask_ratio, throw_ratio = ratios
    n_visible = int(num_patches * (1 - (mask_ratio + throw_ratio)))
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(batch_size, num_patches, generator=generator) if weighted else None
    masker = SAMMasker(mask_ratio, throw_ratio)
    if n_visible < 1:
        with pytest.raises(ValueError, match="no visible patch"):
            masker(batch_size, num_patches, weights, generator=generator)
        return
    split = masker(batch_size, num_patches, weights, generator=generator)
    check_partition(split, batch_size, num_patches)
    assert split.visible.shape[1] == n_visible
    if throw_ratio == 0:
        assert split.masked.shape[1] == num_patches - n_visible
        assert split.thrown.shape[1] == 0
    else:
        assert split.masked.shape[1] == min(int(num_patches * mask_ratio), num_patches - n_visible)
        assert split.thrown.shape[1] == num_patches - n_visible - split.masked.shape[1]


def test_visible_count_is_maes_and_hugging_faces_for_the_summed_ratio() -> None:
    # MAE and HF ViTMAE keep int(L * (1 - mask_ratio)); a split with (m, t) must keep what
    # they keep with mask_ratio = m + t (issue: int(L * (1 - m - t)) kept one fewer).
    grid = [i / 100 for i in range(100)]
    differs_from_old_rule = 0
    for num_patches in (16, 49, 64, 196, 256, 576, 784):
        for mask_ratio in grid:
            for throw_ratio in grid:
                total = mask_ratio + throw_ratio
                host_keeps = int(num_patches * (1 - total))
                if total >= 1 or math.isclose(total, 1.0) or host_keeps < 1:
                    continue
                counts = split_counts(num_patches, mask_ratio, throw_ratio)
                assert counts.visible == host_keeps
                assert sum(counts) == num_patches and min(counts) >= 0
                differs_from_old_rule += host_keeps != int(
                    num_patches * (1.0 - mask_ratio - throw_ratio)
                )
    assert differs_from_old_rule > 0  # the grid holds the cases the old rule got wrong
    assert split_counts(196, 0.55, 0.20).visible == split_counts(196, 0.45, 0.30).visible == 49


def test_counts_match_the_papers_settings() -> None:
    assert split_counts(196, 0.45, 0.30) == (49, 88, 59)  # MSMAE: 49 of 196 tokens encoded
    assert split_counts(196, 0.45, 0.40) == (29, 88, 79)  # AMT defaults
    assert split_counts(196, 0.75) == (49, 147, 0)  # MAE
    counts = split_counts(10, 0.33)  # int(10 * 0.67) == 6 kept; MAE masks the other 4
    assert (counts.visible, counts.masked, counts.thrown) == (6, 4, 0)


@pytest.mark.parametrize(
    ("weights", "mask_ratio", "throw_ratio"),
    [
        ([1.0, 2.0, 3.0, 4.0], 0.25, 0.5),
        ([0.05, 1.0, 1.0, 5.0, 0.5], 0.4, 0.2),
        ([1.0, 1.0, 1.0, 1.0, 10.0], 0.2, 0.4),
    ],
)
def test_group_frequencies_match_exact_plackett_luce(
    weights: list[float], mask_ratio: float, throw_ratio: float
) -> None:
    num_patches, draws = len(weights), 40_000
    counts = split_counts(num_patches, mask_ratio, throw_ratio)
    p_masked, p_thrown = exact_group_probabilities(weights, counts.masked, counts.thrown)
    batch_weights = torch.tensor(weights).expand(draws, num_patches)
    split = SAMMasker(mask_ratio, throw_ratio)(
        draws, num_patches, batch_weights, generator=torch.Generator().manual_seed(1)
    )
    assert_frequencies_match(split.is_masked().double().mean(0), p_masked, draws)
    assert_frequencies_match(split.is_thrown().double().mean(0), p_thrown, draws)


def test_full_permutation_distribution_matches_plackett_luce() -> None:
    weights, draws = [0.5, 1.0, 2.0, 4.0], 60_000
    priorities = priority_keys(
        torch.tensor(weights).expand(draws, 4), draws, 4, generator=torch.Generator().manual_seed(2)
    )
    order = torch.argsort(priorities, dim=1, descending=True)
    codes = (order * torch.tensor([64, 16, 4, 1])).sum(1)
    observed = torch.bincount(codes, minlength=256).double() / draws
    expected_per_code = [0.0] * 256
    for perm in itertools.permutations(range(4)):
        prob, remaining = 1.0, sum(weights)
        for patch in perm:
            prob *= weights[patch] / remaining
            remaining -= weights[patch]
        expected_per_code[perm[0] * 64 + perm[1] * 16 + perm[2] * 4 + perm[3]] = prob
    assert_frequencies_match(observed, expected_per_code, draws)


def test_zero_weight_patches_come_after_every_positive_one_in_uniform_order() -> None:
    draws, num_patches = 30_000, 8
    weights = torch.tensor([0.0, 3.0, 0.0, 1e-30, 0.0, 5.0, 0.0, 1e30])
    priorities = priority_keys(
        weights.expand(draws, num_patches),
        draws,
        num_patches,
        generator=torch.Generator().manual_seed(3),
    )
    order = torch.argsort(priorities, dim=1, descending=True)
    drawn_weights = weights[order]
    assert (drawn_weights[:, :4] > 0).all() and (drawn_weights[:, 4:] == 0).all()
    # Among the zeros each of the 4 patches takes each of the last 4 ranks with prob 1/4.
    for rank in range(4, 8):
        hits = torch.stack([(order[:, rank] == patch).double().mean() for patch in (0, 2, 4, 6)])
        assert_frequencies_match(hits, [0.25] * 4, draws)


def test_all_zero_rows_and_no_weights_sample_uniformly() -> None:
    draws, num_patches = 40_000, 6
    masker = AMTMasker(0.5, 0.2)
    counts = split_counts(num_patches, 0.5, 0.2)
    zero_split = masker(
        draws,
        num_patches,
        torch.zeros(draws, num_patches),
        generator=torch.Generator().manual_seed(4),
    )
    none_split = masker(draws, num_patches, generator=torch.Generator().manual_seed(5))
    for split in (zero_split, none_split):
        check_partition(split, draws, num_patches)
        uniform_masked = [counts.masked / num_patches] * num_patches
        uniform_thrown = [counts.thrown / num_patches] * num_patches
        assert_frequencies_match(split.is_masked().double().mean(0), uniform_masked, draws)
        assert_frequencies_match(split.is_thrown().double().mean(0), uniform_thrown, draws)


def test_rows_are_sampled_independently_with_their_own_weights() -> None:
    draws = 20_000
    weights = torch.tensor([[100.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 100.0]]).repeat(draws, 1)
    split = SAMMasker(0.25, 0.25)(2 * draws, 4, weights, generator=torch.Generator().manual_seed(6))
    masked_first = split.masked[:, 0]
    p_heavy_first = 100.0 / 103.0
    assert_frequencies_match(
        (masked_first[0::2] == 0).double().mean().view(1), [p_heavy_first], draws
    )
    assert_frequencies_match(
        (masked_first[1::2] == 3).double().mean().view(1), [p_heavy_first], draws
    )


def test_grid_weights_equal_flat_weights_and_any_float_dtype() -> None:
    grid = torch.rand(3, 4, 5)
    results = []
    for weights in (grid, grid.reshape(3, 20), grid.double(), grid.half()):
        split = SAMMasker()(3, 20, weights, generator=torch.Generator().manual_seed(7))
        results.append(split)
    assert torch.equal(results[0].ids_shuffle, results[1].ids_shuffle)
    assert torch.equal(results[0].ids_shuffle, results[2].ids_shuffle)
    check_partition(results[3], 3, 20)


def test_same_seed_same_split_and_different_seed_differs() -> None:
    weights = torch.rand(16, 196)
    masker = SAMMasker()
    first = masker(16, 196, weights, generator=torch.Generator().manual_seed(11))
    again = masker(16, 196, weights, generator=torch.Generator().manual_seed(11))
    other = masker(16, 196, weights, generator=torch.Generator().manual_seed(12))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first.ids_shuffle, other.ids_shuffle)
    torch.manual_seed(0)
    global_first = RandomMasker()(4, 49)
    torch.manual_seed(0)
    assert torch.equal(global_first.ids_shuffle, RandomMasker()(4, 49).ids_shuffle)


def test_random_masker_equals_mae_random_masking_for_the_same_noise() -> None:
    batch, num_patches, ratio = 5, 196, 0.75
    noise = torch.rand(batch, num_patches, generator=torch.Generator().manual_seed(9))
    # facebookresearch/mae models_mae.random_masking, index part.
    len_keep = int(num_patches * (1 - ratio))
    mae_shuffle = torch.argsort(noise, dim=1)
    mae_restore = torch.argsort(mae_shuffle, dim=1)
    mae_mask = torch.ones(batch, num_patches)
    mae_mask[:, :len_keep] = 0
    mae_mask = torch.gather(mae_mask, 1, mae_restore)
    split = RandomMasker(ratio)(batch, num_patches, generator=torch.Generator().manual_seed(9))
    assert torch.equal(split.visible, mae_shuffle[:, :len_keep])
    assert torch.equal(split.ids_restore, mae_restore)
    assert torch.equal(split.loss_mask(), mae_mask)


# ---- sort-free builders --------------------------------------------------------------------


@settings(max_examples=120, deadline=None)
@given(
    batch_size=st.integers(1, 5),
    num_patches=st.integers(1, 80),
    ratios=ratio_pairs,
    seed=st.integers(0, 2**31 - 1),
)
def test_sort_free_builders_agree_with_the_sort(
    batch_size: int, num_patches: int, ratios: tuple[float, float], seed: int
) -> None:
    mask_ratio, throw_ratio = ratios
    if int(num_patches * (1 - (mask_ratio + throw_ratio))) < 1:
        return
    counts = split_counts(num_patches, mask_ratio, throw_ratio)
    generator = torch.Generator().manual_seed(seed)
    # Distinct priorities, negative ones included: a permutation shifted to straddle 0.
    ranks = torch.rand(batch_size, num_patches, generator=generator).argsort(1).argsort(1)
    priorities = ranks.float() - num_patches / 2
    reference = split_from_priorities(priorities, counts)
    # Ranks give the sort's split exactly, within-group order included.
    assert all(torch.equal(a, b) for a, b in zip(split_from_ranks(ranks, counts), reference))
    # Top-k labels give the same groups; split_from_labels lists each group by patch.
    labels = labels_from_priorities(priorities, counts)
    assert labels.dtype == torch.int8 and torch.equal(labels, reference.labels)
    split = split_from_labels(labels, counts)
    check_partition(split, batch_size, num_patches)
    for got, want in zip(split[:3], reference[:3]):
        assert torch.equal(got, want.sort(dim=1).values)
    assert torch.equal(split.labels, labels)


def test_topk_keys_keep_the_float_order() -> None:
    values = torch.cat(
        [
            torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 1e3,
            torch.tensor([float("-inf"), float("inf"), 0.0, 1e-42, -1e-42, -3e38, 3e38]),
        ]
    )
    keys = _topk_keys(values)
    assert keys.dtype == torch.int32
    assert torch.equal(keys.argsort(stable=True), values.argsort(stable=True))
    rows = values[None, :1000].expand(3, 1000)
    assert torch.equal(
        torch.topk(_topk_keys(rows), 100, dim=1).indices, torch.topk(rows, 100, dim=1).indices
    )
    other = values.double()
    assert _topk_keys(other) is other  # other dtypes (and devices) are left as they are


def test_device_argument_places_the_split() -> None:
    split = sample_split(2, 10, mask_ratio=0.5, device="cpu")
    assert split.visible.device == torch.device("cpu")
    with pytest.raises(ValueError, match="differs from weights.device"):
        sample_split(2, 10, torch.rand(2, 10), mask_ratio=0.5, device="meta")


def test_torch_compile_fullgraph_runs_the_sampler() -> None:
    import torch._inductor.config as inductor_config

    masker = SAMMasker()
    weights = torch.rand(4, 196)

    def sample(w: torch.Tensor) -> MaskSplit:
        return masker(w.shape[0], w.shape[1], w)

    compiled = torch.compile(sample, fullgraph=True)
    # fallback_random makes inductor draw the same numbers as eager, so the two can be compared.
    with inductor_config.patch(fallback_random=True):
        torch.manual_seed(0)
        got = compiled(weights)
    torch.manual_seed(0)
    expected = sample(weights)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    bad = weights.clone()
    bad[0, 0] = float("nan")
    with inductor_config.patch(fallback_random=True), pytest.raises(RuntimeError, match="finite"):
        compiled(bad)
