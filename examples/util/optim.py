"""AdamW with MAE's parameter groups: no weight decay on 1-D parameters and tokens,
optional layer-wise lr decay (BEiT, used by MAE fine-tuning), via timm's group builders.
"""

from __future__ import annotations

import argparse

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

__all__ = ["add_optimizer_args", "build_adamw", "scaled_lr"]


def build_adamw(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    layer_decay: float | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``model`` with biases, norms, tokens and position embeddings undecayed.

    Args:
        model: the model (not the DDP wrapper); its ``no_weight_decay()`` names, if any, join
            the undecayed set.
        lr: initial learning rate (the schedule overwrites it every iteration).
        weight_decay: decay of the other weights.
        betas: AdamW betas; MAE pre-training uses (0.9, 0.95).
        layer_decay: None for one lr; else MAE's layer-wise decay, ``lr_scale = decay **
            (num_layers + 1 - layer_id)`` with the embeddings at layer 0, ``blocks.i`` at
            ``i + 1`` and the norm / head on top (needs a timm model's ``group_matcher``).
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    if layer_decay is None:
        groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    else:
        if not 0 < layer_decay <= 1:
            raise ValueError(f"layer_decay must lie in (0, 1], got {layer_decay}")
        groups = param_groups_layer_decay(
            model, weight_decay=weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay
        )
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def add_optimizer_args(
    parser: argparse.ArgumentParser, *, min_lr: float, warmup_epochs: int
) -> None:
    """AdamW and lr-schedule options (MSMAE Tables 4-5: blr 1e-3, weight decay 0.05)."""
    parser.add_argument("--weight_decay", default=0.05, type=float)
    parser.add_argument("--lr", default=None, type=float, help="absolute lr (overrides --blr)")
    parser.add_argument(
        "--blr",
        default=1e-3,
        type=float,
        help="base lr: lr = blr * effective batch size / 256",
    )
    parser.add_argument("--min_lr", default=min_lr, type=float, help="floor of the cosine")
    parser.add_argument(
        "--warmup_epochs", default=warmup_epochs, type=int, help="epochs of lr warm-up"
    )
    parser.add_argument("--clip_grad", default=None, type=float, help="max gradient norm")


def scaled_lr(args: argparse.Namespace, world_size: int) -> float:
    """``--lr`` if given, else MAE's linear scaling ``blr * effective batch / 256``."""
    if args.lr is not None:
        return args.lr
    return args.blr * args.batch_size * world_size / 256
