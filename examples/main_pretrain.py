"""MSMAE pre-training: an MAE with supervised attention-driven masking and throwing (SAM).

Mao et al., "MSMAE", Sec. 3.2 and Tab. 4. The first ``--mask_warmup_epochs`` (40) mask 75%
of the patches at random; the bank of per-image cls-attention maps is then refreshed from
the encoder every ``--refresh_every`` (40) epochs and each view masks 45% and throws 30% of
its patches by those maps. Each ``--masker`` is one arm of the paper's Tab. 1 and 3 by
default: ``sam`` is MSMAE (maps from this supervised encoder, loss = MSE + 0.1 CE),
``amt`` is AMT (the same MAE trained without the head's loss, λ = 0: self-supervised
attention), ``random`` is plain MAE (75% random masking throughout, λ = 0: the head is
frozen and no cross-entropy enters the loss). ``--cls_loss_weight`` overrides λ, e.g.
``--masker random --cls_loss_weight 0.1`` for random masking with the supervised head.

``--init`` starts from existing weights (continued pre-training): a facebookresearch/mae
checkpoint (``mae_pretrain_vit_base.pth``), a timm ``VisionTransformer`` state dict or a
``main_pretrain.py`` checkpoint (also its decoder); the supervised head starts fresh.

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
``summary.json``. A folder holding results is refused unless ``--resume`` or
``--overwrite``. ``--resume OUTPUT_DIR/checkpoint.pth`` continues an interrupted run exactly
(with the checkpoint's settings; ``--allow_changed_args`` lets named options differ);
``--stop_after_epoch N`` exits after epoch N's checkpoint, to be resumed later.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch
from engine_pretrain import train_one_epoch
from models_msmae import create_vit, load_init_encoder, read_init_weights, vit_grid
from msmae_util.data import (
    NORMALIZE,
    Transformed,
    add_data_arguments,
    build_datasets,
    eval_loader,
    train_loader,
    whole_image,
)
from msmae_util.outputs import (
    JsonLinesLog,
    resume,
    rng_state,
    save_checkpoint,
    save_refresh_masks,
    write_json,
)
from msmae_util.runs import (
    SCHEDULE_OPTIONS,
    add_run_arguments,
    as_usage_error,
    check_data_args,
    check_file,
    check_split,
    natural,
    nonnegative,
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
from timm.optim import create_optimizer_v2
from torch.nn.parallel import DistributedDataParallel

from maskkit import (
    AMTMasker,
    AttentionExtractor,
    CropDataset,
    IndexedDataset,
    MaskingSchedule,
    MaskWeightBank,
    PairedRandomResizedCrop,
    RandomMasker,
    SAMMasker,
)
from maskkit.demo import SyntheticLesions, lesion_hit_counts, pixel_mask_to_patches
from maskkit.mae import MaskedAutoencoder

__all__ = [
    "ARMS",
    "arm_name",
    "build_model",
    "check_args",
    "get_args_parser",
    "held_out_hits",
    "load_init",
    "main",
    "resolve_arm",
]

SCRIPT = "main_pretrain.py"  # recorded in the checkpoints: --resume checks who wrote one
# Each masker's default λ makes it one arm of MSMAE's Tab. 1 and 3.
ARMS = {"random": ("MAE", 0.0), "amt": ("AMT", 0.0), "sam": ("MSMAE", 0.1)}


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options; defaults are MSMAE's (Tab. 4) where the paper gives them."""
    parser = argparse.ArgumentParser("MSMAE pre-training", add_help=False)
    parser.add_argument(
        "--batch_size",
        default=64,
        type=positive_int,
        help="images per process and iteration; the effective batch is batch_size * processes",
    )
    parser.add_argument("--epochs", default=300, type=positive_int)

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default="vit_base_patch16_224",
        help="timm ViT for the encoder (vit_micro_patch8_64: a tiny CPU config)",
    )
    model.add_argument("--input_size", default=224, type=positive_int, help="image side in pixels")
    model.add_argument(
        "--decoder_embed_dim",
        default=512,
        type=positive_int,
        help="decoder width: a multiple of 4 and of --decoder_num_heads",
    )
    model.add_argument("--decoder_depth", default=8, type=natural)
    model.add_argument("--decoder_num_heads", default=16, type=positive_int)
    model.add_argument(
        "--norm_pix_loss", action="store_true", help="reconstruct per-patch normalised pixels"
    )
    model.add_argument(
        "--cls_loss_weight",
        default=None,
        type=nonnegative,
        help="λ of loss = MSE + λ CE (MSMAE eq. 3); default: the masker's arm, 0.1 for sam "
        "(MSMAE), 0 for amt (AMT) and random (MAE); λ = 0 freezes the head",
    )
    model.add_argument(
        "--init",
        default="",
        help="initial weights (continued pre-training): a facebookresearch/mae checkpoint, a "
        "timm VisionTransformer state dict or a main_pretrain.py checkpoint",
    )

    masking = parser.add_argument_group("masking")
    masking.add_argument(
        "--masker",
        default="sam",
        choices=["sam", "amt", "random"],
        help="sam: MSMAE, maps from this supervised encoder; amt: AMT, maps from an MAE "
        "trained with λ = 0; random: MAE, 75%% random masking throughout",
    )
    masking.add_argument(
        "--mask_ratio",
        default=0.45,
        type=ratio,
        help="masked share (sam, amt; with random: of the val lesion hit-rate report)",
    )
    masking.add_argument(
        "--throw_ratio",
        default=0.30,
        type=ratio,
        help="thrown share (sam, amt; with random: of the val lesion hit-rate report)",
    )
    masking.add_argument(
        "--random_mask_ratio", default=0.75, type=ratio, help="masked share of random masking"
    )
    masking.add_argument(
        "--mask_warmup_epochs",
        default=40,
        type=natural,
        help="epochs of random masking before the first map refresh",
    )
    masking.add_argument(
        "--refresh_every", default=40, type=positive_int, help="epochs between refreshes"
    )

    optim = parser.add_argument_group("optimizer (AdamW, betas (0.9, 0.95), as MAE)")
    optim.add_argument("--weight_decay", default=0.05, type=nonnegative)
    optim.add_argument("--lr", default=None, type=positive, help="absolute lr (overrides --blr)")
    optim.add_argument(
        "--blr", default=1e-3, type=positive, help="base lr: lr = blr * effective batch / 256"
    )
    optim.add_argument("--min_lr", default=0.0, type=nonnegative, help="floor of the cosine")
    optim.add_argument(
        "--warmup_epochs", default=40, type=natural, help="epochs of lr warm-up (<= --epochs)"
    )
    optim.add_argument(
        "--clip_grad", default=None, type=positive, help="max gradient norm (unset: no clipping)"
    )

    add_data_arguments(parser)

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--output_dir", default="runs/pretrain", help="where rank 0 writes")
    runtime.add_argument(
        "--resume", default="", help="checkpoint.pth of the run to continue, with its settings"
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


def resolve_arm(args: argparse.Namespace) -> None:
    """Fill in the masker's default λ (:data:`ARMS`) where ``--cls_loss_weight`` is not given."""
    if args.cls_loss_weight is None:
        args.cls_loss_weight = ARMS[args.masker][1]


def arm_name(masker: str, cls_loss_weight: float) -> str:
    """The paper's name of a pre-training arm: MAE, AMT, MSMAE, or "random + head"."""
    name, default = ARMS[masker]
    if cls_loss_weight == default:
        return name
    return "random + head" if masker == "random" else f"{name} (λ = {cls_loss_weight:g})"


def check_args(args: argparse.Namespace) -> None:
    """Reject impossible settings before anything is built (each option's range is checked
    by the parser already, the lr schedule by ``resolve_schedule``)."""
    resolve_arm(args)
    check_data_args(args)
    if not args.resume:  # a resumed run reads no --init
        check_file("--init", args.init)
    with as_usage_error():
        num_patches = math.prod(vit_grid(args.model, args.input_size))
    check_split(num_patches, ("--random_mask_ratio", args.random_mask_ratio))
    # The SAM split also draws the val lesion hit-rate report of --masker random.
    mask, throw = ("--mask_ratio", args.mask_ratio), ("--throw_ratio", args.throw_ratio)
    check_split(num_patches, mask, throw, need_masked=args.masker != "random")
    if args.decoder_depth and args.decoder_embed_dim % args.decoder_num_heads:
        raise UsageError(
            f"--decoder_embed_dim {args.decoder_embed_dim} is not a multiple of "
            f"--decoder_num_heads {args.decoder_num_heads}: each head takes an equal share "
            "of the width"
        )
    if args.masker == "amt" and args.cls_loss_weight:
        raise UsageError(
            "--masker amt takes its maps from a self-supervised MAE, so --cls_loss_weight "
            "must be 0; a supervised head (λ > 0) is --masker sam"
        )
    if args.masker != "random" and args.mask_warmup_epochs >= args.epochs:
        raise UsageError(
            f"--masker {args.masker} would never mask by maps: its first refresh comes after "
            f"--mask_warmup_epochs {args.mask_warmup_epochs}, but the run has --epochs "
            f"{args.epochs}; lower --mask_warmup_epochs or use --masker random"
        )


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Pre-train; returns the summary that rank 0 writes to ``summary.json`` (after
    ``--stop_after_epoch``: ``stopped_after_epoch`` and the last epoch's stats)."""
    check_args(args)
    ctx = init_distributed(args.device)
    try:
        return _pretrain(args, ctx)
    finally:
        ctx.close()


def _pretrain(args: argparse.Namespace, ctx: DistributedContext) -> dict[str, Any]:
    started = time.time()
    device = ctx.device
    resolve_arm(args)
    resolve_schedule(args, ctx.world_size)
    amp_dtype, scaler = amp_settings(args.amp, device)
    output_dir, checkpoint, changed, finished = start_run(args, ctx, script=SCRIPT)
    if finished is not None:
        return finished
    arm = arm_name(args.masker, args.cls_loss_weight)
    print0(
        f"{arm} pre-training (--masker {args.masker}, λ = {args.cls_loss_weight:g}): "
        f"{ctx.world_size} process(es) on {device}, lr {args.lr:.3g}"
    )
    # Seeds differ per rank so that ranks draw different masks; DDP syncs the weights.
    torch.manual_seed(args.seed + ctx.rank)

    with as_usage_error():  # the data's own errors name the files and options at fault
        splits = build_datasets(args, test=False)  # pre-training reads no test image
    model = build_model(args, len(splits.classes))
    source = "scratch"
    if args.init and checkpoint is None:  # a resumed run loads every weight
        with as_usage_error():  # the file is no checkpoint, or does not fit
            source = load_init(model, args.init)
    model = model.to(device)
    bank = MaskWeightBank(len(splits.train), grid=model.grid)
    crop = PairedRandomResizedCrop(args.input_size, scale=(args.crop_min_scale, 1.0))
    train_set = CropDataset(splits.train, crop, seed=args.seed, post_transform=NORMALIZE)
    loader, sampler = train_loader(train_set, args, ctx)
    refresh_set = IndexedDataset(Transformed(splits.train, whole_image(args.input_size)))
    refresh_loader = eval_loader(refresh_set, args, ctx)
    extractor = AttentionExtractor(model.encoder)

    # AdamW (0.9, 0.95) as MAE; timm's groups skip weight decay on biases, norms and
    # model.no_weight_decay() (tokens, position embeddings), and a frozen head (λ = 0).
    optimizer = create_optimizer_v2(
        model, opt="adamw", lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95)
    )
    lr_scheduler = cosine_scheduler(optimizer, args, len(loader))
    schedule = MaskingSchedule(args.mask_warmup_epochs, args.refresh_every)
    random_masker = RandomMasker(args.random_mask_ratio)
    map_masker = (AMTMasker if args.masker == "amt" else SAMMasker)(
        args.mask_ratio, args.throw_ratio
    )
    trained = DistributedDataParallel(model) if ctx.world_size > 1 else model
    state = {
        "model": model,
        "optimizer": optimizer,
        "scaler": scaler,
        "lr_scheduler": lr_scheduler,
        "bank": bank,
    }

    start_epoch, stats = 0, {}
    if checkpoint is not None:
        # An allowed change of the lr schedule's options rebuilds it instead of loading it.
        skip = {"lr_scheduler"} if changed & SCHEDULE_OPTIONS else set()
        loaded = {name: part for name, part in state.items() if name not in skip}
        resume(args.resume, loaded, ctx.rank, checkpoint=checkpoint)
        start_epoch, stats = checkpoint["epoch"] + 1, checkpoint.get("stats", {})
        source = checkpoint.get("source", source)
        started -= checkpoint.get("seconds", 0.0)  # the time of the run's earlier parts
        print0(f"resumed from {args.resume} at epoch {start_epoch}")
    log = JsonLinesLog(output_dir / "log.jsonl", start_epoch=start_epoch) if ctx.is_main else None

    for epoch in range(start_epoch, args.epochs):
        by_maps = args.masker != "random" and not schedule.use_random(epoch)
        refreshed: dict[str, float] = {}
        if args.masker != "random" and schedule.should_refresh(epoch):
            bank.refresh(extractor, refresh_loader, progress=not args.no_progress)
            if ctx.is_main and splits.lesions_val is not None:  # on val images
                refreshed = held_out_hits(extractor, splits.lesions_val, map_masker, model, args)
            if ctx.is_main:
                save_refresh_masks(
                    output_dir / f"masks_epoch{epoch:03d}.png",
                    refresh_loader,
                    bank,
                    map_masker,
                    patch_size=model.patch_size,
                    lesions=splits.lesions_train,
                )
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)  # before the epoch's iterator: its workers copy the set
        stats = train_one_epoch(
            trained,
            loader,
            optimizer,
            device,
            epoch,
            scaler,
            lr_scheduler,
            masker=map_masker if by_maps else random_masker,
            bank=bank if by_maps else None,
            amp_dtype=amp_dtype,
            clip_grad=args.clip_grad,
            progress=ctx.is_main and not args.no_progress,
        )
        record = {"epoch": epoch, "masking": "weighted" if by_maps else "random", **stats}
        if refreshed:
            record["val_lesion_hit_rate"] = refreshed
        rng = all_gather_objects(rng_state())
        if ctx.is_main:
            # Log first: a run stopped between the two writes resumes from the previous
            # checkpoint, and the resumed log drops this epoch's line before writing it again.
            log.write(record)  # type: ignore[union-attr]
            saved = {name: part.state_dict() for name, part in state.items()}
            saved.update(epoch=epoch, rng=rng, args=vars(args), script=SCRIPT, stats=stats)
            saved.update(source=source, seconds=time.time() - started)
            save_checkpoint(output_dir / "checkpoint.pth", saved)
        print0(
            f"epoch {epoch}: train loss {stats['loss']:.4f} (recon {stats['recon_loss']:.4f}, "
            f"cls {stats['cls_loss']:.4f}), {record['masking']} masking"
        )
        if stop_after(epoch, args, output_dir):
            return {"task": "pretrain", "stopped_after_epoch": epoch, "final": stats}

    summary: dict[str, Any] = {
        "task": "pretrain",
        "arm": arm,
        "masker": args.masker,
        "cls_loss_weight": args.cls_loss_weight,
        "init": {"path": args.init or None, "format": source},
        "epochs": args.epochs,
        "world_size": ctx.world_size,
        "final": stats,
        "skipped_files": splits.skipped_files,
        "args": vars(args),
    }
    if ctx.is_main and splits.lesions_val is not None:
        hits = held_out_hits(extractor, splits.lesions_val, map_masker, model, args)
        summary["val_lesion_hit_rate"] = hits
        print0(
            f"lesion hit rate on the val images (share of lesion patches masked at "
            f"{args.mask_ratio:g} / {args.throw_ratio:g}): the encoder's maps "
            f"{hits['attention']:.3f}, uniform weights {hits['uniform']:.3f}"
        )
    summary["seconds"] = time.time() - started
    if ctx.is_main:
        write_json(output_dir / "summary.json", summary)
    return summary


