"""MSMAE fine-tuning: a timm ViT that encodes only SAM's visible quarter of the tokens.

Mao et al., "MSMAE", Sec. 3.3 and Tab. 5. The pre-trained encoder is loaded into a timm
ViT that averages its patch tokens (``global_pool="avg"``). With ``--masker sam`` the
cls-attention maps of the model being fine-tuned are refreshed every ``--refresh_every``
(20) epochs, starting before the first, and each training view keeps only its visible 25%
of tokens (45% masked and 30% thrown by the maps); ``--masker none`` is plain full-token
fine-tuning, the baseline. Evaluation always uses every token and reports top-1 accuracy,
per-class recall and the confusion matrix.

One process (CPU or one GPU)::

    python examples/main_finetune.py --finetune runs/pretrain_sam/checkpoint.pth \\
        --output_dir runs/finetune_sam

A tiny CPU run (after the tiny pre-training of main_pretrain.py)::

    python examples/main_finetune.py --model vit_micro_patch8_64 --input_size 64 \\
        --batch_size 32 --epochs 6 --warmup_epochs 1 --refresh_every 3 \\
        --finetune runs/pretrain_tiny/checkpoint.pth --output_dir runs/finetune_tiny

Several GPUs (or CPU processes, with ``--device cpu``) on one machine, with torchrun::

    torchrun --nproc_per_node 4 examples/main_finetune.py --data imagefolder \\
        --data_path /data/ham10000 --finetune runs/pretrain_sam/checkpoint.pth \\
        --output_dir runs/finetune_sam

Outputs in ``--output_dir`` (rank 0 only): ``checkpoint.pth`` (every epoch, atomic; its
``"model"`` entry loads into the timm model directly), ``log.jsonl``, ``masks_epochNNN.png``
(at every refresh) and ``summary.json``. A folder holding results is refused unless
``--resume`` or ``--overwrite``. ``--resume OUTPUT_DIR/checkpoint.pth`` continues exactly (with
the checkpoint's settings; ``--allow_changed_args`` lets named options differ);
``--stop_after_epoch N`` exits after epoch N's checkpoint, to be resumed later.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch
from engine_finetune import evaluate, train_one_epoch
from models_msmae import VisibleTokenClassifier, create_vit, load_pretrained_encoder, vit_grid
from msmae_util.data import (
    NORMALIZE,
    Transformed,
    build_datasets,
    eval_loader,
    train_loader,
    whole_image,
)
from msmae_util.outputs import (
    JsonLinesLog,
    load_checkpoint,
    resume,
    rng_state,
    save_checkpoint,
    save_refresh_masks,
    write_json,
)
from msmae_util.runs import (
    SCHEDULE_OPTIONS,
    add_run_arguments,
    check_resume_args,
    check_split,
    finished_summary,
    prepare_output_dir,
    ratio,
    run_main,
    scale,
    stop_after,
)
from msmae_util.runtime import (
    DistributedContext,
    all_gather_objects,
    amp_settings,
    cosine_scheduler,
    init_distributed,
    print0,
)
from timm.optim import create_optimizer_v2
from torch.nn.parallel import DistributedDataParallel

from maskkit import (
    AttentionExtractor,
    CropDataset,
    IndexedDataset,
    MaskingSchedule,
    MaskWeightBank,
    PairedRandomResizedCrop,
    SAMMasker,
)

__all__ = ["check_args", "get_args_parser", "main"]

SCRIPT = "main_finetune.py"  # recorded in the checkpoints: --resume checks who wrote one


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options; defaults are MSMAE's (Tab. 5) where the paper gives them."""
    parser = argparse.ArgumentParser("MSMAE fine-tuning", add_help=False)
    parser.add_argument(
        "--batch_size",
        default=256,
        type=int,
        help="images per process and iteration; the effective batch is batch_size * processes",
    )
    parser.add_argument("--epochs", default=100, type=int)

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default="vit_base_patch16_224",
        help="timm ViT, the pre-training encoder's (vit_micro_patch8_64: a tiny CPU config)",
    )
    model.add_argument("--input_size", default=224, type=int, help="image side in pixels")
    model.add_argument("--drop_path", default=0.1, type=float, help="stochastic depth rate")
    model.add_argument(
        "--finetune", default="", help="pre-training checkpoint (main_pretrain.py); empty: scratch"
    )

    masking = parser.add_argument_group("masking")
    masking.add_argument(
        "--masker",
        default="sam",
        choices=["sam", "none"],
        help="sam: encode only the visible tokens of a SAM split while training; "
        "none: every token (the baseline)",
    )
    masking.add_argument("--mask_ratio", default=0.45, type=ratio, help="masked share (dropped)")
    masking.add_argument("--throw_ratio", default=0.30, type=ratio, help="thrown share (dropped)")
    masking.add_argument("--refresh_every", default=20, type=int, help="epochs between refreshes")

    optim = parser.add_argument_group("optimizer (AdamW, betas (0.9, 0.999), as MAE)")
    optim.add_argument("--weight_decay", default=0.05, type=float)
    optim.add_argument("--lr", default=None, type=float, help="absolute lr (overrides --blr)")
    optim.add_argument(
        "--blr", default=1e-3, type=float, help="base lr: lr = blr * effective batch / 256"
    )
    optim.add_argument("--min_lr", default=1e-6, type=float, help="floor of the cosine")
    optim.add_argument("--warmup_epochs", default=5, type=int, help="epochs of lr warm-up")
    optim.add_argument("--clip_grad", default=None, type=float, help="max gradient norm")
    optim.add_argument("--layer_decay", default=0.75, type=float, help="layer-wise lr decay")
    optim.add_argument("--smoothing", default=0.1, type=float, help="label smoothing")

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default="synthetic",
        choices=["synthetic", "imagefolder", "csv"],
        help="synthetic: built-in lesions (maskkit.demo.SyntheticLesions); imagefolder: "
        "DATA_PATH/train/<class>/* and DATA_PATH/val/<class>/*; csv: --csv_train/--csv_val "
        "tables of image ids and labels (HAM10000, Messidor-2) with images in --image_dir",
    )
    data.add_argument("--data_path", "--data-path", default=None, help="--data imagefolder root")
    data.add_argument("--csv_train", default=None, help="training table of --data csv")
    data.add_argument("--csv_val", default=None, help="validation table of --data csv")
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
    data.add_argument("--num_train", default=1200, type=int, help="synthetic training images")
    data.add_argument("--num_val", default=300, type=int, help="synthetic validation images")
    data.add_argument("--num_classes", default=3, type=int, help="synthetic classes (2-7)")
    data.add_argument("--lesion_size", default=0.08, type=float, help="synthetic lesion radius")
    data.add_argument(
        "--crop_min_scale",
        default=0.2,
        type=scale,
        help="smallest crop area of RandomResizedCrop, as a share of the image (MSMAE: 0.2)",
    )
    data.add_argument(
        "--cache_images",
        action="store_true",
        help="decode (or render) every image once, up front, and keep it in memory",
    )
    data.add_argument("--num_workers", default=4, type=int)

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--output_dir", default="runs/finetune", help="where rank 0 writes")
    runtime.add_argument("--resume", default="", help="checkpoint to continue from")
    runtime.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    runtime.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "bf16", "fp16", "none"],
        help="autocast on CUDA (auto: bf16 where supported, else fp16); CPU runs in float32",
    )
    runtime.add_argument("--seed", default=0, type=int)
    runtime.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    add_run_arguments(runtime)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Reject impossible settings before anything is built (the ratios' ranges are checked
    by the parser already)."""
    num_patches = math.prod(vit_grid(args.model, args.input_size))
    if args.masker == "sam":  # masked and thrown tokens are both dropped: none need be masked
        mask, throw = ("--mask_ratio", args.mask_ratio), ("--throw_ratio", args.throw_ratio)
        check_split(num_patches, mask, throw, need_masked=False)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune and evaluate; returns the summary that rank 0 writes to ``summary.json``
    (after ``--stop_after_epoch``: ``stopped_after_epoch`` and the last epoch's stats)."""
    check_args(args)
    ctx = init_distributed(args.device)
    try:
        return _finetune(args, ctx)
    finally:
        ctx.close()


