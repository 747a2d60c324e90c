"""MaskWeightBank: storage, updates, checkpoints, memory-mapped files and refreshes."""

from __future__ import annotations

import copy
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from maskkit import IndexedDataset, MaskWeightBank

GRID = (3, 4)


def _maps(count: int, seed: int = 0) -> Tensor:
    # Multiples of 1/8 below 16 are exact in float16, so round trips compare exactly.
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (count, *GRID), generator=generator) / 8


def test_starts_uniform_in_float16() -> None:
    bank = MaskWeightBank(5, GRID)
    assert bank.weights.dtype == torch.float16
    assert bank.weights.shape == (5, *GRID)
    assert len(bank) == 5
    assert torch.equal(bank[torch.arange(5)], torch.ones(5, *GRID))


def test_memory_per_sample() -> None:
    # 14 x 14 float16 maps: 392 bytes each, about 0.5 GB for ImageNet-1k's 1,281,167 images.
    bank = MaskWeightBank(2, (14, 14))
    assert bank.bytes_per_sample == 392 == bank.weights[0].nbytes
    assert MaskWeightBank(2, (14, 14), dtype=torch.float32).bytes_per_sample == 784


def test_update_then_read_back() -> None:
    bank = MaskWeightBank(6, GRID)
    maps = _maps(3)
    bank.update(torch.tensor([4, 0, 2]), maps)
    assert torch.equal(bank[torch.tensor([0, 2, 4])], maps[[1, 2, 0]])
    assert torch.equal(bank[[1, 3, 5]], torch.ones(3, *GRID))
    assert torch.equal(bank[4], maps[0])
    assert bank[torch.tensor([4], dtype=torch.int32)].dtype == torch.float32


def test_reads_are_copies() -> None:
    bank = MaskWeightBank(2, GRID, dtype=torch.float32)
    bank[0].zero_()
    bank[torch.tensor([1])].zero_()
    assert torch.equal(bank.weights, torch.ones(2, *GRID))


def test_float16_values_are_rounded_like_half() -> None:
    bank = MaskWeightBank(1, GRID)
    maps = torch.rand(1, *GRID, generator=torch.Generator().manual_seed(1))
    bank.update([0], maps)
    assert torch.equal(bank[[0]], maps.half().float())


@pytest.mark.parametrize(
    ("indices", "maps", "error", "message"),
    [
        (torch.tensor([6]), _maps(1), ValueError, "index 6 is out of range"),
        (torch.tensor([-1]), _maps(1), ValueError, "index -1 is out of range"),
        (torch.tensor([0, 0]), _maps(2), ValueError, "distinct"),
        (torch.tensor([[0, 1]]), _maps(2), ValueError, r"\(k,\)"),
        (torch.tensor([0.0]), _maps(1), TypeError, "integer dtype"),
        (torch.tensor([True]), _maps(1), TypeError, "integer dtype"),
        (torch.tensor([0, 1]), _maps(3), ValueError, "do not match 2 indices"),
        (torch.tensor([0]), torch.ones(1, 4, 3), ValueError, r"grid \(3, 4\)"),
        (torch.tensor([0]), torch.ones(1, 12), ValueError, "expected"),
        (torch.tensor([0]), torch.ones(1, *GRID, dtype=torch.int64), TypeError, "floating"),
        (torch.tensor([0]), torch.full((1, *GRID), float("nan")), ValueError, "NaN"),
        (torch.tensor([0]), torch.full((1, *GRID), float("inf")), ValueError, "Inf"),
        (torch.tensor([0]), -torch.ones(1, *GRID), ValueError, "negative"),
        (torch.tensor([0]), torch.full((1, *GRID), 1e5), ValueError, "exceed the range"),
    ],
)
def test_bad_updates_are_rejected_and_write_nothing(
    indices: Tensor, maps: Tensor, error: type[Exception], message: str
) -> None:
    bank = MaskWeightBank(6, GRID)
    with pytest.raises(error, match=message):
        bank.update(indices, maps)
    assert torch.equal(bank.weights, torch.ones(6, *GRID, dtype=torch.float16))


def test_bad_reads_are_rejected() -> None:
    bank = MaskWeightBank(3, GRID)
    with pytest.raises(ValueError, match="out of range"):
        bank[3]
    with pytest.raises(TypeError, match="bool"):
        bank[True]  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"grid": (14,)}, "grid"),
        ({"grid": (0, 14)}, "grid"),
        ({"dtype": torch.int8}, "dtype"),
    ],
)
def test_bad_construction_is_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MaskWeightBank(**{"num_samples": 4, "grid": GRID, **kwargs})


