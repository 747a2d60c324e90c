"""Paired crops: torchvision's sampling rule, seeded determinism, images and weights together."""

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
    CropParams,
    IndexedDataset,
    MaskWeightBank,
    PairedRandomResizedCrop,
    WeightedCropDataset,
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
    # Same global seed: our box and flip equal RandomResizedCrop.get_params, then
    # RandomHorizontalFlip's draw (including the central-crop fallback of thin images).
    crop = PairedRandomResizedCrop(8, scale=tuple(scale), ratio=tuple(ratio), hflip_prob=hflip_prob)
    torch.manual_seed(seed)
    params = crop.sample((height, width))
    torch.manual_seed(seed)
    box = T.RandomResizedCrop.get_params(torch.empty(1, height, width), scale, ratio)
    hflip = bool(torch.rand(1) < hflip_prob)
    assert params == CropParams(*box, hflip)


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


def test_bright_square_and_hot_cell_coincide_after_crop_and_flip() -> None:
    dataset = _PaintedCells()
    out_grid = (8, 8)
    crops = WeightedCropDataset(
        dataset, _hot_cell_bank(dataset), PairedRandomResizedCrop(64), seed=3, out_grid=out_grid
    )
    flipped = visible = 0
    for epoch in range(3):
        crops.set_epoch(epoch)
        for index in range(len(crops)):
            image, _, weights, returned_index = crops[index]
            assert returned_index == index
            assert weights.shape == out_grid
            # Mean brightness per output cell is the share of the cell the square covers,
            # which is exactly what the aligned map says (up to the bicubic resampling).
            brightness = image[0].reshape(8, 8, 8, 8).mean((1, 3))
            torch.testing.assert_close(weights, brightness, atol=0.05, rtol=0)
            params = crops.transform.sample(IMAGE_SIZE, generator=crops.generator(index))
            flipped += params.hflip and bool(weights.any())
            visible += bool(weights.any())
    assert visible > 20 and flipped > 5


def test_the_check_above_catches_amt_style_misalignment() -> None:
    # The same comparison with the crop offset dropped (AMT's bug) fails on most crops.
    dataset = _PaintedCells()
    crops = WeightedCropDataset(dataset, _hot_cell_bank(dataset), PairedRandomResizedCrop(64))
    misaligned = 0
    for index in range(len(crops)):
        image, (row, col), _, _ = crops[index]
        params = crops.transform.sample(IMAGE_SIZE, generator=crops.generator(index))
        hot = torch.zeros(MAP_GRID)
        hot[row, col] = 1.0
        wrong = align_weights(
            hot, (0, 0, params.height, params.width), IMAGE_SIZE, (8, 8), hflip=params.hflip
        )
        brightness = image[0].reshape(8, 8, 8, 8).mean((1, 3))
        misaligned += bool((wrong - brightness).abs().max() > 0.05)
    assert misaligned > len(crops) // 2


# ---- WeightedCropDataset determinism and workers ----------------------------------------------


def _random_dataset(count: int = 10) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 3, 40, 56, generator=generator)
    return TensorDataset(images, torch.arange(count))


def _random_bank(count: int = 10) -> MaskWeightBank:
    bank = MaskWeightBank(count, (5, 7))
    bank.update(torch.arange(count), torch.rand(count, 5, 7))
    return bank


def _collect(dataset: WeightedCropDataset, order: list[int]) -> dict[int, tuple]:
    return {index: dataset[index] for index in order}


def _same(a: tuple, b: tuple) -> bool:
    return all(torch.equal(torch.as_tensor(x), torch.as_tensor(y)) for x, y in zip(a, b))


def test_samples_depend_on_seed_epoch_and_index_only() -> None:
    data, bank = _random_dataset(), _random_bank()
    crops = WeightedCropDataset(data, bank, PairedRandomResizedCrop(16), seed=7, out_grid=(4, 4))
    forward = _collect(crops, list(range(10)))
    backward = _collect(crops, list(range(9, -1, -1)))
    assert all(_same(forward[i], backward[i]) for i in range(10))
    again = WeightedCropDataset(data, bank, PairedRandomResizedCrop(16), seed=7, out_grid=(4, 4))
    assert all(_same(forward[i], again[i]) for i in range(10))

    crops.set_epoch(1)
    assert crops.epoch == 1
    next_epoch = _collect(crops, list(range(10)))
    assert not any(_same(forward[i], next_epoch[i]) for i in range(10))
    crops.set_epoch(0)
    assert all(_same(forward[i], crops[i]) for i in range(10))

    other_seed = WeightedCropDataset(data, bank, PairedRandomResizedCrop(16), seed=8)
    assert not any(_same(forward[i][:1], other_seed[i][:1]) for i in range(10))


def test_post_transform_runs_after_the_crop() -> None:
    crops = WeightedCropDataset(
        _random_dataset(),
        _random_bank(),
        PairedRandomResizedCrop(16),
        post_transform=lambda image: image * 2,
    )
    plain = WeightedCropDataset(_random_dataset(), _random_bank(), PairedRandomResizedCrop(16))
    assert torch.equal(crops[3][0], plain[3][0] * 2)
    assert crops[3][2].shape == (5, 7)


def test_workers_see_the_epoch_and_bank_updates_of_the_main_process() -> None:
    data, bank = _random_dataset(), _random_bank()
    crops = WeightedCropDataset(data, bank, PairedRandomResizedCrop(16), seed=1)
    expected_epoch0 = _collect(crops, list(range(10)))
    loader = DataLoader(
        crops, batch_size=4, num_workers=2, persistent_workers=True, collate_fn=list
    )
    seen = {item[3]: item for batch in loader for item in batch}
    assert all(_same(seen[i], expected_epoch0[i]) for i in range(10))

    # The persistent workers keep their copy of the dataset: only shared state reaches them.
    crops.set_epoch(4)
    bank.update(torch.arange(10), torch.full((10, 5, 7), 0.25))
    seen = {item[3]: item for batch in loader for item in batch}
    assert all(_same(seen[i], crops[i]) for i in range(10))
    assert all(torch.allclose(seen[i][2], torch.full((5, 7), 0.25)) for i in range(10))
    assert not any(_same(seen[i][:1], expected_epoch0[i][:1]) for i in range(10))


def test_wrapper_errors() -> None:
    with pytest.raises(ValueError, match="num_samples=len"):
        WeightedCropDataset(_random_dataset(10), _random_bank(9), PairedRandomResizedCrop(8))
    with pytest.raises(ValueError, match="seed"):
        WeightedCropDataset(_random_dataset(), _random_bank(), PairedRandomResizedCrop(8), seed=-1)
    crops = WeightedCropDataset(_random_dataset(), _random_bank(), PairedRandomResizedCrop(8))
    with pytest.raises(ValueError, match="epoch"):
        crops.set_epoch(-1)


def test_indexed_dataset_appends_the_index() -> None:
    data = _random_dataset(3)
    indexed = IndexedDataset(data)
    assert len(indexed) == 3
    image, target, index = indexed[2]
    assert torch.equal(image, data[2][0]) and int(target) == 2 and index == 2
    assert IndexedDataset(["a", "b"])[1] == ("b", 1)  # type: ignore[arg-type]
