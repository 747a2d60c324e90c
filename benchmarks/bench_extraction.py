"""Attention extraction: one ``AttentionExtractor`` pass against a plain forward and timm.

Candidates, timed interleaved in one process on the same images (eval mode, no grad):

- ``plain_forward``: ``model.forward_features(images)`` with timm's fused attention, the
  pass a map refresh would otherwise be compared with.
- ``extractor``: ``AttentionExtractor(model)(images)``, the default map (last block, cls
  row, min-max per head, mean over heads). Its fast path stops the forward at the last
  block's attention, so that block's MLP, the final norm and the head never run.
- ``timm_attention_extract``: timm's ``timm.utils.AttentionExtract`` (forward hooks on every
  ``attn_drop``) on a copy of the model with fused attention off everywhere, since it
  captures nothing otherwise; it keeps (B, heads, N, N) maps for all blocks.
- ``timm_attention_extract_last``: the same, hooking and unfusing the last block only (the
  cost of maskkit's general path for EVA / BEiT attention).

ViT-B/16 at 224 px, B = 64 on CUDA (float32 and bf16 autocast), B = 4 on CPU (float32);
``quick``: a 4-block ViT-Tiny, B = 8. Peak memory (CUDA) is ``torch.cuda.max_memory_allocated``
above what was allocated before the call.

Run alone: ``python benchmarks/bench_extraction.py --device cuda``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
from collections.abc import Callable
from typing import Any

import timm
import torch
from common import MEASUREMENTS, measure, peak_memory_mib, ratio, resolve_device, to_json
from timm.utils import AttentionExtract
from torch import nn

from maskkit import AttentionExtractor

__all__ = ["run"]

CANDIDATES = (
    "plain_forward",
    "extractor",
    "timm_attention_extract",
    "timm_attention_extract_last",
)


def _config(device: torch.device, *, quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "model": "vit_tiny_patch16_224",
            "model_kwargs": {"depth": 4},
            "batch_size": 8,
            "precisions": ["float32"],
            "settings": {"rounds": 3, "min_run_time": 0.01, "warmup": 1},
        }
    on_cuda = device.type == "cuda"
    return {
        "model": "vit_base_patch16_224",
        "model_kwargs": {},
        "batch_size": 64 if on_cuda else 4,
        "precisions": ["float32", "bfloat16"] if on_cuda else ["float32"],
        "settings": {"rounds": 10, "min_run_time": 0.05, "warmup": 3}
        if on_cuda
        else {"rounds": 5, "min_run_time": 0.01, "warmup": 1},
    }


def _unfused_copy(model: nn.Module, blocks: list[int]) -> nn.Module:
    """A copy of ``model`` with fused attention off in the given blocks."""
    unfused = copy.deepcopy(model)
    for index in blocks:
        unfused.blocks[index].attn.fused_attn = False
    return unfused


def _candidates(
    model: nn.Module, images: torch.Tensor, precision: str
) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    """Zero-argument calls for each candidate, and the timm extractors (for a check)."""
    depth = len(model.blocks)
    last = depth - 1
    timm_all = AttentionExtract(_unfused_copy(model, list(range(depth))), method="hook")
    timm_last = AttentionExtract(
        _unfused_copy(model, [last]), names=[f"blocks.{last}.attn.attn_drop"], method="hook"
    )
    extractor = AttentionExtractor(model)

    def autocast() -> contextlib.AbstractContextManager[object]:
        if precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(images.device.type, dtype=torch.bfloat16)

    def timed(fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            with torch.no_grad(), autocast():
                return fn()

        return call

    calls = {
        "plain_forward": timed(lambda: model.forward_features(images)),
        "extractor": timed(lambda: extractor(images)),
        "timm_attention_extract": timed(lambda: timm_all(images)),
        "timm_attention_extract_last": timed(lambda: timm_last(images)),
    }
    return calls, {"extractor": extractor, "timm_last": timm_last}


def _max_abs_diff_vs_timm(
    extractor: AttentionExtractor, timm_last: AttentionExtract, images: torch.Tensor
) -> float:
    """Largest |maskkit - timm| over the default maps, timm's reduced by hand (float32)."""
    with torch.no_grad():
        ours = extractor(images)
        (attn,) = timm_last(images).values()
    patches = attn[:, :, 0, extractor.num_prefix_tokens :].float()
    low = patches.amin(dim=-1, keepdim=True)
    reference = ((patches - low) / (patches.amax(dim=-1, keepdim=True) - low)).mean(dim=1)
    return float((ours.flatten(1) - reference).abs().max())


def run(device: str, *, quick: bool) -> dict[str, Any]:
    """Time one extraction pass against a plain forward and timm's ``AttentionExtract``.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        quick: A tiny model and batch (a smoke run).

    Returns:
        ``{"config", "timings", "peak_memory_mib", "ratios", "max_abs_diff_vs_timm",
        "extraction_vs_forward", "timm_extract_vs_forward", "extraction_peak_mib",
        "forward_peak_mib", "timm_extract_peak_mib"}``: timings per call in ms (medians and
        raw samples) and ratios of medians per precision; the top-level figures are float32.
        Peak memory is None on CPU.
    """
    dev = resolve_device(device)
    config = _config(dev, quick=quick)
    torch.manual_seed(0)
    model = timm.create_model(config["model"], pretrained=False, **config["model_kwargs"])
    model = model.to(dev).eval()
    size = model.patch_embed.img_size
    images = torch.randn(config["batch_size"], 3, *size, device=dev)

    timings: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    max_abs_diff = None
    measurements = []
    for precision in config["precisions"]:
        calls, extractors = _candidates(model, images, precision)
        if precision == "float32":
            max_abs_diff = _max_abs_diff_vs_timm(
                extractors["extractor"], extractors["timm_last"], images
            )
        measured = measure(calls, label="extraction", sub_label=precision, **config["settings"])
        measurements += measured.values()
        timings[precision] = {name: to_json(m) for name, m in measured.items()}
        memory[precision] = {name: peak_memory_mib(calls[name], dev) for name in CANDIDATES}
        median = {name: m.median for name, m in measured.items()}
        ratios[precision] = {
            "extraction_vs_forward": ratio(median["extractor"], median["plain_forward"]),
            "timm_extract_vs_forward": ratio(
                median["timm_attention_extract"], median["plain_forward"]
            ),
            "timm_extract_last_vs_forward": ratio(
                median["timm_attention_extract_last"], median["plain_forward"]
            ),
            "timm_extract_vs_extraction": ratio(
                median["timm_attention_extract"], median["extractor"]
            ),
        }
        del calls, extractors
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    headline = ratios["float32"]
    return {
        "config": {
            "model": config["model"],
            "model_kwargs": config["model_kwargs"],
            "batch_size": config["batch_size"],
            "image_size": list(size),
            "precisions": config["precisions"],
            "settings": config["settings"],
            "candidates": list(CANDIDATES),
        },
        "timings": timings,
        "peak_memory_mib": memory,
        "ratios": ratios,
        "max_abs_diff_vs_timm": max_abs_diff,
        "extraction_vs_forward": headline["extraction_vs_forward"],
        "timm_extract_vs_forward": headline["timm_extract_vs_forward"],
        "extraction_peak_mib": memory["float32"]["extractor"],
        "forward_peak_mib": memory["float32"]["plain_forward"],
        "timm_extract_peak_mib": memory["float32"]["timm_attention_extract"],
        MEASUREMENTS: measurements,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny model and batch")
    args = parser.parse_args()
    result = run(args.device, quick=args.quick)
    del result[MEASUREMENTS]
    print(json.dumps(result, indent=2))
