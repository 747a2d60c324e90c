"""Mask overlays and weight heatmaps as PNG grids (Pillow and numpy only).

One row per image: the image (lesion box in green, as in MSMAE's figures), the split
drawn over it (visible clear, masked tinted, thrown darkened) and, when given, the masking
weights as a heatmap: the views of MSMAE Figs. 1, 2 and 5. A legend under the grid names
the colours. Not imported by ``import maskkit``; use ``from maskkit.viz import
save_mask_grid``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._checks import check_int, check_reals
from .files import atomic_write
from .patches import patch_grid
from .split import MASKED, THROWN, MaskSplit, labels_of

try:
    from PIL import Image, ImageDraw
except ImportError as error:  # pragma: no cover - Pillow comes with torchvision
    raise ImportError("maskkit.viz draws PNGs with Pillow: pip install 'maskkit[viz]'") from error

__all__ = ["heatmap", "save_mask_grid"]

# Anchors of an inferno-like colormap, dark (low weight) to light yellow (high weight).
_COLORMAP = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64
)
_MASK_TINT = np.array([0.55, 0.62, 0.75])  # masked patches: blended towards blue-grey
_MASK_BLEND = 0.6
_THROWN_SCALE = 0.2  # thrown patches: darkened to a fifth
_LESION_BOX = np.array([0.0, 1.0, 0.0])  # green, as MSMAE marks lesion tissue


def heatmap(weights: Tensor) -> np.ndarray:
    """Colour per-patch weights, each map min-max scaled on its own.

    Args:
        weights: (gh, gw) or (B, gh, gw) finite weights, gh, gw >= 1. A constant map gets
            the darkest colour. Any finite range works, up to the float64 limits.

    Returns:
        uint8 RGB array (gh, gw, 3) or (B, gh, gw, 3).

    Raises:
        TypeError: ``weights`` is not a tensor.
        ValueError: another shape, an empty map, or NaN or Inf values.
    """
    if not isinstance(weights, Tensor):
        raise TypeError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    if weights.dim() not in (2, 3) or weights.shape[-2] == 0 or weights.shape[-1] == 0:
        raise ValueError(
            f"weights must be (gh, gw) or (B, gh, gw) with gh, gw >= 1, got {tuple(weights.shape)}"
        )
    values = weights.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(values).all():
        raise ValueError("weights hold NaN or Inf; clean them before drawing a heatmap")
    # max - min of a finite map can overflow to Inf (e.g. -1e308 to 1e308): scale each map
    # by its largest magnitude first, which bounds the span by 2.
    magnitude = np.abs(values).max(axis=(-2, -1), keepdims=True)
    values = values / np.where(magnitude > 0, magnitude, 1.0)
    low = values.min(axis=(-2, -1), keepdims=True)
    span = values.max(axis=(-2, -1), keepdims=True) - low
    scaled = (values - low) / np.where(span > 0, span, 1.0)
    position = scaled * (len(_COLORMAP) - 1)
    below = np.minimum(position.astype(np.int64), len(_COLORMAP) - 2)
    frac = (position - below)[..., None]
    colours = (1.0 - frac) * _COLORMAP[below] + frac * _COLORMAP[below + 1]
    return np.rint(colours).astype(np.uint8)


def _upsample(grid_values: np.ndarray, patch_size: int) -> np.ndarray:
    """(gh, gw, ...) per-patch values → (gh * p, gw * p, ...) per-pixel values."""
    return grid_values.repeat(patch_size, axis=0).repeat(patch_size, axis=1)


def _lesion_box(panel: np.ndarray, lesion_mask: np.ndarray) -> None:
    """Draw a 1 px box just outside the lesion on an (H, W, 3) float panel, in place."""
    rows, cols = np.nonzero(lesion_mask)
    if rows.size == 0:
        return
    height, width = lesion_mask.shape
    top, bottom = max(rows.min() - 1, 0), min(rows.max() + 1, height - 1)
    left, right = max(cols.min() - 1, 0), min(cols.max() + 1, width - 1)
    panel[[top, bottom], left : right + 1] = _LESION_BOX
    panel[top : bottom + 1, [left, right]] = _LESION_BOX


def save_mask_grid(
    path: str | os.PathLike[str],
    images: Tensor,
    split: MaskSplit | Tensor,
    *,
    patch_size: int,
    weights: Tensor | None = None,
    lesion_masks: Tensor | None = None,
    max_images: int = 8,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    scale: int = 1,
    pad: int = 2,
) -> Path:
    """Write a PNG grid: per image, the image | the split over it | the weight heatmap.

    Overlay: visible patches unchanged, masked ones blended towards blue-grey, thrown ones
    darkened to a fifth. The file is written to a temporary name and renamed, so ``path``
    never holds a partial PNG; missing parent folders are created.

    Layout: ``n = min(B, max_images)`` rows and 2 columns (3 with ``weights``) of
    ``(H * scale, W * scale)`` panels on white, ``pad`` pixels between and around them:
    ``(n * H * scale + (n + 1) * pad)`` high, then a legend line (14 px and ``pad``) that
    names the colours; the figure is widened to the legend's width if the grid is narrower.

    Args:
        path: Output PNG path.
        images: (B, 3, H, W) float images, in [0, 1] after undoing ``mean``/``std``;
            values outside are clipped for display.
        split: a :class:`~maskkit.MaskSplit` or its (B, L) labels, L = (H / p) * (W / p),
            each 0 (visible), 1 (masked) or -1 (thrown).
        patch_size: p, an int >= 1.
        weights: optional (B, gh, gw) (or (B, L)) masking weights to show as a heatmap.
        lesion_masks: optional (B, H, W) bool lesion masks, boxed in green on the image.
        max_images: Draw at most this many images (the first ones).
        mean: Per-channel mean the images were normalised with, to undo it.
        std: Per-channel std the images were normalised with, to undo it.
        scale: Integer upscaling of every panel (nearest), for tiny images.
        pad: White border between panels, in pixels.

    Returns:
        The written path.

    Raises:
        TypeError: ``patch_size``, ``max_images``, ``scale`` or ``pad`` is not an int, or
            ``mean``/``std`` is not a sequence of numbers.
        ValueError: a shape does not match, a label is not -1, 0 or 1, ``mean``/``std``
            do not hold one finite number per channel or only one of them is given, or a
            count is out of range. Nothing is written then.
    """
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"images must be float (B, 3, H, W), got {tuple(images.shape)} {images.dtype}; "
            "convert uint8 images with .float() / 255"
        )
    check_int("patch_size", patch_size, minimum=1)
    check_int("max_images", max_images, minimum=1)
    check_int("scale", scale, minimum=1)
    check_int("pad", pad, minimum=0)
    batch, channels, height, width = images.shape
    gh, gw = patch_grid((height, width), patch_size)
    labels = labels_of(split)
    if labels.shape != (batch, gh * gw):
        raise ValueError(
            f"the split covers {tuple(labels.shape)} patches but images {tuple(images.shape)} "
            f"with patch_size={patch_size} have ({batch}, {gh * gw})"
        )
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std to undo a normalisation, or neither")
    count = min(batch, max_images)
    pixels = images[:count].detach().to("cpu", torch.float64)
    if mean is not None and std is not None:
        form = f"{channels} finite numbers, one per channel of the {channels}-channel images"
        mean_t = torch.tensor(check_reals("mean", mean, channels, form=form), dtype=torch.float64)
        std_t = torch.tensor(check_reals("std", std, channels, form=form), dtype=torch.float64)
        pixels = pixels * std_t.view(channels, 1, 1) + mean_t.view(channels, 1, 1)
    pixels_np = pixels.clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()
    group = labels[:count].cpu().numpy().reshape(count, gh, gw)
    panels: list[list[np.ndarray]] = []
    colour_maps = None
    if weights is not None:
        if weights.shape[0] != batch or weights[0].numel() != gh * gw:
            raise ValueError(
                f"weights of shape {tuple(weights.shape)} do not match ({batch}, {gh}, {gw})"
            )
        colour_maps = heatmap(weights[:count].reshape(count, gh, gw)) / 255.0
    if lesion_masks is not None and tuple(lesion_masks.shape) != (batch, height, width):
        raise ValueError(
            f"lesion_masks of shape {tuple(lesion_masks.shape)} do not match "
            f"({batch}, {height}, {width})"
        )
    for k in range(count):
        image = pixels_np[k]
        per_pixel = _upsample(group[k], patch_size)[..., None]
        masked_look = (1.0 - _MASK_BLEND) * image + _MASK_BLEND * _MASK_TINT
        overlay = np.where(per_pixel == MASKED, masked_look, image)
        overlay = np.where(per_pixel == THROWN, _THROWN_SCALE * image, overlay)
        shown = image.copy()
        if lesion_masks is not None:
            _lesion_box(shown, lesion_masks[k].cpu().numpy().astype(bool))
        row = [shown, overlay]
        if colour_maps is not None:
            row.append(_upsample(colour_maps[k], patch_size))
        panels.append(row)
    canvas = _assemble(panels, scale=scale, pad=pad)
    figure = _with_legend(
        canvas, lesion=lesion_masks is not None, weights=colour_maps is not None, pad=pad
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as file:
        figure.save(file, format="PNG")
    return path


def _assemble(panels: list[list[np.ndarray]], *, scale: int, pad: int) -> np.ndarray:
    """Tile rows of equal-size float (H, W, 3) panels onto a white uint8 canvas."""
    height, width = panels[0][0].shape[:2]
    tile_h, tile_w = height * scale, width * scale
    rows, cols = len(panels), len(panels[0])
    canvas = np.full(
        (rows * tile_h + (rows + 1) * pad, cols * tile_w + (cols + 1) * pad, 3), 255, np.uint8
    )
    for r, row in enumerate(panels):
        for c, panel in enumerate(row):
            top, left = pad + r * (tile_h + pad), pad + c * (tile_w + pad)
            tile = np.rint(_upsample(panel, scale) * 255.0).astype(np.uint8)
            canvas[top : top + tile_h, left : left + tile_w] = tile
    return canvas


_LEGEND_HEIGHT = 14
_LEGEND_GAP = 10
_SWATCH = 10


def _with_legend(canvas: np.ndarray, *, lesion: bool, weights: bool, pad: int) -> Image.Image:
    """The grid with a one-line legend under it, widened if the legend needs more room."""
    grey = np.array([0.5, 0.5, 0.5])
    swatches = {
        "visible": grey,
        "masked": (1.0 - _MASK_BLEND) * grey + _MASK_BLEND * _MASK_TINT,
        "thrown": _THROWN_SCALE * grey,
    }
    labels = [*swatches]
    if lesion:
        labels.append("lesion box")
    if weights:
        labels.append("weights: low to high")
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [_SWATCH + 3 + round(measure.textlength(label)) for label in labels]
    legend_width = pad + sum(widths) + _LEGEND_GAP * (len(labels) - 1) + pad
    height, width = canvas.shape[:2]
    figure = Image.new("RGB", (max(width, legend_width), height + _LEGEND_HEIGHT + pad), "white")
    figure.paste(Image.fromarray(canvas), (0, 0))
    draw = ImageDraw.Draw(figure)
    x, top = pad, height + 1
    box_top, box_bottom = top + 1, top + _SWATCH
    for label, label_width in zip(labels, widths, strict=True):
        right = x + _SWATCH - 1
        if label in swatches:
            colour = tuple(round(255 * c) for c in swatches[label])
            draw.rectangle((x, box_top, right, box_bottom), fill=colour)
        elif label == "lesion box":
            colour = tuple(round(255 * c) for c in _LESION_BOX)
            draw.rectangle((x, box_top, right, box_bottom), outline=colour)
        else:  # the heatmap's colours, low weight on the left
            for i in range(_SWATCH):
                anchor = tuple(int(c) for c in _COLORMAP[i * len(_COLORMAP) // _SWATCH])
                draw.line((x + i, box_top, x + i, box_bottom), fill=anchor)
        draw.text((x + _SWATCH + 3, top), label, fill="black")
        x += label_width + _LEGEND_GAP
    return figure
