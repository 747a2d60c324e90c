"""Patch layout: images to per-patch pixel vectors and back (einops, sizes checked)."""

from __future__ import annotations

from einops import rearrange
from torch import Tensor

from ._checks import check_int

__all__ = ["patch_grid", "patchify", "unpatchify"]


def patch_grid(image_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Grid ``(gh, gw)`` of an image ``(H, W)`` cut into ``patch_size`` squares.

    Raises:
        TypeError: ``patch_size`` is not an int.
        ValueError: ``patch_size`` is below 1, or a side is not a multiple of it.
    """
    check_int("patch_size", patch_size, minimum=1)
    height, width = image_size
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {(height, width)} is not a multiple of patch_size={patch_size}; "
            "resize or crop the images to a multiple of the patch size"
        )
    return height // patch_size, width // patch_size


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into patches in row-major patch order (timm's token order).

    Args:
        images: (B, C, H, W).
        patch_size: side p of a square patch; H and W must be multiples of it.

    Returns:
        (B, L, p * p * C) with L = (H / p) * (W / p); each row is one patch, channels last.
    """
    patch_grid(tuple(images.shape[-2:]), patch_size)
    return rearrange(
        images, "b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)", p1=patch_size, p2=patch_size
    )


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int]) -> Tensor:
    """Inverse of :func:`patchify`: (B, L, p * p * C) → (B, C, gh * p, gw * p)."""
    gh, gw = grid
    return rearrange(
        patches,
        "b (gh gw) (p1 p2 c) -> b c (gh p1) (gw p2)",
        gh=gh,
        gw=gw,
        p1=patch_size,
        p2=patch_size,
    )
