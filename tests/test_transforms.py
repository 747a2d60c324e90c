"""Paired crops: torchvision's sampling rule, seeded determinism, images and weights together.

The training step aligns the bank's maps with the collated crops of a batch
(``align_weights(bank[indices], crops, out_grid=...)``); these tests run that path.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms as T

from maskkit import (
    CropDataset,
    CropParams,
    IndexedDataset,
    MaskWeightBank,
    PairedRandomResizedCrop,
    align_weights,
)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    scale=st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0)).map(sorted),
    ratio=st.tuples(st.floats(0.2, 5.0), st.floats(0.2, 5.0)).map(sorted),
    hflip_prob=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_sampling_follows_torchvision_draw_for_draw(
    seed: int,
    height: int,
    width: int,
    scale: list[float],
    ratio: list[float],
    hflip_prob: float,
) -> None:
    # Our box and flip equal RandomResizedCrop.get_params then RandomHorizontalFlip's draw
    # (central-crop fallback of thin images included), from the global RNG and from an
    # explicit generator with the same seed alike.
    crop = PairedRandomResizedCrop(8, scale=tuple(scale), ratio=tuple(ratio), hflip_prob=hflip_prob)
    torch.manual_seed(seed)
    params = crop.sample((height, width))
    from_generator = crop.sample((height, width), generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    box = T.RandomResizedCrop.get_params(torch.empty(1, height, width), scale, ratio)
    hflip = bool(torch.rand(1) < hflip_prob)
    assert params == from_generator == CropParams(*box, hflip, height, width)


@pytest.mark.parametrize("as_pil", [False, True])
def test_images_equal_torchvision_compose(as_pil: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    tensor = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8, generator=generator)
    image = Image.fromarray(tensor.permute(1, 2, 0).numpy()) if as_pil else tensor
    reference = T.Compose(
        [
            T.RandomResizedCrop(24, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(0.5),
        ]
    )
    crop = PairedRandomResizedCrop(24)
    flips = set()
    for seed in range(8):
        torch.manual_seed(seed)
        ours, params = crop(image)
        torch.manual_seed(seed)
        theirs = reference(image)
        flips.add(params.hflip)
        if as_pil:
            assert ours.size == theirs.size == (24, 24)
            assert ours.tobytes() == theirs.tobytes()
        else:
            assert torch.equal(ours, theirs)
    assert flips == {False, True}


def test_explicit_generator_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    crop = PairedRandomResizedCrop(16)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = [crop.sample((64, 48), generator=torch.Generator().manual_seed(s)) for s in range(20)]
    again = [crop.sample((64, 48), generator=torch.Generator().manual_seed(s)) for s in range(20)]
    assert first == again
    assert len(set(first)) == 20
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, "size"),
        ({"size": (8, 8, 8)}, "size"),
        ({"scale": (0.5, 0.2)}, "scale"),
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"scale": (0.5, 1.5)}, "scale"),
        ({"ratio": (2.0, 1.0)}, "ratio"),
        ({"ratio": (0.0, 1.0)}, "ratio"),
        ({"hflip_prob": 1.5}, "hflip_prob"),
    ],
)
def test_bad_crop_options_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PairedRandomResizedCrop(**{"size": 8, **kwargs})


def test_interpolation_must_be_a_mode() -> None:
    with pytest.raises(TypeError, match="InterpolationMode"):
        PairedRandomResizedCrop(8, interpolation=3)  # type: ignore[arg-type]


# ---- images and weights move together --------------------------------------------------------

CELL = 8  # pixels per map cell in the painted images
MAP_GRID = (12, 16)
IMAGE_SIZE = (MAP_GRID[0] * CELL, MAP_GRID[1] * CELL)


class _PaintedCells(torch.utils.data.Dataset):
    """Image i is dark with one bright map cell; its target names that cell."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> tuple[Tensor, tuple[int, int]]:
        row, col = (index * 5) % MAP_GRID[0], (index * 7) % MAP_GRID[1]
        image = torch.zeros(1, *IMAGE_SIZE)
        image[:, row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = 1.0
        return image, (row, col)


def _hot_cell_bank(dataset: _PaintedCells) -> MaskWeightBank:
    bank = MaskWeightBank(len(dataset), MAP_GRID)
    maps = torch.zeros(len(dataset), *MAP_GRID)
    for index in range(len(dataset)):
        maps[index][dataset[index][1]] = 1.0
    bank.update(torch.arange(len(dataset)), maps)
    return bank


def _aligned_batches(
    crops: CropDataset, bank: MaskWeightBank, out_grid: tuple[int, int], **loader_options: int
) -> list[tuple[Tensor, Tensor, CropParams, Tensor, Tensor]]:
    """``(views, targets, crops, indices, weights)`` per batch, aligned as a training step does."""
    batches = []
    for views, targets, batch_crops, indices in DataLoader(crops, batch_size=8, **loader_options):
        weights = align_weights(bank[indices], batch_crops, out_grid=out_grid)
        batches.append((views, targets, batch_crops, indices, weights))
    return batches


def test_bright_square_and_hot_cell_coincide_after_crop_and_flip() -> None:
    dataset = _PaintedCells()
    bank = _hot_cell_bank(dataset)
    crops = CropDataset(dataset, PairedRandomResizedCrop(64), seed=3)
    flipped = visible = 0
    for epoch in range(3):
        crops.set_epoch(epoch)
        for views, _, batch_crops, indices, weights in _aligned_batches(crops, bank, (8, 8)):
            assert weights.shape == (len(indices), 8, 8)
            # Mean brightness per output cell is the share of the cell the square covers,
            # which is exactly what the aligned map says (up to the bicubic resampling).
            brightness = views[:, 0].reshape(-1, 8, 8, 8, 8).mean((2, 4))
            torch.testing.assert_close(weights, brightness, atol=0.05, rtol=0)
            shown = weights.flatten(1).any(1)
            flipped += int((batch_crops.hflip & shown).sum())
            visible += int(shown.sum())
    assert visible > 20 and flipped > 5


def test_the_check_above_catches_amt_style_misalignment() -> None:
    # The same comparison with the crop offset dropped (AMT's bug) fails on most crops.
    dataset = _PaintedCells()
    bank = _hot_cell_bank(dataset)
    crops = CropDataset(dataset, PairedRandomResizedCrop(64))
    misaligned = total = 0
    for views, _, batch_crops, indices, _ in _aligned_batches(crops, bank, (8, 8)):
        at_origin = batch_crops._replace(
            top=torch.zeros_like(batch_crops.top), left=torch.zeros_like(batch_crops.left)
        )
        wrong = align_weights(bank[indices], at_origin, out_grid=(8, 8))
        brightness = views[:, 0].reshape(-1, 8, 8, 8, 8).mean((2, 4))
        misaligned += int(((wrong - brightness).abs().amax((1, 2)) > 0.05).sum())
        total += len(indices)
    assert misaligned > total // 2


def test_a_single_crop_aligns_like_its_batch() -> None:
    dataset = _PaintedCells()
    bank = _hot_cell_bank(dataset)
    crops = CropDataset(dataset, PairedRandomResizedCrop(64), seed=5)
    _, _, _, indices, weights = _aligned_batches(crops, bank, (8, 8))[0]
    for row, index in enumerate(indices.tolist()):
        _, _, crop, _ = crops[index]
        assert isinstance(crop.top, int) and isinstance(crop.hflip, bool)
        assert crop.image_size == IMAGE_SIZE
        single = align_weights(bank[index], crop, out_grid=(8, 8))
        assert torch.equal(single, weights[row])


# ---- CropDataset determinism and workers ------------------------------------------------------


def _random_dataset(count: int = 10) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 3, 40, 56, generator=generator)
    return TensorDataset(images, torch.arange(count))


