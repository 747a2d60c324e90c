"""MSMAE pre-training: an MAE with supervised attention-driven masking and throwing (SAM).

Mao et al., "MSMAE" (shared/papers/msmae-paper.md), Sec. 3.2 and Tab. 4. The first
``--mask_warmup_epochs`` (40) mask 75% of the patches at random; the bank of per-image
cls-attention maps is then refreshed from the encoder every ``--refresh_every`` (40) epochs
and each view masks 45% and throws 30% of its patches by those maps. ``--masker sam`` takes
the maps from this supervised encoder (loss = MSE + 0.1 CE), ``--masker amt`` from the
same MAE trained without the head's loss (λ = 0, AMT's self-supervised attention),
``--masker random`` masks 75% at random throughout.

One process (CPU or one GPU), on the built-in synthetic lesions::

    python examples/main_pretrain.py --output_dir runs/pretrain_sam

A tiny CPU run::

    python examples/main_pretrain.py --model vit_micro_patch8_64 --input_size 64 \\
        --decoder_embed_dim 64 --decoder_depth 2 --decoder_num_heads 4 --batch_size 32 \\
        --epochs 12 --mask_warmup_epochs 6 --refresh_every 6 --warmup_epochs 2 \\
        --output_dir runs/pretrain_tiny

Several GPUs (or CPU processes, with ``--device cpu``) on one machine, with torchrun::

    torchrun --nproc_per_node 4 examples/main_pretrain.py --data imagefolder \\
        --data_path /data/ham10000 --output_dir runs/pretrain_sam

Outputs in ``--output_dir`` (rank 0 only): ``checkpoint.pth`` (every epoch, atomic),
``log.jsonl`` (one line per epoch), ``masks_epochNNN.png`` (at every refresh) and
``summary.json``. ``--resume OUTPUT_DIR/checkpoint.pth`` continues an interrupted run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from engine_pretrain import train_one_epoch
from models_msmae import MSMAE, create_vit
from torch.nn.parallel import DistributedDataParallel
from util.amp import amp_settings
from util.checkpoint import get_rng_state, resume_training_state, save_training_state
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
from util.masking import lesion_hit_rates, save_refresh_masks
from util.optim import add_optimizer_args, build_adamw, scaled_lr
from util.runtime import add_runtime_args, seed_everything

from maskkit import (
    AMTMasker,
    AttentionExtractor,
    IndexedDataset,
    MaskingSchedule,
    MaskWeightBank,
    PairedRandomResizedCrop,
    RandomMasker,
    SAMMasker,
    SyntheticLesions,
    WeightedCropDataset,
)

__all__ = ["build_model", "get_args_parser", "main"]


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options; defaults are MSMAE's (Tab. 4) where the paper gives them."""
    parser = argparse.ArgumentParser("MSMAE pre-training", add_help=False)
    parser.add_argument(
        "--batch_size",
        default=64,
        type=int,
        help="images per process and iteration; the effective batch is batch_size * processes",
    )
    parser.add_argument("--epochs", default=300, type=int)

    # Model
    parser.add_argument(
        "--model",
        default="vit_base_patch16_224",
        help="timm ViT for the encoder (vit_micro_patch8_64: a tiny CPU config)",
    )
    parser.add_argument("--input_size", default=224, type=int, help="image side in pixels")
    parser.add_argument("--decoder_embed_dim", default=512, type=int)
    parser.add_argument("--decoder_depth", default=8, type=int)
    parser.add_argument("--decoder_num_heads", default=16, type=int)
    parser.add_argument(
        "--norm_pix_loss", action="store_true", help="reconstruct per-patch normalised pixels"
    )
    parser.add_argument(
        "--cls_loss_weight",
        default=None,
        type=float,
        help="λ of loss = MSE + λ CE (MSMAE eq. 3); default 0.1, and 0 for --masker amt",
    )

    # Masking
    parser.add_argument(
        "--masker",
        default="sam",
        choices=["sam", "amt", "random"],
        help="sam: maps from this supervised encoder; amt: from an MAE trained with λ = 0; "
        "random: 75%% random masking throughout",
    )
    parser.add_argument("--mask_ratio", default=0.45, type=float, help="masked share (sam, amt)")
    parser.add_argument("--throw_ratio", default=0.30, type=float, help="thrown share (sam, amt)")
    parser.add_argument(
        "--random_mask_ratio", default=0.75, type=float, help="masked share of random masking"
    )
    parser.add_argument(
        "--mask_warmup_epochs",
        default=40,
        type=int,
        help="epochs of random masking before the first map refresh",
    )
    parser.add_argument("--refresh_every", default=40, type=int, help="epochs between refreshes")

    # Optimizer
    add_optimizer_args(parser, min_lr=0.0, warmup_epochs=40)

    # Data
    add_data_args(parser)

    # Runtime
    add_runtime_args(parser, output_dir="runs/pretrain")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Pre-train; returns the summary that rank 0 writes to ``summary.json``."""
    ctx = init_distributed(args.device)
    try:
        return _pretrain(args, ctx)
    finally:
        ctx.close()


def _pretrain(args: argparse.Namespace, ctx: DistributedContext) -> dict[str, Any]:
    started = time.time()
    device = ctx.device
    if args.masker == "amt" and args.cls_loss_weight:
        raise ValueError(
            "--masker amt takes its maps from a self-supervised MAE, so --cls_loss_weight "
            "must be 0; a supervised head (λ > 0) is --masker sam"
        )
    if args.masker != "random" and args.mask_warmup_epochs >= args.epochs:
        raise ValueError(
            f"--masker {args.masker} would never mask by maps: its first refresh comes after "
            f"--mask_warmup_epochs {args.mask_warmup_epochs}, but the run has --epochs "
            f"{args.epochs}; lower --mask_warmup_epochs or use --masker random"
        )
    if args.cls_loss_weight is None:
        args.cls_loss_weight = 0.0 if args.masker == "amt" else 0.1
    args.lr = scaled_lr(args, ctx.world_size)
    amp_dtype, scaler = amp_settings(args.amp, device)
    output_dir = Path(args.output_dir)
    print0(f"MSMAE pre-training: {ctx.world_size} process(es) on {device}, lr {args.lr:.3g}")

    # Seeds differ per rank so that ranks draw different masks; DDP syncs the weights.
    seed = args.seed + ctx.rank
    seed_everything(seed)

    splits = build_datasets(args)
    model = build_model(args, len(splits.classes)).to(device)
    bank = MaskWeightBank(len(splits.train), grid=model.grid)
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
    extractor = AttentionExtractor(model.encoder)

    # AdamW (0.9, 0.95) as MAE; no weight decay on biases, norms, tokens, position embeddings.
    optimizer = build_adamw(model, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    lr_schedule = WarmupCosineSchedule(args.lr, args.min_lr, args.warmup_epochs, args.epochs)
    schedule = MaskingSchedule(args.mask_warmup_epochs, args.refresh_every)
    random_masker = RandomMasker(args.random_mask_ratio)
    weighted_masker = (AMTMasker if args.masker == "amt" else SAMMasker)(
        args.mask_ratio, args.throw_ratio
    )
    trained = DistributedDataParallel(model) if ctx.distributed else model

    start_epoch = 0
    if args.resume:
        checkpoint = resume_training_state(
            args.resume,
            model=model,
            optimizer=optimizer,
            scaler=scaler,
            lr_schedule=lr_schedule,
            bank=bank,
            rank=ctx.rank,
        )
        start_epoch = checkpoint["epoch"] + 1
        print0(f"resumed from {args.resume} at epoch {start_epoch}")
    log = JsonLinesLog(output_dir / "log.jsonl", start_epoch=start_epoch) if ctx.is_main else None

    stats: dict[str, float] = {}
    for epoch in range(start_epoch, args.epochs):
        use_weights = args.masker != "random" and not schedule.use_random(epoch)
        refreshed: dict[str, float] = {}
        if args.masker != "random" and schedule.should_refresh(epoch):
            bank.refresh(extractor, refresh_loader, progress=not args.no_progress)
            if ctx.is_main and splits.lesions_val is not None:
                refreshed = held_out_hits(
                    extractor, splits.lesions_val, weighted_masker, model, args
                )
            if ctx.is_main:
                save_refresh_masks(
                    output_dir / f"masks_epoch{epoch:03d}.png",
                    refresh_loader,
                    bank,
                    weighted_masker,
                    patch_size=model.patch_size,
                    lesions=splits.lesions_train,
                )
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        stats = train_one_epoch(
            trained,
            loader,
            optimizer,
            device,
            epoch,
            scaler,
            masker=weighted_masker if use_weights else random_masker,
            use_weights=use_weights,
            num_patches=model.num_patches,
            lr_schedule=lr_schedule,
            amp_dtype=amp_dtype,
            clip_grad=args.clip_grad,
            progress=not args.no_progress,
        )
        record = {"epoch": epoch, "masking": "weighted" if use_weights else "random", **stats}
        if refreshed:
            record["lesion_hit_rate"] = refreshed
        rng_states = all_gather_objects(get_rng_state())
        if ctx.is_main:
            # Log first: a run stopped between the two writes resumes from the previous
            # checkpoint, and the resumed log drops this epoch's line before writing it again.
            log.write(record)  # type: ignore[union-attr]
            save_training_state(
                output_dir / "checkpoint.pth",
                model=model,
                optimizer=optimizer,
                scaler=scaler,
                lr_schedule=lr_schedule,
                bank=bank,
                epoch=epoch,
                rng=rng_states,
                args=vars(args),
            )
        print0(
            f"epoch {epoch}: loss {stats['loss']:.4f} (recon {stats['recon_loss']:.4f}, "
            f"cls {stats['cls_loss']:.4f}), {record['masking']} masking"
        )

    summary: dict[str, Any] = {
        "task": "pretrain",
        "masker": args.masker,
        "epochs": args.epochs,
        "world_size": ctx.world_size,
        "final": stats,
        "skipped_files": splits.skipped_files,
        "args": vars(args),
    }
    if ctx.is_main and splits.lesions_val is not None:
        summary["lesion_hit_rate"] = held_out_hits(
            extractor, splits.lesions_val, weighted_masker, model, args
        )
    summary["seconds"] = time.time() - started
    if ctx.is_main:
        write_json(output_dir / "summary.json", summary)
    return summary


def held_out_hits(
    extractor: AttentionExtractor,
    val: SyntheticLesions,
    masker: SAMMasker,
    model: MSMAE,
    args: argparse.Namespace,
) -> dict[str, float]:
    """How much of the lesion the encoder's maps mask on held-out images, against uniform
    weights at the same ratios (MSMAE's claim, Figs. 2 and 5); synthetic data only."""
    return lesion_hit_rates(
        extractor,
        val,
        masker,
        patch_size=model.patch_size,
        batch_size=args.batch_size,
        seed=args.seed,
    )


def build_model(args: argparse.Namespace, num_classes: int) -> MSMAE:
    """The MSMAE model that ``args`` describe (also rebuilds one from a checkpoint's args)."""
    encoder = create_vit(
        args.model, img_size=args.input_size, num_classes=num_classes, global_pool="token"
    )
    return MSMAE(
        encoder=encoder,
        decoder_dim=args.decoder_embed_dim,
        decoder_depth=args.decoder_depth,
        decoder_num_heads=args.decoder_num_heads,
        norm_pix_loss=args.norm_pix_loss,
        cls_loss_weight=args.cls_loss_weight,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        "MSMAE pre-training", parents=[get_args_parser()], description=__doc__
    )
    main(parser.parse_args())
