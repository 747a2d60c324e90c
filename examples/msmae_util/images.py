"""Image files: torchvision's ``ImageFolder`` and CSV tables, with a loader that names
unreadable files. Items are ``(PIL RGB image, target)``; ``samples`` lists ``(path, target)``.
The CSV reader and the checks on rows and splits are shared with the segmentation data.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS


class BadFileError(ValueError):
    """A data file the recipes cannot use. ``reason`` says what is wrong; the message adds
    what to do (``advice``), which ``--skip_corrupt``'s warnings leave out."""

    advice = "fix or remove the file, or pass --skip_corrupt to skip unreadable images"

    def __init__(self, reason: str, advice: str | None = None) -> None:
        super().__init__(reason, advice or self.advice)  # both in args: pickling keeps them
        self.reason = reason

    def __str__(self) -> str:
        return "; ".join(self.args)


class UnreadableImageError(BadFileError):
    """An image file that is missing or that Pillow cannot decode."""


class MissingImagesError(FileNotFoundError, ValueError):
    """A split or class folder without images: a ``ValueError`` like the other data errors,
    and still the ``FileNotFoundError`` torchvision raised for it."""


def _png_depth_and_colour(path: str) -> tuple[int, int]:
    """The bit depth and colour type of a PNG (bytes 24 and 25 of the file, in its IHDR
    chunk, which comes first): Pillow does not report the bit depth of what it converts."""
    with open(path, "rb") as file:
        head = file.read(26)
    return head[24], head[25]


def load_rgb(path: str) -> Image.Image:
    """Decode an image file fully, as 8-bit RGB; :class:`UnreadableImageError` names a bad file.

    Grey images of more than 8 bits (16-bit PNG or TIFF: Pillow modes ``I;16*`` and ``I``)
    are scaled by their bit depth, ``round(255 * v / (2**b - 1))`` with ``b`` the bit length
    of the image's largest value, at least 8: a 12-bit image (0 to 4095) by 4095, a 16-bit
    one by 65535, values up to 255 as they are; nothing saturates and a file always loads
    the same. Negative or float pixels are refused. Transparent images (RGBA, LA, a palette
    with a transparent entry) are composited on black: ``round(colour * alpha / 255)``.
    Pillow reads 16-bit colour PNGs as 8-bit (the high byte). 16-bit grey + alpha PNGs are
    refused: Pillow keeps only the high byte of their grey too, which would read a 12-bit
    image (0 to 4095) as 0 to 15 instead of scaling it by its bit depth.
    """
    try:
        with Image.open(path) as image:
            if (
                image.format == "PNG"
                and "A" in image.getbands()
                and _png_depth_and_colour(path) == (16, 4)  # 16-bit grey + alpha
            ):
                raise ValueError(
                    "16-bit grey+alpha PNG: Pillow reads only the high byte of each sample; "
                    "save it without alpha (16-bit grey is read by its bit depth) or as 8-bit"
                )
            image.load()
            if image.mode == "F" or image.mode.startswith("I"):
                return _grey_by_bit_depth(image)
            if "A" in image.getbands() or "transparency" in image.info:
                rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
                rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
                return Image.fromarray(rgb.astype(np.uint8))  # RGB
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}") from err


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
    lack a class but not add one. A missing ``root``, one without class folders, or a class
    folder without images raises :class:`MissingImagesError` naming the folders.
    """
    try:
        dataset = ImageFolder(str(root), loader=load_rgb)
    except FileNotFoundError:
        raise MissingImagesError(_why_no_images(Path(root))) from None
    if classes is not None:
        unknown = sorted(set(dataset.classes) - set(classes))
        if unknown:
            raise ValueError(f"class folders {unknown} in {root} are not in {classes=}")
        found, dataset.classes = dataset.classes, list(classes)
        dataset.class_to_idx = {name: k for k, name in enumerate(classes)}
        dataset.samples = [(p, dataset.class_to_idx[found[t]]) for p, t in dataset.samples]
        dataset.imgs, dataset.targets = dataset.samples, [t for _, t in dataset.samples]
    return dataset


def _why_no_images(root: Path) -> str:
    """What torchvision's ``FileNotFoundError`` meant, naming the split folder."""
    if not root.is_dir():
        return f"split folder {root} does not exist"
    folders = sorted(path for path in root.iterdir() if path.is_dir())
    if not folders:
        return f"split folder {root} has no class folder: the layout is {root}/<class>/<image>"
    empty = [
        folder.name
        for folder in folders
        if not any(p.suffix.lower() in IMG_EXTENSIONS for p in folder.rglob("*") if p.is_file())
    ]
    return (
        f"class folder(s) {empty} of the split folder {root} hold no image (extensions "
        f"{', '.join(IMG_EXTENSIONS)}): add images or remove the folder"
    )


