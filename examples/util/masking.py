"""Looking at the masks: overlay PNGs at each refresh, lesion hit rates on held-out images."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from maskkit import (
    MapExtractor,
    MaskWeightBank,
    SAMMasker,
    SyntheticLesions,
    lesion_hit_counts,
    pixel_mask_to_patches,
    save_mask_grid,
)

from .checkpoint import atomic_open
from .data import MEAN, STD, normalize

__all__ = ["lesion_hit_rates", "save_heldout_masks", "save_refresh_masks"]


def save_refresh_masks(
    path: Path,
    refresh_loader: Iterable[Any],
    bank: MaskWeightBank,
    masker: SAMMasker,
    *,
    patch_size: int,
    lesions: SyntheticLesions | None = None,
    max_images: int = 8,
) -> None:
    """Write the first refresh batch with a split drawn from its fresh maps (and the maps).

    Args:
        path: the PNG to write.
        refresh_loader: the un-augmented loader of batches ``(images, targets, indices)``.
        bank: the refreshed bank.
        masker: the weighted masker training uses.
        patch_size: p.
        lesions: the synthetic training set, to box the ground-truth lesions.
        max_images: rows of the grid.
    """
    images, _, indices = next(iter(refresh_loader))
    images, indices = images[:max_images], indices[:max_images]
    weights = bank[indices]
    # A private generator: drawing this picture must not change the training's random stream.
    generator = torch.Generator().manual_seed(0)
    split = masker(images.shape[0], weights[0].numel(), weights, generator=generator)
    lesion_masks = None
    if lesions is not None:
        lesion_masks = torch.stack([lesions.lesion_mask(int(i)) for i in indices])
    save_mask_grid(
        path,
        images,
        split,
        patch_size=patch_size,
        weights=weights,
        lesion_masks=lesion_masks,
        mean=MEAN,
        std=STD,
        scale=max(1, 192 // images.shape[-1]),
    )


def lesion_hit_rates(
    maps: MapExtractor,
    dataset: SyntheticLesions,
    masker: SAMMasker,
    *,
    patch_size: int,
    batch_size: int = 64,
    draws: int = 4,
    seed: int = 0,
) -> dict[str, float]:
    """Share of lesion patches masked with the extractor's maps, and with uniform weights.

    Every image of ``dataset`` (held out, whole, at the model's input size) is mapped by
    ``maps``; ``masker`` then draws ``draws`` splits from the maps and as many from uniform
    weights (the same counts), and the hits are pooled over the set and the draws
    (:func:`maskkit.lesion_hit_counts`).

    Args:
        maps: e.g. ``AttentionExtractor(encoder)``.
        dataset: synthetic images with ground-truth lesions, rendered at the input size.
        masker: the weighted masker (its mask and throw ratios apply to both splits).
        patch_size: p.
        batch_size: images per forward.
        draws: splits drawn per image and source of weights.
        seed: seed of the masks' private generator.

    Returns:
        ``{"attention": rate, "uniform": rate}``.
    """
    generator = torch.Generator().manual_seed(seed)
    counts = {"attention": [0, 0], "uniform": [0, 0]}
    device = next(maps.model.parameters()).device
    for start in range(0, len(dataset), batch_size):
        samples = [dataset.render(i) for i in range(start, min(start + batch_size, len(dataset)))]
        images = torch.stack([normalize(sample.image) for sample in samples])
        lesion = pixel_mask_to_patches(
            torch.stack([sample.lesion_mask for sample in samples]), patch_size
        )
        weights = maps(images.to(device)).cpu()
        num_images, num_patches = lesion.shape
        for _ in range(draws):
            for name, source in (("attention", weights), ("uniform", None)):
                split = masker(num_images, num_patches, source, generator=generator)
                hits, total = lesion_hit_counts(split, lesion)
                counts[name][0] += hits
                counts[name][1] += total
    return {name: hits / max(total, 1) for name, (hits, total) in counts.items()}


def save_heldout_masks(
    path: Path,
    dataset: SyntheticLesions,
    maps_by_name: dict[str, MapExtractor | None],
    masker: SAMMasker,
    *,
    patch_size: int,
    num_images: int = 6,
    seed: int = 0,
) -> None:
    """Side-by-side mask grids of held-out lesion images, one per source of weights.

    For each name, a split is drawn from that extractor's maps (None: uniform weights) and
    drawn with :func:`maskkit.save_mask_grid` to ``<stem>_<name>.png``; the grids are then
    joined left to right into ``path``, each under its name.

    Args:
        path: the joined PNG.
        dataset: synthetic held-out images at the model's input size.
        maps_by_name: e.g. ``{"random": None, "amt": extractor, "sam": extractor}``.
        masker: the weighted masker.
        patch_size: p.
        num_images: rows, the first images of ``dataset`` that have a lesion.
        seed: seed of the masks' private generator.
    """
    chosen = [i for i in range(len(dataset)) if dataset.render(i).target > 0][:num_images]
    samples = [dataset.render(i) for i in chosen]
    images = torch.stack([normalize(sample.image) for sample in samples])
    lesion_masks = torch.stack([sample.lesion_mask for sample in samples])
    num_patches = (images.shape[-2] // patch_size) * (images.shape[-1] // patch_size)
    grids = []
    for name, maps in maps_by_name.items():
        generator = torch.Generator().manual_seed(seed)
        weights = None
        if maps is not None:
            weights = maps(images.to(next(maps.model.parameters()).device)).cpu()
        split = masker(len(chosen), num_patches, weights, generator=generator)
        grid_path = path.with_name(f"{path.stem}_{name}{path.suffix}")
        save_mask_grid(
            grid_path,
            images,
            split,
            patch_size=patch_size,
            weights=weights,
            lesion_masks=lesion_masks,
            mean=MEAN,
            std=STD,
            scale=max(1, 128 // images.shape[-1]),
        )
        grids.append(Image.open(grid_path).convert("RGB"))
    header = 16
    width, height = sum(g.width for g in grids), header + max(g.height for g in grids)
    joined = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(joined)
    left = 0
    for name, grid in zip(maps_by_name, grids, strict=True):
        draw.text((left + 4, 2), name, fill="black")
        joined.paste(grid, (left, header))
        left += grid.width
    with atomic_open(path) as file:
        joined.save(file, format="PNG")
