"""Segmentation transfer: a (pre-trained) ViT encoder in SETR, fine-tuned on lesion masks.

Mao et al., "MSMAE", Sec. 4.4, Tab. 2, Appendix C.1 and Tab. 6: the pre-trained ViT
becomes the encoder of SETR (Zheng et al., 2021; ``--head naive | pup``) and the whole
model is fine-tuned on BUSI's lesion masks with ``loss = dice + 0.5 · bce`` (eq. 9), Adam
(lr 1e-4, weight decay 1e-4), batch 8, 200 epochs, cosine decay and random rotation.
Without ``--finetune`` the encoder starts from scratch: the paper's "Baseline".

The validation split selects the checkpoint (``best.pth``, by ``--select_metric``); the
test split is only evaluated, with the final and with the selected model. Dice (= F1) and
IoU are reported per image and over the whole split (see ``engine_segment``).

One process (CPU or one GPU), on BUSI as it ships (``DATA/benign/benign (1).png`` beside
``benign (1)_mask.png``, ...; 70/15/15 split carved per class)::

    python examples/main_segment.py --data folder --data_path /data/Dataset_BUSI_with_GT \\
        --finetune runs/pretrain_busi/checkpoint.pth --output_dir runs/segment_busi

A tiny CPU run on the built-in synthetic lesions, from scratch::

    python examples/main_segment.py --model vit_micro_patch8_64 --input_size 64 \\
        --num_train 64 --num_val 16 --num_test 16 --epochs 4 --lr 1e-3 \\
        --output_dir runs/segment_tiny

Several GPUs (or CPU processes, with ``--device cpu``) on one machine, with torchrun::

    torchrun --nproc_per_node 4 examples/main_segment.py --data folder \\
        --data_path /data/Dataset_BUSI_with_GT --batch_size 2 \\
        --finetune runs/pretrain_busi/checkpoint.pth --output_dir runs/segment_busi

Outputs in ``--output_dir`` (rank 0 only): ``checkpoint.pth`` (every epoch, atomic; what
an exact resume needs), ``best.pth`` (the val-selected model, atomic), ``log.jsonl`` (one
line per epoch, validation metrics included), ``overlays_final.png`` and
``overlays_best.png`` (image | ground truth | prediction on test images), ``splits.json``
(the files of each split, for file data) and ``summary.json``. A folder holding results is
refused unless ``--resume`` or ``--overwrite``. ``--resume OUTPUT_DIR/checkpoint.pth``
continues exactly (with the checkpoint's settings; ``--allow_changed_args`` lets named
options differ); ``--stop_after_epoch N`` exits after epoch N's checkpoint.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from engine_segment import (
    METRIC_DEFINITIONS,
    broadcast_buffers,
    evaluate,
    predict,
    save_overlays,
    train_one_epoch,
)
from models_msmae import create_vit, vit_grid
from models_setr import HEADS, SETR, load_encoder
from msmae_util.data import MEAN, STD, eval_loader, train_loader
from msmae_util.outputs import (
    JsonLinesLog,
    load_checkpoint,
    resume,
    rng_state,
    save_checkpoint,
    write_json,
)
from msmae_util.runs import (
    OWN_OUTPUTS,
    SCHEDULE_OPTIONS,
    add_run_arguments,
    as_usage_error,
    check_data_source,
    check_file,
    natural,
    nonnegative,
    number,
    positive,
    positive_int,
    ratio,
    run_main,
    start_run,
    stop_after,
)
from msmae_util.runtime import (
    DistributedContext,
    UsageError,
    all_gather_objects,
    amp_settings,
    cosine_scheduler,
    init_distributed,
    print0,
    resolve_schedule,
)
from segment_data import (
    PairedAugment,
    SegmentationViews,
    build_segmentation_data,
    export_images,
)
from timm.optim import create_optimizer_v2
from torch.nn.parallel import DistributedDataParallel

__all__ = ["SCRIPT", "SELECT_METRICS", "build_model", "check_args", "get_args_parser", "main"]

SCRIPT = "main_segment.py"  # recorded in the checkpoints: --resume checks who wrote one
SELECT_METRICS = ("dice_dataset", "iou_dataset", "dice_per_image", "iou_per_image")
# What this recipe writes: msmae_util.runs.OWN_OUTPUTS and its own files; --overwrite
# removes these and nothing else.
OUTPUTS = re.compile(f"{OWN_OUTPUTS.pattern}|overlays_(final|best)\\.png|splits\\.json")
# Options beyond msmae_util.runs.FREE_ON_RESUME that --resume may change: no number
# computed depends on them.
FREE_HERE = ("num_overlays", "export_images")
# Data options (default None) that one --data source reads, and which.
DATA_READERS = {
    "data_path": ("folder",),
    "csv_train": ("csv",),
    "csv_val": ("csv",),
    "csv_test": ("csv",),
    "num_mask_classes": ("csv",),
}


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options; defaults are MSMAE's (Tab. 6, eq. 9) where the paper gives them."""
    parser = argparse.ArgumentParser("SETR segmentation transfer", add_help=False)
    parser.add_argument(
        "--batch_size",
        default=8,
        type=positive_int,
        help="images per process and iteration (MSMAE: 8); the lr is not scaled with it",
    )
    parser.add_argument("--epochs", default=200, type=positive_int)

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default="vit_base_patch16_224",
        help="timm ViT encoder, the pre-training encoder's (vit_micro_patch8_64: tiny CPU one)",
    )
    model.add_argument("--input_size", default=224, type=positive_int, help="image side in pixels")
    model.add_argument(
        "--head", default="pup", choices=HEADS, help="SETR decoder: naive or pup (progressive)"
    )
    model.add_argument(
        "--decoder_channels", default=256, type=positive_int, help="SETR decoder width"
    )
    model.add_argument(
        "--drop_path", default=0.0, type=ratio, help="stochastic depth rate, in [0, 1)"
    )
    model.add_argument(
        "--finetune",
        default="",
        help="pre-training checkpoint (main_pretrain.py) for the encoder; empty: from "
        "scratch, the paper's Baseline",
    )

    loss = parser.add_argument_group("loss")
    loss.add_argument(
        "--bce_weight",
        default=0.5,
        type=nonnegative,
        help="λ of loss = dice + λ bce (MSMAE eq. 9: 0.5); multi-class: dice + λ ce",
    )
    loss.add_argument(
        "--mask_mode",
        default="binary",
        choices=["binary", "multiclass"],
        help="binary: lesion vs background, one logit per pixel (BUSI, the paper); "
        "multiclass: a channel per class (folder: 1 + the class folder's index, synthetic: "
        "the lesion kind, csv: the masks' pixel values)",
    )

    optim = parser.add_argument_group("optimizer (Adam, betas (0.9, 0.999), MSMAE Tab. 6)")
    optim.add_argument("--lr", default=1e-4, type=positive, help="learning rate (MSMAE: 1e-4)")
    optim.add_argument("--weight_decay", default=1e-4, type=nonnegative, help="MSMAE: 1e-4")
    optim.add_argument("--min_lr", default=0.0, type=nonnegative, help="floor of the cosine")
    optim.add_argument(
        "--warmup_epochs", default=0, type=natural, help="epochs of lr warm-up (<= --epochs)"
    )
    optim.add_argument(
        "--clip_grad", default=None, type=positive, help="max gradient norm (unset: no clipping)"
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default="synthetic",
        choices=["synthetic", "folder", "csv"],
        help="synthetic: built-in lesions with their masks; folder: BUSI's layout "
        "DATA_PATH/<class>/<name>.png + <name>_mask.png [+ <name>_mask_1.png ...] (or "
        "DATA_PATH/train|val|test/<class>/...); csv: --csv_train [--csv_val --csv_test] "
        "tables of image and mask paths",
    )
    data.add_argument("--data_path", "--data-path", default=None, help="--data folder root")
    data.add_argument("--csv_train", default=None, help="training table of --data csv")
    data.add_argument("--csv_val", default=None, help="validation table (else carved)")
    data.add_argument("--csv_test", default=None, help="test table (else carved)")
    data.add_argument("--image_column", default="image", help="CSV column of image paths")
    data.add_argument(
        "--mask_column", default="mask", help="CSV column of mask paths (several: a;b)"
    )
    data.add_argument(
        "--num_mask_classes",
        default=None,
        type=number(int, 2),
        help="--data csv --mask_mode multiclass: K >= 2, the mask values being 0 "
        "(background) to K-1",
    )
    data.add_argument(
        "--val_fraction",
        default=0.15,
        type=float,
        help="share of each class carved from the training pairs when no val split is given",
    )
    data.add_argument(
        "--test_fraction",
        default=0.15,
        type=float,
        help="share of each class carved from the training pairs when no test split is given",
    )
    data.add_argument("--split_seed", default=0, type=natural, help="seed of the carved splits")
    data.add_argument(
        "--skip_corrupt",
        action="store_true",
        help="read every pair at start and drop broken ones (unreadable, unpaired or of "
        "mismatched sizes; listed in summary.json) instead of stopping with an error that "
        "names the files",
    )
    data.add_argument(
        "--cache_images",
        action="store_true",
        help="decode (or render) every pair once, up front, and keep it in memory",
    )
    data.add_argument(
        "--num_train", default=546, type=positive_int, help="synthetic training images"
    )
    data.add_argument(
        "--num_val", default=117, type=positive_int, help="synthetic validation images"
    )
    data.add_argument("--num_test", default=117, type=positive_int, help="synthetic test images")
    data.add_argument("--num_classes", default=3, type=int, help="synthetic classes (2-7)")
    data.add_argument("--lesion_size", default=0.15, type=float, help="synthetic lesion radius")
    data.add_argument(
        "--rotation",
        default=15.0,
        type=float,
        help="random rotation of image and mask, uniform in ±ROTATION degrees (MSMAE Tab. 6 "
        "rotates without giving the range; 0: off)",
    )
    data.add_argument(
        "--crop_min_scale",
        default=1.0,
        type=float,
        help="smallest random crop area as a share of the image; 1: no crop (MSMAE)",
    )
    data.add_argument(
        "--hflip", default=0.0, type=float, help="horizontal flip probability (MSMAE: none)"
    )
    data.add_argument("--num_workers", default=4, type=natural)
    data.add_argument(
        "--export_images",
        default="",
        help="link the training and validation images (no masks, no test images) into "
        "DIR/train/<class>/ and DIR/val/<class>/ for main_pretrain.py --data imagefolder, "
        "write DIR/splits.json, and exit without training",
    )

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--output_dir", default="runs/segment", help="where rank 0 writes")
    runtime.add_argument("--resume", default="", help="checkpoint to continue from")
    runtime.add_argument(
        "--select_metric",
        default="dice_dataset",
        choices=SELECT_METRICS,
        help="validation metric that selects best.pth (highest; the earliest epoch on ties)",
    )
    runtime.add_argument(
        "--num_overlays", default=8, type=natural, help="test images in the overlay figures"
    )
    runtime.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    runtime.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "bf16", "fp16", "none"],
        help="autocast on CUDA (auto: bf16 where supported, else fp16); CPU runs in float32",
    )
    runtime.add_argument("--seed", default=0, type=natural)
    runtime.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    add_run_arguments(runtime)
    return parser