# UTF-32's little-endian mark starts with UTF-16's: test it first.
_BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def read_csv_table(
    path: str | os.PathLike[str], columns: Sequence[str], *, hint: str = ""
) -> list[tuple[int, dict[str, str]]]:
    """The rows of a UTF-8 CSV table (a UTF-8 byte-order mark is fine) with ``columns``,
    each with the line it ends on.

    Raises:
        ValueError: naming the file: it does not exist, is empty, is not UTF-8 (with the
            command that converts it), lacks a column (``hint`` names the options that
            set them) or has no row.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CSV file {path} does not exist")
    data = path.read_bytes()
    name = next((name for mark, name in _BYTE_ORDER_MARKS if data.startswith(mark)), None)
    if name is not None:
        raise ValueError(
            f"{path} is not UTF-8 text but {name} (it starts with a {name} byte-order mark): "
            f"save it as UTF-8, e.g. with iconv -f {name} -t UTF-8 {path.name} > "
            f"{path.stem}_utf8.csv"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} cannot be decoded): "
            "save it as UTF-8, e.g. with iconv -f latin1 -t utf-8 for Latin-1 (Excel exports)"
        ) from None
    if "\x00" in text:  # valid UTF-8, but UTF-16 without a byte-order mark looks like this
        raise ValueError(
            f"{path} holds NUL characters, as UTF-16 text without a byte-order mark does: "
            "save it as UTF-8, e.g. with iconv -f UTF-16LE -t UTF-8"
        )
    if not text.strip():
        raise ValueError(
            f"{path} is empty: a CSV table needs a header row with the column(s) "
            f"{list(columns)}, then one row per image"
        )
    reader = csv.DictReader(io.StringIO(text, newline=""))
    absent = [c for c in columns if c not in (reader.fieldnames or [])]
    if absent:
        raise ValueError(
            f"{path} has no column(s) {absent}; its columns are {reader.fieldnames}{hint}"
        )
    rows = [(reader.line_num, row) for row in reader]
    if not rows:
        raise ValueError(f"{path} lists no images")
    return rows


def refuse_repeated_rows(
    csv_path: str | os.PathLike[str], rows: Sequence[tuple[int, str, Hashable]], what: str
) -> None:
    """Refuse a file (by resolved path) on two rows ``(line, path, value)`` of a table:
    with two ``what`` values (labels, masks) the table contradicts itself; with one, the
    file would silently count twice."""
    first: dict[str, tuple[int, Hashable]] = {}
    conflicts, repeats = [], []
    for line, path, value in rows:
        seen_line, seen_value = first.setdefault(os.path.realpath(path), (line, value))
        if seen_line == line:
            continue
        if seen_value != value:
            conflicts.append(f"{path}: line {seen_line} {seen_value!r}, line {line} {value!r}")
        else:
            repeats.append(f"{path}: lines {seen_line} and {line}")
    if conflicts:
        raise ValueError(
            f"{csv_path} has {len(conflicts)} image(s) on rows that disagree on the {what}, "
            f"e.g. {conflicts[:3]}: keep the right row of each"
        )
    if repeats:
        raise ValueError(
            f"{csv_path} lists {len(repeats)} image(s) on two rows, e.g. {repeats[:3]}: a "
            "repeated row counts its image twice; remove the repeats"
        )


def refuse_shared_files(files: dict[str, Sequence[str]]) -> None:
    """Refuse a file in two splits (name → paths): a validation or test image that was
    trained on scores memory, not generalisation. A file is known by its device and inode,
    so symbolic and hard links to it count as the same file."""
    owner: dict[object, str] = {}
    shared: dict[tuple[str, str], list[str]] = {}
    for split, paths in files.items():
        for path in paths:
            try:
                stat = os.stat(path)
                identity: object = (stat.st_dev, stat.st_ino)
            except OSError:  # a missing file is reported where it is read
                identity = os.path.realpath(path)
            other = owner.setdefault(identity, split)
            if other != split:
                shared.setdefault((other, split), []).append(path)
    if shared:
        (first, second), paths = next(iter(shared.items()))
        raise ValueError(
            f"{len(paths)} file(s) are in both the {first} and the {second} split, e.g. "
            f"{paths[:3]}: each image belongs to one split only; remove them from one"
        )


# Integer labels are class indices; beyond this many classes, a table where most of them
# never occur is a typo or an id column, not a class list (one label 999999: 10^6 classes).
_SPARSE_CLASSES = 16


class CsvImageDataset(Dataset):
    """Images listed in a CSV table of ids and labels (HAM10000: ``image_id, dx``), in one or
    more folders (the first holding a name wins); ``extension`` is appended to ids without
    one. Integer labels (Messidor-2's grades) are the targets, classes ``"0"`` to the largest
    (over 16 classes, at least half of them must occur); other labels are sorted into
    classes, unless ``classes`` is given. An image on two rows is refused, naming the lines.
    """

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
        table = read_csv_table(
            csv_path, (id_column, label_column), hint=" (set --id_column / --label_column)"
        )
        folders = [image_dir] if isinstance(image_dir, (str, os.PathLike)) else list(image_dir)
        files: dict[str, str] = {}
        for folder in map(Path, folders):
            if not folder.is_dir():
                raise ValueError(f"image folder {folder} does not exist")
            for path in sorted(p for p in folder.iterdir() if p.is_file()):
                files.setdefault(path.name, str(path))
        lines = [line for line, _ in table]
        rows = [((r[id_column] or "").strip(), (r[label_column] or "").strip()) for _, r in table]
        empty = [line for line, row in zip(lines, rows, strict=True) if not all(row)]
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
            count, present = max(targets) + 1, len(set(targets))
            if count > _SPARSE_CLASSES and 2 * present < count:
                line = lines[targets.index(count - 1)]
                raise ValueError(
                    f"{csv_path} line {line}: label {count - 1} makes {count} classes "
                    f"(integer labels are the class indices 0 to the largest), but only "
                    f"{present} of them occur; over {_SPARSE_CLASSES} classes at least half "
                    f"must: check that label (a typo? an id column as --label_column?) or "
                    "number the classes 0, 1, 2, ..."
                )
            classes = [str(k) for k in range(count)]
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
        paths = [files[name] for name in names]
        refuse_repeated_rows(csv_path, list(zip(lines, paths, labels, strict=True)), "label")
        self.samples = list(zip(paths, targets, strict=True))
        self.targets, self.classes = targets, list(classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, target = self.samples[index]
        return load_rgb(path), target
