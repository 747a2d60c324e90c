"""Run hygiene shared by the recipes: the output folder guard, resume checks, finished runs,
``--stop_after_epoch``, option types, and a full disk reported in one line."""

from __future__ import annotations

import argparse
import errno
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from maskkit.files import remove_stale_temporaries
from maskkit.functional import split_counts

from .runtime import print0

# Files a run writes into --output_dir: --overwrite removes these and nothing else.
OWN_OUTPUTS = re.compile(r"(checkpoint\.pth|log\.jsonl|summary\.json|masks_epoch\d{3,}\.png)")
# Options a resumed run may change freely: where and how it runs, not what it computes.
FREE_ON_RESUME = frozenset(
    {"resume", "output_dir", "overwrite", "allow_changed_args", "stop_after_epoch"}
    | {"num_workers", "no_progress", "device", "cache_images"}
)
# Changing one of these (allowed) rebuilds the lr schedule instead of loading it.
SCHEDULE_OPTIONS = frozenset({"epochs", "warmup_epochs", "lr", "blr", "min_lr", "batch_size"})


def ratio(text: str) -> float:
    """argparse type of a share of the patches: a float in [0, 1)."""
    value = float(text)
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def scale(text: str) -> float:
    """argparse type of a crop's smallest area share: a float in (0, 1]."""
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def natural(text: str) -> int:
    """argparse type of an int >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_run_arguments(group: argparse._ArgumentGroup) -> None:
    """``--overwrite``, ``--allow_changed_args`` and ``--stop_after_epoch``."""
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --output_dir that holds results: removes its "
        "checkpoint.pth, log.jsonl, summary.json and masks_epochNNN.png (nothing else)",
    )
    group.add_argument(
        "--allow_changed_args",
        nargs="+",
        default=None,
        metavar="OPTION",
        help="options (e.g. epochs seed) that --resume may change from the checkpoint's; "
        f"these may always change: {', '.join(sorted(FREE_ON_RESUME))}",
    )
    group.add_argument(
        "--stop_after_epoch",
        type=natural,
        default=None,
        metavar="N",
        help="exit cleanly after epoch N (counted from 0, as in log.jsonl) and its "
        "checkpoint, without changing the schedule; continue later with --resume",
    )


def check_split(
    num_patches: int,
    mask: tuple[str, float],
    throw: tuple[str, float] = ("", 0.0),
    *,
    need_masked: bool = True,
) -> None:
    """Reject ratios, ``(option, value)`` pairs, that leave no patch visible (or, with
    ``need_masked``, none masked) out of ``num_patches``."""
    names = f"{mask[0]} {mask[1]}" + (f" + {throw[0]} {throw[1]}" if throw[0] else "")
    try:
        counts = split_counts(num_patches, mask[1], throw[1])
    except ValueError as err:
        raise ValueError(f"{names}: {err}") from None
    if need_masked and counts.masked < 1:
        raise ValueError(f"{names} masks no patch out of {num_patches}; raise {mask[0]}")


def prepare_output_dir(
    output_dir: str | Path, *, resume: bool, overwrite: bool, is_main: bool = True
) -> Path:
    """Check ``--output_dir`` before anything is built, and make it ready (rank 0 writes).

    Refuses a path that is (or lies under) a file, and a folder holding results of an
    earlier run unless ``resume`` or ``overwrite`` (which removes them). Temporaries of an
    interrupted atomic write are removed in every case.
    """
    path = Path(output_dir)
    if overwrite and resume:
        raise ValueError("--overwrite starts a new run: it cannot be combined with --resume")
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "" if existing == path else f": {existing} is a file"
        raise ValueError(f"--output_dir {path} is a file, not a folder{where}")
    found = sorted(p.name for p in path.glob("*") if OWN_OUTPUTS.fullmatch(p.name))
    if found and not (resume or overwrite):
        raise ValueError(
            f"--output_dir {path} holds the results of an earlier run ({', '.join(found)}): "
            f"continue it with --resume {path / 'checkpoint.pth'}, replace them with "
            "--overwrite, or choose another --output_dir"
        )
    if is_main:
        path.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)  # of a run killed while writing
        for name in found if overwrite else ():
            (path / name).unlink(missing_ok=True)
    return path


def check_resume_args(
    checkpoint: Mapping[str, Any], args: argparse.Namespace, *, world_size: int, path: Any
) -> set[str]:
    """Refuse to resume with options that differ from the checkpoint's ``args``.

    :data:`FREE_ON_RESUME` may differ; so may the options named by ``--allow_changed_args``
    (and ``world_size``, the number of processes). Options one of the two runs lacks are
    not compared. ``--stop_after_epoch`` must not lie before the next epoch.

    Returns:
        The allowed options that changed (printed on rank 0).
    """
    allowed = {n.lstrip("-") for n in getattr(args, "allow_changed_args", None) or ()}
    saved, now = dict(checkpoint["args"]), vars(args)
    changed = {k: (saved[k], now[k]) for k in saved.keys() & now.keys() - FREE_ON_RESUME}
    changed = {k: values for k, values in changed.items() if values[0] != values[1]}
    if len(checkpoint["rng"]) != world_size:
        changed["world_size"] = (len(checkpoint["rng"]), world_size)
    refused = sorted(set(changed) - allowed)
    if refused:
        lines = [
            f"{_label(k)}: checkpoint {changed[k][0]!r}, now {changed[k][1]!r}" for k in refused
        ]
        raise ValueError(
            f"cannot resume from {path} with changed settings:\n  " + "\n  ".join(lines) + "\n"
            "resume with the checkpoint's settings, or allow the change with "
            f"--allow_changed_args {' '.join(refused)} (--lr follows --blr, --batch_size and "
            "the number of processes unless given)"
        )
    for k in sorted(changed):
        print0(f"resuming with {_label(k)} changed from {changed[k][0]!r} to {changed[k][1]!r}")
    stop, next_epoch = getattr(args, "stop_after_epoch", None), checkpoint["epoch"] + 1
    if stop is not None and stop < next_epoch:
        raise ValueError(
            f"--stop_after_epoch {stop}: {path} has trained up to epoch {next_epoch - 1} "
            "already, so nothing would be trained"
        )
    return set(changed)


def _label(name: str) -> str:
    return "processes" if name == "world_size" else f"--{name}"


def finished_summary(
    checkpoint: Mapping[str, Any], args: argparse.Namespace, output_dir: Path
) -> dict[str, Any] | None:
    """The saved summary when ``checkpoint`` ends the run and ``summary.json`` exists: the
    resumed run then has nothing to do and leaves every file as it is. None otherwise (a
    run killed after its last checkpoint rebuilds the summary from the checkpoint)."""
    if checkpoint["epoch"] + 1 < args.epochs:
        return None
    summary = output_dir / "summary.json"
    if not summary.is_file():
        print0(f"{args.resume} ends the run but {summary} is missing: writing it")
        return None
    print0(
        f"the run of {args.resume} is already finished (epoch {checkpoint['epoch']} of "
        f"--epochs {args.epochs}); its results in {output_dir} are kept as they are"
    )
    return json.loads(summary.read_text())


def stop_after(epoch: int, args: argparse.Namespace, output_dir: Path) -> bool:
    """Whether ``--stop_after_epoch`` ends the run after ``epoch`` (not the last)."""
    if args.stop_after_epoch != epoch or epoch + 1 >= args.epochs:
        return False
    print0(
        f"stopped after epoch {epoch} (--stop_after_epoch); continue with the same options "
        f"and --resume {output_dir / 'checkpoint.pth'}"
    )
    return True


def _disk_full(err: BaseException | None) -> bool:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:  # torch.save wraps the OSError
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def run_main(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> None:
    """Run a recipe's ``main``; a full disk ends it with one line (exit status 1)."""
    try:
        main(args)
    except Exception as err:
        if not _disk_full(err):
            raise
        out = Path(getattr(args, "output_dir", None) or getattr(args, "out", "."))
        checkpoint = out / "checkpoint.pth"
        then = f"continue with --resume {checkpoint}" if checkpoint.exists() else "run again"
        sys.exit(
            f"No space left on device while writing to {out}: free some space there (or "
            f"choose another --output_dir), then {then}; the files written before are whole"
        )
