"""Data of the segmentation recipe: image/mask pairs, their splits, the paired augmentation.

``--data synthetic``: :class:`maskkit.demo.SyntheticLesions` with their ground-truth lesion
masks. ``--data folder``: BUSI's layout, ``<class>/<name>.png`` beside ``<name>_mask.png``
and, for images with several lesions, ``<name>_mask_1.png``, ``<name>_mask_2.png``, ...
(merged into one mask), as Al-Dhabyani et al., "Dataset of breast ultrasound images"
(2020), ship them. ``--data csv``: a table of image and mask paths.

Items are ``(image, mask)``: a (3, H, W) tensor (uint8 from files, float in [0, 1] when
synthetic) and an (H, W) int64 mask of class indices, 0 the background. Binary masks
(``--mask_mode binary``) hold 0 and 1; multi-class masks hold 1 + the image's class for a
folder (or the lesion kind, synthetic) or, from a CSV, the mask's own pixel values. A mask
file's lesion pixels are those at half its value range or above (:func:`load_mask`).
:class:`SegmentationViews` makes the training views (random rotation, optional crop and
flip, drawn per ``(seed, epoch, index)`` and applied to image and mask together) and the
evaluation views (the whole image resized), normalised as in MAE.
"""

from __future__ import annotations

import argparse
import os
import re
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torchvision.transforms.functional as TF
from msmae_util.data import MEAN, STD
from msmae_util.images import (
    BadFileError,
    UnreadableImageError,
    load_rgb,
    read_csv_table,
    refuse_repeated_rows,
    refuse_shared_files,
)
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import InterpolationMode

from maskkit import PairedRandomResizedCrop
from maskkit.demo import SyntheticLesions

__all__ = [
    "BadPairError",
    "MaskPairs",
    "PairFiles",
    "PairedAugment",
    "SegmentationSplits",
    "SegmentationViews",
    "SyntheticMasks",
    "build_segmentation_data",
    "export_images",
    "find_folder_pairs",
    "load_mask",
    "read_csv_pairs",
]

SPLITS = ("train", "val", "test")
# BUSI's mask names: "<name>_mask.png", then "<name>_mask_1.png", "<name>_mask_2.png", ...
MASK_NAME = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<k>\d+))?$")
# Masks are resized with pixel-centre-aligned nearest neighbours ("nearest-exact"), which
# stay aligned with bilinear images; torch's legacy "nearest" shifts by up to half a pixel.
NEAREST = InterpolationMode.NEAREST_EXACT
_MASK_MODES = ("L", "P", "1", "I", "I;16", "I;16B", "I;16L", "I;16N")


class BadPairError(BadFileError):
    """An image and its mask(s) that do not fit together (sizes, class values)."""

    advice = "fix or remove the pair, or pass --skip_corrupt to skip broken pairs"


class PairFiles(NamedTuple):
    """One image file, its mask files (merged) and what their pixels mean.

    Attributes:
        image: the image path.
        masks: one or more mask paths; their foreground pixels are merged.
        group: the class folder's index (used to stratify carved splits; 0 for a CSV).
        value: the class index a foreground pixel gets, or None: the mask's own pixel
            values are class indices (multi-class masks from a CSV).
    """

    image: str
    masks: tuple[str, ...]
    group: int
    value: int | None


# ------------------------------------------------------------------------- listing files


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMG_EXTENSIONS