def _collect(dataset: CropDataset, order: list[int]) -> dict[int, tuple]:
    return {index: dataset[index] for index in order}


def _same(a: tuple, b: tuple) -> bool:
    return all(torch.equal(torch.as_tensor(x), torch.as_tensor(y)) for x, y in zip(a, b))


def test_samples_depend_on_seed_epoch_and_index_only() -> None:
    data = _random_dataset()
    crops = CropDataset(data, PairedRandomResizedCrop(16), seed=7)
    forward = _collect(crops, list(range(10)))
    backward = _collect(crops, list(range(9, -1, -1)))
    assert all(_same(forward[i], backward[i]) for i in range(10))
    again = CropDataset(data, PairedRandomResizedCrop(16), seed=7)
    assert all(_same(forward[i], again[i]) for i in range(10))

    crops.set_epoch(1)
    assert crops.epoch == 1
    next_epoch = _collect(crops, list(range(10)))
    assert not any(_same(forward[i], next_epoch[i]) for i in range(10))
    crops.set_epoch(0)
    assert all(_same(forward[i], crops[i]) for i in range(10))

    other_seed = CropDataset(data, PairedRandomResizedCrop(16), seed=8)
    assert not any(_same(forward[i][:1], other_seed[i][:1]) for i in range(10))


