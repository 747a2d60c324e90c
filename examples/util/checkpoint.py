"""Checkpoints written atomically and loaded with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain Python types (RNG states included), so the safe
unpickler reads it: loading a checkpoint never runs code from the file.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from maskkit import MaskWeightBank

from .lr_sched import WarmupCosineSchedule

__all__ = [
    "atomic_open",
    "get_rng_state",
    "load_checkpoint",
    "restore_rng",
    "resume_training_state",
    "save_checkpoint",
    "save_training_state",
    "set_rng_state",
]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one rename.

    An interrupted write leaves the previous file whole, and readers never see half a file.

    Args:
        path: the file to (re)write; its folder is created if needed.
        mode: ``"wb"`` or ``"w"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain types) to ``path`` atomically."""
    with atomic_open(path) as file:
        torch.save(state, file)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint onto the CPU with the safe unpickler (``weights_only=True``).

    Raises:
        FileNotFoundError: no file at ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def get_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python RNG states as tensors and plain types."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states from :func:`get_rng_state` (CUDA states only when both runs had CUDA)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {
                "key": numpy_state["key"].numpy().astype(np.uint32),
                "pos": numpy_state["pos"],
            },
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def restore_rng(states: list[dict[str, Any]], rank: int) -> None:
    """Restore this rank's RNG states from a checkpoint's list of every rank's states.

    A checkpoint from fewer processes has no state for ``rank``: that rank keeps its fresh
    seed (with a warning), so its random draws differ from the original run's.
    """
    if rank >= len(states):
        warnings.warn(
            f"the checkpoint holds RNG states of {len(states)} process(es), none for rank "
            f"{rank}; that rank keeps its fresh seed",
            stacklevel=2,
        )
        return
    set_rng_state(states[rank])


def save_training_state(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    lr_schedule: WarmupCosineSchedule,
    bank: MaskWeightBank,
    epoch: int,
    rng: list[dict[str, Any]],
    args: dict[str, Any],
    **extra: Any,
) -> None:
    """Checkpoint everything a recipe needs to resume; ``rng`` holds every rank's states."""
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "lr_schedule": lr_schedule.state_dict(),
            "bank": bank.state_dict(),
            "epoch": epoch,
            "rng": rng,
            "args": args,
            **extra,
        },
    )


def resume_training_state(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    lr_schedule: WarmupCosineSchedule,
    bank: MaskWeightBank,
    rank: int,
) -> dict[str, Any]:
    """Load a :func:`save_training_state` checkpoint into the objects and this rank's RNGs.

    Returns:
        The checkpoint, for its ``epoch`` and any extra fields.
    """
    checkpoint = load_checkpoint(path)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    bank.load_state_dict(checkpoint["bank"])
    lr_schedule.warn_if_changed(checkpoint["lr_schedule"])
    restore_rng(checkpoint["rng"], rank)
    return checkpoint
