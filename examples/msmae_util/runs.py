"""Run hygiene shared by the recipes: option types, the ``--output_dir`` guard, resume checks,
finished runs, ``--stop_after_epoch``, and a full disk reported in one line."""

from __future__ import annotations

import argparse
import errno
import json
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from maskkit.files import remove_stale_temporaries
from maskkit.functional import split_counts

from .outputs import load_checkpoint
from .runtime import DistributedContext, UsageError, print0

# What a run writes into --output_dir: --overwrite removes these and nothing else.
OWN_OUTPUTS = re.compile(
    r"checkpoint\.pth|best(_ema)?\.pth|log\.jsonl|summary\.json|masks_epoch\d{3,}\.png"
)
# Options a resumed run may change freely: where and how it runs, not what it computes.
FREE_ON_RESUME = frozenset(
    {"resume", "output_dir", "overwrite", "allow_changed_args", "stop_after_epoch", "device"}
    | {"num_workers", "no_progress", "cache_images"}
)
# An allowed change of one of these rebuilds the lr schedule instead of loading it.
SCHEDULE_OPTIONS = frozenset({"epochs", "warmup_epochs", "lr", "blr", "min_lr", "batch_size"})


def number(
    kind: type[int] | type[float],
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` (int or float) from ``low`` (excluded with
    ``low_open``) up to ``high`` (excluded with ``high_open``; None: no upper bound). Its
    message gives the range and the text given, e.g. "the value must lie in [0, 1), got 1.5";
    argparse names the option."""
    what = "an int" if kind is int else "a finite number"
    if high is None:
        need = f"be {what} {'>' if low_open else '>='} {low:g}"
    else:
        need = f"lie in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan  # not a number: refused below with the range
        above = value > low if low_open else value >= low
        below = high is None or (value < high if high_open else value <= high)
        if not (math.isfinite(value) and above and below):
            raise argparse.ArgumentTypeError(f"the value must {need}, got {text}")
        return value

    return parse


# argparse types, one per range the recipes' options take.
ratio = number(float, 0, 1, high_open=True)  # a share of the patches, a rate: [0, 1)
area = number(float, 0, 1, low_open=True)  # a share of an image's area, a factor: (0, 1]
natural = number(int, 0)  # a seed, an epoch, a count that may be 0
positive_int = number(int, 1)  # epochs, a batch, a width
positive = number(float, 0, low_open=True)  # a learning rate, a gradient norm
nonnegative = number(float, 0)  # a weight decay, a loss weight, the cosine's floor

# msmae_util.data's options (default None) that one --data source reads, and which.
DATA_READERS = {
    "data_path": ("imagefolder",),
    "csv_train": ("csv",),
    "csv_val": ("csv",),
    "csv_test": ("csv",),
    "image_dir": ("csv",),
}


def check_data_source(args: argparse.Namespace, readers: Mapping[str, tuple[str, ...]]) -> None:
    """Refuse an option given with a ``--data`` source that ignores it (``readers``: option
    name → the sources that read it): the run would silently use other data."""
    for name, sources in readers.items():
        if getattr(args, name, None) is not None and args.data not in sources:
            raise UsageError(
                f"--{name} is only read with --data {' or '.join(sources)}, but --data is "
                f"{args.data}; add --data {sources[0]}, or leave out --{name}"
            )


def check_data_args(args: argparse.Namespace) -> None:
    """:func:`check_data_source` for :mod:`msmae_util.data`'s options."""
    check_data_source(args, DATA_READERS)


def check_file(option: str, path: str) -> None:
    """Refuse a checkpoint option (``--resume``, ``--init``, ``--finetune``) given a path
    that is no file (empty: not given)."""
    if path and not Path(path).is_file():
        what = "a folder, not a checkpoint file" if Path(path).is_dir() else "no such file"
        raise UsageError(f"{option} {path}: {what}")


@contextmanager
def as_usage_error() -> Iterator[None]:
    """Report a ``ValueError`` of the checks inside as a :class:`UsageError`: only for
    checks that judge nothing but the options and the files they name (e.g.
    ``models_msmae.vit_grid``, ``msmae_util.outputs.load_checkpoint``)."""
    try:
        yield
    except UsageError:
        raise
    except ValueError as err:
        raise UsageError(str(err)) from None


def add_run_arguments(group: argparse._ArgumentGroup) -> None:
    """Add ``--overwrite``, ``--allow_changed_args`` and ``--stop_after_epoch``."""
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --output_dir holding results: removes its checkpoint.pth, "
        "best.pth, best_ema.pth, log.jsonl, summary.json and masks_epochNNN.png (nothing else)",
    )
    group.add_argument(
        "--allow_changed_args",
        nargs="+",
        metavar="OPTION",
        help="options (e.g. epochs seed) that --resume may change from the checkpoint's; "
        f"these always may: {', '.join(sorted(FREE_ON_RESUME))}",
    )
    group.add_argument(
        "--stop_after_epoch",
        type=natural,
        metavar="N",
        help="exit after epoch N (from 0, as in log.jsonl) and its checkpoint, the schedule "
        "unchanged; continue later with --resume",
    )


def check_split(
    num_patches: int,
    mask: tuple[str, float],
    throw: tuple[str, float] = ("", 0.0),
    *,
    need_masked: bool = True,
) -> None:
    """Reject ratios, ``(option, value)`` pairs, that leave no patch visible out of
    ``num_patches`` (or, with ``need_masked``, none masked)."""
    names = f"{mask[0]} {mask[1]}" + (f" + {throw[0]} {throw[1]}" if throw[0] else "")
    try:
        counts = split_counts(num_patches, mask[1], throw[1])
    except ValueError as err:
        raise UsageError(f"{names}: {err}") from None
    if need_masked and counts.masked < 1:
        raise UsageError(f"{names} masks no patch out of {num_patches}; raise {mask[0]}")


def prepare_output_dir(
    output_dir: str | Path,
    *,
    resume: bool,
    overwrite: bool,
    is_main: bool = True,
    outputs: re.Pattern[str] = OWN_OUTPUTS,
) -> Path:
    """Check ``--output_dir`` before anything is built; on rank 0 create it, remove the
    temporaries of interrupted writes and, with ``overwrite``, the earlier run's outputs
    (the names ``outputs`` matches in full).

    Raises:
        UsageError: the path is (or lies under) a file; the folder holds results and
            neither ``resume`` nor ``overwrite`` is given; both are given.
    """
    path = Path(output_dir)
    if overwrite and resume:
        raise UsageError("--overwrite starts a new run: it cannot be combined with --resume")
    existing = next((p for p in (path, *path.parents) if p.exists()), path)
    if existing.exists() and not existing.is_dir():
        where = "" if existing == path else f": {existing} is a file"
        raise UsageError(f"--output_dir {path} is a file, not a folder{where}")
    found = sorted(p.name for p in path.glob("*") if outputs.fullmatch(p.name))
    if found and not (resume or overwrite):
        raise UsageError(
            f"--output_dir {path} holds the results of an earlier run ({', '.join(found)}): "
            f"continue it with --resume {path / 'checkpoint.pth'}, replace them with "
            "--overwrite, or choose another --output_dir"
        )
    if is_main:
        path.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        for name in found if overwrite else ():
            (path / name).unlink()
    return path


def check_resume_args(
    checkpoint: Mapping[str, Any], args: argparse.Namespace, *, world_size: int, path: Any
) -> set[str]:
    """Refuse options that differ from the checkpoint's ``args`` (and another number of
    processes, ``world_size``) unless free (:data:`FREE_ON_RESUME`) or named by
    ``--allow_changed_args``; options one side lacks are not compared. Also refuse an
    ``--epochs`` or ``--stop_after_epoch`` that the checkpoint has passed. Returns the
    (allowed) changed options."""
    allowed = {name.lstrip("-") for name in getattr(args, "allow_changed_args", None) or ()}
    saved, now = checkpoint["args"], vars(args)
    changed = {k: (saved[k], now[k]) for k in saved.keys() & now.keys() - FREE_ON_RESUME}
    changed = {k: pair for k, pair in changed.items() if pair[0] != pair[1]}
    if len(checkpoint["rng"]) != world_size:
        changed["world_size"] = (len(checkpoint["rng"]), world_size)
    lines = {
        k: f"{'processes' if k == 'world_size' else '--' + k}: checkpoint {a!r}, now {b!r}"
        for k, (a, b) in sorted(changed.items())
    }
    refused = sorted(set(changed) - allowed)
    if refused:
        raise UsageError(
            f"cannot resume from {path} with changed settings:\n  "
            + "\n  ".join(lines[k] for k in refused)
            + "\nresume with the checkpoint's settings, or allow the change with "
            f"--allow_changed_args {' '.join(refused)} (--lr follows --blr, --batch_size and "
            "the number of processes unless given)"
        )
    for line in lines.values():
        print0(f"resuming with a changed setting, {line}")
    stop, last = getattr(args, "stop_after_epoch", None), checkpoint["epoch"]
    epochs = getattr(args, "epochs", last + 1)
    if epochs <= last:  # its weights are of a later epoch than the run's last
        raise UsageError(
            f"--epochs {epochs}: {path} has trained up to epoch {last} (from 0), so the "
            f"run has at least {last + 1} epochs; resume with --epochs {last + 1} or more"
        )
    if stop is not None and stop <= last:
        raise UsageError(f"--stop_after_epoch {stop}: {path} has trained up to epoch {last}")
    return set(changed)


def finished_summary(
    checkpoint: Mapping[str, Any], args: argparse.Namespace, output_dir: Path
) -> dict[str, Any] | None:
    """The saved ``summary.json`` if ``checkpoint`` ends the run: resuming then changes no
    file. None if the run goes on, or if it ended without writing its summary (killed after
    its last checkpoint): the recipe then rebuilds it from the checkpoint."""
    summary = output_dir / "summary.json"
    if checkpoint["epoch"] + 1 < args.epochs or not summary.is_file():
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


def run_main(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> None:
    """Run a recipe's ``main``. Options that cannot work (:class:`UsageError`) end it as
    argparse does: ``error: ...`` on stderr, exit status 2. A full disk ends it with one line
    (exit status 1), also when wrapped by another error (``torch.save`` raises a
    ``RuntimeError`` from the ``OSError``). Any other error keeps its traceback: a bug."""
    try:
        main(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except Exception as err:
        cause: BaseException | None = err
        while cause is not None and getattr(cause, "errno", None) != errno.ENOSPC:
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        out = Path(getattr(args, "output_dir", None) or args.out)
        checkpoint = out / "checkpoint.pth"
        then = f"continue with --resume {checkpoint}" if checkpoint.exists() else "run again"
        sys.exit(
            f"No space left on device while writing to {out}: free some space there (or "
            f"choose another --output_dir), then {then}; the files written before are whole"
        )


class RunStart(NamedTuple):
    """What :func:`start_run` found: the output folder, the checkpoint to resume (or None),
    the options the resume may change, and the saved summary of a finished run (or None)."""

    output_dir: Path
    checkpoint: dict[str, Any] | None
    changed: set[str]
    finished: dict[str, Any] | None


def start_run(
    args: argparse.Namespace,
    ctx: DistributedContext,
    *,
    script: str,
    outputs: re.Pattern[str] = OWN_OUTPUTS,
    free: tuple[str, ...] = (),
) -> RunStart:
    """The start every recipe shares, before anything is built: check and prepare
    ``--output_dir``; with ``--resume``, load the checkpoint (written by ``script``), refuse
    changed options (beyond :data:`FREE_ON_RESUME` and ``free``) and find a finished run."""
    output_dir = prepare_output_dir(
        args.output_dir,
        resume=bool(args.resume),
        overwrite=args.overwrite,
        is_main=ctx.is_main,
        outputs=outputs,
    )
    if not args.resume:
        return RunStart(output_dir, None, set(), None)
    check_file("--resume", args.resume)
    with as_usage_error():
        checkpoint = load_checkpoint(args.resume, expect=script)
    if "rng" not in checkpoint:  # best.pth: weights, epoch, val figures and args only
        raise UsageError(
            f"--resume {args.resume}: it is a model-only checkpoint (val-selected weights), "
            f"not resumable; resume from {Path(args.resume).parent / 'checkpoint.pth'}"
        )
    saved = checkpoint["args"]
    compared = argparse.Namespace(**{**vars(args), **{k: saved[k] for k in free if k in saved}})
    changed = check_resume_args(checkpoint, compared, world_size=ctx.world_size, path=args.resume)
    return RunStart(output_dir, checkpoint, changed, finished_summary(checkpoint, args, output_dir))
