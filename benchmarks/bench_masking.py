"""Masking overhead: maskkit's samplers against MAE's floor, AMT's path and a per-sample loop.

Candidates, all timed interleaved in one process for each batch size B and patch count L:

- ``mae_floor``: the index part of MAE's ``random_masking`` (facebookresearch/mae,
  ``models_mae.py``): ``argsort`` of uniform noise, its inverse by a second ``argsort``,
  the kept prefix and the gathered binary mask. Nothing cheaper gives a random split.
- ``maskkit_random``: ``RandomMasker(0.75)``, the same split as a :class:`maskkit.MaskSplit`.
- ``maskkit_sam``: ``SAMMasker(0.45, 0.30)`` with (B, L) weights, value check on.
- ``amt_sampling``: AMT's order (guijiejie/AMT): ``torch.multinomial(w, L)`` without
  replacement, its ``argsort`` inverse and the three boolean masks.
- ``hpm_loop``: a per-sample Python loop (HPM-style): one ``multinomial`` per sample.
- ``maskkit_sam_path`` / ``amt_path``: sampling plus taking the visible tokens of
  x (B, L, 768): maskkit's index gather vs AMT's boolean indexing (a host sync).
- ``gather_maskkit`` / ``gather_amt_boolean``: the token gather alone, on a fixed split.

Run alone: ``python benchmarks/run.py --only masking --device cpu``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from common import (
    MEASUREMENTS,
    check_compile,
    check_cuda_graph,
    count_host_syncs,
    measure,
    ratio,
    resolve_device,
    to_json,
)
from torch import Tensor

from maskkit import MaskSplit, RandomMasker, SAMMasker, split_counts

__all__ = [
    "MAE_MASK_RATIO",
    "TOKEN_WIDTH",
    "mae_floor",
    "amt_sampling",
    "amt_path",
    "hpm_loop",
    "split_problem",
    "run",
]

MAE_MASK_RATIO = 0.75
TOKEN_WIDTH = 768  # ViT-B/16 width: the tokens MAE/AMT gather after the patch embedding.
BATCH_SIZES = (64, 256, 1024)
NUM_PATCHES = (196, 784)  # ViT-B/16 at 224 px and at 448 px
SUMMARY_SIZE = (256, 196)


def mae_floor(batch_size: int, num_patches: int, device: torch.device) -> tuple[Tensor, ...]:
    """MAE's random masking without the token gather: ``(ids_keep, mask, ids_restore)``."""
    len_keep = int(num_patches * (1 - MAE_MASK_RATIO))
    noise = torch.rand(batch_size, num_patches, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(batch_size, num_patches, device=device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return ids_keep, mask, ids_restore


def amt_sampling(weights: Tensor, *, mask_ratio: float, throw_ratio: float) -> tuple[Tensor, ...]:
    """AMT's weighted order: multinomial draw order, its inverse and boolean group masks.

    Returns:
        ``(order, ids_restore, is_masked, is_thrown, is_visible)``, each (B, L).
    """
    num_patches = weights.shape[1]
    _, n_masked, n_thrown = split_counts(num_patches, mask_ratio, throw_ratio)
    order = torch.multinomial(weights, num_patches, replacement=False)
    ids_restore = torch.argsort(order, dim=1)
    is_masked = ids_restore < n_masked
    is_thrown = (ids_restore >= n_masked) & (ids_restore < n_masked + n_thrown)
    is_visible = ids_restore >= n_masked + n_thrown
    return order, ids_restore, is_masked, is_thrown, is_visible


def amt_path(x: Tensor, weights: Tensor, *, mask_ratio: float, throw_ratio: float) -> Tensor:
    """AMT's sampling plus boolean indexing of the visible tokens: x (B, L, D) -> (B, K, D).

    The boolean index has a data-dependent size, so CUDA must report it to the host: a sync.
    """
    *_, is_visible = amt_sampling(weights, mask_ratio=mask_ratio, throw_ratio=throw_ratio)
    return x[is_visible].reshape(x.shape[0], -1, x.shape[-1])


def hpm_loop(weights: Tensor, *, mask_ratio: float, throw_ratio: float) -> tuple[Tensor, Tensor]:
    """Per-sample sampling in a Python loop (HPM-style): ``(order, labels)``, each (B, L)."""
    num_patches = weights.shape[1]
    _, n_masked, n_thrown = split_counts(num_patches, mask_ratio, throw_ratio)
    orders, labels = [], []
    for row in weights:
        order = torch.multinomial(row, num_patches, replacement=False)
        label = torch.zeros(num_patches, dtype=torch.int8, device=weights.device)
        label[order[:n_masked]] = 1
        label[order[n_masked : n_masked + n_thrown]] = -1
        orders.append(order)
        labels.append(label)
    return torch.stack(orders), torch.stack(labels)


def split_problem(split: MaskSplit, n_visible: int) -> str | None:
    """None if ``split`` is a valid partition with ``n_visible`` visible patches per sample."""
    batch_size, num_patches = split.ids_shuffle.shape
    expected = torch.arange(num_patches, device=split.ids_shuffle.device).expand(batch_size, -1)
    if not torch.equal(split.ids_shuffle.sort(dim=1).values, expected):
        return "ids_shuffle rows are not permutations"
    if split.visible.shape != (batch_size, n_visible):
        return f"visible has shape {tuple(split.visible.shape)}, expected {(batch_size, n_visible)}"
    if not torch.equal(split.is_visible().sum(1), torch.full_like(split.visible[:, 0], n_visible)):
        return "labels disagree with the visible indices"
    return None


def _candidates(
    batch_size: int, num_patches: int, device: torch.device
) -> dict[str, Callable[[], object]]:
    sam = SAMMasker(0.45, 0.30)
    random = RandomMasker(MAE_MASK_RATIO)
    generator = torch.Generator(device=device).manual_seed(batch_size * num_patches)
    # Attention-like weights: positive, uneven, fixed before timing.
    weights = torch.rand(batch_size, num_patches, device=device, generator=generator) ** 4 + 1e-3
    x = torch.randn(batch_size, num_patches, TOKEN_WIDTH, device=device, generator=generator)
    fixed = sam(batch_size, num_patches, weights)
    fixed_is_visible = fixed.is_visible()
    ratios = {"mask_ratio": sam.mask_ratio, "throw_ratio": sam.throw_ratio}
    return {
        "mae_floor": lambda: mae_floor(batch_size, num_patches, device),
        "maskkit_random": lambda: random(batch_size, num_patches, device=device),
        "maskkit_sam": lambda: sam(batch_size, num_patches, weights),
        "amt_sampling": lambda: amt_sampling(weights, **ratios),
        "hpm_loop": lambda: hpm_loop(weights, **ratios),
        "maskkit_sam_path": lambda: sam(batch_size, num_patches, weights).gather_visible(x),
        "amt_path": lambda: amt_path(x, weights, **ratios),
        "gather_maskkit": lambda: fixed.gather_visible(x),
        "gather_amt_boolean": lambda: x[fixed_is_visible].reshape(batch_size, -1, TOKEN_WIDTH),
    }


def _sync_counts(device: torch.device) -> dict[str, int | None]:
    batch_size, num_patches = SUMMARY_SIZE
    candidates = _candidates(batch_size, num_patches, device)
    for fn in candidates.values():  # lazy initialisation syncs once; count steady state
        fn()
    return {name: count_host_syncs(fn, device) for name, fn in candidates.items()}


def _graph_and_compile(device: torch.device, *, quick: bool) -> dict[str, Any]:
    batch_size, num_patches = SUMMARY_SIZE
    sam = SAMMasker(0.45, 0.30)
    sam_unchecked = SAMMasker(0.45, 0.30, validate=False)
    random = RandomMasker(MAE_MASK_RATIO)
    weights = torch.rand(batch_size, num_patches, device=device) + 1e-3
    n_visible_sam = split_counts(num_patches, 0.45, 0.30).visible
    n_visible_random = split_counts(num_patches, MAE_MASK_RATIO).visible

    def sam_ok(split: MaskSplit) -> str | None:
        return split_problem(split, n_visible_sam)

    def random_ok(split: MaskSplit) -> str | None:
        return split_problem(split, n_visible_random)

    # Inductor's C++ code generation takes ~30 s per graph on a small CPU; dynamo alone
    # decides fullgraph, so the quick CPU run stops after AOT autograd.
    backend = "aot_eager" if quick and device.type == "cpu" else "inductor"
    return {
        "cuda_graph": {
            "maskkit_sam": check_cuda_graph(
                lambda: sam(batch_size, num_patches, weights), sam_ok, device
            ),
            "maskkit_random": check_cuda_graph(
                lambda: random(batch_size, num_patches, device=device), random_ok, device
            ),
        },
        "compile_fullgraph": {
            "maskkit_sam": check_compile(
                lambda w: sam_unchecked(batch_size, num_patches, w),
                (weights,),
                sam_ok,
                backend=backend,
            ),
            "maskkit_random": check_compile(
                lambda: random(batch_size, num_patches, device=device),
                (),
                random_ok,
                backend=backend,
            ),
        },
    }


def run(device: str, *, quick: bool) -> dict[str, Any]:
    """Time every candidate for each (B, L) and run the sync, graph and compile checks.

    Returns:
        ``{"sizes", "settings", "timings", "ratios", "host_syncs", "cuda_graph",
        "compile_fullgraph", "summary"}``; timings in ms per call (``common.to_json``).
    """
    dev = resolve_device(device)
    sizes = [(b, n) for b in BATCH_SIZES for n in NUM_PATCHES]
    if quick:  # the two sizes the summary reads: B=256 (headline) and B=64 (pre-training)
        sizes = [(64, 196), SUMMARY_SIZE]
    settings = {
        "rounds": 3 if quick else 7,
        "min_run_time": 0.01 if quick else 0.05,
        "warmup": 1 if quick else 3,
    }
    timings: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    measurements = []
    for batch_size, num_patches in sizes:
        key = f"B{batch_size}_L{num_patches}"
        candidates = _candidates(batch_size, num_patches, dev)
        result = measure(candidates, label="masking", sub_label=key, **settings)
        measurements += result.values()
        timings[key] = {name: to_json(m) for name, m in result.items()}
        median = {name: m.median for name, m in result.items()}
        ratios[key] = {
            "sam_vs_mae_floor": ratio(median["maskkit_sam"], median["mae_floor"]),
            "random_vs_mae_floor": ratio(median["maskkit_random"], median["mae_floor"]),
            "amt_sampling_vs_sam": ratio(median["amt_sampling"], median["maskkit_sam"]),
            "hpm_loop_vs_sam": ratio(median["hpm_loop"], median["maskkit_sam"]),
            "amt_path_vs_sam": ratio(median["amt_path"], median["maskkit_sam_path"]),
            "gather_amt_vs_maskkit": ratio(median["gather_amt_boolean"], median["gather_maskkit"]),
        }
        del candidates
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    syncs = _sync_counts(dev)
    checks = _graph_and_compile(dev, quick=quick)
    summary_key = "B{}_L{}".format(*SUMMARY_SIZE)
    return {
        "sizes": {
            "batch_sizes": sorted({b for b, _ in sizes}),
            "num_patches": sorted({n for _, n in sizes}),
            "token_width": TOKEN_WIDTH,
            "token_dtype": "float32",
            "sam_ratios": {"mask_ratio": 0.45, "throw_ratio": 0.30},
            "mae_mask_ratio": MAE_MASK_RATIO,
        },
        "settings": settings,
        "timings": timings,
        "ratios": ratios,
        "host_syncs": {"size": summary_key, "counts": syncs},
        **checks,
        "summary": {
            "sam_vs_mae_floor": ratios[summary_key]["sam_vs_mae_floor"],
            "amt_path_vs_sam": ratios[summary_key]["amt_path_vs_sam"],
            "host_syncs": syncs["maskkit_sam_path"],
            "sam_ms_B64_L196": timings["B64_L196"]["maskkit_sam"]["median_ms"],
        },
        MEASUREMENTS: measurements,
    }