def find_folder_pairs(
    root: str | os.PathLike[str], classes: list[str] | None = None
) -> tuple[list[tuple[str, tuple[str, ...], int]], list[str], list[str]]:
    """Pair the images and masks of a BUSI-style folder, ``root/<class>/**``.

    In each folder, ``<name>_mask.png`` and ``<name>_mask_<k>.png`` (any image extension)
    belong to the image ``<name>.<ext>``. Classes are the sorted sub-folders of ``root``
    that hold images, unless ``classes`` (the training split's) is given; then ``root``
    may lack a class but not add one.

    Returns:
        ``(pairs, classes, problems)``: pairs ``(image, masks, class index)`` in sorted
        order; ``problems`` names every mask without its image and every image without a
        mask (or with two images of one name), as ``"path: reason"``.

    Raises:
        ValueError: ``root`` is no folder, holds no class folder with images, or has a
            class that ``classes`` lacks.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--data folder: {root} is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and any(map(_is_image, p.rglob("*"))))
    found = [folder.name for folder in folders]
    if not found:
        raise ValueError(
            f"{root} has no class folder with images; the layout is {root}/<class>/<name>.png "
            "with <name>_mask.png beside each image (BUSI's)"
        )
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"class folders {unknown} in {root} are not in {classes=}")
    pairs, problems = [], []
    for folder in folders:
        images: dict[tuple[Path, str], list[Path]] = defaultdict(list)
        masks: dict[tuple[Path, str], list[tuple[int, Path]]] = defaultdict(list)
        for path in sorted(filter(_is_image, folder.rglob("*"))):
            match = MASK_NAME.match(path.stem)
            if match:
                masks[(path.parent, match["stem"])].append((int(match["k"] or 0), path))
            else:
                images[(path.parent, path.stem)].append(path)
        for key in sorted(masks.keys() - images.keys()):
            problems += [
                f"{path}: mask without an image {key[1]}.* beside it" for _, path in masks[key]
            ]
        for key, paths in sorted(images.items()):
            if len(paths) > 1:
                problems.append(
                    f"{paths[0]}: several images named {key[1]}: {list(map(str, paths))}"
                )
            elif key not in masks:
                problems.append(f"{paths[0]}: image without a mask {key[1]}_mask.png beside it")
            else:
                ordered = tuple(str(path) for _, path in sorted(masks[key]))
                pairs.append((str(paths[0]), ordered, classes.index(folder.name)))
    return pairs, list(classes), problems


def read_csv_pairs(
    csv_path: str | os.PathLike[str], *, image_column: str = "image", mask_column: str = "mask"
) -> tuple[list[tuple[str, tuple[str, ...]]], list[str]]:
    """Image and mask paths from a CSV table; several masks of one image separated by ``;``.

    Relative paths are relative to the CSV file's folder.

    Returns:
        ``(pairs, problems)``: pairs ``(image, masks)`` in the table's order; ``problems``
        names each row with an empty cell or a file that does not exist.

    Raises:
        ValueError: the file does not exist, is not UTF-8, lacks a column, lists nothing,
            or lists an image on two rows.
    """
    csv_path = Path(csv_path)
    table = read_csv_table(
        csv_path, (image_column, mask_column), hint=" (set --image_column / --mask_column)"
    )
    listed: list[tuple[int, str, tuple[str, ...]]] = []
    problems = []
    for line, row in table:
        image, cell = ((row[c] or "").strip() for c in (image_column, mask_column))
        masks = [m.strip() for m in cell.split(";") if m.strip()]
        if not image or not masks:
            problems.append(f"{csv_path} line {line}: empty {image_column!r} or {mask_column!r}")
            continue
        paths = [
            str(p if p.is_absolute() else csv_path.parent / p) for p in map(Path, [image, *masks])
        ]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            problems.append(f"{csv_path} line {line}: no such file(s) {missing}")
            continue
        listed.append((line, paths[0], tuple(paths[1:])))
    refuse_repeated_rows(csv_path, listed, "masks")
    pairs = [(image, masks) for _, image, masks in listed]
    return pairs, problems


# ------------------------------------------------------------------------- reading pairs


def load_mask(path: str, *, raw: bool) -> np.ndarray:
    """Decode a mask file: class indices (``raw``) or where the lesion is.

    Args:
        path: the mask file.
        raw: return the pixel values, as an (H, W) int64 array of class indices
            (single-channel masks only). Otherwise return an (H, W) bool array, True on the
            lesion: colour masks are converted to grey first (BUSI's masks are black and
            white), and a pixel is lesion at half the mask's value range or above: 128 and
            above for 8-bit values (0 to 255), ``2**(b - 1)`` and above for a mask whose
            largest value has ``b > 8`` bits (as :func:`msmae_util.images.load_rgb` scales
            images), 1 for a mask of 0s and 1s. So a lossy (JPEG) mask's compression noise
            is not lesion, and BUSI's 0/255 masks read exactly as "nonzero is lesion".

    Raises:
        UnreadableImageError: the file is missing or cannot be decoded.
        BadPairError: a colour mask where class indices are expected, or a binary mask
            whose values all stay between 1 and 127 but are not just 0 and 1 (class
            indices, or a lesion too faint to tell from noise).
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in _MASK_MODES:
                if raw:
                    raise BadPairError(
                        f"mask {path} is {image.mode}: class-index masks must have one channel "
                        "(L or P PNGs whose pixel values are the classes)"
                    )
                image = image.convert("L")
            mask = np.asarray(image).astype(np.int64)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(f"cannot read mask {path}: {err}") from err
    if raw:
        return mask
    peak = int(mask.max(initial=0))
    if peak <= 1:
        return mask > 0
    half = 1 << (max(8, peak.bit_length()) - 1)
    if peak < half:
        raise BadPairError(
            f"mask {path} holds values {np.unique(mask).tolist()[:8]}, none at or above 128: "
            "a binary mask's lesion is 255 (or 1, in a mask of 0s and 1s)",
            "save the lesion as 255, or, for class-index masks, use --data csv --mask_mode "
            "multiclass",
        )
    return mask >= half


