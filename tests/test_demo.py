"""maskkit.demo: synthetic lesions (determinism, classes, masks) and the lesion hit rate."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from maskkit import IndexedDataset, RandomMasker, SAMMasker, split_counts
from maskkit.demo import (
    SyntheticLesions,
    lesion_hit_counts,
    lesion_hit_rate,
    pixel_mask_to_patches,
)

# ---------------------------------------------------------------- synthetic lesions


def patches_by_loop(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Reference: a patch is a lesion patch iff any of its pixels is in the mask."""
    height, width = mask.shape
    return torch.tensor(
        [
            bool(mask[r : r + patch_size, c : c + patch_size].any())
            for r in range(0, height, patch_size)
            for c in range(0, width, patch_size)
        ]
    )


def test_same_seed_same_samples_in_any_order() -> None:
    first = SyntheticLesions(6, image_size=48, seed=3)
    second = SyntheticLesions(6, image_size=48, seed=3)
    forward = [first.render(i) for i in range(6)]
    backward = [second.render(i) for i in reversed(range(6))][::-1]
    for a, b in zip(forward, backward, strict=True):
        assert torch.equal(a.image, b.image)
        assert torch.equal(a.lesion_mask, b.lesion_mask)
        assert a.target == b.target


def test_different_seeds_or_indices_give_different_images() -> None:
    base = SyntheticLesions(4, image_size=32, seed=0)
    other = SyntheticLesions(4, image_size=32, seed=1)
    assert not torch.equal(base[0][0], other[0][0])
    assert not torch.equal(base[0][0], base[3][0])  # both class 0, different tissue


@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_classes_are_balanced_and_named(num_classes: int) -> None:
    ds = SyntheticLesions(3 * num_classes, image_size=32, num_classes=num_classes)
    assert len(ds.classes) == num_classes and ds.classes[0] == "normal"
    assert [ds[i][1] for i in range(len(ds))] == [i % num_classes for i in range(len(ds))]


def test_lesion_present_exactly_in_lesion_classes() -> None:
    ds = SyntheticLesions(14, image_size=64, num_classes=7)
    for i in range(len(ds)):
        sample = ds.render(i)
        if sample.target == 0:
            assert not sample.lesion_mask.any()
            assert torch.equal(sample.image, sample.background)
        else:
            assert sample.lesion_mask.any()


@pytest.mark.parametrize("image_size", [224, (96, 160), (160, 96), 32])
def test_lesion_mask_is_exactly_the_changed_pixels(image_size: int | tuple[int, int]) -> None:
    ds = SyntheticLesions(6, image_size=image_size, num_classes=3, seed=5)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    for i in range(len(ds)):
        sample = ds.render(i)
        assert sample.image.shape == (3, height, width) and sample.image.dtype == torch.float32
        assert float(sample.image.min()) >= 0.0 and float(sample.image.max()) <= 1.0
        changed = (sample.image != sample.background).any(dim=0)
        assert torch.equal(changed, sample.lesion_mask)
        assert torch.equal(ds.lesion_mask(i), sample.lesion_mask)


def test_lesion_kinds_have_their_polarity_and_cancel_out() -> None:
    """Dark kinds darken the lesion centre, bright ones brighten it; rings are the other
    way round at the centre. Every lesion leaves the image mean unchanged."""
    ds = SyntheticLesions(28, image_size=224, num_classes=7, seed=2)
    for i in range(len(ds)):
        sample = ds.render(i)
        if sample.target == 0:
            continue
        kind = ds.classes[sample.target]
        rows, cols = torch.nonzero(sample.lesion_mask, as_tuple=True)
        centre = (int(rows.float().mean().round()), int(cols.float().mean().round()))
        change = float((sample.image - sample.background)[:, centre[0], centre[1]].sum())
        polarity = -1.0 if kind.startswith("dark") else 1.0
        expected = -polarity if kind.endswith("ring") else polarity
        assert change * expected > 0, (kind, change)
        delta_sums = (sample.image - sample.background).double().sum(dim=(1, 2))
        assert torch.allclose(delta_sums, torch.zeros(3, dtype=torch.float64), atol=1e-3)