def test_state_dict_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    bank = MaskWeightBank(5, GRID)
    bank.update(torch.tensor([1, 3]), _maps(2))
    torch.save(bank.state_dict(), tmp_path / "bank.pt")

    restored = MaskWeightBank(5, GRID)
    storage = restored.weights.data_ptr()
    restored.load_state_dict(torch.load(tmp_path / "bank.pt", weights_only=True))

    assert torch.equal(restored.weights, bank.weights)
    # In place: a memory-mapped bank keeps writing to its file.
    assert restored.weights.data_ptr() == storage
    # A plain tensor: nothing in shared memory (/dev/shm), nothing for workers to see.
    assert not restored.weights.is_shared()


def test_load_converts_dtype_and_never_assigns() -> None:
    source = MaskWeightBank(4, GRID, dtype=torch.float32)
    source.update([2], _maps(1))
    bank = MaskWeightBank(4, GRID)
    storage = bank.weights.data_ptr()
    bank.load_state_dict(source.state_dict(), assign=True)
    assert bank.weights.dtype == torch.float16
    assert bank.weights.data_ptr() == storage
    assert torch.equal(bank[[2]], _maps(1))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (torch.ones(5, *GRID), r"has shape \(5, 3, 4\) but this bank holds \(4, 3, 4\)"),
        (torch.ones(4, 4, 3), "grid"),
        (torch.full((4, *GRID), float("nan")), "NaN"),
        (torch.ones(4, *GRID, dtype=torch.int32), "floating"),
    ],
)
def test_bad_state_dict_is_rejected_without_a_partial_load(weights: Tensor, message: str) -> None:
    bank = MaskWeightBank(4, GRID)
    bank.update([0], _maps(1))
    before = bank.weights.clone()
    with pytest.raises((ValueError, TypeError), match=message):
        bank.load_state_dict({"weights": weights})
    assert torch.equal(bank.weights, before)


def test_missing_and_unexpected_keys_are_reported() -> None:
    bank = MaskWeightBank(4, GRID)
    with pytest.raises(RuntimeError, match="Missing key"):
        bank.load_state_dict({})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        bank.load_state_dict({"weights": torch.ones(4, *GRID), "extra": torch.ones(1)})


def test_memory_mapped_bank_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "bank.f16"
    bank = MaskWeightBank(6, GRID, path=path)
    assert path.stat().st_size == 256 + 6 * bank.bytes_per_sample
    assert torch.equal(bank[torch.arange(6)], torch.ones(6, *GRID))
    bank.update(torch.tensor([5, 1]), _maps(2))
    del bank

    reopened = MaskWeightBank(6, GRID, path=path)
    assert torch.equal(reopened[[5, 1]], _maps(2))
    assert torch.equal(reopened[[0, 2, 3, 4]], torch.ones(4, *GRID))
    assert [p.name for p in tmp_path.iterdir()] == ["bank.f16"]


def test_memory_mapped_bank_shares_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bank.f16"
    first = MaskWeightBank(4, GRID, path=path)
    second = MaskWeightBank(4, GRID, path=path)
    first.update([3], _maps(1))
    assert torch.equal(second[3], _maps(1)[0])

    # load_state_dict writes through to the file as well.
    source = MaskWeightBank(4, GRID)
    source.update([0], _maps(1, seed=5))
    second.load_state_dict(source.state_dict())
    assert torch.equal(MaskWeightBank(4, GRID, path=path)[0], _maps(1, seed=5)[0])


def test_truncated_file_is_named_on_open_and_before_reading(tmp_path: Path) -> None:
    # Issue 12.12: a truncated file with a valid header got a misleading "layout" error, and
    # reading a mapped page past the end of a file truncated while open raises SIGBUS.
    path = tmp_path / "bank.f16"
    bank = MaskWeightBank(4, GRID, path=path)
    full = path.stat().st_size
    with path.open("r+b") as file:
        file.truncate(full - 8)
    with pytest.raises(ValueError, match=f"is {full - 8} bytes but its layout .* needs {full}"):
        bank[3]
    with pytest.raises(ValueError, match="truncated or overwritten"):
        bank.update([0], _maps(1))
    # Each of these read every mapped page (SIGBUS before the check).
    for touch_every_page in (
        bank.state_dict,
        lambda: bank.load_state_dict({"weights": _maps(4)}),
        lambda: copy.deepcopy(bank),
        lambda: pickle.dumps(bank),
    ):
        with pytest.raises(ValueError, match="truncated or overwritten"):
            touch_every_page()
    with pytest.raises(ValueError, match="truncated or overwritten"):
        MaskWeightBank(4, GRID, path=path)


def test_state_dict_errors_name_the_key() -> None:
    with pytest.raises(TypeError, match=r"state_dict\['weights'\]: .*floating"):
        MaskWeightBank(4, GRID).load_state_dict(
            {"weights": torch.ones(4, *GRID, dtype=torch.int32)}
        )


