"""MSMAE fine-tuning: a timm ViT that encodes only SAM's visible quarter of the tokens.

Mao et al., "MSMAE" (shared/papers/msmae-paper.md), Sec. 3.3 and Tab. 5. The pre-trained
encoder is loaded into a timm ViT that averages its patch tokens (``global_pool="avg"``).
With ``--masker sam`` the cls-attention maps of the model being fine-tuned are refreshed
every ``--refresh_every`` (20) epochs, starting before the first, and each training view
keeps only its visible 25% of tokens (45% masked and 30% thrown by the maps);
``--masker none`` is plain full-token fine-tuning, the baseline. Evaluation always uses
every token and reports top-1 accuracy, per-class recall and the confusion matrix.

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
(at every refresh) and ``summary.json``. ``--resume OUTPUT_DIR/checkpoint.pth`` continues.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from engine_finetune import evaluate, train_one_epoch
from models_msmae import VisibleTokenClassifier, create_vit, load_pretrained_encoder
from torch.nn.parallel import DistributedDataParallel
from util.amp import amp_settings
from util.checkpoint import (
    get_rng_state,
    load_checkpoint,
    resume_training_state,
    save_training_state,
)
from util.data import (
    ResizedDataset,
    add_data_args,
    build_datasets,
    eval_loader,
    normalize,
    train_loader,
)
from util.distributed import DistributedContext, all_gather_objects, init_distributed, print0
from util.log import JsonLinesLog, write_json
from util.lr_sched import WarmupCosineSchedule
from util.masking import save_refresh_masks
from util.optim import add_optimizer_args, build_adamw, scaled_lr
from util.runtime import add_runtime_args, seed_everything

from maskkit import (
    AttentionExtractor,
    IndexedDataset,
    MaskingSchedule,
    MaskWeightBank,
    PairedRandomResizedCrop,
    SAMMasker,
    WeightedCropDataset,
)

__all__ = ["get_args_parser", "main"]


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

    # Model
    parser.add_argument(
        "--model",
        default="vit_base_patch16_224",
        help="timm ViT, the pre-training encoder's (vit_micro_patch8_64: a tiny CPU config)",
    )
    parser.add_argument("--input_size", default=224, type=int, help="image side in pixels")
    parser.add_argument("--drop_path", default=0.1, type=float, help="stochastic depth rate")
    parser.add_argument(
        "--finetune", default="", help="pre-training checkpoint (main_pretrain.py); empty: scratch"
    )

    # Masking
    parser.add_argument(
        "--masker",
        default="sam",
        choices=["sam", "none"],
        help="sam: encode only the visible tokens of a SAM split while training; "
        "none: every token (the baseline)",
    )
    parser.add_argument("--mask_ratio", default=0.45, type=float, help="masked share (dropped)")
    parser.add_argument("--throw_ratio", default=0.30, type=float, help="thrown share (dropped)")
    parser.add_argument("--refresh_every", default=20, type=int, help="epochs between refreshes")

    # Optimizer
    add_optimizer_args(parser, min_lr=1e-6, warmup_epochs=5)
    parser.add_argument("--layer_decay", default=0.75, type=float, help="layer-wise lr decay")
    parser.add_argument("--smoothing", default=0.1, type=float, help="label smoothing")

    # Data
    add_data_args(parser)

    # Runtime
    add_runtime_args(parser, output_dir="runs/finetune")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune and evaluate; returns the summary that rank 0 writes to ``summary.json``."""
    ctx = init_distributed(args.device)
    try:
        return _finetune(args, ctx)
    finally:
        ctx.close()


