"""Run maskkit's benchmarks, print a table and write the figures to one JSON file.

Usage::

    python benchmarks/run.py --device cuda            # the figures behind the GPU goals
    python benchmarks/run.py --device cpu             # ~10 min on 2 cores, small CPU sizes
    python benchmarks/run.py --device cpu --quick     # ~1 min smoke run (tiny models)
    python benchmarks/run.py --only masking finetune  # a subset of the sections
    python benchmarks/run.py --device cpu --threads 1 # a CPU shared with other work

The JSON goes to ``benchmarks/results/<device-name>.json`` (``-quick`` or ``-<sections>``
appended for quick and partial runs) unless ``--out`` names a file. It holds the device,
library versions, every raw timing (all samples, per call, in ms), the sizes each section
used and a ``summary`` of the headline ratios with the goals of issue 6 beside them.
See ``benchmarks/README.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

BENCHMARKS = Path(__file__).resolve().parent
# The sections import each other as top-level modules (``common``); the repository root
# also makes ``benchmarks.*`` importable for modules that prefer that spelling.
for folder in (BENCHMARKS, BENCHMARKS.parent):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import bench_extraction  # noqa: E402
import bench_finetune  # noqa: E402
import bench_masking  # noqa: E402
import bench_pretrain  # noqa: E402
from common import (  # noqa: E402
    device_slug,
    environment,
    fmt,
    format_table,
    resolve_device,
)

__all__ = ["GOALS", "SECTIONS", "evaluate_goals", "main", "run_all"]

SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "masking": bench_masking.run,
    "pretrain": bench_pretrain.run,
    "extraction": bench_extraction.run,
    "finetune": bench_finetune.run,
}

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


def _extraction_ratio(result: dict[str, Any]) -> float | None:
    if "extraction_vs_forward" in result:
        return result["extraction_vs_forward"]
    return result.get("summary", {}).get("extraction_vs_forward")


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


def run_all(device: str, *, quick: bool, only: list[str]) -> dict[str, Any]:
    """Run the chosen sections and assemble the results document."""
    dev = resolve_device(device)
    torch.manual_seed(0)
    results: dict[str, Any] = {**environment(dev), "quick": quick, "sections": only}
    wall: dict[str, float] = {}
    for name in only:
        begin = time.perf_counter()
        print(f"[{name}] running on {results['device']} ...", flush=True)
        results[name] = SECTIONS[name](device, quick=quick)
        wall[name] = round(time.perf_counter() - begin, 1)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    results["wall_s"] = wall

    def section_summary(name: str) -> dict[str, Any]:
        return results.get(name, {}).get("summary", {})

    masking, pretrain = section_summary("masking"), section_summary("pretrain")
    finetune = section_summary("finetune")
    summary = {
        "sam_vs_mae_floor": masking.get("sam_vs_mae_floor"),
        "amt_path_vs_sam": masking.get("amt_path_vs_sam"),
        "host_syncs": masking.get("host_syncs"),
        "pretrain_masking_share": pretrain.get("pretrain_masking_share"),
        "extraction_vs_forward": (
            _extraction_ratio(results["extraction"]) if "extraction" in results else None
        ),
        "finetune_step_speedup": finetune.get("finetune_step_speedup"),
        "finetune_flops_ratio": finetune.get("finetune_flops_ratio"),
    }
    results["summary"] = {**summary, **evaluate_goals(summary, dev.type)}
    return results


def render(results: dict[str, Any]) -> str:
    """Plain-text tables of the headline figures."""
    parts = [f"device: {results['device']}  (torch {results['versions']['torch']})"]
    if "masking" in results:
        timings = results["masking"]["timings"]
        names = list(next(iter(timings.values())))
        rows = [[size] + [fmt(t[n]["median_ms"]) for n in names] for size, t in timings.items()]
        parts += ["\nmasking, median ms per call", format_table(["size", *names], rows)]
        ratios = results["masking"]["ratios"]
        keys = list(next(iter(ratios.values())))
        rows = [[size] + [fmt(r[k], 2) for k in keys] for size, r in ratios.items()]
        parts += ["\nmasking, ratios (x)", format_table(["size", *keys], rows)]
        checks = [
            [check, name, fmt(entry["passed"]), entry["detail"][:70]]
            for check in ("cuda_graph", "compile_fullgraph")
            for name, entry in results["masking"][check].items()
        ]
        syncs = results["masking"]["host_syncs"]["counts"]
        checks += [["host_syncs", name, fmt(count), ""] for name, count in syncs.items()]
        parts += ["\nmasking checks", format_table(["check", "candidate", "result", ""], checks)]
    if "pretrain" in results:
        pre = results["pretrain"]
        rows = [[name, fmt(t["median_ms"])] for name, t in pre["timings"].items()]
        parts += [
            f"\npre-training step ({pre['config']['encoder']}, B={pre['config']['batch_size']})",
            format_table(["candidate", "median ms"], rows),
        ]
    if "extraction" in results:
        scalars = [
            [key, fmt(value)]
            for key, value in results["extraction"].items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        parts += ["\nextraction", format_table(["figure", "value"], scalars)]
    if "finetune" in results:
        fine = results["finetune"]
        config, paper = fine["config"], fine["paper"]
        rows = [
            [
                kind,
                fmt(fine["flops"][kind]["gflops"]),
                fmt(fine["flops"][kind]["gmacs"]),
                fmt(fine["flops"][kind]["linear_conv_gmacs"]),
                fmt(paper[f"{kind}_gflops"]),
                fmt(fine["timings"][f"{kind}_step"]["median_ms"]),
                fmt(fine["timings"][f"{kind}_inference"]["median_ms"]),
                fmt(fine["timings"][f"{kind}_inference_b1"]["median_ms"]),
                fmt(paper[f"{kind}_inference_ms"]),
            ]
            for kind in ("full", "sam")
        ]
        header = [
            "tokens",
            "GFLOPs",
            "GMACs",
            "lin+conv GMACs",
            "paper G",
            f"step ms (B={config['batch_size']})",
            f"infer ms (B={config['batch_size']})",
            "infer ms (B=1)",
            "paper ms",
        ]
        parts += [f"\nfine-tuning ({config['model']})", format_table(header, rows)]
    goals = results["summary"]["goals"]
    rows = [[key, fmt(g["value"]), g["target"], fmt(g["met"])] for key, g in goals.items()]
    parts += [
        f"\nsummary ({results['summary']['scope']})",
        format_table(["figure", "value", "goal", "met"], rows),
    ]
    return "\n".join(parts)


def _write_json(path: Path, results: dict[str, Any]) -> None:
    # Write then rename, so an interrupted run never leaves a truncated results file.
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(results, file, indent=1)
            file.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; results are shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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
    results = run_all(args.device, quick=args.quick, only=only)
    out = args.out
    if out is None:
        suffix = "-quick" if args.quick else ""
        if only != list(SECTIONS):
            suffix += "-" + "-".join(only)
        out = BENCHMARKS / "results" / f"{device_slug(results['device'])}{suffix}.json"
    _write_json(out, results)
    print(render(results))
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