def build_model(args: argparse.Namespace, num_classes: int) -> SETR:
    """The SETR model that ``args`` describe: one output channel for binary masks, else one
    per class (``num_classes``, background included)."""
    encoder = create_vit(
        args.model,
        img_size=args.input_size,
        num_classes=0,  # no classifier; "token" pooling keeps the encoder's final norm
        global_pool="token",
        drop_path_rate=args.drop_path,
    )
    channels = 1 if args.mask_mode == "binary" else num_classes
    return SETR(
        encoder=encoder, num_classes=channels, head=args.head, channels=args.decoder_channels
    )


def check_args(args: argparse.Namespace) -> None:
    """Reject impossible settings before anything is built (most options' ranges are
    checked by the parser already, the lr schedule by ``resolve_schedule``)."""
    check_data_source(args, DATA_READERS)
    if args.num_mask_classes is not None and args.mask_mode != "multiclass":
        raise UsageError(
            "--num_mask_classes is only read with --mask_mode multiclass (binary masks have "
            "one channel); add --mask_mode multiclass, or leave out --num_mask_classes"
        )
    if not args.resume:  # a resumed run reads no --finetune
        check_file("--finetune", args.finetune)
    with as_usage_error():
        vit_grid(args.model, args.input_size)  # a timm ViT whose patches tile the input
    bounds = {
        "--val_fraction": (args.val_fraction, 0 <= args.val_fraction < 1),
        "--test_fraction": (args.test_fraction, 0 <= args.test_fraction < 1),
        "--crop_min_scale": (args.crop_min_scale, 0 < args.crop_min_scale <= 1),
        "--hflip": (args.hflip, 0 <= args.hflip <= 1),
        "--rotation": (args.rotation, 0 <= args.rotation <= 180),
    }
    bad = [f"{name} {value}" for name, (value, fine) in bounds.items() if not fine]
    if bad:
        raise UsageError(
            f"out of range: {', '.join(bad)} (fractions in [0, 1), --crop_min_scale in "
            "(0, 1], --hflip in [0, 1], --rotation in [0, 180] degrees)"
        )


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune and evaluate; returns the summary that rank 0 writes to ``summary.json``
    (after ``--stop_after_epoch``: ``stopped_after_epoch`` and the last epoch's stats)."""
    check_args(args)
    ctx = init_distributed(args.device)
    try:
        return _segment(args, ctx)
    finally:
        ctx.close()


def _barrier(ctx: DistributedContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()


def _segment(args: argparse.Namespace, ctx: DistributedContext) -> dict[str, Any]:
    started = time.time()
    device = ctx.device
    amp_dtype, scaler = amp_settings(args.amp, device)
    if args.export_images:
        with as_usage_error():
            splits = build_segmentation_data(args)
        return _export(args, ctx, splits)
    resolve_schedule(args, ctx.world_size)
    output_dir, checkpoint, changed, finished = start_run(
        args, ctx, script=SCRIPT, outputs=OUTPUTS, free=FREE_HERE
    )
    if finished is not None:
        return finished
    pretrained = None
    if args.finetune and checkpoint is None:  # a resumed run loads every weight
        with as_usage_error():  # the file is no checkpoint, or one of another recipe
            pretrained = load_checkpoint(
                args.finetune, expect="main_pretrain.py", option="--finetune"
            )
    print0(f"SETR segmentation: {ctx.world_size} process(es) on {device}, lr {args.lr:.3g}")
    torch.manual_seed(args.seed + ctx.rank)

    with as_usage_error():  # the data's own errors name the files and options at fault
        splits = build_segmentation_data(args)
    classes = splits.classes
    model = build_model(args, len(classes))
    if pretrained is not None:
        load_encoder(model.encoder, pretrained["model"])
        print0(f"loaded the pre-trained encoder of {args.finetune}")
    if device.type == "cuda" and ctx.world_size > 1:  # SETR's synchronised batch norm
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    augment = PairedAugment(
        args.input_size,
        rotation=args.rotation,
        crop_min_scale=args.crop_min_scale,
        hflip_prob=args.hflip,
    )
    train_set = SegmentationViews(
        splits.train, size=args.input_size, augment=augment, seed=args.seed
    )
    loader, sampler = train_loader(train_set, args, ctx)
    val_loader = eval_loader(SegmentationViews(splits.val, size=args.input_size), args, ctx)
    test_views = SegmentationViews(splits.test, size=args.input_size)
    test_loader = eval_loader(test_views, args, ctx)

    # Adam (MSMAE Tab. 6: "momentum 0.9"), L2 weight decay 1e-4 except on biases, norms,
    # the cls token and the position table (timm's parameter groups).
    optimizer = create_optimizer_v2(
        model, opt="adam", lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999)
    )
    lr_scheduler = cosine_scheduler(optimizer, args, len(loader))
    trained = DistributedDataParallel(model) if ctx.world_size > 1 else model
    state = {"model": model, "optimizer": optimizer, "scaler": scaler, "lr_scheduler": lr_scheduler}

    start_epoch, best = 0, {"epoch": -1, "score": -1.0, "val": {}}
    train_stats: dict[str, float] = {}
    if checkpoint is not None:
        # An allowed change of the lr schedule's options rebuilds it instead of loading it.
        skip = {"lr_scheduler"} if changed & SCHEDULE_OPTIONS else set()
        loaded = {name: part for name, part in state.items() if name not in skip}
        resume(args.resume, loaded, ctx.rank, checkpoint=checkpoint)
        start_epoch, best = checkpoint["epoch"] + 1, checkpoint["best"]
        train_stats = checkpoint["stats"]["train"]
        print0(f"resumed from {args.resume} at epoch {start_epoch}")
    log = JsonLinesLog(output_dir / "log.jsonl", start_epoch=start_epoch) if ctx.is_main else None
    if ctx.is_main and splits.files["train"]:
        write_json(output_dir / "splits.json", splits.files)

    def run_eval(loader: Any) -> dict[str, Any]:
        broadcast_buffers(model)
        return evaluate(
            model,
            loader,
            device,
            class_names=classes,
            bce_weight=args.bce_weight,
            amp_dtype=amp_dtype,
        )

    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)  # before the epoch's iterator: its workers copy the set
        train_stats = train_one_epoch(
            trained,
            loader,
            optimizer,
            device,
            epoch,
            scaler,
            lr_scheduler,
            bce_weight=args.bce_weight,
            amp_dtype=amp_dtype,
            clip_grad=args.clip_grad,
            progress=ctx.is_main and not args.no_progress,
        )
        val_stats = run_eval(val_loader)
        improved = val_stats[args.select_metric] > best["score"]
        if improved:
            best = {"epoch": epoch, "score": val_stats[args.select_metric], "val": val_stats}
        rng = all_gather_objects(rng_state())
        if ctx.is_main:
            # Log, then best.pth, then checkpoint.pth: a run stopped in between resumes from
            # the previous checkpoint and writes the same files again.
            log.write(  # type: ignore[union-attr]
                {
                    "epoch": epoch,
                    **{f"train_{k}": v for k, v in train_stats.items()},
                    **{f"val_{k}": v for k, v in val_stats.items()},
                    "best_epoch": best["epoch"],
                }
            )
            if improved:
                selected = {"model": model.state_dict(), "epoch": epoch, "val": val_stats}
                selected.update(args=vars(args), script=SCRIPT)
                save_checkpoint(output_dir / "best.pth", selected)
            checkpoint = {name: part.state_dict() for name, part in state.items()}
            checkpoint.update(epoch=epoch, rng=rng, args=vars(args), best=best)
            checkpoint.update(script=SCRIPT, stats={"train": train_stats})
            save_checkpoint(output_dir / "checkpoint.pth", checkpoint)
        print0(
            f"epoch {epoch}: train loss {train_stats['loss']:.4f}, val Dice "
            f"{val_stats['dice_dataset']:.2f} IoU {val_stats['iou_dataset']:.2f} (dataset-level; "
            f"best {args.select_metric} {best['score']:.2f} at epoch {best['epoch']})"
        )
        if stop_after(epoch, args, output_dir):
            stats = {"train": train_stats, "val": val_stats, "best_epoch": best["epoch"]}
            return {"task": "segment", "stopped_after_epoch": epoch, **stats}

    # The test split, once with the final model and once with the val-selected one.
    results: dict[str, Any] = {}
    for name in ("final", "best"):
        if name == "best":
            _barrier(ctx)  # rank 0 has written best.pth
            model.load_state_dict(load_checkpoint(output_dir / "best.pth", expect=SCRIPT)["model"])
        val = run_eval(val_loader)
        test = run_eval(test_loader)
        results[name] = {"val": val, "test": test}
        if ctx.is_main and args.num_overlays > 0:
            _overlays(output_dir / f"overlays_{name}.png", model, test_views, classes, args)
        print0(
            f"{name} model: test Dice {test['dice_dataset']:.2f} / IoU {test['iou_dataset']:.2f} "
            f"(dataset-level), {test['dice_per_image']:.2f} / {test['iou_per_image']:.2f} "
            "(mean per image)"
        )
    summary: dict[str, Any] = {
        "task": "segment",
        "head": args.head,
        "encoder": args.finetune or "scratch",
        "epochs": args.epochs,
        "world_size": ctx.world_size,
        "classes": classes,
        "train": train_stats,
        "final": results["final"],
        "best": {"epoch": best["epoch"], "select_metric": args.select_metric, **results["best"]},
        "metrics": METRIC_DEFINITIONS,
        "splits": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "skipped_files": splits.skipped_files,
        "args": vars(args),
        "seconds": time.time() - started,
    }
    if ctx.is_main:
        write_json(output_dir / "summary.json", summary)
    return summary


