"""Run maskkit's benchmarks, print a table and write the figures to one JSON file.

Usage::

    python benchmarks/run.py --device cuda            # the figures behind the GPU goals
    python benchmarks/run.py --device cpu             # ~10 min on 2 cores, small CPU sizes
    python benchmarks/run.py --device cpu --quick     # ~1 min smoke run (tiny models)
    python benchmarks/run.py --only masking finetune  # a subset of the sections
    python benchmarks/run.py --device cpu --threads 1 # a CPU shared with other work

The JSON goes to ``benchmarks/results/<device-name>.json`` (``-quick`` or ``-<sections>``
appended for quick and partial runs) unless ``--out`` names a file. It holds the device,
library versions, host facts (CPU count, threads, load average at the start and the end),
every raw timing (all samples, per call, in ms), the sizes each section used and a
``summary`` of the headline ratios with the goals of issue 6 beside them. The timings are
``torch.utils.benchmark`` measurements (see ``common.py``) and are printed with its
``Compare``. See ``benchmarks/README.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.benchmark import Compare, Measurement

BENCHMARKS = Path(__file__).resolve().parent
# The sections are scripts beside this one and import ``common`` as a top-level module.
# ``python benchmarks/run.py`` puts this folder on sys.path by itself; this line does it
# when run.py is loaded some other way (runpy, as tests/test_docs.py does).
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import bench_extraction  # noqa: E402
import bench_finetune  # noqa: E402
import bench_masking  # noqa: E402
import bench_pretrain  # noqa: E402
import bench_strategies  # noqa: E402
from common import (  # noqa: E402
    MEASUREMENTS,
    device_slug,
    environment,
    fmt,
    resolve_device,
    write_json,
)

__all__ = ["GOALS", "SECTIONS", "evaluate_goals", "main", "run_all"]

SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "masking": bench_masking.run,
    "pretrain": bench_pretrain.run,
    "extraction": bench_extraction.run,
    "finetune": bench_finetune.run,
    # Issue 13's strategies against the per-sample generators they replace (self-contained:
    # its own interleaved torch.utils.benchmark timing, medians_ms / ratios / targets).
    "strategies": bench_strategies.run,
}

# The strategies section's headline ratios (at B=256, L=196; issue 13's CPU targets), copied
# into the run's summary beside issue 6's goals.
STRATEGY_SUMMARY: tuple[str, ...] = tuple(key for key, _, _ in bench_strategies.TARGETS)

# Issue 6's goals, set for a GPU: (summary key, comparison, threshold, statement).
GOALS: list[tuple[str, str, float, str]] = [
    ("sam_vs_mae_floor", "<=", 1.1, "SAM sampling <= 1.1x MAE's argsort floor (B=256, L=196)"),
    ("amt_path_vs_sam", ">=", 5.0, "AMT's multinomial + boolean path >= 5x slower (B=256)"),
    ("host_syncs", "==", 0, "zero host syncs in maskkit's masking path"),
    ("pretrain_masking_share", "<", 0.01, "masking < 1% of an MSMAE ViT-B/16 pre-training step"),
    ("extraction_vs_forward", "<=", 1.05, "attention extraction <= 1.05x a plain forward"),
    ("finetune_step_speedup", ">=", 3.0, "SAM fine-tuning step >= 3x faster than all tokens"),
    ("finetune_flops_ratio", "<=", 0.27, "SAM / full forward FLOPs <= 0.27"),
]

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda value, limit: value <= limit,
    ">=": lambda value, limit: value >= limit,
    "<": lambda value, limit: value < limit,
    "==": lambda value, limit: value == limit,
}


def evaluate_goals(summary: dict[str, Any], device: str) -> dict[str, Any]:
    """Each goal with its value and whether it is met (None when the figure is missing)."""
    goals: dict[str, Any] = {}
    for key, op, limit, statement in GOALS:
        value = summary.get(key)
        goals[key] = {
            "goal": statement,
            "target": f"{op} {limit}",
            "value": value,
            "met": None if value is None else _COMPARE[op](value, limit),
        }
    return {
        "scope": "GPU goals of issue 6"
        + ("" if device == "cuda" else "; on this CPU they are informative only"),
        "goals": goals,
    }


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def run_all(
    device: str, *, quick: bool, only: list[str]
) -> tuple[dict[str, Any], list[Measurement]]:
    """Run the chosen sections and assemble the results document.

    Returns:
        The JSON-ready results and the sections' ``torch.utils.benchmark`` measurements
        (for the printed ``Compare`` tables).
    """
    dev = resolve_device(device)
    torch.manual_seed(0)
    results: dict[str, Any] = {**environment(dev), "quick": quick, "sections": only}
    measurements: list[Measurement] = []
    wall: dict[str, float] = {}
    for name in only:
        begin = time.perf_counter()
        print(f"[{name}] running on {results['device']} ...", flush=True)
        results[name] = SECTIONS[name](device, quick=quick)
        measurements += results[name].pop(MEASUREMENTS, [])
        wall[name] = round(time.perf_counter() - begin, 1)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    results["wall_s"] = wall
    # The load when the run ends, beside the one when it began (``host``): a busy machine
    # slows every candidate alike but makes the figures noisier.
    results["host"]["load_average_end_1_5_15min"] = _load_average()

    def section_summary(name: str) -> dict[str, Any]:
        return results.get(name, {}).get("summary", {})

    masking, pretrain = section_summary("masking"), section_summary("pretrain")
    finetune, strategies = section_summary("finetune"), section_summary("strategies")
    summary = {
        "sam_vs_mae_floor": masking.get("sam_vs_mae_floor"),
        "amt_path_vs_sam": masking.get("amt_path_vs_sam"),
        "host_syncs": masking.get("host_syncs"),
        "pretrain_masking_share": pretrain.get("pretrain_masking_share"),
        "extraction_vs_forward": results.get("extraction", {}).get("extraction_vs_forward"),
        "finetune_step_speedup": finetune.get("finetune_step_speedup"),
        "finetune_flops_ratio": finetune.get("finetune_flops_ratio"),
        **{key: strategies.get(key) for key in STRATEGY_SUMMARY},
    }
    results["summary"] = {**summary, **evaluate_goals(summary, dev.type)}
    return results, measurements


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) for row in rows]
    rule = "  ".join("-" * width for width in widths)
    return "\n".join(["  ".join(c.ljust(w) for c, w in zip(header, widths)), rule, *lines])


def render(results: dict[str, Any], measurements: list[Measurement]) -> str:
    """The timings as ``torch.utils.benchmark.Compare`` tables, then ratios, checks, goals."""
    parts = [f"device: {results['device']}  (torch {results['versions']['torch']})"]
    if measurements:
        compare = Compare(measurements)
        parts.append(str(compare))
    if "masking" in results:
        ratios = results["masking"]["ratios"]
        keys = list(next(iter(ratios.values())))
        rows = [[size] + [fmt(r[k], 2) for k in keys] for size, r in ratios.items()]
        parts += ["masking, ratios (x)", _table(["size", *keys], rows)]
        checks = [
            [check, name, fmt(entry["passed"]), entry["detail"][:70]]
            for check in ("cuda_graph", "compile_fullgraph")
            for name, entry in results["masking"][check].items()
        ]
        syncs = results["masking"]["host_syncs"]["counts"]
        checks += [["host_syncs", name, fmt(count), ""] for name, count in syncs.items()]
        parts += ["\nmasking checks", _table(["check", "candidate", "result", ""], checks)]
    if "extraction" in results:
        scalars = [
            [key, fmt(value)]
            for key, value in results["extraction"].items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        parts += ["\nextraction", _table(["figure", "value"], scalars)]
    if "finetune" in results:
        fine = results["finetune"]
        rows = [
            [
                kind,
                fmt(fine["flops"][kind]["gflops"]),
                fmt(fine["flops"][kind]["gmacs"]),
                fmt(fine["flops"][kind]["linear_conv_gmacs"]),
                fmt(fine["paper"][f"{kind}_gflops"]),
            ]
            for kind in ("full", "sam")
        ]
        header = ["tokens", "GFLOPs", "GMACs", "lin+conv GMACs", "paper G"]
        parts += [f"\nfine-tuning FLOPs ({fine['config']['model']})", _table(header, rows)]
    if "strategies" in results:
        medians = results["strategies"]["medians_ms"]
        names = list(next(iter(medians.values())))
        rows = [[size] + [fmt(row[n]) for n in names] for size, row in medians.items()]
        parts += ["\nstrategies, median ms per call", _table(["size", *names], rows)]
    goals = results["summary"]["goals"]
    rows = [[key, fmt(g["value"]), g["target"], fmt(g["met"])] for key, g in goals.items()]
    targets = results.get("strategies", {}).get("targets", {})
    # Issue 13's targets (CPU), as the strategies section judged them.
    extra = [
        [
            key,
            fmt(results["summary"][key]),
            targets.get(key, {}).get("target", ""),
            fmt(targets.get(key, {}).get("met")),
        ]
        for key in STRATEGY_SUMMARY
    ]
    parts += [
        f"\nsummary ({results['summary']['scope']})",
        _table(["figure", "value", "goal", "met"], rows + extra),
    ]
    return "\n".join(parts)


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark runner."""
    parser = argparse.ArgumentParser(description="maskkit benchmarks", add_help=True)
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to run (default: cuda when available)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny models and few sizes: a ~1 min smoke run"
    )
    parser.add_argument(
        "--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS), help="sections to run"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the benchmarks, print the tables and write the JSON."""
    args = get_args_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    only = [name for name in SECTIONS if name in args.only]
    results, measurements = run_all(args.device, quick=args.quick, only=only)
    out = args.out
    if out is None:
        suffix = "-quick" if args.quick else ""
        if only != list(SECTIONS):
            suffix += "-" + "-".join(only)
        out = BENCHMARKS / "results" / f"{device_slug(results['device'])}{suffix}.json"
    write_json(out, results)
    print(render(results, measurements))
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
