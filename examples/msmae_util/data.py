"""Data for the recipes: ``--data synthetic | imagefolder | csv``, the views, the loaders.

Splits hold ``(image, target)``, a (3, H, W) float tensor in [0, 1] (synthetic) or a PIL
image: train, val (checkpoint selection) and, where the data has one, test (reported,
never selected on). The refresh and evaluation views resize the whole image (no crop, no
flip), as the maps are computed over whole images (AMT, MSMAE); all views are normalised
as in MAE.
"""

from __future__ import annotations

import argparse
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import torch
from timm.data import IMAGENET_DEFAULT_MEAN as MEAN
from timm.data import IMAGENET_DEFAULT_STD as STD
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.transforms import v2

from maskkit.demo import SyntheticLesions

from .images import CsvImageDataset, UnreadableImageError, image_folder, refuse_shared_files
from .runs import area, natural, positive_int
from .runtime import DistributedContext

NORMALIZE = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float, scale=True), v2.Normalize(MEAN, STD)])


def whole_image(size: int) -> v2.Compose:
    """The refresh and evaluation view: the whole image resized to ``size`` (bicubic)."""
    resize = v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    return v2.Compose([v2.ToImage(), resize, NORMALIZE])


class Transformed(Dataset):
    """``(transform(image), target)`` for each ``(image, target)`` of ``dataset``."""

    def __init__(self, dataset: Any, transform: v2.Transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, target = self.dataset[index]
        return self.transform(image), target


class DataSplits(NamedTuple):
    """Training, validation and test items (``test`` None when the data has no test split),
    class names, the files ``--skip_corrupt`` dropped and, for ``--data synthetic``, the
    lesion sets behind the training and validation splits (with ground truth)."""

    train: Any
    val: Any
    classes: list[str]
    skipped_files: dict[str, list[str]]
    lesions_train: SyntheticLesions | None = None
    lesions_val: SyntheticLesions | None = None
    test: Any = None


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``data`` option group, shared by the recipes and the ablation runner."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default="synthetic",
        choices=["synthetic", "imagefolder", "csv"],
        help="synthetic: built-in lesions (maskkit.demo.SyntheticLesions); imagefolder: "
        "DATA_PATH/train/<class>/*, DATA_PATH/val/<class>/* and, optionally, "
        "DATA_PATH/test/<class>/*; csv: --csv_train/--csv_val (and --csv_test) tables of "
        "image ids and labels (HAM10000, Messidor-2) with images in --image_dir",
    )
    data.add_argument("--data_path", "--data-path", default=None, help="--data imagefolder root")
    data.add_argument("--csv_train", default=None, help="training table of --data csv")
    data.add_argument("--csv_val", default=None, help="validation table (checkpoint selection)")
    data.add_argument("--csv_test", default=None, help="test table (reported, never selected on)")
    data.add_argument("--image_dir", default=None, nargs="+", help="folder(s) of the csv images")
    data.add_argument("--id_column", default="image_id", help="CSV column of image ids")
    data.add_argument("--label_column", default="dx", help="CSV column of labels")
    data.add_argument("--image_ext", default=".jpg", help="appended to CSV ids without one")
    data.add_argument(
        "--skip_corrupt",
        action="store_true",
        help="read every image at start and drop unreadable ones (listed in summary.json) "
        "instead of stopping with an error that names the file",
    )
    data.add_argument(
        "--num_train", default=1200, type=positive_int, help="synthetic training images"
    )
    data.add_argument(
        "--num_val", default=300, type=positive_int, help="synthetic validation images"
    )
    data.add_argument(
        "--num_test", default=300, type=natural, help="synthetic test images (0: none)"
    )
    data.add_argument("--num_classes", default=3, type=int, help="synthetic classes (2-7)")
    data.add_argument("--lesion_size", default=0.08, type=float, help="synthetic lesion radius")
    data.add_argument(
        "--data_seed",
        default=0,
        type=natural,
        help="seed of the synthetic images (train, val, test: seeds s, s+1, s+2), kept apart "
        "from --seed so that runs of several seeds share one data set",
    )
    data.add_argument(
        "--crop_min_scale",
        default=0.2,
        type=area,
        help="smallest crop area of RandomResizedCrop, as a share of the image (MSMAE: 0.2)",
    )
    data.add_argument(
        "--cache_images",
        action="store_true",
        help="decode (or render) every image once, up front, and keep it in memory",
    )
    data.add_argument("--num_workers", default=4, type=natural)