def _size_problem(pair: PairFiles) -> str | None:
    """Open the headers only (no decoding): files that do not open, or sizes that differ."""
    sizes = {}
    for path in (pair.image, *pair.masks):
        try:
            with Image.open(path) as image:
                sizes[path] = image.size
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:
            return f"{path}: cannot be read ({err})"
    image_size = sizes[pair.image]
    wrong = [f"{path} is {w}x{h}" for path, (w, h) in sizes.items() if (w, h) != image_size]
    if wrong:
        return (
            f"{pair.image}: image is {image_size[0]}x{image_size[1]} but its mask "
            f"{'; '.join(wrong)}"
        )
    return None


class MaskPairs(Dataset):
    """``(image (3, H, W) uint8, mask (H, W) int64)`` read from :class:`PairFiles`.

    Several masks of one image are merged: a pixel is foreground if it is lesion in any of
    them (:func:`load_mask`), and gets the pair's ``value``; raw masks (``value`` None) keep
    their pixel values, the largest where masks overlap.

    Args:
        pairs: the files.
        num_classes: the number of mask classes, background included; raw values must be
            below it.

    Raises (on access):
        UnreadableImageError: a file cannot be decoded (named).
        BadPairError: image and mask sizes differ, a raw value is no class index, or a
            binary mask's values are ambiguous (named).
    """

    def __init__(self, pairs: list[PairFiles], *, num_classes: int) -> None:
        self.pairs, self.num_classes = list(pairs), num_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        pair = self.pairs[index]
        image = TF.pil_to_tensor(load_rgb(pair.image))
        merged = np.zeros(image.shape[1:], dtype=np.int64)
        for path in pair.masks:
            mask = load_mask(path, raw=pair.value is None)
            if mask.shape != merged.shape:
                raise BadPairError(
                    f"image {pair.image} is {merged.shape[1]}x{merged.shape[0]} but its mask "
                    f"{path} is {mask.shape[1]}x{mask.shape[0]}"
                )
            if pair.value is None:
                stray = sorted(set(np.unique(mask).tolist()) - set(range(self.num_classes)))
                if stray:
                    raise BadPairError(
                        f"mask {path} holds values {stray[:8]} that are no class index: "
                        f"--num_mask_classes is {self.num_classes} (values 0 to "
                        f"{self.num_classes - 1})",
                        "fix the mask, set --num_mask_classes, or pass --skip_corrupt to skip "
                        "broken pairs",
                    )
                np.maximum(merged, mask, out=merged)
            else:
                merged[mask] = pair.value
        return image, torch.from_numpy(merged)


