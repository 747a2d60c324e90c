"""Fine-tuning cost of SAM (MSMAE Sec. 3.3): 49 visible tokens + cls against all 196 tokens.

A timm ViT-B/16 at 224 px (global average pool, as MSMAE fine-tunes) is run two ways:

- ``full``: timm's own ``model(images)`` on every token.
- ``sam``: ``SAMMasker(0.45, 0.30)`` draws a split, then
  ``maskkit.forward_features_visible(model, images, split.visible)`` and ``model.forward_head``
  encode only the 49 visible patches and the cls token.

Figures: forward FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``), one
training step (forward, backward, AdamW step) per batch, and inference (eval, no_grad).
A model fine-tuned with SAM is evaluated on all tokens (MSMAE), so its test-time cost is the
``full`` inference figure; the ``sam`` inference row is given for reference only.

Run alone: ``python benchmarks/run.py --only finetune --device cpu``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm
import torch
import torch.nn.functional as F
from common import MEASUREMENTS, measure, peak_memory_mib, ratio, resolve_device, to_json
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from maskkit import SAMMasker, forward_features_visible

__all__ = ["PAPER", "config_for", "count_flops", "run"]

# MSMAE's ablation table (Tab. "P-RM / P-AMT / P-SAM / F-SAM"): fine-tuning cost of ViT-B/16
# on all tokens (rows without F-SAM) and on SAM's visible tokens (rows with F-SAM).
PAPER = {
    "full_gflops": 16.86,
    "sam_gflops": 4.37,
    "flops_ratio": round(4.37 / 16.86, 4),
    "full_inference_ms": 9.765,
    "sam_inference_ms": 8.671,
    "note": (
        "The paper's 'FLOPs' are multiply-adds of the linear and conv layers only: ViT-B/16 "
        "has 16.85 G of them on 197 tokens and 4.36 G on 50 tokens, while the attention "
        "matmuls (0.72 G on 197 tokens) are left out. Compare them with our "
        "linear_conv_gmacs, not with FlopCounterMode's total (which counts a multiply-add "
        "as 2 FLOPs and includes attention)."
    ),
}

NUM_CLASSES = 1000
IMAGE_SIZE = 224
SAM_RATIOS = (0.45, 0.30)


def config_for(device: torch.device, *, quick: bool) -> dict[str, Any]:
    """Model and batch sizes used on ``device`` (stored in the results beside the figures)."""
    if quick:
        # A tiny ViT with ViT-B/16's token layout (224 px, 16 px patches, 196 patches).
        return {
            "model": "vit_tiny_patch16_224",
            "model_overrides": {"embed_dim": 96, "depth": 2, "num_heads": 3},
            "batch_size": 8,
            "amp_dtype": None,
            "rounds": 3,
            "warmup": 1,
        }
    if device.type == "cuda":
        return {
            "model": "vit_base_patch16_224",
            "model_overrides": {},
            "batch_size": 256,
            "amp_dtype": "bfloat16",
            "rounds": 10,
            "warmup": 3,
        }
    # ViT-B/16 training on all tokens costs ~0.1 TFLOP per image; a 2-core CPU manages a
    # few images per training step within the run's time budget.
    return {
        "model": "vit_base_patch16_224",
        "model_overrides": {},
        "batch_size": 4,
        "amp_dtype": None,
        "rounds": 3,
        "warmup": 1,
    }


def _build(config: dict[str, Any], device: torch.device) -> nn.Module:
    model = timm.create_model(
        config["model"],
        pretrained=False,
        img_size=IMAGE_SIZE,
        num_classes=NUM_CLASSES,
        global_pool="avg",
        **config["model_overrides"],
    )
    return model.to(device)


def _attention_flops(
    query_shape: torch.Size,
    key_shape: torch.Size,
    value_shape: torch.Size,
    *args: Any,
    **kwargs: Any,
) -> int:
    """Forward FLOPs of scaled dot-product attention, (B, H, N, d) inputs: Q Kᵀ then P V."""
    batch, heads, queries, width = query_shape
    return 2 * batch * heads * queries * key_shape[-2] * (width + value_shape[-1])


# torch's FlopCounterMode counts the CUDA SDPA kernels, but before torch 2.15 not the CPU
# flash kernel that timm's fused attention runs on CPU: count it the same way everywhere,
# so that totals (and ratios) do not depend on the torch version.
_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops}


def count_flops(model: nn.Module, images: Tensor, visible: Tensor | None) -> dict[str, Any]:
    """Forward FLOPs of one batch, per image, total and split by operator.

    ``linear_conv_gmacs`` counts multiply-adds of matmuls and convolutions only (the
    counting behind the paper's figures); ``gflops`` is FlopCounterMode's total (2 per
    multiply-add, attention included).
    """
    counter = FlopCounterMode(display=False, custom_mapping=_FLOP_FORMULAS)
    with torch.no_grad(), counter:
        model.forward_head(forward_features_visible(model, images, visible))
    per_op = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    batch_size = images.shape[0]
    total = counter.get_total_flops() / batch_size
    linear_conv = sum(
        flops for op, flops in per_op.items() if op in ("aten.mm", "aten.addmm", "aten.convolution")
    )
    return {
        "gflops": total / 1e9,
        "gmacs": total / 2e9,
        "linear_conv_gmacs": linear_conv / batch_size / 2e9,
        "attention_gmacs": (total - linear_conv / batch_size) / 2e9,
        "gflops_by_op": {op: flops / batch_size / 1e9 for op, flops in per_op.items()},
    }


def _train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    masker: SAMMasker,
    batch: tuple[Tensor, Tensor, Tensor],
    amp_dtype: torch.dtype | None,
) -> dict[str, Callable[[], None]]:
    """``full_step`` and ``sam_step`` (forward, cross-entropy backward, AdamW step), and
    ``optimizer_step``, the AdamW step alone on the gradients the last step left."""
    images, targets, weights = batch
    num_patches = weights[0].numel()

    def full_logits() -> Tensor:
        return model(images)

    def sam_logits() -> Tensor:
        visible = masker(images.shape[0], num_patches, weights).visible
        return model.forward_head(forward_features_visible(model, images, visible))

    def step(forward: Callable[[], Tensor]) -> Callable[[], None]:
        def call() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = forward()
            F.cross_entropy(logits.float(), targets).backward()
            optimizer.step()

        return call

    return {
        "full_step": step(full_logits),
        "sam_step": step(sam_logits),
        "optimizer_step": optimizer.step,
    }


def _batch(
    batch_size: int, grid: tuple[int, int], device: torch.device, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Random images (B, 3, 224, 224), targets (B,) and masking weights (B, gh, gw)."""
    images = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, device=device, generator=generator)
    targets = torch.randint(0, NUM_CLASSES, (batch_size,), device=device, generator=generator)
    weights = torch.rand(batch_size, *grid, device=device, generator=generator) + 1e-3
    return images, targets, weights


