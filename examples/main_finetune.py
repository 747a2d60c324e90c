"""MSMAE fine-tuning: a timm ViT that encodes only SAM's visible quarter of the tokens.

Mao et al., "MSMAE", Sec. 3.3 and Tab. 5. The pre-trained encoder is loaded into a timm
ViT that averages its patch tokens (``global_pool="avg"``). With ``--masker sam`` each
training view keeps only its visible 25% of tokens (45% masked and 30% thrown by the
cls-attention maps); ``--masker random`` keeps the same 25%, drawn uniformly (the control
that tells "fewer tokens" from "attention-driven tokens"); ``--masker none`` is plain
full-token fine-tuning, the baseline. Evaluation always uses every token and reports top-1
accuracy, per-class recall and the confusion matrix.

Where SAM's maps come from (``--map_source``): the paper refreshes them from the model
being fine-tuned every ``--refresh_every`` (20) epochs (``refresh``). That model pools its
patch tokens, so the last block's cls query, whose attention row is the map, gets no
gradient from the loss: refreshed maps drift unsupervised. ``pretrained`` (the default)
computes them once, before the first epoch, from the pre-trained encoder (the maps whose
supervised quality MSMAE pre-training built) and keeps them; ``refresh_cls`` refreshes them
but keeps the cls token supervised by a second head beside the pooled one.

Checkpoint selection uses the validation split only (``best.pth``); the test split (an
image folder's ``test/``, ``--csv_test``, the synthetic ``--num_test`` images) is reported
for the final and for the val-selected model and never selects anything. ``--model_ema``
also keeps timm's ``ModelEmaV3`` of the weights (reported beside the raw model, selected
on val into ``best_ema.pth``), a standard remedy for late-training swings.

One process (CPU or one GPU)::

    python examples/main_finetune.py --finetune runs/pretrain_sam/checkpoint.pth \\
        --output_dir runs/finetune_sam

``--finetune`` also takes a facebookresearch/mae checkpoint (``mae_pretrain_vit_base.pth``)
or a timm ``VisionTransformer`` state dict. A tiny CPU run (after the tiny pre-training of
main_pretrain.py)::

    python examples/main_finetune.py --model vit_micro_patch8_64 --input_size 64 \\
        --batch_size 32 --epochs 6 --warmup_epochs 1 --refresh_every 3 \\
        --finetune runs/pretrain_tiny/checkpoint.pth --output_dir runs/finetune_tiny

Several GPUs (or CPU processes, with ``--device cpu``) on one machine, with torchrun::

    torchrun --nproc_per_node 4 examples/main_finetune.py --data imagefolder \\
        --data_path /data/ham10000 --finetune runs/pretrain_sam/checkpoint.pth \\
        --output_dir runs/finetune_sam

Outputs in ``--output_dir`` (rank 0 only): ``checkpoint.pth`` (every epoch, atomic; its
``"model"`` entry loads into the timm model directly), ``best.pth`` (the val-selected
weights; ``best_ema.pth`` for the EMA), ``log.jsonl``, ``masks_epochNNN.png`` (at every
refresh) and ``summary.json``. A folder holding results is refused unless ``--resume`` or
``--overwrite``. ``--resume OUTPUT_DIR/checkpoint.pth`` continues exactly (with the
checkpoint's settings; ``--allow_changed_args`` lets named options differ);
``--stop_after_epoch N`` exits after epoch N's checkpoint, to be resumed later.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import torch
from engine_finetune import evaluate, train_one_epoch
from models_msmae import (
    VisibleTokenClassifier,
    create_vit,
    load_init_encoder,
    read_init_weights,
    vit_grid,
)
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
    area,
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
    barrier,
    cosine_scheduler,
    init_distributed,
    print0,
    resolve_schedule,
)
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from timm.utils import ModelEmaV3
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

__all__ = ["MAP_SOURCES", "NO_TEST", "check_args", "get_args_parser", "main", "report", "stability"]

SCRIPT = "main_finetune.py"  # recorded in the checkpoints: --resume checks who wrote one
MAP_SOURCES = ("pretrained", "refresh", "refresh_cls")
# The val-selected weights of the raw model and of its EMA.
_BEST = {"raw": "best.pth", "ema": "best_ema.pth"}
NO_TEST = (
    "no test split (add DATA_PATH/test/<class>/, --csv_test or --num_test): only the final "
    "model's val figures are reported; the val-selected model (best.pth) gets none, since "
    "val chose it"
)


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options; defaults are MSMAE's (Tab. 5) where the paper gives them."""
    parser = argparse.ArgumentParser("MSMAE fine-tuning", add_help=False)
    parser.add_argument(
        "--batch_size",
        default=256,
        type=positive_int,
        help="images per process and iteration; the effective batch is batch_size * processes",
    )
    parser.add_argument("--epochs", default=100, type=positive_int)

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default="vit_base_patch16_224",
        help="timm ViT, the pre-training encoder's (vit_micro_patch8_64: a tiny CPU config)",
    )
    model.add_argument("--input_size", default=224, type=positive_int, help="image side in pixels")
    model.add_argument(
        "--drop_path", default=0.1, type=ratio, help="stochastic depth rate, in [0, 1)"
    )
    model.add_argument(
        "--finetune",
        default="",
        help="initial weights: a main_pretrain.py checkpoint, a facebookresearch/mae "
        "checkpoint or a timm VisionTransformer state dict (heads start fresh); empty: scratch",
    )
    model.add_argument(
        "--model_ema",
        action="store_true",
        help="also keep an exponential moving average of the weights (timm ModelEmaV3, "
        "with its decay warm-up), evaluated and reported beside the raw model",
    )
    model.add_argument(
        "--model_ema_decay",
        default=0.9998,
        type=float,
        help="the EMA's decay at most; the warm-up decay at step t is 1 - (1 + t)^(-2/3)",
    )

    masking = parser.add_argument_group("masking")
    masking.add_argument(
        "--masker",
        default="sam",
        choices=["sam", "random", "none"],
        help="sam: encode only the visible tokens of a SAM split while training; random: as "
        "many visible tokens, drawn uniformly (the control); none: every token (the baseline)",
    )
    masking.add_argument("--mask_ratio", default=0.45, type=ratio, help="masked share (dropped)")
    masking.add_argument("--throw_ratio", default=0.30, type=ratio, help="thrown share (dropped)")
    masking.add_argument(
        "--map_source",
        default="pretrained",
        choices=MAP_SOURCES,
        help="SAM's maps: pretrained: from the pre-trained encoder, once, kept; refresh: from "
        "the model being fine-tuned every --refresh_every epochs (the paper); refresh_cls: "
        "refresh, with the cls token kept supervised by a second head",
    )
    masking.add_argument(
        "--refresh_every",
        default=20,
        type=positive_int,
        help="epochs between refreshes (refresh*)",
    )
    masking.add_argument(
        "--cls_head_weight",
        default=0.1,
        type=nonnegative,
        help="refresh_cls: weight of the cls head's cross-entropy (pre-training's λ)",
    )

    optim = parser.add_argument_group("optimizer (AdamW, betas (0.9, 0.999), as MAE)")
    optim.add_argument("--weight_decay", default=0.05, type=nonnegative)
    optim.add_argument("--lr", default=None, type=positive, help="absolute lr (overrides --blr)")
    optim.add_argument(
        "--blr", default=1e-3, type=positive, help="base lr: lr = blr * effective batch / 256"
    )
    optim.add_argument("--min_lr", default=1e-6, type=nonnegative, help="floor of the cosine")
    optim.add_argument(
        "--warmup_epochs", default=5, type=natural, help="epochs of lr warm-up (<= --epochs)"
    )
    optim.add_argument(
        "--clip_grad", default=None, type=positive, help="max gradient norm (unset: no clipping)"
    )
    optim.add_argument(
        "--layer_decay",
        default=0.75,
        type=area,
        help="layer-wise lr decay, in (0, 1] (1: none): each block down trains at this "
        "factor of the lr of the block above",
    )
    optim.add_argument("--smoothing", default=0.1, type=ratio, help="label smoothing, in [0, 1)")

    add_data_arguments(parser)

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--output_dir", default="runs/finetune", help="where rank 0 writes")
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


