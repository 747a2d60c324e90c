"""Masking's share of an MSMAE pre-training step.

One training step of MSMAE, ``maskkit.mae.MaskedAutoencoder(encoder=..., cls_loss_weight=0.1)``
(a timm ViT-B/16 encoder on the visible patches, MAE's 8-block decoder, the supervised cls
head): draw a SAM split, forward under autocast, backward, AdamW step. The masking figure
is the ``SAMMasker(0.45, 0.30)`` call alone, with the same batch size and weights, timed
interleaved with the step; the share is masking / step.

Run alone: ``python benchmarks/run.py --only pretrain --device cpu``.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from common import MEASUREMENTS, measure, ratio, resolve_device, to_json

from maskkit import SAMMasker
from maskkit.mae import MaskedAutoencoder

__all__ = ["CLS_LOSS_WEIGHT", "config_for", "run"]

IMAGE_SIZE = 224
NUM_CLASSES = 4
CLS_LOSS_WEIGHT = 0.1  # MSMAE's λ (eq. 3): reconstruction + 0.1 * cross-entropy


def config_for(device: torch.device, *, quick: bool) -> dict[str, Any]:
    """Encoder, decoder and batch used on ``device`` (stored beside the figures)."""
    if quick:
        # ViT-B/16's token layout (224 px, 196 patches) with a tiny encoder and decoder.
        return {
            "encoder": "vit_tiny_patch16_224",
            "encoder_overrides": {"embed_dim": 96, "depth": 2, "num_heads": 3},
            "decoder": {"decoder_dim": 64, "decoder_depth": 1, "decoder_num_heads": 2},
            "batch_size": 8,
            "amp_dtype": None,
            "rounds": 3,
            "min_run_time": 0.01,
            "warmup": 1,
        }
    base = {
        "encoder": "vit_base_patch16_224",
        "encoder_overrides": {},
        "decoder": {"decoder_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16},
    }
    if device.type == "cuda":
        return {
            **base,
            "batch_size": 64,
            "amp_dtype": "bfloat16",
            "rounds": 10,
            "min_run_time": 0.05,
            "warmup": 3,
        }
    # A ViT-B/16 MSMAE step costs ~50 GFLOP per image; keep the CPU batch small.
    return {
        **base,
        "batch_size": 4,
        "amp_dtype": None,
        "rounds": 3,
        "min_run_time": 0.02,
        "warmup": 1,
    }


def _build(config: dict[str, Any], device: torch.device) -> MaskedAutoencoder:
    encoder = timm.create_model(
        config["encoder"],
        pretrained=False,
        img_size=IMAGE_SIZE,
        num_classes=NUM_CLASSES,
        global_pool="token",
        **config["encoder_overrides"],
    )
    model = MaskedAutoencoder(encoder=encoder, cls_loss_weight=CLS_LOSS_WEIGHT, **config["decoder"])
    return model.to(device)


def run(device: str, *, quick: bool) -> dict[str, Any]:
    """Time one pre-training step and the SAM masking call inside it.

    Returns:
        ``{"config", "timings", "summary"}`` with ``summary["pretrain_masking_share"]``.
    """
    dev = resolve_device(device)
    config = config_for(dev, quick=quick)
    amp_dtype = getattr(torch, config["amp_dtype"]) if config["amp_dtype"] else None
    model = _build(config, dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95))
    masker = SAMMasker(0.45, 0.30)
    batch_size, num_patches = config["batch_size"], model.num_patches
    generator = torch.Generator(device=dev).manual_seed(0)
    images = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, device=dev, generator=generator)
    targets = torch.randint(0, NUM_CLASSES, (batch_size,), device=dev, generator=generator)
    weights = torch.rand(batch_size, *model.grid, device=dev, generator=generator) + 1e-3

    def masking() -> object:
        return masker(batch_size, num_patches, weights)

    def step() -> None:
        split = masker(batch_size, num_patches, weights)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(images, targets, split)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    measured = measure(
        {"masking": masking, "pretrain_step": step},
        label="pretrain",
        sub_label=f"{config['encoder']}, B={batch_size}",
        rounds=config["rounds"],
        min_run_time=config["min_run_time"],
        warmup=config["warmup"],
    )
    timings = {name: to_json(m) for name, m in measured.items()}
    return {
        "config": {
            **config,
            "image_size": IMAGE_SIZE,
            "num_patches": num_patches,
            "sam_ratios": {"mask_ratio": masker.mask_ratio, "throw_ratio": masker.throw_ratio},
            "model": f"maskkit.mae.MaskedAutoencoder(cls_loss_weight={CLS_LOSS_WEIGHT})",
            "optimizer": "AdamW(lr=1.5e-4, betas=(0.9, 0.95))",
        },
        "timings": timings,
        "summary": {
            "pretrain_masking_share": ratio(
                timings["masking"]["median_ms"], timings["pretrain_step"]["median_ms"]
            ),
            "pretrain_step_ms": timings["pretrain_step"]["median_ms"],
            "masking_ms": timings["masking"]["median_ms"],
        },
        MEASUREMENTS: list(measured.values()),
    }
