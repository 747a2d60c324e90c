"""The recipes' image files: class folders and CSV tables, corrupt files, pixel values."""

from __future__ import annotations

import argparse
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms.v2.functional import pil_to_tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from msmae_util.data import NORMALIZE, build_datasets, whole_image
from msmae_util.images import (
    CsvImageDataset,
    UnreadableImageError,
    image_folder,
    load_rgb,
)


def write_image(path: Path, rng: np.random.Generator, size=(12, 10), mode="RGB") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(*size, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode).save(path)
    return pixels


def as_tensor(image: Image.Image) -> torch.Tensor:
    return pil_to_tensor(image)


def expected_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels[..., :3].copy()).permute(2, 0, 1)


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
    ds = image_folder(root / "train")
    assert ds.classes == ["benign", "melanoma"]
    assert [Path(p).relative_to(root).as_posix() for p, _ in ds.samples] == [
        "train/benign/x.png",
        "train/melanoma/b.png",
        "train/melanoma/sub/a.PNG",
    ]
    assert ds.targets == [0, 1, 1]
    for k, (path, target) in enumerate(ds.samples):
        image, got = ds[k]
        assert image.mode == "RGB" and got == target
        assert torch.equal(
            as_tensor(image), expected_tensor(written[Path(path).relative_to(root).as_posix()])
        )


def test_grey_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    grey = write_image(tmp_path / "train/a/grey.png", rng, mode="L")
    rgba = write_image(tmp_path / "train/a/rgba.png", rng, mode="RGBA")
    ds = image_folder(tmp_path / "train")
    image, _ = ds[0]
    assert torch.equal(as_tensor(image), expected_tensor(np.repeat(grey, 3, axis=-1)))
    assert torch.equal(as_tensor(ds[1][0]), expected_tensor(on_black(rgba)))


def test_fixed_classes_for_a_split_missing_one(folder) -> None:
    root, _ = folder
    write_image(root / "val/melanoma/c.png", np.random.default_rng(2))
    val = image_folder(root / "val", ["benign", "melanoma"])
    assert val.targets == [1] and val.classes == ["benign", "melanoma"]
    assert val[0][1] == 1 and val.class_to_idx == {"benign": 0, "melanoma": 1}
    with pytest.raises(ValueError, match=r"\['melanoma'\].*not in classes"):
        image_folder(root / "val", ["benign"])