@torch.no_grad()
def held_out_hits(
    extractor: AttentionExtractor,
    dataset: SyntheticLesions,
    masker: SAMMasker,
    model: MaskedAutoencoder,
    args: argparse.Namespace,
    *,
    draws: int = 4,
) -> dict[str, float]:
    """How much of the lesions the encoder's maps mask on held-out images, against uniform
    weights at the same ratios (MSMAE's claim, Figs. 2 and 5); synthetic data only.

    Each whole held-out image is mapped by ``extractor``; ``masker`` draws ``draws`` splits
    from the maps and as many from uniform weights, with a private generator, and the
    masked lesion patches are pooled over the set and the draws.

    Returns:
        ``{"attention": rate, "uniform": rate}``, rates in [0, 1].
    """
    generator = torch.Generator().manual_seed(args.seed)
    counts = {"attention": [0, 0], "uniform": [0, 0]}
    device = next(model.parameters()).device
    for start in range(0, len(dataset), args.batch_size):
        samples = [
            dataset.render(i) for i in range(start, min(start + args.batch_size, len(dataset)))
        ]
        images = torch.stack([NORMALIZE(sample.image) for sample in samples])
        lesion = pixel_mask_to_patches(
            torch.stack([sample.lesion_mask for sample in samples]), model.patch_size
        )
        weights = extractor(images.to(device)).cpu()
        for _ in range(draws):
            for name, source in (("attention", weights), ("uniform", None)):
                split = masker(len(samples), lesion.shape[1], source, generator=generator)
                hits, total = lesion_hit_counts(split, lesion)
                counts[name][0] += hits
                counts[name][1] += total
    return {name: hits / max(total, 1) for name, (hits, total) in counts.items()}