def run(device: str, *, quick: bool) -> dict[str, Any]:
    """Measure FLOPs, training-step and inference time, full tokens against SAM's.

    On CUDA the batch starts at 256 and halves until a full-token training step fits.

    Returns:
        ``{"config", "flops", "timings", "peak_memory_mib", "paper", "summary"}``.
    """
    dev = resolve_device(device)
    config = config_for(dev, quick=quick)
    amp_dtype = getattr(torch, config["amp_dtype"]) if config["amp_dtype"] else None
    model = _build(config, dev)
    num_patches = model.patch_embed.num_patches
    grid = tuple(model.patch_embed.grid_size)
    masker = SAMMasker(*SAM_RATIOS)
    generator = torch.Generator(device=dev).manual_seed(0)

    one_image, _, one_weights = _batch(1, grid, dev, generator)
    model.eval()
    flops = {
        "full": count_flops(model, one_image, None),
        "sam": count_flops(model, one_image, masker(1, num_patches, one_weights).visible),
    }

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    batch_size = config["batch_size"]
    while True:
        images, targets, weights = _batch(batch_size, grid, dev, generator)
        train_steps = _train_steps(model, optimizer, masker, (images, targets, weights), amp_dtype)
        try:
            train_steps["full_step"]()
            break
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            optimizer.zero_grad(set_to_none=True)
            del images, targets, weights, train_steps
            torch.cuda.empty_cache()
            batch_size //= 2

    # A training step is long enough to time alone: one call per block.
    min_run_time = {"steps": 0.0, "inference": 0.0 if batch_size > 8 else 0.05}
    steps = measure(
        train_steps,
        label=f"finetune: training step ({config['model']})",
        sub_label=f"B={batch_size}",
        rounds=config["rounds"],
        min_run_time=min_run_time["steps"],
        warmup=config["warmup"],
    )
    memory = {name: peak_memory_mib(train_steps[name], dev) for name in ("full_step", "sam_step")}
    optimizer.zero_grad(set_to_none=True)

    model.eval()
    visible = masker(batch_size, num_patches, weights).visible
    visible_one = masker(1, num_patches, one_weights).visible

    def infer(x: Tensor, keep: Tensor | None) -> Callable[[], object]:
        def call() -> object:
            with (
                torch.no_grad(),
                torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None),
            ):
                return model.forward_head(forward_features_visible(model, x, keep))

        return call

    inference = measure(
        {
            "full_inference": infer(images, None),
            "sam_inference": infer(images, visible),
            "full_inference_b1": infer(one_image, None),
            "sam_inference_b1": infer(one_image, visible_one),
        },
        label=f"finetune: inference ({config['model']})",
        sub_label=f"B={batch_size} (_b1: B=1)",
        rounds=config["rounds"] + 2,
        min_run_time=min_run_time["inference"],
        warmup=config["warmup"],
    )
    measured = {**steps, **inference}
    median = {name: m.median * 1e3 for name, m in measured.items()}
    return {
        "config": {
            **config,
            "batch_size_requested": config["batch_size"],
            "batch_size": batch_size,
            "image_size": IMAGE_SIZE,
            "num_patches": num_patches,
            "visible_tokens": int(visible.shape[1]),
            "num_classes": NUM_CLASSES,
            "optimizer": "AdamW(lr=1e-4, weight_decay=0.05)",
            "min_run_time": min_run_time,
        },
        "flops": flops,
        "timings": {name: to_json(m) for name, m in measured.items()},
        "peak_memory_mib": memory,
        "paper": PAPER,
        "summary": {
            "finetune_step_speedup": ratio(median["full_step"], median["sam_step"]),
            # The AdamW step costs the same for both; small batches cannot amortise it.
            "finetune_step_speedup_without_optimizer": ratio(
                median["full_step"] - median["optimizer_step"],
                median["sam_step"] - median["optimizer_step"],
            ),
            "finetune_flops_ratio": ratio(flops["sam"]["gflops"], flops["full"]["gflops"]),
            "finetune_linear_conv_macs_ratio": ratio(
                flops["sam"]["linear_conv_gmacs"], flops["full"]["linear_conv_gmacs"]
            ),
            "full_inference_ms_per_image": median["full_inference"] / batch_size,
            "full_inference_ms_b1": median["full_inference_b1"],
        },
        MEASUREMENTS: list(measured.values()),
    }