class SyntheticMasks(Dataset):
    """``(image (3, H, W) float, mask (H, W) int64)`` of :class:`SyntheticLesions`: the
    lesion pixels are 1 (``multiclass=False``) or the lesion's kind (its class, >= 1)."""

    def __init__(self, lesions: SyntheticLesions, *, multiclass: bool) -> None:
        self.lesions, self.multiclass = lesions, multiclass

    def __len__(self) -> int:
        return len(self.lesions)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        sample = self.lesions.render(index)
        value = sample.target if self.multiclass else 1
        return sample.image, sample.lesion_mask.long() * value


# ---------------------------------------------------------------------------- the views


class AugmentParams(NamedTuple):
    """What :class:`PairedAugment` did: rotation (degrees, counter-clockwise), box
    ``(top, left, height, width)`` in the rotated image, horizontal flip."""

    angle: float
    box: tuple[int, int, int, int]
    hflip: bool


class PairedAugment:
    """Random rotation, then an optional random resized crop and flip, on image and mask.

    The rotation (about the centre, same canvas, corners filled with 0 = background) is
    MSMAE's segmentation augmentation (Tab. 6); the crop (torchvision's
    ``RandomResizedCrop`` box, through :class:`maskkit.PairedRandomResizedCrop`) and the
    flip are off by default. The image is interpolated with ``interpolation``, the mask
    with nearest neighbours (centre-aligned when resizing), over the same geometry.

    Args:
        size: output side in pixels.
        rotation: angles are uniform in ``[-rotation, rotation]`` degrees.
        crop_min_scale: smallest crop area as a share of the image; 1: no crop, the whole
            image is resized.
        hflip_prob: probability of a horizontal flip.
        interpolation: for the image (bilinear; ``NEAREST_EXACT`` makes image and mask
            move pixel for pixel alike).
    """

    def __init__(
        self,
        size: int,
        *,
        rotation: float = 15.0,
        crop_min_scale: float = 1.0,
        hflip_prob: float = 0.0,
        interpolation: InterpolationMode = InterpolationMode.BILINEAR,
    ) -> None:
        if not 0 <= rotation <= 180:
            raise ValueError(f"rotation must lie in [0, 180] degrees, got {rotation}")
        if not 0 < crop_min_scale <= 1:
            raise ValueError(f"crop_min_scale must lie in (0, 1], got {crop_min_scale}")
        if not 0 <= hflip_prob <= 1:
            raise ValueError(f"hflip_prob must lie in [0, 1], got {hflip_prob}")
        self.size, self.rotation = size, float(rotation)
        self.hflip_prob, self.interpolation = float(hflip_prob), interpolation
        self.crop = None
        if crop_min_scale < 1:
            self.crop = PairedRandomResizedCrop(
                size, scale=(crop_min_scale, 1.0), hflip_prob=hflip_prob
            )

    def sample(self, image_size: tuple[int, int], generator: torch.Generator) -> AugmentParams:
        """Draw a rotation, a box in an image of size ``(H, W)`` and a flip."""
        angle = float(torch.empty(()).uniform_(-self.rotation, self.rotation, generator=generator))
        if self.crop is not None:
            crop = self.crop.sample(image_size, generator=generator)
            return AugmentParams(angle, crop.box, crop.hflip)
        hflip = bool(torch.rand((), generator=generator) < self.hflip_prob)
        return AugmentParams(angle, (0, 0, *image_size), hflip)

    def apply(self, image: Tensor, mask: Tensor, params: AugmentParams) -> tuple[Tensor, Tensor]:
        """Transform an image (3, H, W) float and its mask (H, W) int64 alike."""
        size = [self.size, self.size]
        plane = mask[None].to(torch.uint8)  # class indices < 256; torchvision warps (1, H, W)
        if params.angle != 0:
            # torchvision rotates with nearest or bilinear sampling only
            smooth = self.interpolation not in (NEAREST, InterpolationMode.NEAREST)
            mode = InterpolationMode.BILINEAR if smooth else InterpolationMode.NEAREST
            image = TF.rotate(image, params.angle, mode, fill=[0.0])
            plane = TF.rotate(plane, params.angle, InterpolationMode.NEAREST, fill=[0.0])
        image = TF.resized_crop(image, *params.box, size, self.interpolation, antialias=True)
        plane = TF.resized_crop(plane, *params.box, size, NEAREST)
        if params.hflip:
            image, plane = TF.hflip(image), TF.hflip(plane)
        return image, plane[0].long()

    def __call__(
        self, image: Tensor, mask: Tensor, *, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Sample and apply; returns ``(image, mask)`` at ``size x size``."""
        return self.apply(image, mask, self.sample(tuple(image.shape[-2:]), generator))


def resize_pair(image: Tensor, mask: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The evaluation view: the whole image (bilinear) and its mask (nearest) at ``size``."""
    if tuple(image.shape[-2:]) == (size, size):
        return image, mask
    image = TF.resize(image, [size, size], InterpolationMode.BILINEAR, antialias=True)
    plane = TF.resize(mask[None].to(torch.uint8), [size, size], NEAREST)
    return image, plane[0].long()


class SegmentationViews(Dataset):
    """``(image (3, S, S) normalised, mask (S, S) int64, index)`` of ``(image, mask)`` items.

    With ``augment`` each sample draws from its own generator seeded by ``(seed, epoch,
    index)`` (as :class:`maskkit.CropDataset`): its view depends neither on the DataLoader
    worker nor on the order of access, and a resumed run redraws the same views. Call
    :meth:`set_epoch` before creating each epoch's iterator. Without ``augment`` the whole
    image is resized to ``size`` (evaluation).
    """

    def __init__(
        self, dataset: Any, *, size: int, augment: PairedAugment | None = None, seed: int = 0
    ) -> None:
        self.dataset, self.size, self.augment, self.seed = dataset, size, augment, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the views of ``epoch`` in iterators created from now on."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        image, mask = self.dataset[index]
        image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        if self.augment is not None:
            image, mask = self.augment(image, mask, generator=self.generator(index))
        else:
            image, mask = resize_pair(image, mask, self.size)
        return TF.normalize(image, MEAN, STD), mask, index

    def generator(self, index: int) -> torch.Generator:
        """The generator of sample ``index`` in the current epoch."""
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(
            1, dtype=np.uint64
        )
        return torch.Generator().manual_seed(int(state[0]))


# ----------------------------------------------------------------------------- splits


class SegmentationSplits(NamedTuple):
    """Training, validation and test items ``(image, mask)``; ``classes``: the mask classes,
    background first; ``skipped_files``: what was dropped (``--skip_corrupt``), as
    ``"path: reason"`` per split (``"listing"``: files that pair with nothing); ``pairs``:
    the files of each split (empty for synthetic data); ``groups``: the class folders
    (``["images"]`` for a CSV)."""

    train: Any
    val: Any
    test: Any
    classes: list[str]
    skipped_files: dict[str, list[str]]
    pairs: dict[str, list[PairFiles]]
    groups: list[str]

    @property
    def files(self) -> dict[str, list[str]]:
        """The image paths of each split."""
        return {name: [pair.image for pair in pairs] for name, pairs in self.pairs.items()}


def carve(
    pairs: list[PairFiles], fractions: dict[str, float], seed: int
) -> tuple[list[PairFiles], dict[str, list[PairFiles]]]:
    """Move ``round(fraction * n)`` pairs of each class folder into each named split.

    Deterministic: the pairs of class ``g`` are permuted by a generator seeded with
    ``(seed, g)``; the splits take consecutive runs of the permutation in the order of
    ``fractions``. Every list keeps the input's order.

    Returns:
        ``(rest, carved)``.
    """
    by_group: dict[int, list[int]] = defaultdict(list)
    for position, pair in enumerate(pairs):
        by_group[pair.group].append(position)
    chosen: dict[str, set[int]] = {name: set() for name in fractions}
    for group, positions in sorted(by_group.items()):
        order = np.random.default_rng([seed, group]).permutation(len(positions))
        start = 0
        for name, fraction in fractions.items():
            count = round(fraction * len(positions))
            chosen[name].update(positions[k] for k in order[start : start + count])
            start += count
    taken = set().union(*chosen.values())
    rest = [pair for k, pair in enumerate(pairs) if k not in taken]
    return rest, {name: [pairs[k] for k in sorted(ks)] for name, ks in chosen.items()}


def _listed(
    args: argparse.Namespace,
) -> tuple[dict[str, list[PairFiles]], list[str], list[str], list[str]]:
    """The pairs of each split given on disk, the mask classes, the class folders and the
    listing problems."""
    multiclass = args.mask_mode == "multiclass"
    listed: dict[str, list[PairFiles]] = {}
    problems: list[str] = []
    if args.data == "folder":
        if args.data_path is None:
            raise ValueError("--data folder needs --data_path DIR (DIR/<class>/<name>.png ...)")
        root = Path(args.data_path)
        given = {name: root / name for name in SPLITS if (root / name).is_dir()}
        if given and "train" not in given:
            raise ValueError(f"{root} has {sorted(given)} but no train/ folder")
        folders = given or {"train": root}
        classes: list[str] | None = None
        for name, folder in folders.items():
            pairs, classes, found = find_folder_pairs(folder, classes)
            problems += found
            listed[name] = [
                PairFiles(image, masks, group, 1 + group if multiclass else 1)
                for image, masks, group in pairs
            ]
        names = ["background", *classes] if multiclass else ["background", "lesion"]
        return listed, names, list(classes or []), problems
    if args.csv_train is None:
        raise ValueError("--data csv needs --csv_train (and optionally --csv_val, --csv_test)")
    if multiclass and args.num_mask_classes is None:
        raise ValueError(
            "--data csv --mask_mode multiclass needs --num_mask_classes K: the masks' pixel "
            "values are the classes 0 (background) to K - 1"
        )
    tables = {name: getattr(args, f"csv_{name}") for name in SPLITS}
    for name, table in tables.items():
        if table:
            pairs, found = read_csv_pairs(
                table, image_column=args.image_column, mask_column=args.mask_column
            )
            problems += found
            listed[name] = [PairFiles(i, m, 0, None if multiclass else 1) for i, m in pairs]
    if multiclass:
        names = ["background", *(str(k) for k in range(1, args.num_mask_classes))]
    else:
        names = ["background", "lesion"]
    return listed, names, ["images"], problems


def _check(
    pairs: list[PairFiles], num_classes: int, args: argparse.Namespace
) -> tuple[Any, list[PairFiles], list[str]]:
    """Check every pair (headers; every pixel with ``--skip_corrupt`` or ``--cache_images``)
    in threads. Returns the items (a list with ``--cache_images``, else a
    :class:`MaskPairs`), the pairs kept and the problems found."""
    dataset = MaskPairs(pairs, num_classes=num_classes)
    decode = args.skip_corrupt or args.cache_images

    def check(index: int) -> Any:
        problem = _size_problem(pairs[index])
        if problem is not None or not decode:
            return problem
        try:
            return dataset[index]
        except BadFileError as err:  # the reason only: --skip_corrupt is on
            return f"{pairs[index].image}: {err.reason}"

    with ThreadPoolExecutor(max(args.num_workers, 1)) as pool:
        results = list(pool.map(check, range(len(pairs))))
    problems = [result for result in results if isinstance(result, str)]
    kept = [k for k, result in enumerate(results) if not isinstance(result, str)]
    dataset.pairs = [pairs[k] for k in kept]
    items = [results[k] for k in kept] if args.cache_images else dataset
    return items, dataset.pairs, problems


def _fail_or_skip(problems: list[str], args: argparse.Namespace) -> None:
    if problems and not args.skip_corrupt:
        listing = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(
            f"{len(problems)} image/mask pair(s) are broken:\n  {listing}{more}\nfix or "
            "remove them, or pass --skip_corrupt to skip them"
        )
    for problem in problems:
        warnings.warn(f"skipping {problem}", stacklevel=3)


def build_segmentation_data(args: argparse.Namespace) -> SegmentationSplits:
    """The splits ``--data`` names; a split missing on disk is carved from the training
    pairs (``--val_fraction``, ``--test_fraction``, stratified by class folder, seeded by
    ``--split_seed``). Synthetic images are rendered at ``--input_size``.

    Raises:
        ValueError: bad options (a fraction of 0 for a split carved: the recipe needs
            all three), broken pairs (all named, unless ``--skip_corrupt``), an image in
            two splits, or an empty split.
    """
    multiclass = args.mask_mode == "multiclass"
    if args.data == "synthetic":
        options = dict(image_size=args.input_size, num_classes=args.num_classes)
        options["lesion_size"] = args.lesion_size
        counts = dict(train=args.num_train, val=args.num_val, test=args.num_test)
        items = [  # three seeds: no image in two splits
            SyntheticMasks(
                SyntheticLesions(counts[name], seed=args.seed + k, **options),
                multiclass=multiclass,
            )
            for k, name in enumerate(SPLITS)
        ]
        lesions = items[0].lesions
        classes = ["background", *lesions.classes[1:]] if multiclass else ["background", "lesion"]
        if args.cache_images:
            items = [[split[i] for i in range(len(split))] for split in items]
        return SegmentationSplits(*items, classes, {}, {name: [] for name in SPLITS}, [])

    listed, classes, groups, problems = _listed(args)
    _fail_or_skip(problems, args)
    skipped = {"listing": problems}
    fractions = {
        name: getattr(args, f"{name}_fraction") for name in ("val", "test") if name not in listed
    }
    if sum(fractions.values()) >= 1:
        raise ValueError(f"--val_fraction + --test_fraction must stay below 1, got {fractions}")
    for name, fraction in fractions.items():
        if fraction == 0:
            raise ValueError(
                f"--{name}_fraction 0 carves no {name} split, and the recipe needs one (val "
                "selects the checkpoint, test is what it reports): give a fraction above 0, "
                f"or the split itself (a {name}/ folder beside train/ under --data_path, or "
                f"--csv_{name})"
            )
    listed["train"], carved = carve(listed["train"], fractions, args.split_seed)
    listed.update(carved)
    refuse_shared_files({name: [pair.image for pair in split] for name, split in listed.items()})
    splits: dict[str, Any] = {}
    pairs: dict[str, list[PairFiles]] = {}
    for name in SPLITS:
        splits[name], pairs[name], skipped[name] = _check(listed[name], len(classes), args)
        _fail_or_skip(skipped[name], args)
        if not pairs[name] and skipped[name]:
            raise ValueError(
                f"--skip_corrupt skipped all {len(skipped[name])} pairs of the {name} split, "
                f"e.g. {skipped[name][:2]}: none is left; fix or replace the files"
            )
        if not pairs[name]:
            raise ValueError(
                f"the {name} split is empty; add pairs, or raise --{name}_fraction"
                if name != "train"
                else "no training pairs are left"
            )
    return SegmentationSplits(
        splits["train"], splits["val"], splits["test"], classes, skipped, pairs, groups
    )


def export_images(splits: SegmentationSplits, folder: str | os.PathLike[str]) -> dict[str, int]:
    """Link the training and validation images (no masks, no test image) into
    ``folder/train/<class>/`` and ``folder/val/<class>/``, the layout of
    ``main_pretrain.py --data imagefolder``: pre-training then never sees a test image.

    Returns:
        The number of images linked per split.

    Raises:
        ValueError: synthetic data, ``folder/train`` or ``folder/val`` exists already, or
            two images of one class share a name.
    """
    if not splits.groups:
        raise ValueError("--export_images needs --data folder or csv")
    counts = {}
    for name in ("train", "val"):
        target = Path(folder) / name
        if target.exists():
            raise ValueError(f"{target} exists; remove it or export to another folder")
        links = {}
        for pair in splits.pairs[name]:
            link = target / splits.groups[pair.group] / Path(pair.image).name
            if link in links:
                raise ValueError(f"{pair.image} and {links[link]} would both be linked as {link}")
            links[link] = pair.image
        for link, image in links.items():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(image).resolve())
        counts[name] = len(links)
    return counts
