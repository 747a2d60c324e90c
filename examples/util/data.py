"""Data for the recipes: ``--data synthetic | imagefolder | csv`` and the loaders around it.

Every split is a map-style dataset of ``(image (3, H, W) float32 in [0, 1], target)`` at
its own size. Training views are cropped by :class:`maskkit.WeightedCropDataset`, which
also aligns each sample's bank map; the refresh and evaluation views resize the whole
image (no crop, no flip), as the maps are computed over whole images (AMT, MSMAE).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import torch
import torchvision.transforms.functional as TF
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.transforms import InterpolationMode

from maskkit import CsvImageDataset, ImageFolderDataset, SyntheticLesions

from .distributed import DistributedContext

__all__ = [
    "DataSplits",
    "InMemory",
    "ResizedDataset",
    "add_data_args",
    "build_datasets",
    "eval_loader",
    "normalize",
    "train_loader",
]

MEAN, STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The data options shared by pre-training and fine-tuning."""
    parser.add_argument(
        "--data",
        default="synthetic",
        choices=["synthetic", "imagefolder", "csv"],
        help="synthetic: built-in lesions (maskkit.SyntheticLesions); imagefolder: "
        "DATA_PATH/train/<class>/* and DATA_PATH/val/<class>/*; csv: --csv_train/--csv_val "
        "tables of image ids and labels (HAM10000, Messidor-2) with images in --image_dir",
    )
    parser.add_argument(
        "--data_path", "--data-path", default=None, help="root of --data imagefolder"
    )
    parser.add_argument("--csv_train", default=None, help="training table of --data csv")
    parser.add_argument("--csv_val", default=None, help="validation table of --data csv")
    parser.add_argument(
        "--image_dir", default=None, nargs="+", help="folder(s) holding the --data csv images"
    )
    parser.add_argument("--id_column", default="image_id", help="CSV column of image ids")
    parser.add_argument("--label_column", default="dx", help="CSV column of labels")
    parser.add_argument("--image_ext", default=".jpg", help="appended to CSV ids without one")
    parser.add_argument(
        "--skip_corrupt",
        action="store_true",
        help="skip unreadable images (found by a scan at start, counted in summary.json) "
        "instead of stopping with an error that names the file",
    )
    parser.add_argument("--num_train", default=1200, type=int, help="synthetic training images")
    parser.add_argument("--num_val", default=300, type=int, help="synthetic validation images")
    parser.add_argument("--num_classes", default=3, type=int, help="synthetic classes (2-7)")
    parser.add_argument(
        "--lesion_size", default=0.08, type=float, help="synthetic lesion radius / image side"
    )
    parser.add_argument(
        "--crop_min_scale",
        default=0.2,
        type=float,
        help="smallest crop area of RandomResizedCrop, as a share of the image (MSMAE: 0.2)",
    )
    parser.add_argument(
        "--cache_images",
        action="store_true",
        help="decode (or render) every image once, up front, and keep it in memory "
        "(3 * H * W * 4 bytes each) instead of reading it on every access",
    )
    parser.add_argument("--num_workers", default=4, type=int)


class DataSplits(NamedTuple):
    """Training and validation images ``(image in [0, 1], target)`` and the class names.

    ``skipped_files`` lists the unreadable files each split skips (``--skip_corrupt``), all
    found up front. ``lesions_train`` and ``lesions_val`` are the synthetic sets behind
    ``train`` and ``val`` (with their ground-truth lesions) for ``--data synthetic``.
    """

    train: Dataset
    val: Dataset
    classes: list[str]
    skipped_files: dict[str, list[str]]
    lesions_train: SyntheticLesions | None = None
    lesions_val: SyntheticLesions | None = None


