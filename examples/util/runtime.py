"""Runtime options and seeding shared by the pre-training and fine-tuning scripts."""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

__all__ = ["add_runtime_args", "seed_everything"]


def add_runtime_args(parser: argparse.ArgumentParser, *, output_dir: str) -> None:
    """Output, resume, device, AMP, seed and progress options."""
    parser.add_argument("--output_dir", default=output_dir, help="where rank 0 writes")
    parser.add_argument("--resume", default="", help="checkpoint to continue from")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "bf16", "fp16", "none"],
        help="autocast on CUDA (auto: bf16 where supported, else fp16); CPU runs in float32",
    )
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's RNGs (the scripts add the rank, so masks differ)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
