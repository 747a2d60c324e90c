"""Datasets: built-in synthetic lesions, and image folders or CSV tables of your own images.

:class:`SyntheticLesions` is the embedded default for demos, tests and benchmarks: it needs
no download and its ground-truth lesion masks let you measure how well a masking strategy
finds the lesion (:func:`maskkit.lesion_hit_rate`). :class:`ImageFolderDataset` and
:class:`CsvImageDataset` read real data sets laid out as class folders or as a table of
image ids and labels (HAM10000's ``image_id, dx``; Messidor-2's ``image_id,
adjudicated_dr_grade``).
"""

from __future__ import annotations

import csv
import operator
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .metrics import pixel_mask_to_patches

__all__ = [
    "IMAGE_EXTENSIONS",
    "LesionSample",
    "SyntheticLesions",
    "ImageFolderDataset",
    "CsvImageDataset",
    "load_rgb",
    "to_tensor",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# (class name, shape, polarity of the lesion's main part); class 0 is "normal".
_LESION_KINDS = (
    ("dark_round", "round", -1.0),
    ("bright_irregular", "irregular", 1.0),
    ("bright_round", "round", 1.0),
    ("dark_irregular", "irregular", -1.0),
    ("dark_ring", "ring", -1.0),
    ("bright_ring", "ring", 1.0),
)
# Tissue intensity stays in [0.25, 0.75] and a lesion changes it by at most 0.22, so no
# pixel is clipped and the lesion mask is exactly the set of pixels the lesion changed.
_TISSUE_RANGE = (0.25, 0.75)
_LESION_CONTRAST = (0.16, 0.22)
# Pink, skin-like tint (dermoscopy); every channel factor stays in (0, 1].
_TINT = (0.97, 0.76, 0.70)


class LesionSample(NamedTuple):
    """Everything :class:`SyntheticLesions` renders for one index.

    Attributes:
        image: (3, H, W) float32 in [0, 1].
        target: class index; 0 = no lesion.
        lesion_mask: (H, W) bool, the pixels the lesion changed (all False for class 0).
        background: (3, H, W) float32, the same image without its lesion.
    """

    image: Tensor
    target: int
    lesion_mask: Tensor
    background: Tensor


def _check_index(index: Any, length: int) -> int:
    position: int = operator.index(index)
    if not -length <= position < length:
        raise IndexError(f"index {position} is out of range for a dataset of {length} samples")
    return position % length


def _wave_field(
    rng: np.random.Generator, height: int, width: int, num_waves: int, max_freq: float
) -> np.ndarray:
    """Smooth random field (H, W) of about unit variance: a sum of random plane waves.

    Frequencies are in cycles per shorter image side, so the texture scales with the image
    and stays isotropic on non-square images. ``cos(a + b)`` is split into products of
    row and column terms (n * (H + W) cosines instead of n * H * W), summed with einsum:
    a BLAS product of these thin matrices is slower when threads are oversubscribed.
    """
    unit = min(height, width)
    freqs = rng.uniform(-max_freq, max_freq, size=(2, num_waves))
    phases = rng.uniform(0.0, 2.0 * np.pi, size=num_waves)
    amps = 1.0 / (1.0 + np.hypot(freqs[0], freqs[1]))
    rows = 2.0 * np.pi * np.outer(freqs[0], np.arange(height) / unit) + phases[:, None]
    cols = 2.0 * np.pi * np.outer(freqs[1], np.arange(width) / unit)
    row_terms = np.concatenate([amps[:, None] * np.cos(rows), -amps[:, None] * np.sin(rows)])
    col_terms = np.concatenate([np.cos(cols), np.sin(cols)])
    field = np.einsum("nh,nw->hw", row_terms, col_terms)
    return field / np.sqrt(0.5 * np.sum(amps**2))


class SyntheticLesions(Dataset[tuple[Tensor, int]]):
    """Medical-looking synthetic images whose class is decided only by a small lesion.

    Each image is pink textured tissue: smooth low-frequency noise, vessel-like dark curves
    (the zero set of another smooth random field) and fine grain, with a random brightness
    and tint per image. Class 0 ("normal") has no lesion; class ``k >= 1`` has one lesion of
    kind ``k`` at a random position. Kinds, in order: ``dark_round``, ``bright_irregular``,
    ``bright_round``, ``dark_irregular``, ``dark_ring``, ``bright_ring``. Every lesion has a
    main part (dark or bright) and a surround of the opposite sign whose pixel sums cancel,
    so lesions of all kinds share one size distribution and leave the mean intensity unchanged:
    only their shape and polarity tell the classes apart.

    The lesion's outer radius is ``lesion_size * min(H, W)`` (jittered by ±15%), about 3-4
    patches across at 224 px with 16 px patches, and 2-3 at 32 px with 4 px patches.

    Sample ``i`` is rendered on access from its own generator seeded by ``(seed, i)``, so any
    item can be produced alone, in any order, in any DataLoader worker, and always comes
    out the same. Class ``i % num_classes`` keeps the classes balanced. Nothing is cached
    (a 224 px sample takes about 5-15 ms on one CPU core).

    Args:
        num_samples: Number of samples.
        image_size: ``(H, W)``, or an int for a square image.
        num_classes: 2 to 7: "normal" plus ``num_classes - 1`` lesion kinds.
        seed: Base seed; datasets with different seeds are drawn independently.
        lesion_size: Outer lesion radius as a share of the shorter image side.

    Raises:
        ValueError: bad sizes or counts, or an image too small to hold a lesion.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        image_size: int | tuple[int, int] = 224,
        num_classes: int = 3,
        seed: int = 0,
        lesion_size: float = 0.1,
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        max_classes = len(_LESION_KINDS) + 1
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise ValueError(f"num_classes must be an int, got {num_classes!r}")
        if not 2 <= num_classes <= max_classes:
            raise ValueError(
                f"num_classes must lie in [2, {max_classes}] (normal + up to "
                f"{len(_LESION_KINDS)} lesion kinds), got {num_classes}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or not all(isinstance(side, int) and side >= 1 for side in size):
            raise ValueError(
                f"image_size must be an int or (H, W) of positive ints, got {image_size!r}"
            )
        height, width = size
        if not 0.0 < lesion_size <= 0.25:
            raise ValueError(f"lesion_size must lie in (0, 0.25], got {lesion_size}")
        if 0.85 * lesion_size * min(height, width) < 1.5:
            raise ValueError(
                f"a {height}x{width} image is too small for lesions of lesion_size="
                f"{lesion_size} (outer radius under 1.5 px); use a larger image_size or "
                "lesion_size"
            )
        self.num_samples = num_samples
        self.image_size = (height, width)
        self.num_classes = num_classes
        self.seed = seed
        self.lesion_size = float(lesion_size)
        self.classes = ["normal", *(kind[0] for kind in _LESION_KINDS[: num_classes - 1])]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """``(image (3, H, W) float32 in [0, 1], target)`` of sample ``index``."""
        sample = self.render(index)
        return sample.image, sample.target

    def lesion_mask(self, index: int) -> Tensor:
        """(H, W) bool ground-truth lesion mask of sample ``index`` (all False for class 0)."""
        return self.render(index).lesion_mask

    def lesion_patches(self, index: int, patch_size: int) -> Tensor:
        """(gh * gw,) bool: patches (row-major, timm's order) that overlap the lesion.

        Raises:
            ValueError: the image size is not a multiple of ``patch_size``.
        """
        return pixel_mask_to_patches(self.lesion_mask(index), patch_size)

    def render(self, index: int) -> LesionSample:
        """Render sample ``index``: image, target, lesion mask and lesion-free background."""
        index = _check_index(index, self.num_samples)
        target = index % self.num_classes
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        tissue = self._tissue(rng)
        delta = np.zeros_like(tissue)
        if target > 0:
            self._add_lesion(rng, delta, _LESION_KINDS[target - 1])
        tint = np.asarray(_TINT) + rng.uniform(-0.03, 0.03, size=3)
        background = tint[:, None, None] * tissue
        image = tint[:, None, None] * (tissue + delta)
        return LesionSample(
            image=torch.from_numpy(image.astype(np.float32)),
            target=target,
            lesion_mask=torch.from_numpy(delta != 0),
            background=torch.from_numpy(background.astype(np.float32)),
        )

    def _tissue(self, rng: np.random.Generator) -> np.ndarray:
        height, width = self.image_size
        tissue = rng.uniform(0.44, 0.56) + 0.06 * _wave_field(rng, height, width, 12, 3.0)
        tissue += 0.025 * _wave_field(rng, height, width, 24, 10.0)
        vessel_field = _wave_field(rng, height, width, 10, 2.5)
        tissue -= rng.uniform(0.06, 0.12) * np.exp(-((vessel_field / 0.12) ** 2))
        tissue += 0.012 * rng.standard_normal((height, width))
        return np.clip(tissue, *_TISSUE_RANGE)

    def _add_lesion(
        self, rng: np.random.Generator, delta: np.ndarray, kind: tuple[str, str, float]
    ) -> None:
        _, shape, polarity = kind
        height, width = self.image_size
        radius = self.lesion_size * min(height, width) * rng.uniform(0.85, 1.15)
        center_y = rng.uniform(radius, height - radius)
        center_x = rng.uniform(radius, width - radius)
        # Work in the lesion's bounding box only; every lesion pixel lies within `radius`.
        top, left = int(center_y - radius), int(center_x - radius)
        bottom = min(height, int(np.ceil(center_y + radius)) + 1)
        right = min(width, int(np.ceil(center_x + radius)) + 1)
        dy = np.arange(top, bottom)[:, None] + 0.5 - center_y
        dx = np.arange(left, right)[None, :] + 0.5 - center_x
        angle = np.arctan2(dy, dx)
        # Outline radius as a share of `radius`, at most 1: a slightly elliptic circle, or
        # a lobulated one for irregular lesions.
        if shape == "irregular":
            harmonics = np.arange(2, 6)[:, None, None]
            amps = rng.uniform(0.05, 0.12, size=4)[:, None, None]
            phases = rng.uniform(0.0, 2.0 * np.pi, size=4)[:, None, None]
            wobble = np.sum(amps * np.cos(harmonics * angle + phases), axis=0)
            outline = (1.0 + wobble) / (1.0 + amps.sum())
        else:
            ellipticity = rng.uniform(0.0, 0.08)
            phase = rng.uniform(0.0, np.pi)
            outline = (1.0 + ellipticity * np.cos(2.0 * angle + phase)) / (1.0 + ellipticity)
        rho = np.hypot(dy, dx) / (radius * outline)
        if shape == "ring":
            main = (rho > 0.45) & (rho <= 0.85)
            surround = (rho <= 0.45) | ((rho > 0.85) & (rho <= 1.0))
        else:
            main = rho <= 0.7
            surround = (rho > 0.7) & (rho <= 1.0)
        if not main.any():
            # On tiny images the main part may miss every pixel centre: take the nearest.
            main = rho == rho.min()
            surround &= ~main
        n_main, n_surround = int(main.sum()), int(surround.sum())
        contrast = rng.uniform(*_LESION_CONTRAST)
        # Opposite signs with equal pixel sums: the lesion does not shift the mean.
        main_amp = contrast * min(1.0, n_surround / n_main) if n_surround else contrast
        surround_amp = contrast * min(1.0, n_main / n_surround) if n_surround else 0.0
        box = delta[top:bottom, left:right]
        box[main] = polarity * main_amp
        box[surround] = -polarity * surround_amp


def to_tensor(image: Image.Image) -> Tensor:
    """PIL RGB image → (3, H, W) float32 tensor in [0, 1]."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    return pixels.permute(2, 0, 1).float().div_(255.0)


# What Pillow raises on a missing, truncated or undecodable file.
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file, decode it fully and convert it to RGB.

    Raises:
        OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError: the file is
            missing or cannot be decoded (Pillow's own errors).
    """
    with Image.open(path) as image:
        return image.convert("RGB")


class _ImageFiles(Dataset[tuple[Any, int]]):
    """A list of ``(path, target)`` read with Pillow; shared corrupt-file handling."""

    def __init__(
        self,
        samples: list[tuple[Path, int]],
        classes: list[str],
        transform: Callable[[Image.Image], Any] | None,
        skip_corrupt: bool,
    ) -> None:
        self.samples = samples
        self.classes = classes
        self.targets = [target for _, target in samples]
        self.transform = to_tensor if transform is None else transform
        self.skip_corrupt = skip_corrupt
        self.skipped_files: list[Path] = []
        self._skipped: set[Path] = set()

    @property
    def num_skipped(self) -> int:
        """How many distinct unreadable files this process has skipped so far."""
        return len(self.skipped_files)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        """``(transform(image), target)`` of sample ``index``.

        With ``skip_corrupt=True`` an unreadable file is recorded in ``skipped_files``
        (with a warning) and sample ``index`` is served by the next readable sample
        (``index + 1``, ``index + 2``, ... wrapping around), the same one on every access.

        Raises:
            ValueError: the file cannot be read (without ``skip_corrupt``), or no file can.
        """
        length = len(self.samples)
        index = _check_index(index, length)
        for offset in range(length):
            path, target = self.samples[(index + offset) % length]
            if path in self._skipped:
                continue
            try:
                image = load_rgb(path)
            except _READ_ERRORS as err:
                if not self.skip_corrupt:
                    raise ValueError(
                        f"cannot read image {path}: {err}; fix or remove the file, or pass "
                        "skip_corrupt=True to skip unreadable images (they are counted in "
                        ".num_skipped and listed in .skipped_files)"
                    ) from err
                self._skipped.add(path)
                self.skipped_files.append(path)
                warnings.warn(
                    f"skipping unreadable image {path} ({err}); its samples are served by "
                    "the next readable image",
                    stacklevel=2,
                )
                continue
            return self.transform(image), target
        raise ValueError(f"none of the {length} images could be read; check the files")


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )


class ImageFolderDataset(_ImageFiles):
    """Images in class folders: ``root/split/<class>/**/*.png|jpg|...``.

    Classes are the sorted folder names (or ``classes``, e.g. the training split's list
    for a validation split that lacks a class). Files with other extensions are ignored.
    Items are ``(transform(image), target)``; the default transform gives (3, H, W) float32
    in [0, 1] (images of different sizes need a resizing transform to be batched).

    Unreadable files: by default a ``ValueError`` naming the file. With
    ``skip_corrupt=True`` they are skipped, warned about, counted in ``num_skipped`` and
    listed in ``skipped_files``. These counters live in the process that read the file:
    with DataLoader workers, read them in the workers or check the warnings.

    Args:
        root: Data set root.
        split: Sub-folder to read, e.g. ``"train"`` or ``"val"``.
        transform: Callable on the PIL RGB image.
        skip_corrupt: Skip unreadable images instead of raising.
        classes: Fixed class list; every class folder must be in it.

    Raises:
        ValueError: missing or empty folders, class folders without images, or a class
            folder not in ``classes``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        transform: Callable[[Image.Image], Any] | None = None,
        skip_corrupt: bool = False,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root) / split
        if not self.root.is_dir():
            raise ValueError(
                f"{self.root} is not a directory; expected {Path(root)}/{split}/<class>/<images>"
            )
        folders = sorted(entry.name for entry in os.scandir(self.root) if entry.is_dir())
        if not folders:
            raise ValueError(f"{self.root} has no class folders; expected {self.root}/<class>/")
        if classes is None:
            classes = folders
        unknown = [name for name in folders if name not in classes]
        if unknown:
            raise ValueError(
                f"class folders {unknown} in {self.root} are not in classes={list(classes)}"
            )
        samples: list[tuple[Path, int]] = []
        empty = []
        for name in folders:
            files = _image_files(self.root / name)
            if not files:
                empty.append(name)
            samples.extend((path, list(classes).index(name)) for path in files)
        if empty:
            raise ValueError(
                f"class folders {empty} in {self.root} hold no images with extensions "
                f"{IMAGE_EXTENSIONS}; add images or remove the folders"
            )
        super().__init__(samples, list(classes), transform, skip_corrupt)


_INT_LABEL = re.compile(r"[+-]?\d+")


class CsvImageDataset(_ImageFiles):
    """Images listed in a CSV table of image ids and labels (HAM10000, Messidor-2).

    Each row's ``id_column`` names a file in ``image_dir`` (or in one of several folders,
    as HAM10000 ships ``HAM10000_images_part_1`` and ``_part_2``); ``extension`` is appended
    unless the id already ends with an image extension. Labels: if every label is an
    integer (Messidor-2 grades) it is the target and ``classes`` is ``["0", ..., str(max)]``;
    otherwise classes are the sorted distinct labels (HAM10000's ``akiec, bcc, ...``), or
    ``classes`` if given. Items, the default transform and the unreadable-file handling
    are those of :class:`ImageFolderDataset`. A file name found in several folders is taken
    from the first.

    Args:
        csv_path: The CSV file (header row first; a UTF-8 BOM is accepted).
        image_dir: Folder, or folders, holding the images.
        id_column: Column with the image id or file name (HAM10000: ``image_id``).
        label_column: Column with the label (HAM10000: ``dx``; Messidor-2:
            ``adjudicated_dr_grade``).
        extension: Appended to ids that have no image extension.
        transform: Callable on the PIL RGB image.
        skip_corrupt: Skip unreadable images instead of raising.
        classes: Fixed class list (labels matched as strings).

    Raises:
        ValueError: missing file, folder or column; an empty table; an empty, negative or
            unknown label; or an id with no image file.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike[str],
        image_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        id_column: str,
        label_column: str,
        extension: str = ".jpg",
        transform: Callable[[Image.Image], Any] | None = None,
        skip_corrupt: bool = False,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.csv_path = Path(csv_path)
        if not self.csv_path.is_file():
            raise ValueError(f"CSV file {self.csv_path} does not exist")
        folders = [Path(image_dir)] if isinstance(image_dir, (str, os.PathLike)) else image_dir
        files: dict[str, Path] = {}
        for folder in map(Path, folders):
            if not folder.is_dir():
                raise ValueError(f"image folder {folder} does not exist")
            for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
                if entry.is_file():
                    files.setdefault(entry.name, Path(entry.path))
        ids, labels = self._read_table(id_column, label_column)
        targets, class_list = _label_targets(labels, classes, self.csv_path, label_column)
        samples, missing = [], []
        for image_id, target in zip(ids, targets, strict=True):
            has_extension = Path(image_id).suffix.lower() in IMAGE_EXTENSIONS
            name = image_id if has_extension else image_id + extension
            if name in files:
                samples.append((files[name], target))
            else:
                missing.append(name)
        if missing:
            raise ValueError(
                f"{len(missing)} images listed in {self.csv_path} are not in "
                f"{[str(folder) for folder in folders]}, e.g. {missing[:5]}; check image_dir "
                f"and extension={extension!r}"
            )
        super().__init__(samples, class_list, transform, skip_corrupt)

    def _read_table(self, id_column: str, label_column: str) -> tuple[list[str], list[str]]:
        with open(self.csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            absent = [name for name in (id_column, label_column) if name not in columns]
            if absent:
                raise ValueError(
                    f"{self.csv_path} has no column(s) {absent}; its columns are {columns}"
                )
            ids, labels = [], []
            for line, row in enumerate(reader, start=2):
                image_id = (row[id_column] or "").strip()
                label = (row[label_column] or "").strip()
                if not image_id or not label:
                    raise ValueError(
                        f"{self.csv_path} line {line}: empty {id_column!r} or "
                        f"{label_column!r}; remove the row (e.g. ungradable images)"
                    )
                ids.append(image_id)
                labels.append(label)
        if not ids:
            raise ValueError(f"{self.csv_path} lists no images")
        return ids, labels


def _label_targets(
    labels: list[str], classes: Sequence[str] | None, source: Path, column: str
) -> tuple[list[int], list[str]]:
    """Map label strings to targets; returns ``(targets, classes)``."""
    if classes is None and all(_INT_LABEL.fullmatch(label) for label in labels):
        targets = [int(label) for label in labels]
        if min(targets) < 0:
            raise ValueError(f"{source} column {column!r} holds negative integer labels")
        return targets, [str(k) for k in range(max(targets) + 1)]
    class_list = sorted(set(labels)) if classes is None else list(classes)
    positions = {name: k for k, name in enumerate(class_list)}
    unknown = sorted(set(labels) - positions.keys())
    if unknown:
        raise ValueError(
            f"{source} column {column!r} has labels {unknown[:5]} not in classes={class_list}"
        )
    return [positions[label] for label in labels], class_list