def build_datasets(args: argparse.Namespace, *, test: bool = True) -> DataSplits:
    """The splits ``--data`` names (the test split only with ``test``, and where the data
    has one); synthetic images are rendered at ``--input_size``.

    File data is refused with a file in two splits, or with fewer than two classes unless
    the labels go unused (pre-training with ``args.cls_loss_weight`` 0); ``--skip_corrupt``
    may drop files, but not every file of a split nor every training file of a class.
    """
    lesions: tuple[SyntheticLesions, ...] = ()
    if args.data == "synthetic":
        data_seed = getattr(args, "data_seed", args.seed)
        options = dict(image_size=args.input_size, num_classes=args.num_classes)
        options["lesion_size"] = args.lesion_size
        train = SyntheticLesions(args.num_train, seed=data_seed, **options)
        val = SyntheticLesions(args.num_val, seed=data_seed + 1, **options)  # no shared image
        splits: dict[str, Any] = {"train": train, "val": val}
        if test and getattr(args, "num_test", 0) > 0:
            splits["test"] = SyntheticLesions(args.num_test, seed=data_seed + 2, **options)
        sources, lesions = dict.fromkeys(splits, "synthetic"), (train, val)
    else:
        splits, sources = _file_splits(args, test=test)
    classes = splits["train"].classes
    if args.data != "synthetic":
        if len(classes) < 2 and getattr(args, "cls_loss_weight", None) != 0:
            raise ValueError(
                f"{sources['train']} holds a single class, {classes}: classification needs at "
                "least two (with one, every prediction is right and the loss is 0); add the "
                "images of the other classes"
            )
        refuse_shared_files({name: [path for path, _ in d.samples] for name, d in splits.items()})
    skipped: dict[str, list[str]] = {"train": [], "val": []}
    if args.skip_corrupt or args.cache_images:
        for name, split in splits.items():
            where = f"the {name} split ({sources[name]})"
            known = classes if name == "train" else None
            splits[name], skipped[name] = _read(split, args, where, classes=known)
    return DataSplits(
        splits["train"], splits["val"], classes, skipped, *lesions, test=splits.get("test")
    )