def build_datasets(args: argparse.Namespace) -> DataSplits:
    """The splits that ``--data`` names.

    Synthetic images are rendered at ``--input_size``; training and validation use
    different seeds, so they share no image. With ``--skip_corrupt`` every image file is
    read once up front, so that the skipped files are all known (and reported) before
    training and DataLoader workers inherit the list.

    Raises:
        ValueError: a missing option for the chosen ``--data``, or an unreadable image
            (without ``--skip_corrupt``).
    """
    if args.data == "synthetic":
        common = dict(
            image_size=args.input_size,
            num_classes=args.num_classes,
            lesion_size=args.lesion_size,
        )
        lesions_train = SyntheticLesions(args.num_train, seed=args.seed, **common)
        lesions_val = SyntheticLesions(args.num_val, seed=args.seed + 1, **common)
        train, val = _cached(lesions_train, lesions_val, args)
        return DataSplits(
            train, val, lesions_train.classes, {"train": [], "val": []}, lesions_train, lesions_val
        )
    if args.data == "imagefolder":
        if args.data_path is None:
            raise ValueError("--data imagefolder needs --data_path DIR with train/ and val/")
        train = ImageFolderDataset(args.data_path, "train", skip_corrupt=args.skip_corrupt)
        val = ImageFolderDataset(
            args.data_path, "val", skip_corrupt=args.skip_corrupt, classes=train.classes
        )
    else:
        missing = [
            f"--{name}" for name in ("csv_train", "csv_val", "image_dir") if not getattr(args, name)
        ]
        if missing:
            raise ValueError(f"--data csv needs {', '.join(missing)}")
        options = dict(
            id_column=args.id_column,
            label_column=args.label_column,
            extension=args.image_ext,
            skip_corrupt=args.skip_corrupt,
        )
        train = CsvImageDataset(args.csv_train, args.image_dir, **options)
        val = CsvImageDataset(args.csv_val, args.image_dir, classes=train.classes, **options)
    if args.skip_corrupt and not args.cache_images:
        for split in (train, val):
            for _ in _read(split, threads=max(args.num_workers, 1)):
                pass
    cached_train, cached_val = _cached(train, val, args)
    skipped = {
        "train": [str(path) for path in train.skipped_files],
        "val": [str(path) for path in val.skipped_files],
    }
    return DataSplits(cached_train, cached_val, train.classes, skipped)


def _read(dataset: Dataset, *, threads: int) -> Iterator[Any]:
    """Every item of ``dataset`` in order, read by ``threads`` threads.

    Pillow decodes outside the GIL, so the threads read in parallel; an image dataset
    records every unreadable file it skips.
    """
    with ThreadPoolExecutor(threads) as pool:
        yield from pool.map(dataset.__getitem__, range(len(dataset)))  # type: ignore[arg-type]


def _cached(train: Dataset, val: Dataset, args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    """``(train, val)`` read into memory with ``--cache_images``, else unchanged."""
    if not args.cache_images:
        return train, val
    threads = max(args.num_workers, 1)
    train_items, val_items = (list(_read(split, threads=threads)) for split in (train, val))
    return InMemory(train_items), InMemory(val_items)


def normalize(image: Tensor) -> Tensor:
    """(3, H, W) in [0, 1] → normalised with the ImageNet mean and std (as MAE)."""
    return TF.normalize(image, MEAN, STD)


class InMemory(Dataset):
    """A dataset whose items were all read up front and are kept in a list."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


class ResizedDataset(Dataset):
    """The whole image resized to ``size`` (bicubic) and normalised; no crop, no flip.

    Args:
        dataset: items ``(image (3, H, W) in [0, 1], target)``.
        size: output side in pixels.
    """

    def __init__(self, dataset: Dataset, size: int) -> None:
        self.dataset = dataset
        self.size = size

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        image, target = self.dataset[index]
        if tuple(image.shape[-2:]) != (self.size, self.size):
            image = TF.resize(
                image,
                [self.size, self.size],
                interpolation=InterpolationMode.BICUBIC,
                antialias=True,
            ).clamp_(0.0, 1.0)
        return normalize(image), target


def train_loader(
    dataset: Dataset, args: argparse.Namespace, ctx: DistributedContext
) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled loader over this rank's shard; call ``sampler.set_epoch(epoch)`` every epoch.

    The order is a function of ``(args.seed, epoch)`` only, so a resumed run sees the same
    batches as an uninterrupted one. Incomplete last batches are dropped (as MAE).
    """
    sampler = DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed
    )
    if len(sampler) < args.batch_size:
        raise ValueError(
            f"each of the {ctx.world_size} process(es) gets {len(sampler)} training samples, "
            f"fewer than --batch_size {args.batch_size}; lower --batch_size or add data"
        )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.num_workers,
        pin_memory=ctx.device.type == "cuda",
        drop_last=True,
        persistent_workers=args.num_workers > 0,
    )
    return loader, sampler


def eval_loader(dataset: Dataset, args: argparse.Namespace, ctx: DistributedContext) -> DataLoader:
    """In-order loader over this rank's share (every ``world_size``-th sample, none twice)."""
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))  # type: ignore[arg-type]
    return DataLoader(
        shard,
        batch_size=args.batch_size,
        shuffle=False,
        num_workers=args.num_workers,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(args.seed),
    )