@pytest.mark.parametrize(
    ("image_size", "patch_size", "max_patches"), [(224, 16, 25), (32, 4, 12), ((32, 48), 8, 6)]
)
def test_lesion_patches_match_the_mask_and_are_few(
    image_size: int | tuple[int, int], patch_size: int, max_patches: int
) -> None:
    ds = SyntheticLesions(12, image_size=image_size, num_classes=3, seed=1)
    for i in range(len(ds)):
        patches = ds.lesion_patches(i, patch_size)
        assert patches.dtype == torch.bool
        assert torch.equal(patches, patches_by_loop(ds.lesion_mask(i), patch_size))
        if ds[i][1] > 0:
            assert 1 <= int(patches.sum()) <= max_patches


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(24, 80),
    width=st.integers(24, 80),
    seed=st.integers(0, 2**31),
    index=st.integers(0, 99),
)
def test_any_size_any_index_lesion_inside_and_exact(
    height: int, width: int, seed: int, index: int
) -> None:
    ds = SyntheticLesions(100, image_size=(height, width), num_classes=4, seed=seed)
    sample = ds.render(index)
    assert sample.image.shape == (3, height, width)
    assert sample.target == index % 4
    assert torch.equal((sample.image != sample.background).any(dim=0), sample.lesion_mask)
    assert bool(sample.lesion_mask.any()) == (sample.target > 0)


def test_negative_index_and_out_of_range() -> None:
    ds = SyntheticLesions(5, image_size=32)
    assert torch.equal(ds[-1][0], ds[4][0])
    with pytest.raises(IndexError, match="out of range"):
        ds[5]
    assert len(list(iter(ds))) == 5  # the sequence protocol stops on IndexError


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_classes": 1}, r"num_classes must lie in \[2, 7\]"),
        ({"num_classes": 8}, r"num_classes must lie in \[2, 7\]"),
        ({"image_size": 8}, "too small"),
        ({"image_size": (32, 0)}, "image_size must be"),
        ({"image_size": (32, 32, 3)}, "image_size must be"),
        ({"seed": -1}, "seed"),
        ({"lesion_size": 0.5}, "lesion_size"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    args = {"num_samples": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        SyntheticLesions(args.pop("num_samples"), **args)


def test_lesion_patches_need_a_dividing_patch_size() -> None:
    with pytest.raises(ValueError, match="multiple of patch_size"):
        SyntheticLesions(2, image_size=(32, 40)).lesion_patches(1, 16)


def test_batches_through_dataloader_with_indices() -> None:
    ds = SyntheticLesions(6, image_size=(32, 48), num_classes=3)
    images, targets, indices = next(iter(DataLoader(IndexedDataset(ds), batch_size=6)))
    assert images.shape == (6, 3, 32, 48)
    assert targets.tolist() == [0, 1, 2, 0, 1, 2] and indices.tolist() == list(range(6))
    assert torch.equal(images[4], ds[4][0])


# ---------------------------------------------------------------- image files


# ---------------------------------------------------------------- lesion hit rate

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


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        # A string lesion_size failed in a comparison: "'<' not supported between ...".
        ({"lesion_size": "0.1"}, TypeError, r"lesion_size must be a float in \(0, 0.25\], got str"),
        ({"lesion_size": float("nan")}, ValueError, r"lesion_size must lie in \(0, 0.25\]"),
        ({"num_samples": 2.0}, TypeError, "num_samples must be an int, got float"),
        ({"num_classes": "3"}, TypeError, "num_classes must be an int, got str"),
        ({"seed": "0"}, TypeError, "seed must be an int, got str"),
        ({"image_size": 3.5}, ValueError, "image_size must be two positive ints"),
    ],
)
def test_arguments_of_the_wrong_type_are_named(kwargs: dict, error: type, message: str) -> None:
    args = {"num_samples": 4, **kwargs}
    with pytest.raises(error, match=message):
        SyntheticLesions(args.pop("num_samples"), **args)


def test_patch_size_must_be_a_positive_int() -> None:
    # patch_size=0 raised ZeroDivisionError.
    with pytest.raises(ValueError, match="patch_size must be an int >= 1, got 0"):
        pixel_mask_to_patches(torch.zeros(4, 4, dtype=torch.bool), 0)
    with pytest.raises(TypeError, match="patch_size must be an int, got float"):
        pixel_mask_to_patches(torch.zeros(4, 4, dtype=torch.bool), 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="patch_size must be an int >= 1"):
        SyntheticLesions(2, image_size=32).lesion_patches(1, 0)


def test_labels_outside_the_three_groups_are_refused_by_the_metric() -> None:
    # A label of 7 fell in no group and silently lowered the hit rate.
    labels = LABELS.clone()
    labels[0, 0] = 7
    with pytest.raises(ValueError, match=r"found \[7\]; pass MaskSplit.labels"):
        lesion_hit_counts(labels, LESION)
