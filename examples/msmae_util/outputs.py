"""What rank 0 writes to ``--output_dir``: checkpoints (what resume needs, read back with
``weights_only=True``), the log, summaries, mask pictures. Every write is atomic
(:func:`maskkit.files.atomic_write`): an interrupted write keeps the previous file."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN as MEAN
from timm.data import IMAGENET_DEFAULT_STD as STD

from maskkit import MaskWeightBank, SAMMasker
from maskkit.demo import SyntheticLesions
from maskkit.files import atomic_write
from maskkit.viz import save_mask_grid


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain Python types only) to ``path``."""
    with atomic_write(path) as file:
        torch.save(state, file)


def load_checkpoint(
    path: str | os.PathLike[str], *, expect: str | None = None, option: str = "--resume"
) -> dict[str, Any]:
    """Read a checkpoint onto the CPU with the safe unpickler: it never runs code.

    A file that is not a checkpoint (empty, text, damaged, objects the safe unpickler
    refuses) raises ``ValueError`` naming it; with ``expect`` (a script), so does a
    checkpoint written by another script, saying which. Initial weights (``option`` other
    than ``--resume``) must be finite: a NaN or infinite value raises, naming its tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # keep torch's last line, never its advice to load unsafely
        lines = [x.strip() for x in str(err).splitlines() if x.strip() and "weights_only" not in x]
        why = ": ".join([type(err).__name__, *lines[-1:]]) if path.stat().st_size else "empty"
        raise ValueError(
            f"cannot read checkpoint {path} ({why}): it is not a checkpoint of these recipes, "
            "or it is damaged"
        ) from None
    if option != "--resume":  # else NaN weights surface only as "loss is nan" in epoch 0
        bad = _first_non_finite(checkpoint)
        if bad is not None:
            raise ValueError(
                f"{option} {path}: tensor {bad!r} holds NaN or infinite values: the file is "
                "damaged or was saved from a diverged run; take an earlier checkpoint"
            )
    if expect is None:
        return checkpoint
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise ValueError(f"{path} holds no 'model' entry: it is not a checkpoint of {expect}")
    found = checkpoint.get("script") or (  # before v0.2: guessed from the entries
        "main_finetune.py"
        if "best_acc1" in checkpoint
        else "main_pretrain.py"
        if any(k.startswith("encoder.") for k in checkpoint["model"])
        else "an unknown script"
    )
    if found != expect:
        hint = f"; continue that run with {found} --resume {path}" if option == "--resume" else ""
        if option == "--resume" and found == "main_pretrain.py":
            hint += f", or fine-tune from it with main_finetune.py --finetune {path}"
        raise ValueError(
            f"{path} was written by {found}, not {expect}: {option} takes a checkpoint of "
            f"{expect}{hint}"
        )
    return checkpoint


def _first_non_finite(value: Any, key: str = "") -> str | None:
    """The key (dotted path) of the first floating-point tensor in ``value`` (nested dicts,
    lists, tuples) that holds a NaN or an infinity, or None."""
    if isinstance(value, torch.Tensor):
        finite = not value.is_floating_point() or bool(torch.isfinite(value).all())
        return None if finite else key
    if isinstance(value, dict):
        items = [(f"{key}.{k}" if key else str(k), v) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [(f"{key}.{k}" if key else str(k), v) for k, v in enumerate(value)]
    else:
        return None
    return next((bad for k, v in items if (bad := _first_non_finite(v, k)) is not None), None)


def rng_state() -> dict[str, Any]:
    """The RNGs training draws from: torch's CPU generator (masks, DataLoader seeds, drop
    path) and the CUDA generators (masks and drop path on the GPU). Crops have their own."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def resume(
    path: str | os.PathLike[str],
    stateful: dict[str, Any],
    rank: int,
    *,
    checkpoint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a checkpoint (``checkpoint``, already read from ``path``, or ``path``) into
    ``stateful`` (name → object with ``load_state_dict``: model, optimizer, scaler, lr
    scheduler, bank) and restore this rank's RNG states from its ``"rng"`` list (one entry
    per rank). Returns the checkpoint."""
    checkpoint = load_checkpoint(path) if checkpoint is None else checkpoint
    missing = sorted(set(stateful) - set(checkpoint))
    if missing:
        raise ValueError(f"{path} lacks {missing}: not a checkpoint of this recipe")
    for name, target in stateful.items():
        target.load_state_dict(checkpoint[name])
    states = checkpoint["rng"]
    if rank >= len(states):  # a checkpoint of fewer processes
        warnings.warn(f"no RNG state for rank {rank} in {path}: it keeps its seed", stacklevel=2)
    else:
        torch.set_rng_state(states[rank]["cpu"])
        if states[rank]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states[rank]["cuda"])
    return checkpoint


def _plain(value: Any) -> Any:
    # JSON has no NaN / Infinity: write them as strings rather than invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON."""
    with atomic_write(path, "w") as file:
        file.write(json.dumps(_plain(data), indent=2) + "\n")


def _epoch(line: str) -> float:
    try:
        return json.loads(line)["epoch"]
    except ValueError:  # empty, or torn by a kill mid-write
        return math.inf


class JsonLinesLog:
    """One JSON object per epoch in ``path`` (``log.jsonl``).

    A resumed run (``start_epoch > 0``) first drops the lines of epochs at or after
    ``start_epoch``: an interrupted run wrote them after its last checkpoint, and they will
    be written again; so is a line torn by a kill mid-write. A fresh run starts an empty log.
    """

    def __init__(self, path: str | os.PathLike[str], *, start_epoch: int = 0) -> None:
        self.path = Path(path)
        lines = self.path.read_text().splitlines() if start_epoch and self.path.exists() else []
        kept = [line for line in lines if _epoch(line) < start_epoch]
        with atomic_write(self.path, "w") as file:
            file.write("".join(f"{line}\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line, flushed to disk."""
        with self.path.open("a") as file:
            file.write(json.dumps(_plain(record)) + "\n")
            file.flush()
            os.fsync(file.fileno())


def save_refresh_masks(
    path: Path,
    refresh_loader: Iterable[Any],
    bank: MaskWeightBank,
    masker: SAMMasker,
    *,
    patch_size: int,
    lesions: SyntheticLesions | None = None,
) -> None:
    """Draw 8 images of the first refresh batch, a split from their fresh maps, and the maps
    (ground-truth lesions boxed when ``lesions``, the synthetic training set, is given)."""
    images, _, indices = next(iter(refresh_loader))
    images, indices = images[:8], indices[:8]
    weights = bank[indices]
    # A private generator: drawing this picture must not change training's random stream.
    generator = torch.Generator().manual_seed(0)
    split = masker(len(images), weights[0].numel(), weights, generator=generator)
    lesion_masks = None
    if lesions is not None:
        lesion_masks = torch.stack([lesions.lesion_mask(int(i)) for i in indices])
    scale = max(1, 192 // images.shape[-1])  # tiny images upscaled to about 192 px
    options = dict(weights=weights, lesion_masks=lesion_masks, mean=MEAN, std=STD, scale=scale)
    save_mask_grid(path, images, split, patch_size=patch_size, **options)
