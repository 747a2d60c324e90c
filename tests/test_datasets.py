"""Datasets: synthetic lesions (determinism, classes, masks), image folders and CSV tables."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from maskkit import CsvImageDataset, ImageFolderDataset, IndexedDataset, SyntheticLesions
from maskkit.datasets import to_tensor

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


def write_image(path: Path, rng: np.random.Generator, size=(12, 10), mode="RGB") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(*size, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode).save(path)
    return pixels


def expected_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels[..., :3].copy()).permute(2, 0, 1).float() / 255.0


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    written = {
        "train/melanoma/b.png": write_image(tmp_path / "train/melanoma/b.png", rng),
        "train/melanoma/sub/a.PNG": write_image(tmp_path / "train/melanoma/sub/a.PNG", rng),
        "train/benign/x.png": write_image(tmp_path / "train/benign/x.png", rng),
    }
    (tmp_path / "train/benign/notes.txt").write_text("not an image")
    return tmp_path, written


def test_image_folder_reads_sorted_classes_and_exact_pixels(folder) -> None:
    root, written = folder
    ds = ImageFolderDataset(root, "train")
    assert ds.classes == ["benign", "melanoma"]
    assert [p.relative_to(root).as_posix() for p, _ in ds.samples] == [
        "train/benign/x.png",
        "train/melanoma/b.png",
        "train/melanoma/sub/a.PNG",
    ]
    assert ds.targets == [0, 1, 1]
    for (path, _), (image, target) in zip(ds.samples, ds, strict=True):
        key = path.relative_to(root).as_posix()
        assert torch.equal(image, expected_tensor(written[key]))
        assert target == ds.classes.index(path.relative_to(root / "train").parts[0])


def test_grey_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    grey = write_image(tmp_path / "train/a/grey.png", rng, mode="L")
    write_image(tmp_path / "train/a/rgba.png", rng, mode="RGBA")
    ds = ImageFolderDataset(tmp_path, "train")
    image, _ = ds[0]
    assert image.shape == (3, 12, 10)
    assert torch.equal(image, expected_tensor(np.repeat(grey, 3, axis=-1)))
    assert ds[1][0].shape == (3, 12, 10)


def test_custom_transform_gets_the_pil_image(folder) -> None:
    root, _ = folder
    ds = ImageFolderDataset(root, "train", transform=lambda image: image.size)
    assert ds[0] == ((10, 12), 0)


def test_fixed_classes_for_a_split_missing_one(folder) -> None:
    root, _ = folder
    write_image(root / "val/melanoma/c.png", np.random.default_rng(2))
    val = ImageFolderDataset(root, "val", classes=["benign", "melanoma"])
    assert val.targets == [1] and val.classes == ["benign", "melanoma"]
    with pytest.raises(ValueError, match=r"\['melanoma'\].*not in classes"):
        ImageFolderDataset(root, "val", classes=["benign"])


def test_image_folder_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        ImageFolderDataset(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolderDataset(tmp_path, "train")
    (tmp_path / "train/empty").mkdir()
    write_image(tmp_path / "train/full/a.png", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\['empty'\].*hold no images"):
        ImageFolderDataset(tmp_path, "train")


def corrupt(path: Path, kind: str) -> None:
    if kind == "garbage":
        path.write_bytes(b"this is not a png at all")
    else:  # a PNG cut in half: the header parses, decoding fails
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_image_error_names_the_file(folder, kind: str) -> None:
    root, _ = folder
    bad = root / "train/melanoma/b.png"
    corrupt(bad, kind)
    ds = ImageFolderDataset(root, "train")
    assert torch.is_tensor(ds[0][0])  # other files still load
    with pytest.raises(ValueError, match=rf"{bad.name}.*skip_corrupt=True"):
        ds[1]


def test_skip_corrupt_serves_next_sample_and_counts_once(folder) -> None:
    root, written = folder
    bad = root / "train/melanoma/b.png"
    corrupt(bad, "garbage")
    ds = ImageFolderDataset(root, "train", skip_corrupt=True)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        image, target = ds[1]
    assert torch.equal(image, expected_tensor(written["train/melanoma/sub/a.PNG"]))
    assert target == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known bad file is not read or warned about again
        assert torch.equal(ds[1][0], image)
    assert ds.num_skipped == 1 and ds.skipped_files == [bad]
    assert len(ds) == 3  # indices stay stable for the weight bank


def test_skip_corrupt_wraps_around_and_fails_when_nothing_reads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_image(tmp_path / f"train/c/{name}.png", rng)
    corrupt(tmp_path / "train/c/b.png", "garbage")
    ds = ImageFolderDataset(tmp_path, "train", skip_corrupt=True)
    with pytest.warns(UserWarning):
        assert torch.equal(ds[1][0], ds[0][0])  # the last index wraps to the first
    corrupt(tmp_path / "train/c/a.png", "garbage")
    fresh = ImageFolderDataset(tmp_path, "train", skip_corrupt=True)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of the 2 images"):
        fresh[0]
    assert fresh.num_skipped == 2


# ---------------------------------------------------------------- CSV tables


def test_csv_ham10000_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = [("ISIC_1", "nv"), ("ISIC_2", "mel"), ("ISIC_3", "bkl"), ("ISIC_4", "nv")]
    pixels = {}
    for k, (image_id, _) in enumerate(rows):
        part = tmp_path / ("part_1" if k < 2 else "part_2")
        pixels[image_id] = write_image(part / f"{image_id}.jpg", rng)
    lines = ["lesion_id,image_id,dx,age"] + [f"L{k},{i},{dx},50" for k, (i, dx) in enumerate(rows)]
    (tmp_path / "meta.csv").write_text("\ufeff" + "\n".join(lines) + "\n")  # with a BOM
    ds = CsvImageDataset(
        tmp_path / "meta.csv",
        [tmp_path / "part_1", tmp_path / "part_2"],
        id_column="image_id",
        label_column="dx",
    )
    assert ds.classes == ["bkl", "mel", "nv"]
    assert ds.targets == [2, 1, 0, 2]
    assert [path.name for path, _ in ds.samples] == [f"{i}.jpg" for i, _ in rows]
    image, target = ds[1]
    assert image.shape == (3, 12, 10) and target == 1
    # JPEG is lossy: the decoded image is close to, not equal to, what was written.
    assert float((image - expected_tensor(pixels["ISIC_2"])).abs().mean()) < 0.2


def test_csv_messidor_integer_grades_and_ids_with_extension(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    grades = {"a.png": 0, "b.png": 4, "c.png": 2}
    for name in grades:
        write_image(tmp_path / "img" / name, rng)
    lines = ["image_id,adjudicated_dr_grade"] + [f"{n},{g}" for n, g in grades.items()]
    (tmp_path / "messidor.csv").write_text("\n".join(lines))
    ds = CsvImageDataset(
        tmp_path / "messidor.csv",
        tmp_path / "img",
        id_column="image_id",
        label_column="adjudicated_dr_grade",
    )
    assert ds.targets == [0, 4, 2]
    assert ds.classes == ["0", "1", "2", "3", "4"]


@pytest.fixture
def csv_case(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    for name in ("a", "b"):
        write_image(tmp_path / "img" / f"{name}.png", rng)
    return tmp_path


def make_csv(root: Path, text: str, **kwargs) -> CsvImageDataset:
    (root / "t.csv").write_text(text)
    options = {"id_column": "id", "label_column": "y", "extension": ".png", **kwargs}
    return CsvImageDataset(root / "t.csv", root / "img", **options)


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("id,label\na,x\n", {}, r"no column\(s\) \['y'\]; its columns are \['id', 'label'\]"),
        ("id,y\n", {}, "lists no images"),
        ("id,y\na,x\nb,\n", {}, "line 3: empty"),
        ("id,y\na,x\nb,z\n", {"classes": ["x"]}, r"labels \['z'\] not in classes"),
        ("id,y\na,-1\n", {}, "negative"),
        ("id,y\na,x\nmissing,x\n", {}, r"1 images .* e\.g\. \['missing\.png'\]"),
    ],
)
def test_csv_errors(csv_case: Path, text: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_csv(csv_case, text, **kwargs)


def test_csv_missing_files_and_folders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        CsvImageDataset(tmp_path / "none.csv", tmp_path, id_column="id", label_column="y")
    (tmp_path / "t.csv").write_text("id,y\na,x\n")
    with pytest.raises(ValueError, match="image folder .* does not exist"):
        CsvImageDataset(tmp_path / "t.csv", tmp_path / "no", id_column="id", label_column="y")


def test_csv_corrupt_image_raises_or_is_skipped(csv_case: Path) -> None:
    corrupt(csv_case / "img/a.png", "garbage")
    ds = make_csv(csv_case, "id,y\na,x\nb,z\n")
    with pytest.raises(ValueError, match=r"a\.png.*skip_corrupt=True"):
        ds[0]
    skipping = make_csv(csv_case, "id,y\na,x\nb,z\n", skip_corrupt=True)
    with pytest.warns(UserWarning, match=r"a\.png"):
        assert skipping[0][1] == 1  # served by b, with b's label
    assert skipping.num_skipped == 1


def test_to_tensor_scales_to_unit_range() -> None:
    pixels = np.array([[[0, 128, 255]]], dtype=np.uint8)
    image = to_tensor(Image.fromarray(pixels))
    assert image.shape == (3, 1, 1)
    assert torch.equal(image.flatten(), torch.tensor([0.0, 128.0, 255.0]) / 255.0)
