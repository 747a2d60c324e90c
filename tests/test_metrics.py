"""Lesion hit rate and pixel-mask → patch conversion."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit import (
    RandomMasker,
    SAMMasker,
    SyntheticLesions,
    lesion_hit_counts,
    lesion_hit_rate,
    pixel_mask_to_patches,
    split_counts,
)

LABELS = torch.tensor([[0, 1, 1, -1], [1, 0, 0, 1], [1, 1, 0, 0]], dtype=torch.int8)
LESION = torch.tensor(
    [[True, True, False, True], [False, False, False, False], [True, False, True, True]]
)


def test_hand_computed_rates() -> None:
    # Lesion patches: sample 0 -> visible, masked, thrown; sample 2 -> masked, visible, visible.
    assert lesion_hit_counts(LABELS, LESION) == (2, 6)
    assert lesion_hit_rate(LABELS, LESION) == pytest.approx(2 / 6)
    assert lesion_hit_rate(LABELS, LESION, group="visible") == pytest.approx(3 / 6)
    assert lesion_hit_rate(LABELS, LESION, group="thrown") == pytest.approx(1 / 6)


def test_split_and_its_labels_agree() -> None:
    split = SAMMasker(0.5, 0.25)(3, 4, generator=torch.Generator().manual_seed(0))
    assert lesion_hit_counts(split, LESION) == lesion_hit_counts(split.labels, LESION)
    hits, total = lesion_hit_counts(split, LESION)
    assert hits == int((split.is_masked() & LESION).sum()) and total == 6


def test_all_masked_is_one_and_none_masked_is_zero() -> None:
    lesion = torch.tensor([[True, False, True]])
    assert lesion_hit_rate(torch.ones(1, 3, dtype=torch.int8), lesion) == 1.0
    assert lesion_hit_rate(torch.zeros(1, 3, dtype=torch.int8), lesion) == 0.0


def test_weights_on_the_lesion_only_mask_all_of_it() -> None:
    """Zero-weight patches are drawn after every positive one, so a masker whose weights
    are the lesion itself masks every lesion patch when there are at most M of them."""
    ds = SyntheticLesions(12, image_size=32, num_classes=3)
    lesion = torch.stack([ds.lesion_patches(i, 4) for i in range(len(ds))])
    masker = SAMMasker(0.45, 0.30)
    assert int(lesion.sum(1).max()) <= split_counts(64, 0.45, 0.30).masked
    split = masker(12, 64, lesion.float(), generator=torch.Generator().manual_seed(1))
    assert lesion_hit_rate(split, lesion) == 1.0


@settings(max_examples=20, deadline=None)
@given(
    num_patches=st.integers(8, 64),
    mask_ratio=st.sampled_from([0.25, 0.5, 0.6, 0.75]),
    data=st.data(),
)
def test_random_masking_hits_at_the_mask_ratio(
    num_patches: int, mask_ratio: float, data: st.DataObject
) -> None:
    """Hits of uniform masking are hypergeometric; the pooled rate over many draws stays
    within 5 standard deviations of M / L."""
    counts = split_counts(num_patches, mask_ratio)
    lesion_row = torch.tensor(
        data.draw(st.lists(st.booleans(), min_size=num_patches, max_size=num_patches).filter(any))
    )
    draws = 400
    seed = data.draw(st.integers(0, 2**31))
    split = RandomMasker(mask_ratio)(
        draws, num_patches, generator=torch.Generator().manual_seed(seed)
    )
    hits, total = lesion_hit_counts(split, lesion_row.expand(draws, num_patches))
    n, size, share = int(lesion_row.sum()), num_patches, counts.masked / num_patches
    variance = draws * n * share * (1 - share) * (size - n) / max(size - 1, 1)
    assert total == draws * n
    assert abs(hits - total * share) <= 5 * math.sqrt(variance) + 1e-9


def test_counts_without_lesion_and_undefined_rate() -> None:
    empty = torch.zeros(2, 4, dtype=torch.bool)
    assert lesion_hit_counts(LABELS[:2], empty) == (0, 0)
    with pytest.raises(ValueError, match="no lesion patch"):
        lesion_hit_rate(LABELS[:2], empty)


@pytest.mark.parametrize(
    ("labels", "lesion", "kwargs", "error", "message"),
    [
        (LABELS, LESION[:2], {}, ValueError, "do not match"),
        (LABELS, LESION.int(), {}, TypeError, "bool"),
        (LABELS.float(), LESION, {}, ValueError, "integer tensor"),
        (LABELS[0], LESION[0], {}, ValueError, r"\(B, L\)"),
        (LABELS, LESION, {"group": "hidden"}, ValueError, "group must be one of"),
        ([[0, 1]], LESION, {}, TypeError, "MaskSplit"),
    ],
)
def test_bad_inputs(labels, lesion, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        lesion_hit_rate(labels, lesion, **kwargs)


@settings(max_examples=30, deadline=None)
@given(
    gh=st.integers(1, 5),
    gw=st.integers(1, 5),
    patch_size=st.integers(1, 4),
    seed=st.integers(0, 2**31),
)
def test_pixel_mask_to_patches_matches_a_loop(gh: int, gw: int, patch_size: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(2, gh * patch_size, gw * patch_size, generator=generator) > 0.9
    patches = pixel_mask_to_patches(mask, patch_size)
    assert patches.shape == (2, gh * gw)
    for b in range(2):
        for r in range(gh):
            for c in range(gw):
                rows = slice(r * patch_size, (r + 1) * patch_size)
                cols = slice(c * patch_size, (c + 1) * patch_size)
                assert bool(patches[b, r * gw + c]) == bool(mask[b, rows, cols].any())


def test_pixel_mask_to_patches_checks_inputs() -> None:
    with pytest.raises(TypeError, match="bool"):
        pixel_mask_to_patches(torch.zeros(4, 4), 2)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        pixel_mask_to_patches(torch.zeros(4, 6, dtype=torch.bool), 4)
