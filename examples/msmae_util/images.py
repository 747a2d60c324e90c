"""Image files: torchvision's ``ImageFolder`` and CSV tables, with a loader that names
unreadable files. Items are ``(PIL RGB image, target)``; ``samples`` lists ``(path, target)``.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS


class UnreadableImageError(ValueError):
    """An image file that is missing or that Pillow cannot decode."""


def load_rgb(path: str) -> Image.Image:
    """Decode an image file fully, as 8-bit RGB; :class:`UnreadableImageError` names a bad file.

    Grey images of more than 8 bits (16-bit PNG or TIFF: Pillow modes ``I;16*`` and ``I``)
    are scaled by their bit depth, ``round(255 * v / (2**b - 1))`` with ``b`` the bit length
    of the image's largest value, at least 8: a 12-bit image (0 to 4095) by 4095, a 16-bit
    one by 65535, values up to 255 as they are; nothing saturates and a file always loads
    the same. Negative or float pixels are refused. Transparent images (RGBA, LA, a palette
    with a transparent entry) are composited on black: ``round(colour * alpha / 255)``.
    Pillow reads 16-bit colour PNGs as 8-bit (the high byte).
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "F" or image.mode.startswith("I"):
                return _grey_by_bit_depth(image)
            if "A" in image.getbands() or "transparency" in image.info:
                rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
                rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
                return Image.fromarray(rgb.astype(np.uint8))  # RGB
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(
            f"cannot read image {path}: {err}; fix or remove the file, or pass --skip_corrupt "
            "to skip unreadable images"
        ) from err


def _grey_by_bit_depth(image: Image.Image) -> Image.Image:
    if image.mode == "F":
        raise ValueError("float pixels are not supported; save it with 8- or 16-bit integers")
    pixels = np.asarray(image).astype(np.int64)
    if pixels.size and pixels.min() < 0:
        raise ValueError("negative pixel values; save it as unsigned 8- or 16-bit grey")
    peak = (1 << max(8, int(pixels.max(initial=0)).bit_length())) - 1
    grey = (510 * pixels + peak) // (2 * peak)  # round(255 * v / peak), halves up
    return Image.fromarray(grey.astype(np.uint8)).convert("RGB")


def image_folder(root: str | os.PathLike[str], classes: Sequence[str] | None = None) -> ImageFolder:
    """torchvision's ``ImageFolder`` over ``root/<class>/**`` with :func:`load_rgb`.

    ``classes`` fixes the class list: the training split's, for a validation split that may
    lack a class but not add one.
    """
    dataset = ImageFolder(str(root), loader=load_rgb)
    if classes is not None:
        unknown = sorted(set(dataset.classes) - set(classes))
        if unknown:
            raise ValueError(f"class folders {unknown} in {root} are not in {classes=}")
        found, dataset.classes = dataset.classes, list(classes)
        dataset.class_to_idx = {name: k for k, name in enumerate(classes)}
        dataset.samples = [(p, dataset.class_to_idx[found[t]]) for p, t in dataset.samples]
        dataset.imgs, dataset.targets = dataset.samples, [t for _, t in dataset.samples]
    return dataset


class CsvImageDataset(Dataset):
    """Images listed in a CSV table of ids and labels (HAM10000: ``image_id, dx``), in one or
    more folders (the first holding a name wins); ``extension`` is appended to ids without
    one. Integer labels (Messidor-2's grades) are the targets, classes ``"0"`` to the largest;
    other labels are sorted into classes, unless ``classes`` is given."""

    def __init__(
        self,
        csv_path: str | os.PathLike[str],
        image_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        id_column: str,
        label_column: str,
        extension: str = ".jpg",
        classes: Sequence[str] | None = None,
    ) -> None:
        if not Path(csv_path).is_file():
            raise ValueError(f"CSV file {csv_path} does not exist")
        folders = [image_dir] if isinstance(image_dir, (str, os.PathLike)) else list(image_dir)
        files: dict[str, str] = {}
        for folder in map(Path, folders):
            if not folder.is_dir():
                raise ValueError(f"image folder {folder} does not exist")
            for path in sorted(p for p in folder.iterdir() if p.is_file()):
                files.setdefault(path.name, str(path))
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as handle:  # a BOM is fine
                reader = csv.DictReader(handle)
                columns, table = reader.fieldnames, list(reader)
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{csv_path} is not UTF-8 text (byte {err.object[err.start]:#04x} cannot be "
                "decoded): save it as UTF-8, e.g. with iconv -f latin1 -t utf-8"
            ) from None
        absent = [c for c in (id_column, label_column) if c not in (columns or [])]
        if absent:
            raise ValueError(f"{csv_path} has no column(s) {absent}; its columns are {columns}")
        rows = [((r[id_column] or "").strip(), (r[label_column] or "").strip()) for r in table]
        if not rows:
            raise ValueError(f"{csv_path} lists no images")
        empty = [line for line, row in enumerate(rows, start=2) if not all(row)]
        if empty:
            raise ValueError(
                f"{csv_path} line {empty[0]}: empty {id_column!r} or {label_column!r}; remove "
                "the row (e.g. ungradable images)"
            )
        labels = [label for _, label in rows]
        if classes is None and all(re.fullmatch(r"[+-]?\d+", label) for label in labels):
            targets = [int(label) for label in labels]
            if min(targets) < 0:
                raise ValueError(f"{csv_path} column {label_column!r} holds negative labels")
            classes = [str(k) for k in range(max(targets) + 1)]
        else:
            classes = sorted(set(labels)) if classes is None else list(classes)
            unknown = sorted(set(labels) - set(classes))
            if unknown:
                raise ValueError(f"{csv_path} has labels {unknown[:5]} not in {classes=}")
            targets = [classes.index(label) for label in labels]
        names = [i if Path(i).suffix.lower() in IMG_EXTENSIONS else i + extension for i, _ in rows]
        missing = [name for name in names if name not in files]
        if missing:
            raise ValueError(
                f"{len(missing)} images listed in {csv_path} are not in {list(map(str, folders))}"
                f", e.g. {missing[:5]}; check image_dir and {extension=}"
            )
        self.samples = [(files[name], t) for name, t in zip(names, targets, strict=True)]
        self.targets, self.classes = targets, list(classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, target = self.samples[index]
        return load_rgb(path), target