def check_args(args: argparse.Namespace) -> None:
    """Reject impossible settings before anything is built (each option's range is checked
    by the parser already, the lr schedule by ``resolve_schedule``)."""
    check_data_args(args)
    if not args.resume:  # a resumed run reads no --finetune
        check_file("--finetune", args.finetune)
    with as_usage_error():
        num_patches = math.prod(vit_grid(args.model, args.input_size))
    if args.masker != "none":  # masked and thrown tokens are both dropped: none need be masked
        mask, throw = ("--mask_ratio", args.mask_ratio), ("--throw_ratio", args.throw_ratio)
        check_split(num_patches, mask, throw, need_masked=False)
    # (A resumed run has its maps in the checkpoint.)
    needs_init = args.masker == "sam" and args.map_source == "pretrained" and not args.resume
    if needs_init and not args.finetune:
        raise UsageError(
            "--map_source pretrained takes SAM's maps from the pre-trained encoder, but "
            "no --finetune checkpoint is given; from scratch use --map_source refresh"
        )
    if args.model_ema and not 0 < args.model_ema_decay < 1:
        raise UsageError(f"--model_ema_decay must lie in (0, 1), got {args.model_ema_decay}")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune and evaluate; returns the summary that rank 0 writes to ``summary.json``
    (after ``--stop_after_epoch``: ``stopped_after_epoch`` and the last epoch's stats)."""
    check_args(args)
    ctx = init_distributed(args.device)
    try:
        return _finetune(args, ctx)
    finally:
        ctx.close()


def stability(history: list[float]) -> dict[str, Any] | None:
    """How much val top-1 moved over the last quarter of the epochs (at least 2): the
    late-training swing that a single final or best figure hides."""
    tail = history[-max(2, len(history) // 4) :]
    if len(tail) < 2:
        return None
    first = len(history) - len(tail)
    return {
        "epochs": [first, len(history) - 1],
        "val_acc1_min": min(tail),
        "val_acc1_max": max(tail),
        "val_acc1_std": statistics.pstdev(tail),
    }


def _finetune(args: argparse.Namespace, ctx: DistributedContext) -> dict[str, Any]:
    started = time.time()
    device = ctx.device
    resolve_schedule(args, ctx.world_size)
    amp_dtype, scaler = amp_settings(args.amp, device)
    output_dir, checkpoint, changed, finished = start_run(args, ctx, script=SCRIPT)
    if finished is not None:
        return finished
    pretrained, source = None, "scratch"
    if args.finetune and checkpoint is None:  # a resumed run loads every weight
        with as_usage_error():  # the file is no checkpoint, or one of another recipe
            pretrained, source = read_init_weights(args.finetune, option="--finetune")
    print0(f"MSMAE fine-tuning: {ctx.world_size} process(es) on {device}, lr {args.lr:.3g}")
    torch.manual_seed(args.seed + ctx.rank)

    with as_usage_error():  # the data's own errors name the files and options at fault
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
        with as_usage_error():  # its encoder does not fit --model and --input_size
            load_init_encoder(vit, pretrained, f"--finetune {args.finetune} ({source})")
        print0(f"loaded the encoder of {args.finetune} ({source} format); the head is new")
    map_source = args.map_source if args.masker == "sam" else None
    cls_weight = args.cls_head_weight if map_source == "refresh_cls" else 0.0
    model = VisibleTokenClassifier(vit, cls_head=cls_weight > 0).to(device)
    bank = MaskWeightBank(len(splits.train), grid=model.grid)
    crop = PairedRandomResizedCrop(args.input_size, scale=(args.crop_min_scale, 1.0))
    train_set = CropDataset(splits.train, crop, seed=args.seed, post_transform=NORMALIZE)
    loader, sampler = train_loader(train_set, args, ctx)
    whole = whole_image(args.input_size)
    refresh_loader = eval_loader(IndexedDataset(Transformed(splits.train, whole)), args, ctx)
    val_loader = eval_loader(Transformed(splits.val, whole), args, ctx)
    test_loader = None
    if splits.test is not None:
        test_loader = eval_loader(Transformed(splits.test, whole), args, ctx)
    extractor = AttentionExtractor(vit)

    # Layer-wise lr decay 0.75 (BEiT, MAE fine-tuning) from timm's group_matcher; no weight
    # decay on biases, norms and vit.no_weight_decay() (tokens, position embedding). The
    # cls head, if any, trains at the top layer's lr.
    groups = param_groups_layer_decay(
        vit,
        weight_decay=args.weight_decay,
        layer_decay=args.layer_decay,
        no_weight_decay_list=vit.no_weight_decay(),
    )
    if model.cls_head is not None:
        groups += param_groups_weight_decay(model.cls_head, args.weight_decay)
    optimizer = create_optimizer_v2(
        groups, opt="adamw", lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999)
    )
    lr_scheduler = cosine_scheduler(optimizer, args, len(loader))
    # SAM's maps: before the first epoch, then every K epochs (refresh*) or never again.
    schedule = MaskingSchedule(0, args.refresh_every)
    masker = None if args.masker == "none" else SAMMasker(args.mask_ratio, args.throw_ratio)
    ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=True) if args.model_ema else None
    trained = DistributedDataParallel(model) if ctx.world_size > 1 else model
    state: dict[str, Any] = {
        "model": vit,
        "optimizer": optimizer,
        "scaler": scaler,
        "lr_scheduler": lr_scheduler,
        "bank": bank,
    }
    if model.cls_head is not None:
        state["cls_head"] = model.cls_head
    if ema is not None:
        state["model_ema"] = ema.module

    start_epoch = 0
    train_stats: dict[str, float] = {}
    val: dict[str, dict[str, Any]] = {"raw": {}, "ema": {}}
    best = {name: {"epoch": -1, "acc1": -1.0} for name in val}
    history: dict[str, list[float]] = {name: [] for name in val}
    if checkpoint is not None:
        # An allowed change of the lr schedule's options rebuilds it instead of loading it.
        skip = {"lr_scheduler"} if changed & SCHEDULE_OPTIONS else set()
        loaded = {name: part for name, part in state.items() if name not in skip}
        resume(args.resume, loaded, ctx.rank, checkpoint=checkpoint)
        start_epoch, best, history = (
            checkpoint["epoch"] + 1,
            checkpoint["best"],
            checkpoint["history"],
        )
        train_stats, val = checkpoint["stats"]["train"], checkpoint["stats"]["val"]
        source = checkpoint.get("source", source)
        started -= checkpoint.get("seconds", 0.0)  # the time of the run's earlier parts
        print0(f"resumed from {args.resume} at epoch {start_epoch}")
    log = JsonLinesLog(output_dir / "log.jsonl", start_epoch=start_epoch) if ctx.is_main else None
    models = {"raw": model} | ({"ema": ema.module} if ema is not None else {})

    for epoch in range(start_epoch, args.epochs):
        refresh = epoch == 0 if map_source == "pretrained" else schedule.should_refresh(epoch)
        if map_source is not None and refresh:
            bank.refresh(extractor, refresh_loader, progress=not args.no_progress)
            if ctx.is_main:
                save_refresh_masks(
                    output_dir / f"masks_epoch{epoch:03d}.png",
                    refresh_loader,
                    bank,
                    masker,  # type: ignore[arg-type]
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
            bank=bank if map_source is not None else None,  # random: uniform weights
            label_smoothing=args.smoothing,
            cls_loss_weight=cls_weight,
            ema=ema,
            amp_dtype=amp_dtype,
            clip_grad=args.clip_grad,
            progress=ctx.is_main and not args.no_progress,
        )
        improved = []
        for name, evaluated in models.items():
            val[name] = evaluate(
                evaluated, val_loader, device, num_classes=num_classes, amp_dtype=amp_dtype
            )
            history[name].append(val[name]["acc1"])
            if val[name]["acc1"] > best[name]["acc1"]:  # selected on val, and on val only
                best[name] = {"epoch": epoch, "acc1": val[name]["acc1"]}
                improved.append(name)
        rng = all_gather_objects(rng_state())
        if ctx.is_main:
            # Log, then best*.pth, then checkpoint.pth: a run stopped in between resumes
            # from the previous checkpoint and writes the same files again.
            record: dict[str, Any] = {
                "epoch": epoch,
                **{f"train_{k}": v for k, v in train_stats.items()},
            }
            for name in models:
                prefix = "val_" if name == "raw" else "ema_val_"
                record.update({f"{prefix}{k}": v for k, v in val[name].items()})
            log.write(record)  # type: ignore[union-attr]
            for name in improved:
                weights = models[name].vit.state_dict()
                selected = {"model": weights, "epoch": epoch, "val": val[name]}
                selected.update(args=vars(args), script=SCRIPT)
                save_checkpoint(output_dir / _BEST[name], selected)
            saved = {name: part.state_dict() for name, part in state.items()}
            saved.update(epoch=epoch, rng=rng, args=vars(args), best=best, history=history)
            saved.update(script=SCRIPT, source=source, stats={"train": train_stats, "val": val})
            saved["seconds"] = time.time() - started
            save_checkpoint(output_dir / "checkpoint.pth", saved)
        ema_text = f"; EMA val top-1 {val['ema']['acc1']:.2f}%" if ema is not None else ""
        print0(
            f"epoch {epoch}: train loss {train_stats['loss']:.4f}, val top-1 "
            f"{val['raw']['acc1']:.2f}% (best val {best['raw']['acc1']:.2f}% at epoch "
            f"{best['raw']['epoch']}){ema_text}"
        )
        if stop_after(epoch, args, output_dir):
            stats = {"train": train_stats, "val": val["raw"], "best": best}
            return {"task": "finetune", "stopped_after_epoch": epoch, **stats}

    # Test figures of the final model and of the val-selected one (best*.pth), per model.
    barrier()  # rank 0 has written best*.pth
    results: dict[str, Any] = {}
    for name, evaluated in models.items():
        test: dict[str, Any] = {"final": None, "val_selected": None}
        if test_loader is not None:
            test["final"] = evaluate(
                evaluated, test_loader, device, num_classes=num_classes, amp_dtype=amp_dtype
            )
            chosen = load_checkpoint(output_dir / _BEST[name], expect=SCRIPT)
            evaluated.vit.load_state_dict(chosen["model"])
            test["val_selected"] = evaluate(
                evaluated, test_loader, device, num_classes=num_classes, amp_dtype=amp_dtype
            )
        results[name] = {
            "val": val[name],
            "test": test,
            "selected": {"epoch": best[name]["epoch"], "val_acc1": best[name]["acc1"]},
            "stability": stability(history[name]),
        }
    summary: dict[str, Any] = {
        "task": "finetune",
        "masker": args.masker,
        "map_source": map_source,
        "init": {"path": args.finetune or None, "format": source},
        "epochs": args.epochs,
        "world_size": ctx.world_size,
        "classes": splits.classes,
        "splits": {
            "train": len(splits.train),
            "val": len(splits.val),
            "test": 0 if splits.test is None else len(splits.test),
        },
        "train": train_stats,
        **results["raw"],
        "skipped_files": splits.skipped_files,
        "args": vars(args),
    }
    if splits.test is None:
        summary["no_test_split"] = NO_TEST
    if ema is not None:
        summary["ema"] = {"decay": args.model_ema_decay, "warmup": True, **results["ema"]}
    summary["seconds"] = time.time() - started
    print0(report(summary))
    if ctx.is_main:
        write_json(output_dir / "summary.json", summary)
    return summary


def report(summary: dict[str, Any]) -> str:
    """The closing printout: every figure names its split and its model."""
    lines = []
    for label, part in (("", summary), ("EMA ", summary.get("ema"))):
        if part is None:
            continue
        final, chosen, test = part["val"], part["selected"], part["test"]
        line = f"{label}final model (epoch {summary['epochs'] - 1}): val top-1 {final['acc1']:.2f}%"
        if test["final"] is not None:
            line += f", test top-1 {test['final']['acc1']:.2f}%"
            line += (
                f"\n{label}val-selected model (epoch {chosen['epoch']}, chosen by its val top-1 "
                f"{chosen['val_acc1']:.2f}%): test top-1 {test['val_selected']['acc1']:.2f}%"
            )
        lines.append(line)
        if (swing := part["stability"]) is not None:
            lines.append(
                f"{label}val top-1 over epochs {swing['epochs'][0]}-{swing['epochs'][1]}: "
                f"{swing['val_acc1_min']:.2f}% to {swing['val_acc1_max']:.2f}% "
                f"(std {swing['val_acc1_std']:.2f})"
            )
    if "no_test_split" in summary:
        lines.append(summary["no_test_split"])
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        "MSMAE fine-tuning", parents=[get_args_parser()], description=__doc__
    )
    run_main(main, parser.parse_args())