def _finetune(args: argparse.Namespace, ctx: DistributedContext) -> dict[str, Any]:
    started = time.time()
    device = ctx.device
    args.lr = scaled_lr(args, ctx.world_size)
    amp_dtype, scaler = amp_settings(args.amp, device)
    output_dir = Path(args.output_dir)
    print0(f"MSMAE fine-tuning: {ctx.world_size} process(es) on {device}, lr {args.lr:.3g}")

    seed = args.seed + ctx.rank
    seed_everything(seed)

    splits = build_datasets(args)
    num_classes = len(splits.classes)
    vit = create_vit(
        args.model,
        img_size=args.input_size,
        num_classes=num_classes,
        global_pool="avg",
        drop_path_rate=args.drop_path,
    )
    if args.finetune:
        load_pretrained_encoder(vit, load_checkpoint(args.finetune)["model"])
        print0(f"loaded the pre-trained encoder of {args.finetune}")
    model = VisibleTokenClassifier(vit).to(device)
    grid = vit.patch_embed.grid_size
    patch_size = vit.patch_embed.patch_size[0]
    bank = MaskWeightBank(len(splits.train), grid=grid)
    train_set = WeightedCropDataset(
        splits.train,
        bank,
        PairedRandomResizedCrop(args.input_size, scale=(args.crop_min_scale, 1.0)),
        seed=args.seed,
        post_transform=normalize,
    )
    loader, sampler = train_loader(train_set, args, ctx)
    refresh_set = IndexedDataset(ResizedDataset(splits.train, args.input_size))
    refresh_loader = eval_loader(refresh_set, args, ctx)
    val_loader = eval_loader(ResizedDataset(splits.val, args.input_size), args, ctx)
    extractor = AttentionExtractor(vit)

    # Layer-wise lr decay 0.75 (BEiT, MAE fine-tuning), no decay on biases, norms, tokens.
    optimizer = build_adamw(
        vit,
        lr=args.lr,
        weight_decay=args.weight_decay,
        betas=(0.9, 0.999),
        layer_decay=args.layer_decay,
    )
    lr_schedule = WarmupCosineSchedule(args.lr, args.min_lr, args.warmup_epochs, args.epochs)
    # Maps from the model being fine-tuned: before the first epoch, then every K epochs.
    schedule = MaskingSchedule(0, args.refresh_every)
    masker = SAMMasker(args.mask_ratio, args.throw_ratio) if args.masker == "sam" else None
    trained = DistributedDataParallel(model) if ctx.distributed else model

    start_epoch, best_acc1 = 0, 0.0
    if args.resume:
        checkpoint = resume_training_state(
            args.resume,
            model=vit,
            optimizer=optimizer,
            scaler=scaler,
            lr_schedule=lr_schedule,
            bank=bank,
            rank=ctx.rank,
        )
        start_epoch, best_acc1 = checkpoint["epoch"] + 1, checkpoint["best_acc1"]
        print0(f"resumed from {args.resume} at epoch {start_epoch}")
    log = JsonLinesLog(output_dir / "log.jsonl", start_epoch=start_epoch) if ctx.is_main else None

    train_stats: dict[str, float] = {}
    val_stats: dict[str, Any] = {}
    for epoch in range(start_epoch, args.epochs):
        if masker is not None and schedule.should_refresh(epoch):
            bank.refresh(extractor, refresh_loader, progress=not args.no_progress)
            if ctx.is_main:
                save_refresh_masks(
                    output_dir / f"masks_epoch{epoch:03d}.png",
                    refresh_loader,
                    bank,
                    masker,
                    patch_size=patch_size,
                    lesions=splits.lesions_train,
                )
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        train_stats = train_one_epoch(
            trained,
            loader,
            optimizer,
            device,
            epoch,
            scaler,
            masker=masker,
            num_patches=grid[0] * grid[1],
            lr_schedule=lr_schedule,
            label_smoothing=args.smoothing,
            amp_dtype=amp_dtype,
            clip_grad=args.clip_grad,
            progress=not args.no_progress,
        )
        val_stats = evaluate(
            model, val_loader, device, num_classes=num_classes, amp_dtype=amp_dtype
        )
        best_acc1 = max(best_acc1, val_stats["acc1"])
        rng_states = all_gather_objects(get_rng_state())
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
            save_training_state(
                output_dir / "checkpoint.pth",
                model=vit,
                optimizer=optimizer,
                scaler=scaler,
                lr_schedule=lr_schedule,
                bank=bank,
                epoch=epoch,
                rng=rng_states,
                args=vars(args),
                best_acc1=best_acc1,
            )
        print0(
            f"epoch {epoch}: train loss {train_stats['loss']:.4f}, val top-1 "
            f"{val_stats['acc1']:.2f}% (best {best_acc1:.2f}%)"
        )

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
    main(parser.parse_args())