def test_post_transform_runs_after_the_crop() -> None:
    doubled = CropDataset(
        _random_dataset(), PairedRandomResizedCrop(16), post_transform=lambda image: image * 2
    )
    plain = CropDataset(_random_dataset(), PairedRandomResizedCrop(16))
    assert torch.equal(doubled[3][0], plain[3][0] * 2)
    assert doubled[3][2] == plain[3][2]


def test_workers_draw_the_crops_of_the_epoch_set_before_the_iterator() -> None:
    crops = CropDataset(_random_dataset(), PairedRandomResizedCrop(16), seed=1)
    for epoch in (0, 4):
        crops.set_epoch(epoch)
        expected = _collect(crops, list(range(10)))
        loader = DataLoader(crops, batch_size=4, num_workers=2, collate_fn=list)
        seen = {item[3]: item for batch in loader for item in batch}
        assert all(_same(seen[i][:2], expected[i][:2]) for i in range(10))
        assert all(seen[i][2] == expected[i][2] for i in range(10))


def test_collated_crops_are_a_crop_params_of_tensors() -> None:
    crops = CropDataset(_random_dataset(), PairedRandomResizedCrop(16), seed=2)
    _, _, batch, indices = next(iter(DataLoader(crops, batch_size=5)))
    assert isinstance(batch, CropParams)
    assert batch.hflip.dtype == torch.bool and batch.top.shape == (5,)
    for row, index in enumerate(indices.tolist()):
        assert tuple(int(v) for v in (f[row] for f in batch)) == tuple(
            int(v) for v in crops[index][2]
        )


def test_wrapper_errors() -> None:
    with pytest.raises(ValueError, match="seed"):
        CropDataset(_random_dataset(), PairedRandomResizedCrop(8), seed=-1)
    crops = CropDataset(_random_dataset(), PairedRandomResizedCrop(8))
    with pytest.raises(ValueError, match="epoch"):
        crops.set_epoch(-1)
    with pytest.raises(TypeError, match="image_size and hflip"):
        align_weights(torch.ones(4, 4), crops[0][2], (40, 56), out_grid=(2, 2))


def test_indexed_dataset_appends_the_index() -> None:
    data = _random_dataset(3)
    indexed = IndexedDataset(data)
    assert len(indexed) == 3
    image, target, index = indexed[2]
    assert torch.equal(image, data[2][0]) and int(target) == 2 and index == 2
    assert IndexedDataset(["a", "b"])[1] == ("b", 1)  # type: ignore[arg-type]


