"""The MIM strategies of issue 13 against the per-sample generators they replace.

Timed with ``common.measure`` (``torch.utils.benchmark`` blocks, interleaved rounds), in one
process, for B in {64, 256, 1024} and L in {196, 784} (14 x 14 and 28 x 28 grids):

========================  =====================================================================
``mae_floor``             MAE's ``random_masking`` index part, ``bench_masking.mae_floor``.
``block``                 ``BlockMasker(0.4)`` (BEiT masks 75 of 196 patches, about 0.4).
``beit_reference``        BEiT's generator (microsoft/unilm ``masking_generator.py``) for the same
                          count, min 16 patches per block: one numpy mask per sample (Python
                          rejection loop), stacked into a tensor, as its data loader does.
``unit``                  ``UnitMasker(0.6, unit=2)``.
``simmim_reference``      SimMIM's ``MaskGenerator`` (microsoft/SimMIM): per sample a numpy
                          permutation of the units, repeated up to patches; stacked.
``attmask``               ``AttMaskMasker(0.3, mode="hints")`` on (B, L) attention.
``attmask_reference``     AttMask's ``AttMask`` (gkakogeorgiou/attmask): batched argsort + scatter,
                          the per-sample coin by boolean indexing, hints by ``multinomial``.
``hpm``                   ``HardPatchMasker(0.75, alpha=0.5)`` on (B, L) predicted losses.
``hpm_reference``         HPM's ``generate_mask`` (Haochen-Wang409/HPM): argsort, then a Python
                          loop over the batch with ``.cpu().numpy()``, ``np.delete`` and
                          ``np.random.shuffle`` per sample, then the inverse argsort and mask.
``noise``                 ``NoisePatternMasker(0.75, color="green")``: fresh filtered noise.
``colormae_reference``    ColorMAE's ``ColorMasking`` (carlosh93/ColorMAE): a random crop and flips
                          of a precomputed pattern stack, normalised, two argsorts, the mask.
========================  =====================================================================

Ratios are ``reference / maskkit`` (how many times faster maskkit is) and
``maskkit / mae_floor`` (cost relative to MAE's random masking), from the medians
(``ratios``) and, as a figure robust to other processes on a shared CPU, from the fastest
block of each candidate (``ratios_min``).

    python benchmarks/run.py --device cpu --threads 1 --only strategies   # ~5 min on 2 cores
    python benchmarks/bench_strategies.py --quick                         # ~20 s smoke run
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_masking import mae_floor
from common import (
    MEASUREMENTS,
    TIMING_METHOD,
    environment,
    fmt,
    measure,
    ratio,
    resolve_device,
    write_json,
)

from maskkit.attmask import AttMaskMasker
from maskkit.blockwise import BlockMasker, UnitMasker
from maskkit.functional import split_counts
from maskkit.hardpatch import HardPatchMasker
from maskkit.noise import NoisePatternMasker, color_noise

__all__ = [
    "BATCH_SIZES",
    "NUM_PATCHES",
    "attmask_reference",
    "beit_reference",
    "colormae_reference",
    "hpm_reference",
    "run",
    "simmim_reference",
]

BATCH_SIZES = (64, 256, 1024)
NUM_PATCHES = (196, 784)
SUMMARY_SIZE = (256, 196)
STRATEGIES = {
    "block": "beit_reference",
    "unit": "simmim_reference",
    "attmask": "attmask_reference",
    "hpm": "hpm_reference",
    "noise": "colormae_reference",
}
# Issue 13's targets on CPU: (summary key, comparison, threshold).
TARGETS = [
    ("block_vs_beit_reference", ">=", 20.0),
    ("hpm_vs_hpm_reference", ">=", 10.0),
    *[(f"{name}_vs_mae_floor", "<=", 2.0) for name in STRATEGIES],
]


# ---- references: the original algorithms, re-implemented for timing -----------------------


class _BEiTGenerator:
    """BEiT's block-wise mask generator for one sample (the algorithm of microsoft/unilm)."""

    def __init__(self, grid: tuple[int, int], num_masking: int, min_patches: int = 16) -> None:
        self.height, self.width = grid
        self.num_masking = num_masking
        self.min_patches = min_patches
        self.max_patches = num_masking  # BEiT's default max_num_patches=None
        self.log_aspect = (math.log(0.3), math.log(1 / 0.3))

    def _place_block(self, mask: np.ndarray, budget: int) -> int:
        added = 0
        for _attempt in range(10):
            area = random.uniform(self.min_patches, budget)
            aspect = math.exp(random.uniform(*self.log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if w < self.width and h < self.height:
                top = random.randint(0, self.height - h)
                left = random.randint(0, self.width - w)
                already = mask[top : top + h, left : left + w].sum()
                if 0 < h * w - already <= budget:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                added += 1
                if added > 0:
                    break
        return added

    def __call__(self) -> np.ndarray:
        mask = np.zeros((self.height, self.width), dtype=np.int64)
        count = 0
        while count < self.num_masking:
            budget = min(self.num_masking - count, self.max_patches)
            added = self._place_block(mask, budget)
            if added == 0:
                break
            count += added
        return mask


def beit_reference(
    generator: _BEiTGenerator, batch_size: int, device: torch.device
) -> torch.Tensor:
    """B per-sample BEiT masks, stacked and moved to ``device`` as the data loader does."""
    masks = np.stack([generator() for _ in range(batch_size)])
    return torch.from_numpy(masks).to(device).flatten(1).bool()


def simmim_reference(
    grid: tuple[int, int], unit: int, mask_ratio: float, batch_size: int, device: torch.device
) -> torch.Tensor:
    """B per-sample SimMIM masks: a random subset of ``ceil(units * ratio)`` units."""
    units_h, units_w = grid[0] // unit, grid[1] // unit
    token_count = units_h * units_w
    mask_count = int(np.ceil(token_count * mask_ratio))
    masks = []
    for _ in range(batch_size):
        chosen = np.random.permutation(token_count)[:mask_count]
        mask = np.zeros(token_count, dtype=np.int64)
        mask[chosen] = 1
        mask = mask.reshape(units_h, units_w).repeat(unit, axis=0).repeat(unit, axis=1)
        masks.append(mask)
    return torch.from_numpy(np.stack(masks)).to(device).flatten(1).bool()


def attmask_reference(
    attention: torch.Tensor, masking_prob: float, ratio: float, show_max: float
) -> torch.Tensor:
    """AttMask-Hints as released: top-N boolean mask, per-sample coin, revealed hints."""

    def top_mask(scores: torch.Tensor, share: float, prob: float) -> torch.Tensor:
        count = int(scores.shape[1] * share)
        mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        mask.scatter_(1, torch.argsort(scores, descending=True)[:, :count], True)
        coin = torch.rand(scores.shape[0], device=scores.device)
        mask[coin > prob] = False  # boolean indexing: a host sync on CUDA
        return mask

    masks = top_mask(attention, ratio, masking_prob)
    top = top_mask(attention, show_max, 1.0)
    reveal = int(show_max * ratio * attention.shape[1])
    chosen = torch.multinomial(top.float(), reveal)
    return masks.scatter_(1, chosen, False)


def hpm_reference(losses: torch.Tensor, mask_ratio: float, alpha: float) -> torch.Tensor:
    """HPM's generate_mask: hardest ``int(M * alpha)`` by loss, the rest shuffled per sample."""
    batch_size, num_patches = losses.shape
    len_keep = int(num_patches * (1 - mask_ratio))
    ids_by_loss = torch.argsort(losses, dim=1)
    ids_shuffle = torch.zeros_like(ids_by_loss)
    num_hard = int((num_patches - len_keep) * alpha)
    for i in range(batch_size):  # HPM's loop, with its host round trips
        ids_shuffle[i, -num_hard:] = ids_by_loss[i, -num_hard:]
        everything = torch.arange(num_patches, device=losses.device)
        rest = np.delete(everything.cpu().numpy(), ids_shuffle[i, -num_hard:].cpu().numpy())
        np.random.shuffle(rest)
        ids_shuffle[i, : num_patches - num_hard] = torch.LongTensor(rest).to(losses.device)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch_size, num_patches, device=losses.device)
    mask[:, :len_keep] = 0
    return torch.gather(mask, 1, ids_restore)


def colormae_reference(
    patterns: torch.Tensor, side: int, mask_ratio: float, batch_size: int
) -> torch.Tensor:
    """ColorMAE's masks from a precomputed (P, S, S) pattern stack (P >= B)."""
    size = patterns.shape[-1]
    top, left = random.randint(0, size - side), random.randint(0, size - side)
    windows = patterns[:batch_size, top : top + side, left : left + side]
    if random.random() < 0.5:
        windows = windows.flip(-1)
    if random.random() < 0.5:
        windows = windows.flip(-2)
    windows = windows / windows.amax(dim=(-2, -1), keepdim=True)
    flat = windows.reshape(batch_size, -1)
    num_patches = flat.shape[1]
    len_keep = int(num_patches * (1 - mask_ratio))
    ids_shuffle = torch.argsort(flat, dim=1, descending=True)  # strongest noise kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch_size, num_patches, device=flat.device)
    mask[:, :len_keep] = 0
    return torch.gather(mask, 1, ids_restore)


# ---- timing --------------------------------------------------------------------------------


def _candidates(batch_size: int, num_patches: int, device: torch.device) -> dict[str, Callable]:
    side = math.isqrt(num_patches)
    grid = (side, side)
    block, unit = BlockMasker(0.4), UnitMasker(0.6, unit=2)
    attmask = AttMaskMasker(0.3, mode="hints", validate=False)
    hpm = HardPatchMasker(0.75, alpha=0.5, validate=False)
    noise = NoisePatternMasker(0.75, color="green")
    beit = _BEiTGenerator(grid, split_counts(num_patches, 0.4).masked)
    data = torch.Generator(device=device).manual_seed(0)
    attention = torch.rand(batch_size, num_patches, device=device, generator=data)
    losses = torch.randn(batch_size, num_patches, device=device, generator=data)
    patterns = color_noise(batch_size, (32, 32), color="green", device=device, generator=data)
    return {
        "mae_floor": lambda: mae_floor(batch_size, num_patches, device),
        "block": lambda: block(batch_size, num_patches, device=device),
        "beit_reference": lambda: beit_reference(beit, batch_size, device),
        "unit": lambda: unit(batch_size, num_patches, device=device),
        "simmim_reference": lambda: simmim_reference(grid, 2, 0.6, batch_size, device),
        "attmask": lambda: attmask(batch_size, num_patches, attention),
        "attmask_reference": lambda: attmask_reference(attention, 0.5, 0.3, 0.1),
        "hpm": lambda: hpm(batch_size, num_patches, losses),
        "hpm_reference": lambda: hpm_reference(losses, 0.75, 0.5),
        "noise": lambda: noise(batch_size, num_patches, device=device),
        "colormae_reference": lambda: colormae_reference(patterns, side, 0.75, batch_size),
    }


def _ratios(row: dict[str, float]) -> dict[str, float | None]:
    ratios = {}
    for name, reference in STRATEGIES.items():
        ratios[f"{name}_vs_{reference}"] = ratio(row[reference], row[name])
        ratios[f"{name}_vs_mae_floor"] = ratio(row[name], row["mae_floor"])
    return ratios


def _holds(value: float | None, op: str, limit: float) -> bool:
    return value is not None and (value >= limit if op == ">=" else value <= limit)


def run(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """Time every strategy and its reference; return a JSON-able dict.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        quick: B = 64 and L = 196 only, short timing: a smoke run.

    Returns:
        ``{"timing", "sizes", "medians_ms", "min_ms", "iqr_ms", "ratios", "ratios_min",
        "summary", "summary_min", "summary_size", "targets", "wall_s"}`` and the
        measurements for run.py's tables under ``common.MEASUREMENTS``;
        ``medians_ms[size][candidate]`` in ms per call, ``ratios[size]`` with
        ``<strategy>_vs_<reference>`` (reference / maskkit) and ``<strategy>_vs_mae_floor``
        (maskkit / floor), ``summary`` the ratios at B = 256, L = 196 (or the quick size);
        the ``_min`` variants use each candidate's fastest block.
    """
    dev = resolve_device(device)
    start = time.perf_counter()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    sizes = [(64, 196)] if quick else [(b, n) for n in NUM_PATCHES for b in BATCH_SIZES]
    rounds, min_run_time = (2, 0.05) if quick else (5, 0.2)
    medians: dict[str, dict[str, float]] = {}
    minima: dict[str, dict[str, float]] = {}
    iqrs: dict[str, dict[str, float]] = {}
    ratios: dict[str, dict[str, float | None]] = {}
    ratios_min: dict[str, dict[str, float | None]] = {}
    measurements = []
    for batch_size, num_patches in sizes:
        key = f"B={batch_size},L={num_patches}"
        candidates = _candidates(batch_size, num_patches, dev)
        measured = measure(
            candidates,
            label="strategies",
            sub_label=key,
            rounds=rounds,
            min_run_time=min_run_time,
        )
        measurements += measured.values()
        medians[key] = {name: m.median * 1e3 for name, m in measured.items()}
        minima[key] = {name: min(m.times) * 1e3 for name, m in measured.items()}
        iqrs[key] = {name: m.iqr * 1e3 for name, m in measured.items()}
        ratios[key] = _ratios(medians[key])
        ratios_min[key] = _ratios(minima[key])
    summary_key = "B=64,L=196" if quick else "B={},L={}".format(*SUMMARY_SIZE)
    summary, summary_min = ratios[summary_key], ratios_min[summary_key]
    targets = {
        key: {
            "target": f"{op} {limit}",
            "value": summary[key],
            "value_min": summary_min[key],
            "met": _holds(summary[key], op, limit),
        }
        for key, op, limit in TARGETS
    }
    return {
        "timing": {"method": TIMING_METHOD, "rounds": rounds, "min_run_time_s": min_run_time},
        "sizes": [list(size) for size in sizes],
        "medians_ms": medians,
        "min_ms": minima,
        "iqr_ms": iqrs,
        "ratios": ratios,
        "ratios_min": ratios_min,
        "summary": dict(summary),
        "summary_min": dict(summary_min),
        "summary_size": summary_key,
        "targets": targets,
        "wall_s": time.perf_counter() - start,
        MEASUREMENTS: measurements,
    }


def format_table(result: dict[str, Any]) -> str:
    """Medians (ms) per size, then the ratios, as plain-text tables."""
    lines = [
        f"{key}: " + ", ".join(f"{name} {fmt(ms)}" for name, ms in row.items())
        for key, row in result["medians_ms"].items()
    ]
    lines.append("")
    header = f"{'size':22s}" + "".join(
        f"{name + ' x ref':>16s}{name + '/floor':>14s}" for name in STRATEGIES
    )
    lines.append(header)
    for label, table in (("median", result["ratios"]), ("min", result["ratios_min"])):
        for key, row in table.items():
            cells = "".join(
                f"{fmt(row[f'{name}_vs_{ref}'], 1):>16s}{fmt(row[f'{name}_vs_mae_floor'], 2):>14s}"
                for name, ref in STRATEGIES.items()
            )
            lines.append(f"{key + ' ' + label:22s}{cells}")
    lines.append("")
    for name, target in result["targets"].items():
        status = "met" if target["met"] else "MISSED"
        lines.append(
            f"{name:34s} {fmt(target['value'], 2):>8s} (min-based {fmt(target['value_min'], 2)})"
            f"  target {target['target']:8s} {status}"
        )
    return "\n".join(lines)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    facts = environment(resolve_device(args.device))  # the load average before the run
    result = run(args.device, quick=args.quick)
    result.pop(MEASUREMENTS)
    print(format_table(result))
    if args.out is not None:
        write_json(args.out, {**facts, "quick": args.quick, **result})


if __name__ == "__main__":
    _main()
