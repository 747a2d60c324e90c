"""MSMAE's ablation (Tab. 3) on your data: pre-training arms x fine-tuning arms, over seeds.

    python examples/ablation.py --data imagefolder --data_path /data/busi --config tiny \\
        --output_dir runs/ablation_busi

Every pre-training arm (``--pretrain_arms``) is a ``main_pretrain.py`` run and every
fine-tuning arm (``--finetune_arms``) a ``main_finetune.py`` run from each pre-trained
encoder, for each ``--seeds`` value; all arms of a stage share data, epochs, batch and
learning rate. Pre-training: ``mae`` (random masking, λ = 0; the paper's P-RM baseline),
``amt`` (AMT's self-supervised maps, λ = 0; P-AMT), ``sam`` (MSMAE, λ = 0.1; P-SAM) and,
optionally, ``random_head`` (random masking with the supervised head, λ = 0.1).
Fine-tuning: ``none`` (every token), ``random`` (25% of the tokens, uniform: the control),
``sam`` (25% by the pre-trained encoder's maps, the recipe's default), ``sam_refresh``
(maps refreshed from the model being fine-tuned, the paper's F-SAM schedule) and
``sam_cls`` (refreshed, with the cls token kept supervised). The seed changes the
training's randomness (initialisation of new layers, masks, crops, order), not the data.

Outputs in ``--output_dir``: one folder per run (``seed0/pretrain_sam/``,
``seed0/sam/finetune_random/``, ...), and, rewritten after every run, ``ablation.json``
(every run's test top-1 of the final and of the val-selected model, per-class test recall,
wall time; fine-tuning FLOPs per image), ``ablation.md`` (mean ± std over seeds per arm, as
the paper's Tab. 3) and ``ablation.png`` (the same as bars with error bars). Running the
same command again skips finished runs and resumes an interrupted one exactly (the
recipes' ``--resume``); changed settings are refused with the list of differences.

The recipes run in this process through their ``main(args)``: no interpreter start-up per
run, and under torchrun (``torchrun --nproc_per_node N examples/ablation.py ...``) the
process group is set up once here and every run uses it. ``--config tiny`` is a small CPU
model (``vit_micro_patch8_64`` at 64 px, 12 + 20 epochs) to try the pipeline on your data;
``--config paper`` (the default) is the recipes' own defaults, MSMAE's Tab. 4 and 5.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import time
from pathlib import Path
from typing import Any

import main_finetune
import main_pretrain
import torch
from models_msmae import VisibleTokenClassifier, create_vit
from msmae_util.data import add_data_arguments
from msmae_util.outputs import write_json
from msmae_util.runs import run_main
from msmae_util.runtime import UsageError, init_distributed
from PIL import Image, ImageDraw, ImageFont
from torch.utils.flop_counter import FlopCounterMode

from maskkit import SAMMasker
from maskkit.files import atomic_write

__all__ = ["FINETUNE_ARMS", "PRETRAIN_ARMS", "finetune_flops", "get_args_parser", "main"]

# arm: (label in the tables, main_pretrain.py options)
PRETRAIN_ARMS = {
    "mae": ("P-RM (MAE)", ["--masker", "random"]),
    "amt": ("P-AMT (AMT)", ["--masker", "amt"]),
    "sam": ("P-SAM (MSMAE)", ["--masker", "sam"]),
    "random_head": ("P-RM + head", ["--masker", "random", "--cls_loss_weight", "0.1"]),
}
# arm: (label in the tables, main_finetune.py options)
FINETUNE_ARMS = {
    "none": ("all tokens", ["--masker", "none"]),
    "random": ("F-RM: 25% uniform", ["--masker", "random"]),
    "sam": ("F-SAM: pre-training maps", ["--masker", "sam", "--map_source", "pretrained"]),
    "sam_refresh": ("F-SAM: refreshed (paper)", ["--masker", "sam", "--map_source", "refresh"]),
    "sam_cls": ("F-SAM: refreshed + cls head", ["--masker", "sam", "--map_source", "refresh_cls"]),
}
# The rows of MSMAE's Tab. 3 (its F-SAM refreshes the maps).
PAPER_ROWS = {
    ("mae", "none"): "Baseline",
    ("amt", "none"): "II",
    ("sam", "none"): "III",
    ("mae", "sam_refresh"): "IV",
    ("amt", "sam_refresh"): "V",
    ("sam", "sam_refresh"): "VI",
}
# Values of the options left unset; "paper" leaves them all to the recipes (Tab. 4, 5).
CONFIGS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": {
        "model": "vit_micro_patch8_64",
        "input_size": 64,
        "decoder_embed_dim": 64,
        "decoder_depth": 2,
        "decoder_num_heads": 4,
        "pretrain_batch_size": 32,
        "pretrain_epochs": 12,
        "mask_warmup_epochs": 6,
        "pretrain_refresh_every": 6,
        "pretrain_warmup_epochs": 2,
        "pretrain_blr": 8e-3,  # the quickstart's: the tiny ViT trains within a few epochs
        "finetune_batch_size": 32,
        # 20 epochs: fine-tuning with fewer than about 400 steps (6 epochs were 110) stayed
        # at chance; refreshes every 5, a fifth of the run as the paper's 20 of 100.
        "finetune_epochs": 20,
        "finetune_refresh_every": 5,
        "finetune_warmup_epochs": 2,
        "finetune_blr": 4e-3,
        "threads": 1,  # a model this small runs fastest on one thread
    },
}
# ablation option: (recipe, the recipe's option)
PASSED = {
    "model": ("both", "--model"),
    "input_size": ("both", "--input_size"),
    "decoder_embed_dim": ("pretrain", "--decoder_embed_dim"),
    "decoder_depth": ("pretrain", "--decoder_depth"),
    "decoder_num_heads": ("pretrain", "--decoder_num_heads"),
    "pretrain_batch_size": ("pretrain", "--batch_size"),
    "pretrain_epochs": ("pretrain", "--epochs"),
    "mask_warmup_epochs": ("pretrain", "--mask_warmup_epochs"),
    "pretrain_refresh_every": ("pretrain", "--refresh_every"),
    "pretrain_warmup_epochs": ("pretrain", "--warmup_epochs"),
    "pretrain_blr": ("pretrain", "--blr"),
    "finetune_batch_size": ("finetune", "--batch_size"),
    "finetune_epochs": ("finetune", "--epochs"),
    "finetune_refresh_every": ("finetune", "--refresh_every"),
    "finetune_warmup_epochs": ("finetune", "--warmup_epochs"),
    "finetune_blr": ("finetune", "--blr"),
}


def get_args_parser() -> argparse.ArgumentParser:
    """Options of the ablation; the data options are the recipes' own."""
    parser = argparse.ArgumentParser("MSMAE ablation", add_help=False)
    parser.add_argument("--output_dir", default="runs/ablation")
    parser.add_argument(
        "--config",
        default="paper",
        choices=sorted(CONFIGS),
        help="values of the options below left unset: tiny (a CPU model, minutes) or paper "
        "(the recipes' defaults, MSMAE's Tab. 4 and 5)",
    )
    parser.add_argument("--seeds", default=[0], nargs="+", type=int, help="training seeds")

    grid = parser.add_argument_group("grid")
    grid.add_argument(
        "--pretrain_arms", default=["mae", "amt", "sam"], nargs="+", choices=list(PRETRAIN_ARMS)
    )
    grid.add_argument(
        "--finetune_arms",
        default=["none", "random", "sam", "sam_refresh", "sam_cls"],
        nargs="+",
        choices=list(FINETUNE_ARMS),
    )
    grid.add_argument(
        "--model_ema",
        action="store_true",
        help="every fine-tuning run also keeps an EMA of its weights, reported beside them",
    )
    grid.add_argument(
        "--pretrain_options",
        default="",
        help="more main_pretrain.py options for every pre-training run, given with '=': "
        "--pretrain_options='--norm_pix_loss'",
    )
    grid.add_argument(
        "--finetune_options",
        default="",
        help="more main_finetune.py options for every fine-tuning run, given with '=': "
        "--finetune_options='--smoothing 0'",
    )

    shared = parser.add_argument_group("settings shared by every arm (unset: --config)")
    for name in PASSED:
        kind = str if name == "model" else float if name.endswith("blr") else int
        shared.add_argument(f"--{name}", default=None, type=kind)

    add_data_arguments(parser)

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    runtime.add_argument(
        "--threads",
        default=None,
        type=int,
        help="torch CPU threads (unset: --config's, else torch's)",
    )
    runtime.add_argument("--progress", action="store_true", help="show the recipes' bars")
    return parser