# ---- argument checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        # These reached comparisons and len() and failed there, without the argument's name.
        ({"scale": "ab"}, TypeError, r"scale must be a pair \(lo, hi\) with 0 < lo <= hi <= 1"),
        ({"scale": 0.5}, TypeError, r"scale must be a pair .*got float 0.5"),
        ({"scale": (0.2, 0.5, 1.0)}, ValueError, r"scale must be a pair \(lo, hi\)"),
        ({"scale": (0.2, float("nan"))}, ValueError, r"scale must be a pair .*finite"),
        ({"ratio": "ab"}, TypeError, r"ratio must be a pair \(lo, hi\) with 0 < lo <= hi"),
        ({"ratio": 1.0}, TypeError, r"ratio must be a pair .*got float 1.0"),
        ({"ratio": (1.0, float("inf"))}, ValueError, r"ratio must be a pair .*finite"),
        ({"hflip_prob": "0.5"}, TypeError, r"hflip_prob must be a float in \[0, 1\], got str"),
        ({"hflip_prob": float("nan")}, ValueError, r"hflip_prob must lie in \[0, 1\]"),
    ],
)
def test_crop_options_of_the_wrong_form_are_named(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        PairedRandomResizedCrop(32, **kwargs)


def test_crop_ranges_may_be_lists_or_tensors() -> None:
    crop = PairedRandomResizedCrop(8, scale=[0.25, 1], ratio=torch.tensor([0.5, 2.0]))
    assert crop.scale == (0.25, 1.0) and crop.ratio == (0.5, 2.0)


def test_generator_must_be_a_torch_generator() -> None:
    # An int reached generator.get_state(): "'int' object has no attribute 'get_state'".
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int 5"):
        PairedRandomResizedCrop(16)(torch.rand(3, 32, 32), generator=5)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generator_must_be_on_the_cpu() -> None:
    with pytest.raises(ValueError, match="generator must be a CPU torch.Generator"):
        PairedRandomResizedCrop(16).sample((32, 32), generator=torch.Generator(device="cuda"))


def test_apply_refuses_params_drawn_for_another_image_size() -> None:
    # The box of a 64 x 64 image on a 32 x 32 one gave a zero-padded crop, without an error.
    crop = PairedRandomResizedCrop(16)
    params = crop.sample((64, 64), generator=torch.Generator().manual_seed(0))
    with pytest.raises(
        ValueError, match=r"drawn for an image of size \(H, W\) = \(64, 64\), but the image is "
    ):
        crop.apply(torch.rand(3, 32, 32), params)
    with pytest.raises(ValueError, match=r"but the image is \(64, 48\)"):
        crop.apply(Image.new("RGB", (48, 64)), params)  # PIL sizes are (W, H)
    with pytest.raises(TypeError, match="params must be a CropParams"):
        crop.apply(torch.rand(3, 64, 64), tuple(params))  # type: ignore[arg-type]
    assert crop.apply(torch.rand(3, 64, 64), params).shape == (3, 16, 16)


def test_negative_index_is_the_sample_counted_from_the_end() -> None:
    # [-1] reached numpy's SeedSequence ("expected non-negative integer").
    crops = CropDataset(_random_dataset(5), PairedRandomResizedCrop(16), seed=3)
    last, by_position = crops[-1], crops[4]
    assert last[3] == 4  # the index returned reads the bank, which takes [0, N)
    assert _same(last[:2], by_position[:2]) and last[2] == by_position[2]
    assert torch.equal(crops.generator(-5).get_state(), crops.generator(0).get_state())
    with pytest.raises(IndexError, match="index 5 is out of range for a dataset of 5 samples"):
        crops[5]
    with pytest.raises(IndexError, match="index -6 is out of range"):
        crops[-6]
    with pytest.raises(TypeError, match="index must be an int, got float"):
        crops[1.0]  # type: ignore[index]
    assert len(list(iter(crops))) == 5  # the sequence protocol stops on IndexError