def test_a_file_with_nan_maps_is_refused_when_reopened(tmp_path: Path) -> None:
    path = tmp_path / "bank.f16"
    MaskWeightBank(4, GRID, path=path)
    raw = np.memmap(path, dtype=np.float16, mode="r+", offset=256, shape=(4, *GRID))
    raw[2, 1, 1] = np.nan
    raw.flush()
    del raw
    with pytest.raises(ValueError, match="bank.f16 is corrupt: weights contain NaN"):
        MaskWeightBank(4, GRID, path=path)


def test_file_is_written_with_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "bank.f16"
    MaskWeightBank(2, GRID, path=path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["bank.f16"]  # no temporary left


def _umask() -> int:
    import os

    current = os.umask(0)
    os.umask(current)
    return current


@pytest.mark.parametrize(
    "kwargs",
    [{"num_samples": 5}, {"grid": (4, 3)}, {"dtype": torch.bfloat16}, {"dtype": torch.float32}],
)
def test_reopening_with_another_layout_is_rejected(tmp_path: Path, kwargs: dict) -> None:
    # A transposed grid or another 2-byte dtype has the same size: the header tells them apart.
    path = tmp_path / "bank.f16"
    MaskWeightBank(3, GRID, path=path)
    with pytest.raises(ValueError, match=r'holds a bank with layout \{"num_samples": 3'):
        MaskWeightBank(**{"num_samples": 3, "grid": GRID, "path": path, **kwargs})
    assert torch.equal(MaskWeightBank(3, GRID, path=path)[0], torch.ones(GRID))


def test_a_file_that_is_not_a_bank_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.bin"
    path.write_bytes(b"\0" * 1024)
    with pytest.raises(ValueError, match="no maskkit bank header"):
        MaskWeightBank(3, GRID, path=path)
    assert path.read_bytes() == b"\0" * 1024


def test_file_layout_is_a_header_then_the_raw_array(tmp_path: Path) -> None:
    path = tmp_path / "bank.f16"
    bank = MaskWeightBank(3, GRID, path=path)
    bank.update([1], _maps(1))
    raw = np.memmap(path, dtype=np.float16, mode="r", offset=256, shape=(3, *GRID))
    assert path.stat().st_size == 256 + 3 * bank.bytes_per_sample
    assert np.array_equal(raw[1], _maps(1)[0].numpy())


def test_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MaskWeightBank(3, GRID, path=tmp_path / "missing" / "bank.f16")


# ---- refresh -----------------------------------------------------------------------------


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Linear(1, 1)
        self.dropout = nn.Dropout(0.5)
        self.frozen = nn.BatchNorm2d(1)


class _FakeExtractor:
    """Map = the image's first channel average-pooled onto GRID, plus 1; records its calls."""

    def __init__(self, *, poison_batch: int | None = None) -> None:
        self.model = _Model()
        self.calls: list[tuple[bool, bool]] = []
        self.poison_batch = poison_batch

    def __call__(self, images: Tensor) -> Tensor:
        self.calls.append((self.model.training, torch.is_grad_enabled()))
        maps = _expected_maps(images)
        if len(self.calls) - 1 == self.poison_batch:
            maps[0, 0, 0] = float("nan")
        return maps


def _expected_maps(images: Tensor) -> Tensor:
    return nn.functional.adaptive_avg_pool2d(images[:, 0], GRID) + 1


def _images(count: int) -> Tensor:
    # Multiples of 1/8, pooled over 4 x 4 pixels: float16-exact maps.
    generator = torch.Generator().manual_seed(3)
    return torch.randint(0, 8, (count, 2, 12, 16), generator=generator) / 8


def _loader(images: Tensor, **kwargs: object) -> DataLoader:
    dataset = IndexedDataset(TensorDataset(images, torch.zeros(len(images))))
    return DataLoader(dataset, batch_size=3, **kwargs)  # type: ignore[arg-type]


def test_refresh_writes_every_sample_in_eval_mode_without_grad() -> None:
    images = _images(10)
    extractor = _FakeExtractor()
    extractor.model.train()
    extractor.model.frozen.eval()
    bank = MaskWeightBank(10, GRID)

    count = bank.refresh(
        extractor, _loader(images, shuffle=True, generator=torch.Generator().manual_seed(0))
    )

    assert count == 10
    assert torch.equal(bank[torch.arange(10)], _expected_maps(images))
    assert extractor.calls == [(False, False)] * 4
    # Every module's own flag comes back, not just the top-level one.
    assert extractor.model.training and extractor.model.dropout.training
    assert not extractor.model.frozen.training


def test_refresh_failure_restores_the_model_and_writes_nothing() -> None:
    images = _images(9)
    extractor = _FakeExtractor(poison_batch=2)
    extractor.model.train()
    bank = MaskWeightBank(9, GRID)
    with pytest.raises(ValueError, match="NaN"):
        bank.refresh(extractor, _loader(images), progress=False)
    assert extractor.model.training
    assert torch.equal(bank.weights, torch.ones(9, *GRID, dtype=torch.float16))


def test_refresh_of_a_subset_warns_and_keeps_the_rest() -> None:
    images = _images(8)
    bank = MaskWeightBank(8, GRID)
    loader = [(images[[1, 4, 6]], torch.zeros(3), torch.tensor([1, 4, 6]))]
    with pytest.warns(UserWarning, match="covered 3 of 8 samples"):
        count = bank.refresh(_FakeExtractor(), loader, progress=False)
    assert count == 3
    assert torch.equal(bank[[1, 4, 6]], _expected_maps(images[[1, 4, 6]]))
    assert torch.equal(bank[[0, 2, 3, 5, 7]], torch.ones(5, *GRID))


def test_refresh_keeps_the_first_map_of_a_repeated_index() -> None:
    images = _images(2)
    bank = MaskWeightBank(2, GRID)
    loader = [(images, torch.tensor([0, 1])), (images.flip(0), torch.tensor([1, 0]))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bank.refresh(_FakeExtractor(), loader, progress=False) == 2
    assert torch.equal(bank[[0, 1]], _expected_maps(images))


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ((torch.zeros(2, 1, 12, 16),), "dataset indices last"),
        ((torch.zeros(2, 1, 12, 16), torch.tensor([0, 1, 2])), "do not match 3 indices"),
        ((torch.zeros(2, 1, 12, 16), torch.tensor([0, 9])), "out of range"),
    ],
)
def test_refresh_rejects_bad_batches(batch: tuple, message: str) -> None:
    bank = MaskWeightBank(4, GRID)
    with pytest.raises(ValueError, match=message):
        bank.refresh(_FakeExtractor(), [batch], progress=False)