def load_init(model: MaskedAutoencoder, path: str) -> str:
    """Load ``--init`` weights into ``model`` strictly; returns the file's format.

    The encoder always loads (its head starts fresh: its classes are this data's); the
    decoder loads from a ``main_pretrain.py`` checkpoint, which must then have this run's
    decoder sizes. facebookresearch/mae's decoder is not loaded (its fixed position table
    orders the grid axes unlike maskkit's): the decoder starts fresh.

    Raises:
        ValueError: the file's encoder or decoder does not fit (keys and shapes listed).
    """
    state, source = read_init_weights(path, option="--init")
    load_init_encoder(model.encoder, state, f"--init {path} ({source})")
    decoder = "new"
    if source == "main_pretrain.py":
        own = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
        given = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        bad = sorted(set(own) ^ set(given)) + sorted(
            k for k in own.keys() & given.keys() if own[k].shape != given[k].shape
        )
        if bad:
            raise ValueError(
                f"--init {path}: its decoder does not fit this model ({bad[:6]}): use the "
                "checkpoint's --decoder_embed_dim, --decoder_depth and --decoder_num_heads"
            )
        model.load_state_dict(given, strict=False)
        decoder = "loaded"
    print0(f"initialised from {path} ({source} format): encoder loaded, decoder {decoder}")
    return source


def build_model(args: argparse.Namespace, num_classes: int) -> MaskedAutoencoder:
    """The pre-training model that ``args`` describe (also from a checkpoint's ``args``);
    λ unset is the masker's arm's (:data:`ARMS`)."""
    weight = args.cls_loss_weight
    encoder = create_vit(
        args.model, img_size=args.input_size, num_classes=num_classes, global_pool="token"
    )
    return MaskedAutoencoder(
        encoder=encoder,
        decoder_dim=args.decoder_embed_dim,
        decoder_depth=args.decoder_depth,
        decoder_num_heads=args.decoder_num_heads,
        norm_pix_loss=args.norm_pix_loss,
        cls_loss_weight=ARMS[args.masker][1] if weight is None else weight,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        "MSMAE pre-training", parents=[get_args_parser()], description=__doc__
    )
    run_main(main, parser.parse_args())