def _finetune(args: argparse.Namespace, ctx: DistributedContext) -> dict[str, Any]:
    started = time.time()
    device = ctx.device
    if args.lr is None:  # MAE's linear scaling rule
        args.lr = args.blr * args.batch_size * ctx.world_size / 256
    amp_dtype, scaler = amp_settings(args.amp, device)
    output_dir = prepare_output_dir(
        args.output_dir, resume=bool(args.resume), overwrite=args.overwrite, is_main=ctx.is_main
    )
    checkpoint, changed = None, set()
    if args.resume:
        checkpoint = load_checkpoint(args.resume, expect=SCRIPT)
        changed = check_resume_args(checkpoint, args, world_size=ctx.world_size, path=args.resume)
        if (finished := finished_summary(checkpoint, args, output_dir)) is not None:
            return finished
    pretrained = None
    if args.finetune and checkpoint is None:  # a resumed run loads every weight
        pretrained = load_checkpoint(args.finetune, expect="main_pretrain.py", option="--finetune")
    print0(f"MSMAE fine-tuning: {ctx.world_size} process(es) on {device}, lr {args.lr:.3g}")
    torch.manual_seed(args.seed + ctx.rank)

    splits = build_datasets(args)
    num_classes = len(splits.classes)
    vit = create_vit(
        args.model,
        img_size=args.input_size,
        num_classes=num_classes,
        global_pool="avg",
        drop_path_rate=args.drop_path,
    )
    if pretrained is not None:
        load_pretrained_encoder(vit, pretrained["model"])
        print0(f"loaded the pre-trained encoder of {args.finetune}")
    model = VisibleTokenClassifier(vit).to(device)
    bank = MaskWeightBank(len(splits.train), grid=model.grid)
    crop = PairedRandomResizedCrop(args.input_size, scale=(args.crop_min_scale, 1.0))
    train_set = CropDataset(splits.train, crop, seed=args.seed, post_transform=NORMALIZE)
    loader, sampler = train_loader(train_set, args, ctx)
    whole = whole_image(args.input_size)
    refresh_loader = eval_loader(IndexedDataset(Transformed(splits.train, whole)), args, ctx)
    val_loader = eval_loader(Transformed(splits.val, whole), args, ctx)
    extractor = AttentionExtractor(vit)

    # Layer-wise lr decay 0.75 (BEiT, MAE fine-tuning) from timm's group_matcher; no weight
    # decay on biases, norms and vit.no_weight_decay() (tokens, position embedding).
    optimizer = create_optimizer_v2(
        vit,
        opt="adamw",
        lr=args.lr,
        weight_decay=args.weight_decay,
        betas=(0.9, 0.999),
        layer_decay=args.layer_decay,
    )
    lr_scheduler = cosine_scheduler(optimizer, args, len(loader))
    # Maps from the model being fine-tuned: before the first epoch, then every K epochs.
    schedule = MaskingSchedule(0, args.refresh_every)
    masker = SAMMasker(args.mask_ratio, args.throw_ratio) if args.masker == "sam" else None
    trained = DistributedDataParallel(model) if ctx.world_size > 1 else model
    state = {
        "model": vit,
        "optimizer": optimizer,
        "scaler": scaler,
        "lr_scheduler": lr_scheduler,
        "bank": bank,
    }

    start_epoch, best_acc1 = 0, 0.0
    train_stats: dict[str, float] = {}
    val_stats: dict[str, Any] = {}
    if checkpoint is not None:
        # An allowed change of the lr schedule's options rebuilds it instead of loading it.
        skip = {"lr_scheduler"} if changed & SCHEDULE_OPTIONS else set()
        loaded = {name: part for name, part in state.items() if name not in skip}
        resume(args.resume, loaded, ctx.rank, checkpoint=checkpoint)
        start_epoch, best_acc1 = checkpoint["epoch"] + 1, checkpoint["best_acc1"]
        last = checkpoint.get("stats", {})
        train_stats, val_stats = last.get("train", {}), last.get("val", {})
        print0(f"resumed from {args.resume} at epoch {start_epoch}")
    log = JsonLinesLog(output_dir / "log.jsonl", start_epoch=start_epoch) if ctx.is_main else None

    for epoch in range(start_epoch, args.epochs):
        if masker is not None and schedule.should_refresh(epoch):
            bank.refresh(extractor, refresh_loader, progress=not args.no_progress)
            if ctx.is_main:
                save_refresh_masks(
                    output_dir / f"masks_epoch{epoch:03d}.png",
                    refresh_loader,
                    bank,
                    masker,
                    patch_size=model.patch_size,
                    lesions=splits.lesions_train,
                )
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
            masker=masker,
            bank=bank,
            label_smoothing=args.smoothing,
            amp_dtype=amp_dtype,
            clip_grad=args.clip_grad,
            progress=ctx.is_main and not args.no_progress,
        )
        val_stats = evaluate(
            model, val_loader, device, num_classes=num_classes, amp_dtype=amp_dtype
        )
        best_acc1 = max(best_acc1, val_stats["acc1"])
        rng = all_gather_objects(rng_state())
        if ctx.is_main:
            # Log first: a run stopped between the two writes resumes from the previous
            # checkpoint, and the resumed log drops this epoch's line before writing it again.
            log.write(  # type: ignore[union-attr]
                {
                    "epoch": epoch,
                    **{f"train_{k}": v for k, v in train_stats.items()},
                    **{f"val_{k}": v for k, v in val_stats.items()},
                }
            )
            saved = {name: part.state_dict() for name, part in state.items()}
            saved.update(epoch=epoch, rng=rng, args=vars(args), best_acc1=best_acc1)
            saved.update(script=SCRIPT, stats={"train": train_stats, "val": val_stats})
            save_checkpoint(output_dir / "checkpoint.pth", saved)
        print0(
            f"epoch {epoch}: train loss {train_stats['loss']:.4f}, val top-1 "
            f"{val_stats['acc1']:.2f}% (best {best_acc1:.2f}%)"
        )
        if stop_after(epoch, args, output_dir):
            stats = {"train": train_stats, "val": val_stats, "best_acc1": best_acc1}
            return {"task": "finetune", "stopped_after_epoch": epoch, **stats}

    summary: dict[str, Any] = {
        "task": "finetune",
        "masker": args.masker,
        "epochs": args.epochs,
        "world_size": ctx.world_size,
        "classes": splits.classes,
        "train": train_stats,
        "val": val_stats,
        "best_acc1": best_acc1,
        "skipped_files": splits.skipped_files,
        "args": vars(args),
        "seconds": time.time() - started,
    }
    if ctx.is_main:
        write_json(output_dir / "summary.json", summary)
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        "MSMAE fine-tuning", parents=[get_args_parser()], description=__doc__
    )
    run_main(main, parser.parse_args())