def test_refresh_needs_an_extractor_with_a_model() -> None:
    bank = MaskWeightBank(2, GRID)
    with pytest.raises(TypeError, match="model"):
        bank.refresh(_expected_maps, [], progress=False)


def test_refresh_names_nan_images_as_the_cause() -> None:
    # Issue 12.11: NaN pixels gave NaN maps and the refresh blamed the weights.
    images = _images(6)
    images[4, 0, 2, 3] = float("nan")
    bank = MaskWeightBank(6, GRID)
    with pytest.raises(ValueError, match=r"images of dataset indices \[3, 4, 5\].*NaN or Inf"):
        bank.refresh(_FakeExtractor(), _loader(images), progress=False)
    assert torch.equal(bank[torch.arange(6)], torch.ones(6, *GRID))


def test_empty_index_list_reads_nothing() -> None:
    bank = MaskWeightBank(3, GRID)
    assert bank[[]].shape == (0, *GRID)


def test_progress_bar_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    images = _images(4)
    bank = MaskWeightBank(4, GRID)
    bank.refresh(_FakeExtractor(), _loader(images), progress=False)
    assert "mask weights" not in capsys.readouterr().err
    bank.refresh(_FakeExtractor(), _loader(images))
    assert "mask weights" in capsys.readouterr().err


def test_refresh_with_attention_extractor_on_a_timm_vit() -> None:
    timm = pytest.importorskip("timm")
    from maskkit.attention import AttentionExtractor

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=3,
    )
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    extractor = AttentionExtractor(model)
    bank = MaskWeightBank(5, (4, 4), dtype=torch.float32)

    bank.refresh(extractor, _loader(images, shuffle=True), progress=False)

    torch.testing.assert_close(bank[torch.arange(5)], extractor(images))
    assert model.training


def test_slices_and_other_index_types_name_the_accepted_ones() -> None:
    # bank[0:2] failed in torch.as_tensor: "Could not infer dtype of slice". Slices are
    # refused: their bounds would be clamped to [0, N) silently.
    bank = MaskWeightBank(3, GRID)
    with pytest.raises(
        TypeError,
        match=r"indices must be an int, a sequence of ints or a \(k,\) integer tensor, got "
        r"slice .*torch.arange\(start, stop\)",
    ):
        bank[0:2]  # type: ignore[index]
    with pytest.raises(TypeError, match="got str 'a'"):
        bank["a"]  # type: ignore[index]
    with pytest.raises(TypeError, match=r"indices must be a sequence of ints .*got NoneType"):
        bank.update(None, _maps(2))  # type: ignore[arg-type]
    assert torch.equal(bank[torch.arange(0, 2)], torch.ones(2, *GRID))


def test_maps_on_the_meta_device_are_refused() -> None:
    with pytest.raises(ValueError, match="meta device hold no values"):
        MaskWeightBank(4, GRID).update([0], torch.ones(1, *GRID, device="meta"))
