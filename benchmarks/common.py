"""What the benchmarks need beyond ``torch.utils.benchmark``: interleaving, checks, JSON.

Timing is ``torch.utils.benchmark``'s: each candidate gets a ``Timer``, measured with
``Timer.blocked_autorange`` (blocks of back-to-back calls, sized so the timer's own cost is
negligible; the accelerator is synchronised around each block, never inside one), and
the figure is ``Measurement.median`` over the blocks. :func:`measure` only interleaves:
it runs the autorange in ``rounds``, each round timing every candidate once in an order
rotated from round to round, so slow drifts of the machine (clock boost, other
processes, thermal limits) hit all candidates alike; ``Measurement.merge`` then pools the
rounds. Everything else here is what torch does not give: host-sync counting, the CUDA
graph and ``torch.compile(fullgraph=True)`` checks, device and host facts, JSON writing.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.benchmark import Measurement, Timer

from maskkit.files import atomic_write

__all__ = [
    "MEASUREMENTS",
    "TIMING_METHOD",
    "Candidate",
    "check_compile",
    "check_cuda_graph",
    "count_host_syncs",
    "device_slug",
    "environment",
    "fmt",
    "measure",
    "peak_memory_mib",
    "ratio",
    "resolve_device",
    "to_json",
    "write_json",
]

Candidate = Callable[[], object]

TIMING_METHOD = "torch.utils.benchmark.Timer.blocked_autorange, interleaved rounds"
# Key under which a section hands its Measurement objects to run.py for the printed
# ``Compare`` tables; run.py removes it before writing the JSON.
MEASUREMENTS = "_measurements"


def resolve_device(name: str) -> torch.device:
    """Turn ``"cpu"`` or ``"cuda"`` into a device, failing clearly when CUDA is missing."""
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device; use cpu")
    return torch.device(name)


def measure(
    candidates: Mapping[str, Candidate],
    *,
    label: str,
    sub_label: str = "",
    rounds: int = 5,
    min_run_time: float = 0.05,
    warmup: int = 1,
) -> dict[str, Measurement]:
    """Time every candidate with ``Timer.blocked_autorange``, interleaved in rounds.

    Args:
        candidates: name -> zero-argument callable doing one unit of work.
        label: the ``Compare`` table the measurements belong to (e.g. the section).
        sub_label: the table row (e.g. a size); the candidate name is the column.
        rounds: autorange runs per candidate; round r starts at candidate r (mod n).
        min_run_time: seconds of timed blocks per candidate per round (a call slower than
            that makes a one-call block; ``blocked_autorange``'s block-size search runs
            untimed calls first, which also warm the candidate up again each round).
        warmup: untimed calls per candidate before the first round (lazy initialisation
            would otherwise make the first block-size search pick blocks that are too short).

    Returns:
        name -> the rounds merged into one ``Measurement`` (times per call, in seconds).
    """
    names = list(candidates)
    timers = {
        name: Timer(
            stmt="fn()",
            globals={"fn": candidates[name]},
            label=label,
            sub_label=sub_label,
            description=name,
            num_threads=torch.get_num_threads(),  # Timer would run single-threaded otherwise
        )
        for name in names
    }
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    runs: dict[str, list[Measurement]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(timers[name].blocked_autorange(min_run_time=min_run_time))
    merged = {}
    for name in names:
        (merged[name],) = Measurement.merge(runs[name])
        # merge() drops the block sizes; keep them beside the figures.
        merged[name].metadata = {"block_sizes": [m.number_per_run for m in runs[name]]}
    return merged


def to_json(measurement: Measurement) -> dict[str, Any]:
    """A measurement's figures in ms per call: median, IQR, extremes and every block."""
    times = [t * 1e3 for t in measurement.times]
    return {
        "median_ms": measurement.median * 1e3,
        "iqr_ms": measurement.iqr * 1e3,
        "min_ms": min(times),
        "max_ms": max(times),
        "samples_ms": [round(t, 6) for t in times],
        "calls_per_sample": (measurement.metadata or {}).get("block_sizes"),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def peak_memory_mib(fn: Candidate, device: torch.device) -> float | None:
    """Peak CUDA memory allocated while ``fn`` runs, above what was allocated before, in MiB.

    Returns None on CPU, where torch keeps no allocator statistics.
    """
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20


def count_host_syncs(fn: Candidate, device: torch.device) -> int | None:
    """Host-device synchronisations ``fn`` triggers, counted with ``set_sync_debug_mode``.

    Returns None on CPU, where there is no device to wait for.
    """
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return sum("synchroniz" in str(w.message) for w in caught)


def _failure(error: BaseException) -> dict[str, Any]:
    last_line = traceback.format_exception_only(type(error), error)[-1].strip()
    return {"passed": False, "detail": last_line[:500]}


def _first_tensor(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def check_cuda_graph(
    fn: Callable[[], Any], check: Callable[[Any], str | None], device: torch.device
) -> dict[str, Any]:
    """Capture ``fn`` in a CUDA graph, replay it twice and check both outputs.

    Args:
        fn: the work to capture; its tensors must already live on the device.
        check: returns None when an output is right, else a sentence saying what is wrong.
        device: a CUDA device; on CPU the check is skipped (``passed`` is None).

    Returns:
        ``{"passed": bool | None, "detail": str}``.
    """
    if device.type != "cuda":
        return {"passed": None, "detail": "CUDA graphs need a CUDA device"}
    try:
        # Warm up on a side stream, as torch.cuda.graph requires for lazily initialised state.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn()
        outputs = []
        for _ in range(2):
            graph.replay()
            torch.cuda.synchronize(device)
            problem = check(static_out)
            if problem is not None:
                return {"passed": False, "detail": f"replay gave a wrong result: {problem}"}
            outputs.append(_first_tensor(static_out).clone())
        if torch.equal(outputs[0], outputs[1]):
            return {"passed": False, "detail": "two replays gave the same output (RNG frozen)"}
    except Exception as error:
        return _failure(error)
    return {"passed": True, "detail": "captured; 2 replays gave valid, different outputs"}


def check_compile(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    check: Callable[[Any], str | None],
    *,
    backend: str = "inductor",
) -> dict[str, Any]:
    """Compile ``fn`` with ``torch.compile(fullgraph=True)``, run it and check the output.

    ``fullgraph=True`` makes any graph break an error, so passing means the whole call is
    one graph. The backend does not change that verdict (graph breaks are found by dynamo,
    before the backend runs); ``"aot_eager"`` only skips inductor's code generation.

    Returns:
        ``{"passed": bool, "detail": str, "backend": str, "compile_s": float}``.
    """
    torch._dynamo.reset()
    begin = time.perf_counter()
    try:
        compiled = torch.compile(fn, fullgraph=True, backend=backend)
        output = compiled(*args)
        problem = check(output)
    except Exception as error:
        result = _failure(error)
    else:
        result = (
            {"passed": True, "detail": "one graph, valid output"}
            if problem is None
            else {"passed": False, "detail": f"compiled output is wrong: {problem}"}
        )
    result.update(backend=backend, compile_s=round(time.perf_counter() - begin, 2))
    return result


def _version(module_name: str) -> str | None:
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    return str(getattr(module, "__version__", "unknown"))


def environment(device: torch.device) -> dict[str, Any]:
    """Device name, library versions and host facts to store beside the figures."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "device": name,
        "versions": {
            "torch": torch.__version__,
            "timm": _version("timm"),
            "maskkit": _version("maskkit"),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cuda": torch.version.cuda if device.type == "cuda" else None,
        },
        "host": {
            "cpu_count": os.cpu_count(),
            # Other processes on the machine slow every candidate alike but add noise.
            "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "executable": sys.executable,
        },
        "timing_method": TIMING_METHOD,
    }


def device_slug(name: str) -> str:
    """File-name-safe form of a device name: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Write ``results`` to ``path`` atomically: an interrupted run leaves the old file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as file:
        json.dump(results, file, indent=1)
        file.write("\n")


def fmt(value: Any, digits: int = 3) -> str:
    """A figure for a table: "n/a" for None, yes/no for bools, short floats."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"
    return str(value)