def _file_splits(args: argparse.Namespace, *, test: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """The splits of ``--data imagefolder`` or ``csv``, and the folder or table of each."""
    if args.data == "imagefolder":
        if args.data_path is None:
            raise ValueError("--data imagefolder needs --data_path DIR with train/ and val/")
        folders = {name: Path(args.data_path) / name for name in ("train", "val", "test")}
        if not (test and folders["test"].is_dir()):
            del folders["test"]
        splits = {"train": image_folder(folders.pop("train"))}
        classes = splits["train"].classes
        splits.update({name: image_folder(path, classes) for name, path in folders.items()})
        return splits, {name: str(Path(args.data_path) / name) for name in splits}
    missing = [f"--{k}" for k in ("csv_train", "csv_val", "image_dir") if not getattr(args, k)]
    if missing:
        raise ValueError(f"--data csv needs {', '.join(missing)}")
    tables = {name: getattr(args, f"csv_{name}", None) for name in ("train", "val", "test")}
    if not (test and tables["test"]):
        del tables["test"]
    columns = dict(id_column=args.id_column, label_column=args.label_column)
    columns["extension"] = args.image_ext
    splits = {"train": CsvImageDataset(tables["train"], args.image_dir, **columns)}
    classes = splits["train"].classes
    splits.update(
        {
            name: CsvImageDataset(table, args.image_dir, **columns, classes=classes)
            for name, table in tables.items()
            if name != "train"
        }
    )
    return splits, tables


def _read(
    dataset: Any, args: argparse.Namespace, where: str, *, classes: list[str] | None = None
) -> tuple[Any, list[str]]:
    """Read every item once, in threads (Pillow decodes outside the GIL). Returns the items
    as a list (``--cache_images``) or ``dataset`` itself, and the unreadable files, which
    ``--skip_corrupt`` drops from the split with a warning: never all of them (``where``
    names the split in the error), nor all the files of one of ``classes`` (the training
    split's: a class left without images would be trained on nothing)."""

    def read(index: int) -> Any:
        try:
            item = dataset[index]
        except UnreadableImageError as err:
            if not args.skip_corrupt:
                raise
            return err
        return item if args.cache_images else None

    with ThreadPoolExecutor(max(args.num_workers, 1)) as pool:
        items = list(pool.map(read, range(len(dataset))))
    bad = {i for i, item in enumerate(items) if isinstance(item, UnreadableImageError)}
    skipped = [dataset.samples[i][0] for i in sorted(bad)]
    for path, i in zip(skipped, sorted(bad), strict=True):
        warnings.warn(f"skipping unreadable image {path}: {items[i].__cause__}", stacklevel=3)
    if bad and len(bad) == len(dataset):
        raise ValueError(
            f"--skip_corrupt skipped all {len(bad)} images of {where}, e.g. {skipped[:3]}: "
            "none is left; fix or replace the files"
        )
    if bad and classes is not None:
        before = Counter(target for _, target in dataset.samples)
        dropped = Counter(dataset.samples[i][1] for i in bad)
        lost = [
            f"{classes[t]!r} ({n} unreadable)" for t, n in sorted(dropped.items()) if n == before[t]
        ]
        if lost:
            raise ValueError(
                f"--skip_corrupt skipped every image of class {', '.join(lost)} in {where}: "
                "the class would be trained on nothing; fix or replace the files"
            )
    if args.cache_images:
        return [item for i, item in enumerate(items) if i not in bad], skipped
    if bad:
        dataset.samples = [sample for i, sample in enumerate(dataset.samples) if i not in bad]
        dataset.targets = [target for _, target in dataset.samples]
    return dataset, skipped


def train_loader(
    dataset: Dataset, args: argparse.Namespace, ctx: DistributedContext
) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled loader over this rank's shard; call ``sampler.set_epoch(epoch)`` every epoch.
    The order depends on ``(--seed, epoch)`` only (resume sees the same batches); the last
    incomplete batch is dropped (as MAE). No persistent workers: each epoch's workers copy
    the :class:`maskkit.CropDataset` with its new epoch."""
    sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=args.seed)
    if len(sampler) < args.batch_size:
        raise ValueError(
            f"each of the {ctx.world_size} process(es) gets {len(sampler)} training samples, "
            f"fewer than --batch_size {args.batch_size}; lower --batch_size or add data"
        )
    options = dict(num_workers=args.num_workers, pin_memory=ctx.device.type == "cuda")
    return DataLoader(dataset, args.batch_size, sampler=sampler, drop_last=True, **options), sampler


def eval_loader(dataset: Dataset, args: argparse.Namespace, ctx: DistributedContext) -> DataLoader:
    """In-order loader over every ``world_size``-th sample (none twice), with a generator of
    its own, so that evaluating draws nothing from the global RNG."""
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    options = dict(num_workers=args.num_workers, pin_memory=ctx.device.type == "cuda")
    return DataLoader(
        shard, args.batch_size, generator=torch.Generator().manual_seed(args.seed), **options
    )
