"""Shared benchmark machinery: interleaved timing, medians, peak memory, sync and graph checks.

Every benchmark times its candidates in the same process and interleaves them: each
repeat runs every candidate once, in an order rotated from repeat to repeat, so slow
drifts of the machine (clock boost, other processes, thermal limits) hit all of them
alike. One sample is the mean of ``inner`` back-to-back calls, chosen per candidate so
that a sample lasts about ``target_ms``; the reported figure is the median of the samples.

On CUDA a sample is timed with CUDA events around the ``inner`` calls (no host sync in
between); on CPU with ``time.perf_counter``.
"""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = [
    "fmt",
    "Candidate",
    "resolve_device",
    "synchronize",
    "time_call",
    "compare",
    "ratio",
    "peak_memory_mib",
    "count_host_syncs",
    "check_cuda_graph",
    "check_compile",
    "environment",
    "device_slug",
    "format_table",
]

Candidate = Callable[[], object]


def resolve_device(name: str) -> torch.device:
    """Turn ``"cpu"`` or ``"cuda"`` into a device, failing clearly when CUDA is missing."""
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device; use cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Candidate, device: torch.device, *, inner: int = 1) -> float:
    """Milliseconds per call of ``fn``, averaged over ``inner`` back-to-back calls."""
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / inner
    begin = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - begin) * 1e3 / inner


def _calibrate(fn: Candidate, device: torch.device, target_ms: float) -> int:
    if target_ms <= 0:
        return 1
    per_call = time_call(fn, device)
    if per_call >= target_ms:
        return 1
    # Two more calls so the estimate is not dominated by one slow outlier.
    per_call = min(per_call, *(time_call(fn, device) for _ in range(2)))
    return max(1, min(1000, math.ceil(target_ms / max(per_call, 1e-3))))


def compare(
    candidates: Mapping[str, Candidate],
    device: torch.device,
    *,
    repeats: int = 15,
    warmup: int = 2,
    target_ms: float = 20.0,
) -> dict[str, dict[str, Any]]:
    """Time every candidate, interleaved, and return per-candidate medians and samples.

    Args:
        candidates: name -> zero-argument callable doing one unit of work.
        device: where the work runs (picks CUDA events or ``perf_counter``).
        repeats: samples per candidate; each repeat runs every candidate once.
        warmup: untimed calls per candidate first (allocator, kernels, lazy init).
        target_ms: approximate length of one sample; sets the inner loop count (0: one
            call per sample, for work that takes long enough alone, such as a training step).

    Returns:
        name -> ``{"median_ms", "min_ms", "max_ms", "samples_ms", "inner"}``, all per call.
    """
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    synchronize(device)
    inner = {name: _calibrate(candidates[name], device, target_ms) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(time_call(candidates[name], device, inner=inner[name]))
    return {
        name: {
            "median_ms": statistics.median(samples[name]),
            "min_ms": min(samples[name]),
            "max_ms": max(samples[name]),
            "samples_ms": [round(s, 6) for s in samples[name]],
            "inner": inner[name],
        }
        for name in names
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
        "timing_method": "cuda_events" if device.type == "cuda" else "perf_counter",
    }


def device_slug(name: str) -> str:
    """File-name-safe form of a device name: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned plain-text table."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) for row in rows]
    rule = "  ".join("-" * width for width in widths)
    head = "  ".join(cell.ljust(width) for cell, width in zip(header, widths))
    return "\n".join([head, rule, *lines])


def fmt(value: Any, digits: int = 3) -> str:
    """A figure for a table: "n/a" for None, yes/no for bools, short floats."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"
    return str(value)