def _export(args: argparse.Namespace, ctx: DistributedContext, splits: Any) -> dict[str, Any]:
    """``--export_images``: the pre-training image folder of this run's splits."""
    summary: dict[str, Any] = {"task": "export_images", "folder": args.export_images}
    if ctx.is_main:
        summary["images"] = export_images(splits, args.export_images)
        write_json(Path(args.export_images) / "splits.json", splits.files)
        print0(f"linked {summary['images']} images into {args.export_images}")
    return summary


@torch.no_grad()
def _overlays(
    path: Path, model: SETR, views: SegmentationViews, classes: list[str], args: Any
) -> None:
    """Image | ground truth | prediction for the first ``--num_overlays`` test images."""
    count = min(args.num_overlays, len(views))
    images, masks, _ = zip(*(views[i] for i in range(count)))
    images, masks = torch.stack(images), torch.stack(masks)
    model.eval()
    device = next(model.parameters()).device
    predictions = predict(model(images.to(device)).float()).cpu()
    scale = max(1, 160 // args.input_size)
    options = dict(class_names=classes, mean=MEAN, std=STD, scale=scale)
    save_overlays(path, images, masks, predictions, **options)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        "SETR segmentation transfer", parents=[get_args_parser()], description=__doc__
    )
    run_main(main, parser.parse_args())