def _data_argv(args: argparse.Namespace) -> list[str]:
    """The data options of ``args`` as recipe arguments."""
    argv: list[str] = []
    group = next(g for g in get_args_parser()._action_groups if g.title == "data")
    for action in group._group_actions:
        value = getattr(args, action.dest)
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            argv += [flag] if value else []
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def recipe_argv(args: argparse.Namespace, stage: str, seed: int) -> list[str]:
    """The options every run of ``stage`` (``pretrain`` or ``finetune``) shares."""
    argv = [*_data_argv(args), "--seed", str(seed), "--device", args.device]
    for name, (where, option) in PASSED.items():
        value = getattr(args, name)
        if where in (stage, "both") and value is not None:
            argv += [option, str(value)]
    argv += [] if args.progress else ["--no_progress"]
    if stage == "finetune":
        return (
            argv + (["--model_ema"] if args.model_ema else []) + shlex.split(args.finetune_options)
        )
    return argv + shlex.split(args.pretrain_options)


def run(recipe: Any, argv: list[str], out: Path) -> dict[str, Any]:
    """One recipe run into ``out``: resumed if it has a checkpoint (a finished run then
    returns its summary unchanged), else started afresh."""
    checkpoint = out / "checkpoint.pth"
    again = ["--resume", str(checkpoint)] if checkpoint.is_file() else ["--overwrite"]
    args = recipe.get_args_parser().parse_args([*argv, "--output_dir", str(out), *again])
    try:
        return recipe.main(args)
    except ValueError as err:
        if not str(err).startswith("cannot resume from"):
            raise
        changes = "; ".join(x.strip() for x in str(err).splitlines() if x.startswith("  "))
        raise UsageError(
            f"{out} holds a run of this grid with other settings ({changes}): give the grid "
            "another --output_dir, or run it with its first settings"
        ) from None


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the grid; returns what rank 0 writes to ``ablation.json``."""
    for name, value in CONFIGS[args.config].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    ctx = init_distributed(args.device)  # once, for every run (torchrun)
    try:
        started = time.time()
        flops = finetune_flops(args)
        results: dict[str, Any] = {"pretrain": [], "runs": []}
        for seed in args.seeds:
            for parm in args.pretrain_arms:
                pre_dir = out / f"seed{seed}" / f"pretrain_{parm}"
                argv = [*recipe_argv(args, "pretrain", seed), *PRETRAIN_ARMS[parm][1]]
                pre = run(main_pretrain, argv, pre_dir)
                results["pretrain"].append(_pretrain_record(pre, parm, seed, pre_dir))
                for farm in args.finetune_arms:
                    ft_dir = out / f"seed{seed}" / parm / f"finetune_{farm}"
                    argv = [*recipe_argv(args, "finetune", seed), *FINETUNE_ARMS[farm][1]]
                    argv += ["--finetune", str(pre_dir / "checkpoint.pth")]
                    ft = run(main_finetune, argv, ft_dir)
                    results["runs"].append(_run_record(ft, parm, farm, seed, ft_dir))
                    if ctx.is_main:
                        summary = _summarise(args, results, flops, time.time() - started)
                        _write(out, summary)
        if ctx.is_main:
            print(Path(out / "ablation.md").read_text(), flush=True)
        return summary if ctx.is_main else {}
    finally:
        ctx.close()


def _pretrain_record(summary: dict[str, Any], arm: str, seed: int, folder: Path) -> dict[str, Any]:
    return {
        "arm": arm,
        "seed": seed,
        "dir": str(folder),
        "name": summary["arm"],
        "cls_loss_weight": summary["cls_loss_weight"],
        "val_lesion_hit_rate": summary.get("val_lesion_hit_rate"),
        "seconds": summary["seconds"],
    }


def _model_figures(part: dict[str, Any]) -> dict[str, Any]:
    """Figures of one model (raw or EMA) of a fine-tuning summary, named by split."""
    test = part["test"]
    return {
        "test_top1": {k: None if v is None else v["acc1"] for k, v in test.items()},
        "test_recall": {k: None if v is None else v["recall"] for k, v in test.items()},
        "val_top1_final": part["val"]["acc1"],
        "selected": part["selected"],
        "late_val_top1": part["stability"],
    }


def _run_record(
    summary: dict[str, Any], parm: str, farm: str, seed: int, folder: Path
) -> dict[str, Any]:
    record = {"pretrain": parm, "finetune": farm, "seed": seed, "dir": str(folder)}
    record.update(_model_figures(summary))
    if "ema" in summary:
        record["ema"] = _model_figures(summary["ema"])
    record.update(
        classes=summary["classes"],
        splits=summary["splits"],
        epochs=summary["epochs"],
        batch_size=summary["args"]["batch_size"],
        seconds=summary["seconds"],
    )
    return record


def finetune_flops(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    """FLOPs per image of each fine-tuning arm (``torch.utils.flop_counter``, 2 per
    multiply-add; the paper's 16.86 G and 4.37 G for ViT-B/16 count multiply-adds),
    counted on the meta device (no memory, no compute): ``train_forward`` and
    ``train_step`` (forward and backward) on the tokens training encodes, ``inference``
    on every token."""
    recipe = main_finetune.get_args_parser().parse_args(recipe_argv(args, "finetune", 0))
    with torch.device("meta"):
        vit = create_vit(recipe.model, img_size=recipe.input_size, num_classes=2, global_pool="avg")
        model = VisibleTokenClassifier(vit, cls_head=True)
    images = torch.empty(1, 3, recipe.input_size, recipe.input_size, device="meta")
    num_patches = math.prod(model.grid)
    # The K visible tokens that SAM and random fine-tuning keep (the same count).
    keep = SAMMasker(recipe.mask_ratio, recipe.throw_ratio)(1, num_patches, device="meta").visible

    def count(visible: torch.Tensor | None, *, backward: bool, with_cls: bool = False) -> int:
        with FlopCounterMode(display=False) as counter:
            logits = model(images, visible, with_cls=with_cls)
            if backward:
                sum(x.sum() for x in (logits if with_cls else (logits,))).backward()
        return counter.get_total_flops()

    flops = {}
    for arm in args.finetune_arms:
        visible = None if arm == "none" else keep
        with_cls = arm == "sam_cls"
        flops[arm] = {
            "train_forward": count(visible, backward=False, with_cls=with_cls),
            "train_step": count(visible, backward=True, with_cls=with_cls),
            "inference": count(None, backward=False),
            "train_tokens": num_patches if visible is None else int(visible.shape[1]),
        }
    return flops


def _mean_std(values: list[float | None]) -> dict[str, Any] | None:
    """Mean and sample standard deviation (n - 1; 0 for one value) over seeds."""
    kept = [v for v in values if v is not None]
    if not kept:
        return None
    std = statistics.stdev(kept) if len(kept) > 1 else 0.0
    return {"mean": statistics.fmean(kept), "std": std, "n": len(kept)}


def _summarise(
    args: argparse.Namespace, results: dict[str, Any], flops: dict[str, Any], seconds: float
) -> dict[str, Any]:
    runs = results["runs"]
    has_test = all(run["splits"]["test"] > 0 for run in runs)
    table = []
    for parm in args.pretrain_arms:
        pre = [p for p in results["pretrain"] if p["arm"] == parm]
        for farm in args.finetune_arms:
            arm = [r for r in runs if r["pretrain"] == parm and r["finetune"] == farm]
            if not arm:
                continue
            row = {
                "pretrain": parm,
                "finetune": farm,
                "seeds": [r["seed"] for r in arm],
                "test_top1_final": _mean_std([r["test_top1"]["final"] for r in arm]),
                "test_top1_val_selected": _mean_std([r["test_top1"]["val_selected"] for r in arm]),
                "val_top1_final": _mean_std([r["val_top1_final"] for r in arm]),
                "late_val_top1_std": _mean_std(
                    [(r["late_val_top1"] or {}).get("val_acc1_std") for r in arm]
                ),
                "test_recall_final": _mean_recall([r["test_recall"]["final"] for r in arm]),
                "finetune_seconds": _mean_std([r["seconds"] for r in arm]),
                "pretrain_seconds": _mean_std([p["seconds"] for p in pre]),
                "finetune_flops_per_image": flops[farm],
            }
            if all("ema" in r for r in arm):
                row["ema_test_top1_final"] = _mean_std(
                    [r["ema"]["test_top1"]["final"] for r in arm]
                )
                row["ema_test_top1_val_selected"] = _mean_std(
                    [r["ema"]["test_top1"]["val_selected"] for r in arm]
                )
            table.append(row)
    first = runs[0]
    return {
        "config": dict(vars(args)),
        "data": {"kind": args.data, "classes": first["classes"], "splits": first["splits"]},
        "test_split": has_test,
        "note": None if has_test else main_finetune.NO_TEST,
        "seeds": args.seeds,
        "epochs": {"pretrain": _epochs(results["pretrain"]), "finetune": first["epochs"]},
        "finetune_batch_size": first["batch_size"],
        "pretrain": results["pretrain"],
        "runs": runs,
        "finetune_flops_per_image": flops,
        "table": table,
        "seconds": {
            "runs": sum(p["seconds"] for p in results["pretrain"])
            + sum(r["seconds"] for r in runs),
            "this_invocation": seconds,
        },
    }


def _epochs(pretrain: list[dict[str, Any]]) -> int | None:
    path = Path(pretrain[0]["dir"]) / "summary.json"
    return json.loads(path.read_text())["epochs"] if path.is_file() else None


def _mean_recall(recalls: list[list[float | None] | None]) -> list[float | None] | None:
    kept = [r for r in recalls if r is not None]
    if not kept:
        return None
    columns = zip(*kept, strict=True)
    return [(_mean_std(list(c)) or {}).get("mean") for c in columns]


def _write(out: Path, summary: dict[str, Any]) -> None:
    write_json(out / "ablation.json", summary)
    with atomic_write(out / "ablation.md", "w") as file:
        file.write(render_table(summary))
    save_chart(out / "ablation.png", summary)


def _fmt(stat: dict[str, Any] | None, digits: int = 2) -> str:
    if stat is None:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def render_table(summary: dict[str, Any]) -> str:
    """``ablation.md``: mean ± std over seeds per arm, as MSMAE's Tab. 3."""
    test = summary["test_split"]
    seeds = summary["seeds"]
    data = summary["data"]
    lines = [
        "# MSMAE ablation (the paper's Tab. 3) on this data",
        "",
        f"Data: `{data['kind']}`, classes {data['classes']}, images train {data['splits']['train']}"
        f" / val {data['splits']['val']} / test {data['splits']['test']}. Seeds {seeds} (mean "
        f"± sample std over {len(seeds)}). Every arm: pre-training {summary['epochs']['pretrain']}"
        f" epochs, fine-tuning {summary['epochs']['finetune']} epochs at batch "
        f"{summary['finetune_batch_size']}.",
        "",
    ]
    if test:
        lines += [
            "Top-1 (%) on the **test** split: *final* is the model after the last epoch, "
            "*val-selected* the epoch of best **val** top-1 (`best.pth`); nothing is selected "
            "on test. *Late val std*: std of val top-1 over the last quarter of the epochs.",
            "",
        ]
    else:
        lines += [f"**{summary['note']}**", ""]
    head = ["Tab. 3", "pre-training", "fine-tuning"]
    head += ["test top-1, final", "test top-1, val-selected"] if test else ["val top-1, final"]
    ema = any("ema_test_top1_final" in row for row in summary["table"])
    if ema and test:
        head += ["EMA test top-1, final", "EMA test top-1, val-selected"]
    head += ["late val std", "train GFLOPs / image", "fine-tuning s", "pre-training s"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in summary["table"]:
        cells = [PAPER_ROWS.get((row["pretrain"], row["finetune"]), "")]
        cells += [PRETRAIN_ARMS[row["pretrain"]][0], FINETUNE_ARMS[row["finetune"]][0]]
        if test:
            cells += [_fmt(row["test_top1_final"]), _fmt(row["test_top1_val_selected"])]
        else:
            cells += [_fmt(row["val_top1_final"])]
        if ema and test:
            cells += [
                _fmt(row.get("ema_test_top1_final")),
                _fmt(row.get("ema_test_top1_val_selected")),
            ]
        flops = row["finetune_flops_per_image"]["train_forward"] / 1e9
        cells += [_fmt(row["late_val_top1_std"]), f"{flops:.3g}"]
        cells += [_fmt(row["finetune_seconds"], 0), _fmt(row["pretrain_seconds"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    classes = data["classes"]
    if test and summary["table"]:
        lines += [
            "",
            "Per-class recall on the test split, final model (mean over seeds):",
            "",
            "| pre-training | fine-tuning | " + " | ".join(map(str, classes)) + " |",
            "|" + " --- |" * (2 + len(classes)),
        ]
        for row in summary["table"]:
            recall = row["test_recall_final"] or [None] * len(classes)
            cells = ["–" if r is None else f"{r:.3f}" for r in recall]
            names = [PRETRAIN_ARMS[row["pretrain"]][0], FINETUNE_ARMS[row["finetune"]][0]]
            lines.append("| " + " | ".join(names + cells) + " |")
    lines += [
        "",
        "GFLOPs: one training forward per image (torch.utils.flop_counter, 2 FLOPs per "
        "multiply-add; the paper's 16.86G and 4.37G count multiply-adds). Seconds: wall "
        f"time per run. The grid's runs took {summary['seconds']['runs']:.0f} s in all (this "
        f"invocation {summary['seconds']['this_invocation']:.0f} s, finished runs skipped).",
        "",
    ]
    return "\n".join(lines)


_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the bitmap font
        return ImageFont.load_default()


def save_chart(path: Path, summary: dict[str, Any]) -> None:
    """Bars of mean top-1 per arm with ± std error bars (Pillow only): one panel per
    reported model, pre-training arms along x, one colour per fine-tuning arm."""
    test = summary["test_split"]
    panels = (
        [("test_top1_final", "test top-1 (%), final model"),
         ("test_top1_val_selected", "test top-1 (%), val-selected model")]
        if test
        else [("val_top1_final", "val top-1 (%), final model (no test split)")]
    )  # fmt: skip
    rows = summary["table"]
    parms = list(dict.fromkeys(r["pretrain"] for r in rows))
    farms = list(dict.fromkeys(r["finetune"] for r in rows))
    stats = [r[key] for key, _ in panels for r in rows if r[key] is not None]
    top = max([s["mean"] + s["std"] for s in stats], default=100.0)
    low = min([s["mean"] - s["std"] for s in stats], default=0.0)
    y0 = max(0.0, 10 * math.floor((low - 5) / 10))
    y1 = min(100.0, 10 * math.ceil((top + 2) / 10))
    y1 = y1 if y1 > y0 else y0 + 10
    width, height, left, right, top_px, bottom = 520, 340, 56, 12, 34, 48
    legend = 22 * len(farms) + 12
    image = Image.new("RGB", (width * len(panels), height + legend), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(14), _font(12)
    for p, (key, title) in enumerate(panels):
        x0, plot_w, plot_h = p * width + left, width - left - right, height - top_px - bottom
        draw.text((x0, 8), title, fill="black", font=font)

        def y_of(value: float) -> float:
            return top_px + plot_h * (1 - (value - y0) / (y1 - y0))  # noqa: B023

        for tick in range(int(y0), int(y1) + 1, 10 if y1 - y0 > 20 else 5):
            y = y_of(tick)
            draw.line([(x0, y), (x0 + plot_w, y)], fill="#e5e5e5")
            draw.text((x0 - 30, y - 7), f"{tick:>3d}", fill="black", font=small)
        draw.line([(x0, top_px), (x0, top_px + plot_h), (x0 + plot_w, top_px + plot_h)], "black")
        group_w = plot_w / max(len(parms), 1)
        bar_w = 0.8 * group_w / max(len(farms), 1)
        for g, parm in enumerate(parms):
            gx = x0 + g * group_w + 0.1 * group_w
            label = PRETRAIN_ARMS[parm][0]
            text_w = draw.textlength(label, font=small)
            draw.text((gx + 0.4 * group_w - text_w / 2, top_px + plot_h + 8), label, "black", small)
            for b, farm in enumerate(farms):
                row = next(
                    (r for r in rows if r["pretrain"] == parm and r["finetune"] == farm), None
                )
                stat = None if row is None else row[key]
                if stat is None:
                    continue
                bx = gx + b * bar_w
                draw.rectangle(
                    [bx + 1, y_of(max(stat["mean"], y0)), bx + bar_w - 1, y_of(y0)],
                    fill=_COLOURS[b % len(_COLOURS)],
                )
                if stat["std"] > 0:
                    cx, hi, lo = (
                        bx + bar_w / 2,
                        stat["mean"] + stat["std"],
                        stat["mean"] - stat["std"],
                    )
                    hi_y, lo_y = y_of(min(hi, y1)), y_of(max(lo, y0))
                    draw.line([(cx, hi_y), (cx, lo_y)], fill="black", width=1)
                    for y in (hi_y, lo_y):
                        draw.line([(cx - bar_w / 4, y), (cx + bar_w / 4, y)], fill="black")
    for b, farm in enumerate(farms):
        y = height + 4 + 22 * b
        draw.rectangle([left, y, left + 14, y + 14], fill=_COLOURS[b % len(_COLOURS)])
        draw.text((left + 22, y), FINETUNE_ARMS[farm][0], fill="black", font=small)
    n = len(summary["seeds"])
    note = f"mean ± sample std over {n} seed(s)" if n > 1 else "1 seed: no error bars"
    draw.text(
        (width * len(panels) - 12 - draw.textlength(note, font=small), height + 4),
        note,
        "black",
        small,
    )
    with atomic_write(path) as file:
        image.save(file, format="PNG")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        "MSMAE ablation", parents=[get_args_parser()], description=__doc__
    )
    run_main(main, parser.parse_args())