def test_image_folder_layout_errors(tmp_path: Path) -> None:
    # torchvision's own checks, each naming what is missing.
    with pytest.raises(FileNotFoundError, match="train"):
        image_folder(tmp_path / "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="class folder"):
        image_folder(tmp_path / "train")
    (tmp_path / "train/empty").mkdir()
    write_image(tmp_path / "train/full/a.png", np.random.default_rng(0))
    with pytest.raises(FileNotFoundError, match="empty"):
        image_folder(tmp_path / "train")


def corrupt(path: Path, kind: str) -> None:
    if kind == "garbage":
        path.write_bytes(b"this is not a png at all")
    else:  # a PNG cut in half: the header parses, decoding fails
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize("kind", ["garbage", "truncated", "missing"])
def test_corrupt_image_error_names_the_file(folder, kind: str) -> None:
    root, _ = folder
    bad = root / "train/melanoma/b.png"
    ds = image_folder(root / "train")
    if kind == "missing":
        bad.unlink()
    else:
        corrupt(bad, kind)
    assert isinstance(ds[0][0], Image.Image)  # other files still load
    with pytest.raises(UnreadableImageError, match=rf"{bad.name}.*--skip_corrupt"):
        ds[1]
    assert issubclass(UnreadableImageError, ValueError)


def data_args(root: Path, **options: object) -> argparse.Namespace:
    defaults = dict(data="imagefolder", data_path=str(root), num_workers=2, seed=0)
    defaults.update(skip_corrupt=False, cache_images=False)
    return argparse.Namespace(**{**defaults, **options})


@pytest.mark.parametrize("cache_images", [False, True])
def test_skip_corrupt_drops_unreadable_files_up_front(folder, cache_images: bool) -> None:
    root, written = folder
    write_image(root / "val/benign/v.png", np.random.default_rng(3))
    bad = root / "train/melanoma/b.png"
    corrupt(bad, "garbage")
    with pytest.raises(UnreadableImageError, match="b.png"):
        build_datasets(data_args(root, cache_images=True))  # found while caching
    args = data_args(root, skip_corrupt=True, cache_images=cache_images)
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*b\.png") as caught:
        splits = build_datasets(args)
    assert len(caught) == 1
    assert splits.skipped_files == {"train": [str(bad)], "val": []}
    assert splits.classes == ["benign", "melanoma"]
    assert len(splits.train) == 2  # the bank is sized after the drop: indices stay dense
    image, target = splits.train[1]
    assert target == 1
    assert torch.equal(as_tensor(image), expected_tensor(written["train/melanoma/sub/a.PNG"]))


def test_views_are_normalised_tensors() -> None:
    image = Image.fromarray(np.full((12, 10, 3), 255, dtype=np.uint8))
    whole = whole_image(16)(image)
    assert whole.shape == (3, 16, 16) and whole.dtype == torch.float32
    # White is (1 - mean) / std per channel (ImageNet statistics, as MAE).
    expected = [(1 - m) / s for m, s in zip(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    torch.testing.assert_close(whole.mean(dim=(1, 2)), torch.tensor(expected))
    # Synthetic images are float tensors already at the input size: resizing leaves them.
    pixels = torch.rand(3, 16, 16)
    torch.testing.assert_close(whole_image(16)(pixels), NORMALIZE(pixels))


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
    assert [Path(path).name for path, _ in ds.samples] == [f"{i}.jpg" for i, _ in rows]
    image, target = ds[1]
    assert as_tensor(image).shape == (3, 12, 10) and target == 1
    # JPEG is lossy: the decoded image is close to, not equal to, what was written.
    error = (as_tensor(image).float() - expected_tensor(pixels["ISIC_2"]).float()).abs().mean()
    assert float(error) < 0.2 * 255


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
    # A validation table matches labels against the training classes as strings.
    (tmp_path / "val.csv").write_text("image_id,adjudicated_dr_grade\na.png,3\n")
    val = CsvImageDataset(
        tmp_path / "val.csv",
        tmp_path / "img",
        id_column="image_id",
        label_column="adjudicated_dr_grade",
        classes=ds.classes,
    )
    assert val.targets == [3]


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


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_csv_that_is_not_utf8_is_named(csv_case: Path, encoding: str) -> None:
    # Issue 12.13: a Latin-1 table (an Excel export) raised a bare UnicodeDecodeError.
    (csv_case / "t.csv").write_bytes("id,y\na,gr\u00fcn\nb,rot\n".encode(encoding))
    with pytest.raises(ValueError, match=r"t\.csv is not UTF-8 text.*save it as UTF-8") as caught:
        CsvImageDataset(csv_case / "t.csv", csv_case / "img", id_column="id", label_column="y")
    assert caught.value.__cause__ is None


def test_csv_corrupt_image_names_the_file(csv_case: Path) -> None:
    corrupt(csv_case / "img/a.png", "garbage")
    ds = make_csv(csv_case, "id,y\na,x\nb,z\n")
    with pytest.raises(UnreadableImageError, match=r"a\.png.*--skip_corrupt"):
        ds[0]
    assert ds[1][1] == 1


def test_load_rgb_converts_and_closes_the_file(tmp_path: Path) -> None:
    pixels = np.array([[[0, 128, 255]]], dtype=np.uint8)
    Image.fromarray(pixels, mode="RGB").save(tmp_path / "p.png")
    image = load_rgb(str(tmp_path / "p.png"))
    assert image.mode == "RGB" and as_tensor(image).flatten().tolist() == [0, 128, 255]


# ------------------------------------------------ high bit depth and transparency (issue 12.8)


def write_png16(path: Path, pixels: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG (Pillow writes 16-bit grey only): pixels (H, W) or (H, W, C) uint16."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def scaled(values: np.ndarray, bits: int) -> np.ndarray:
    """The documented rule: round(255 * v / (2**bits - 1))."""
    return np.floor(255 * values.astype(np.float64) / (2**bits - 1) + 0.5).astype(np.uint8)


@pytest.mark.parametrize(
    ("high", "bits"),
    [(4096, 12), (65536, 16), (1024, 10), (16384, 14), (200, 8)],
)
def test_high_bit_depth_grey_is_scaled_by_its_bit_depth(
    tmp_path: Path, high: int, bits: int
) -> None:
    # Issue 12.8: a 12-bit image in a 16-bit PNG was read with 94% of its pixels at 255.
    rng = np.random.default_rng(high)
    values = rng.integers(0, high, size=(20, 24), dtype=np.uint16)
    values[0, 0] = high - 1  # the image reaches the top of its range
    path = tmp_path / "train" / "xray" / "a.png"
    write_png16(path, values, color_type=0)
    with Image.open(path) as raw:
        assert raw.mode == "I;16"  # what Pillow makes of 16-bit grey
    image = load_rgb(str(path))
    assert image.mode == "RGB"
    expected = np.repeat(scaled(values, bits)[..., None], 3, axis=-1)
    assert torch.equal(as_tensor(image), expected_tensor(expected))
    assert float((as_tensor(image) == 255).float().mean()) < 0.05  # nothing saturates
    assert torch.equal(as_tensor(load_rgb(str(path))), as_tensor(image))  # per image, fixed
    # Through the recipes' readers and views too.
    folder = image_folder(tmp_path / "train")
    assert torch.equal(as_tensor(folder[0][0]), as_tensor(image))


def test_sixteen_bit_grey_written_by_pillow_and_tiff(tmp_path: Path) -> None:
    values = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    for name in ("a.png", "a.tif"):
        Image.fromarray(values).save(tmp_path / name)
        image = load_rgb(str(tmp_path / name))
        assert torch.equal(as_tensor(image)[0], torch.from_numpy(scaled(values, 12)))


def test_signed_and_float_pixels_are_refused_by_name(tmp_path: Path) -> None:
    Image.fromarray(np.array([[-5, 100]], dtype=np.int32), mode="I").save(tmp_path / "s.tif")
    with pytest.raises(UnreadableImageError, match=r"s\.tif.*negative"):
        load_rgb(str(tmp_path / "s.tif"))
    Image.fromarray(np.array([[0.5, 2.0]], dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    with pytest.raises(UnreadableImageError, match=r"f\.tif.*float"):
        load_rgb(str(tmp_path / "f.tif"))


def on_black(rgba: np.ndarray) -> np.ndarray:
    """The documented policy: colour * alpha / 255, rounded half up."""
    colour, alpha = rgba[..., :3].astype(np.uint32), rgba[..., 3:].astype(np.uint32)
    return ((colour * alpha + 127) // 255).astype(np.uint8)


def test_transparent_images_are_composited_on_black(tmp_path: Path) -> None:
    pixels = np.array([[[0, 128, 255, 7], [10, 20, 30, 255], [200, 100, 50, 0]]], np.uint8)
    Image.fromarray(pixels, mode="RGBA").save(tmp_path / "rgba.png")
    image = load_rgb(str(tmp_path / "rgba.png"))
    assert image.mode == "RGB"
    assert as_tensor(image).permute(1, 2, 0).numpy().tolist() == [
        [[0, 4, 7], [10, 20, 30], [0, 0, 0]]
    ]
    # Grey + alpha, a palette with a transparent entry, and 16-bit RGBA (Pillow keeps the
    # high byte of each 16-bit sample) follow the same rule.
    grey_alpha = np.array([[[100, 128], [50, 255]]], np.uint8)
    Image.fromarray(grey_alpha, mode="LA").save(tmp_path / "la.png")
    rgba = np.repeat(grey_alpha[..., :1], 3, axis=-1)
    expected = on_black(np.concatenate([rgba, grey_alpha[..., 1:]], axis=-1))
    assert np.array_equal(np.asarray(load_rgb(str(tmp_path / "la.png"))), expected)
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(load_rgb(str(tmp_path / "p.png"))).tolist() == [[[0, 0, 0], [0, 255, 0]]]
    deep = np.random.default_rng(0).integers(0, 65536, size=(3, 4, 4), dtype=np.uint16)
    write_png16(tmp_path / "rgba16.png", deep, color_type=6)
    high_byte = (deep >> 8).astype(np.uint8)
    assert np.array_equal(np.asarray(load_rgb(str(tmp_path / "rgba16.png"))), on_black(high_byte))


# ------------------------------------------------ bad data refused by name (probe findings)


def _two_splits(root: Path, classes: dict[str, int], val: dict[str, int]) -> None:
    rng = np.random.default_rng(7)
    for split, counts in (("train", classes), ("val", val)):
        for name, count in counts.items():
            for k in range(count):
                write_image(root / split / name / f"{name}{k}.png", rng)


def test_a_single_class_is_refused_unless_the_labels_go_unused(tmp_path: Path) -> None:
    # Probe D03/D04: one class gave 100% top-1 and a cross-entropy of 0.
    _two_splits(tmp_path, {"nevus": 3}, {"nevus": 1})
    with pytest.raises(ValueError, match=r"train holds a single class, \['nevus'\]"):
        build_datasets(data_args(tmp_path))
    with pytest.raises(ValueError, match="single class"):  # SAM pre-training, λ > 0
        build_datasets(data_args(tmp_path, cls_loss_weight=0.1), test=False)
    # MAE / AMT pre-training (λ = 0) reads no label: one folder of images is fine.
    assert len(build_datasets(data_args(tmp_path, cls_loss_weight=0.0)).train) == 3
    (tmp_path / "t.csv").write_text("id,y\nnevus0,nv\nnevus1,nv\n")
    (tmp_path / "v.csv").write_text("id,y\nnevus2,nv\n")
    tables = dict(csv_train=str(tmp_path / "t.csv"), csv_val=str(tmp_path / "v.csv"))
    columns = dict(id_column="id", label_column="y", image_ext=".png")
    args = data_args(tmp_path, data="csv", image_dir=[str(tmp_path / "train/nevus")], **tables)
    with pytest.raises(ValueError, match=r"t\.csv holds a single class, \['nv'\]"):
        build_datasets(argparse.Namespace(**vars(args), **columns))


@pytest.mark.parametrize("cache_images", [False, True])
def test_skip_corrupt_may_not_empty_a_training_class_or_a_split(
    tmp_path: Path, cache_images: bool
) -> None:
    # Probe D14/D15: every training image of a class, or the whole val split, skipped
    # with per-file warnings only ("val top-1 0.00%").
    _two_splits(tmp_path, {"a": 2, "b": 2}, {"a": 1, "b": 1})
    args = data_args(tmp_path, skip_corrupt=True, cache_images=cache_images)
    for k in range(2):
        corrupt(tmp_path / f"train/a/a{k}.png", "garbage")
    with (
        pytest.warns(UserWarning),
        pytest.raises(
            ValueError,
            match=r"every image of class 'a' \(2 unreadable\) in the train split .*train\)",
        ),
    ):
        build_datasets(args)
    _two_splits(tmp_path, {"a": 2}, {})  # repaired
    for name in ("a", "b"):
        corrupt(tmp_path / f"val/{name}/{name}0.png", "garbage")
    with (
        pytest.warns(UserWarning),
        pytest.raises(ValueError, match=r"skipped all 2 images of the val split"),
    ):
        build_datasets(args)
    _two_splits(tmp_path, {}, {"a": 1, "b": 1})
    write_image(tmp_path / "test/b/t.png", np.random.default_rng(0))
    corrupt(tmp_path / "test/b/t.png", "truncated")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="all 1 images of the test"):
        build_datasets(args)
    # A validation class may lose its images (val may lack a class): only warned.
    (tmp_path / "test/b/t.png").unlink()
    write_image(tmp_path / "test/b/t.png", np.random.default_rng(0))
    corrupt(tmp_path / "val/b/b0.png", "garbage")
    with pytest.warns(UserWarning, match=r"b0\.png"):
        splits = build_datasets(args)
    assert len(splits.val) == 1 and splits.skipped_files["val"] == [str(tmp_path / "val/b/b0.png")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,y\na,x\nb,x\na,x\n", r"lists 1 image\(s\) on two rows, .*a\.png: lines 2 and 4"),
        ("id,y\na,x\nb,x\na.png,x\n", r"a\.png: lines 2 and 4"),  # one file, two ids
        (
            "id,y\na,nv\nb,nv\n\na,mel\n",
            r"disagree on the label, .*a\.png: line 2 'nv', line 5 'mel'",
        ),
    ],
)
def test_csv_repeated_or_conflicting_rows_are_refused(
    csv_case: Path, text: str, message: str
) -> None:
    # Probe D24/D25: a repeated row trained twice; one image labelled nv and mel.
    with pytest.raises(ValueError, match=message):
        make_csv(csv_case, text)


def test_a_file_in_two_splits_is_refused(tmp_path: Path) -> None:
    # Probe D42/D43: the training table given as --csv_val; val/ the same files as train/.
    _two_splits(tmp_path, {"a": 2, "b": 2}, {})
    (tmp_path / "t.csv").write_text("id,y\na0,a\nb0,b\na1,a\n")
    (tmp_path / "v.csv").write_text("id,y\nb1,b\na1,a\n")
    csv_args = dict(data="csv", image_dir=[str(tmp_path / "train/a"), str(tmp_path / "train/b")])
    csv_args.update(id_column="id", label_column="y", image_ext=".png", csv_test=None)
    args = data_args(tmp_path, **csv_args, csv_train=str(tmp_path / "t.csv"))
    args.csv_val = str(tmp_path / "v.csv")
    with pytest.raises(
        ValueError, match=r"1 file\(s\) are in both the train and the val split.*a1"
    ):
        build_datasets(args)
    args.csv_val = args.csv_train
    with pytest.raises(ValueError, match=r"3 file\(s\) are in both the train and the val split"):
        build_datasets(args)
    for name in ("a", "b"):  # val/<class> links to train/<class>: the same files
        (tmp_path / "val").mkdir(exist_ok=True)
        (tmp_path / "val" / name).symlink_to(tmp_path / "train" / name)
    with pytest.raises(ValueError, match=r"4 file\(s\) are in both the train and the val split"):
        build_datasets(data_args(tmp_path))
    for name in ("a", "b"):  # hard links: other paths, the same files
        (tmp_path / "val" / name).unlink()
        (tmp_path / "val" / name).mkdir()
        for image in (tmp_path / "train" / name).iterdir():
            (tmp_path / "val" / name / image.name).hardlink_to(image)
    with pytest.raises(ValueError, match=r"4 file\(s\) are in both the train and the val split"):
        build_datasets(data_args(tmp_path))


def test_sixteen_bit_grey_alpha_png_is_refused(tmp_path: Path) -> None:
    # Probe D16: Pillow reads 16-bit grey + alpha as RGBA of the high byte: 0..4095 became
    # 0..15, bypassing the bit-depth scaling of 16-bit grey.
    grey = np.tile(np.linspace(0, 4095, 16).astype(np.uint16), (4, 1))
    write_png16(tmp_path / "la16.png", np.dstack([grey, np.full_like(grey, 65535)]), 4)
    with Image.open(tmp_path / "la16.png") as raw:
        assert raw.mode == "RGBA" and int(np.asarray(raw)[..., 0].max()) == 15
    with pytest.raises(UnreadableImageError, match=r"la16\.png: 16-bit grey\+alpha PNG.*alpha"):
        load_rgb(str(tmp_path / "la16.png"))
    write_png16(tmp_path / "grey16.png", grey, 0)  # the fix the message gives: no alpha
    assert int(as_tensor(load_rgb(str(tmp_path / "grey16.png"))).max()) == 255


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (("0", "999999"), r"line 3: label 999999 makes 1000000 classes .* only 2 of them"),
        (("20", "0"), r"line 2: label 20 makes 21 classes"),
    ],
)
def test_sparse_integer_labels_are_refused(
    csv_case: Path, labels: tuple[str, str], message: str
) -> None:
    # Probe E03: one label 999999 made 10^6 classes and an 8 TB allocation.
    with pytest.raises(ValueError, match=message):
        make_csv(csv_case, f"id,y\na,{labels[0]}\nb,{labels[1]}\n")


def test_integer_labels_with_gaps_stay_class_indices(csv_case: Path) -> None:
    assert make_csv(csv_case, "id,y\na,0\nb,4\n").classes == [str(k) for k in range(5)]
    # Over 16 classes, half of them occurring is enough.
    write_image(csv_case / "img/c.png", np.random.default_rng(0))
    rows = "".join(f"{n},{k}\n" for n, k in (("a", 0), ("b", 1), ("c", 3)))
    assert len(make_csv(csv_case, "id,y\n" + rows).classes) == 4


@pytest.mark.parametrize(
    ("encoding", "advice"),
    [("utf-16", "iconv -f UTF-16 -t UTF-8"), ("utf-32", "iconv -f UTF-32 -t UTF-8")],
)
def test_csv_with_a_utf16_or_utf32_byte_order_mark_gets_its_own_advice(
    csv_case: Path, encoding: str, advice: str
) -> None:
    # Probe D36: a UTF-16 table was told to convert from Latin-1.
    (csv_case / "t.csv").write_bytes("id,y\na,x\nb,z\n".encode(encoding))
    with pytest.raises(ValueError, match=rf"t\.csv is not UTF-8 text but .*{advice}") as caught:
        CsvImageDataset(csv_case / "t.csv", csv_case / "img", id_column="id", label_column="y")
    assert "latin1" not in str(caught.value)
    (csv_case / "t.csv").write_bytes("id,y\na,x\nb,z\n".encode("utf-16-le"))  # no mark
    with pytest.raises(ValueError, match="NUL characters.*UTF-16"):
        CsvImageDataset(csv_case / "t.csv", csv_case / "img", id_column="id", label_column="y")
    (csv_case / "t.csv").write_bytes("id,y\na,x\nb,z\n".encode("utf-8-sig"))  # UTF-8's mark
    assert make_csv(csv_case, (csv_case / "t.csv").read_text("utf-8-sig")).targets == [0, 1]


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_an_empty_csv_file_is_called_empty(csv_case: Path, text: str) -> None:
    # Probe D31: a zero-byte table was reported as "its columns are None".
    with pytest.raises(ValueError, match=r"t\.csv is empty: .*header row .*\['id', 'y'\]"):
        make_csv(csv_case, text)


def test_an_empty_class_folder_names_the_split_folder_and_the_class(tmp_path: Path) -> None:
    # Probe D05: torchvision's "Found no valid file for the classes c" named no folder.
    _two_splits(tmp_path, {"a": 1, "b": 1}, {"a": 1})
    (tmp_path / "val/c").mkdir()
    (tmp_path / "val/c/notes.txt").write_text("no image")
    with pytest.raises(ValueError, match=rf"\['c'\] of the split folder {tmp_path / 'val'} hold"):
        build_datasets(data_args(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):  # still torchvision's type
        image_folder(tmp_path / "test")


def test_skip_corrupt_warnings_do_not_advise_skip_corrupt(folder) -> None:
    # Probe finding 12: with --skip_corrupt on, no message may advise passing it.
    root, _ = folder
    write_image(root / "val/benign/v.png", np.random.default_rng(3))
    corrupt(root / "train/melanoma/b.png", "garbage")
    with pytest.warns(UserWarning) as caught:
        build_datasets(data_args(root, skip_corrupt=True))
    assert caught and not [w for w in caught if "--skip_corrupt" in str(w.message)]
