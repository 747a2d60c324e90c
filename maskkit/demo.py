"""Built-in synthetic lesions and the lesion hit rate: the demo data and its metric.

:class:`SyntheticLesions` is maskkit's embedded data set for demos, tests and benchmarks:
it needs no download, and its ground-truth lesion masks turn MSMAE's claim (Sec. 3.2,
Figs. 2 and 5: SAM masks the lesion, random masking hits it only at the mask ratio) into a
number, :func:`lesion_hit_rate`. Not imported by ``import maskkit``; use
``from maskkit.demo import SyntheticLesions``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from torch.utils.data import Dataset

from ._checks import check_index, check_int, check_pair, check_real
from .patches import patch_grid
from .split import MASKED, THROWN, VISIBLE, MaskSplit, labels_of

__all__ = [
    "LesionSample",
    "SyntheticLesions",
    "lesion_hit_counts",
    "lesion_hit_rate",
    "pixel_mask_to_patches",
]

_GROUPS = {"visible": VISIBLE, "masked": MASKED, "thrown": THROWN}

# (class name, shape, polarity of the lesion's main part); class 0 is "normal".
_LESION_KINDS = (
    ("dark_round", "round", -1.0),
    ("bright_irregular", "irregular", 1.0),
    ("bright_round", "round", 1.0),
    ("dark_irregular", "irregular", -1.0),
    ("dark_ring", "ring", -1.0),
    ("bright_ring", "ring", 1.0),
)
# Tissue intensity stays in [0.25, 0.75] and a lesion changes it by at most 0.22, so no
# pixel is clipped and the lesion mask is exactly the set of pixels the lesion changed.
_TISSUE_RANGE = (0.25, 0.75)
_LESION_CONTRAST = (0.16, 0.22)
# Pink, skin-like tint (dermoscopy); every channel factor stays in (0, 1].
_TINT = (0.97, 0.76, 0.70)


class LesionSample(NamedTuple):
    """Everything :class:`SyntheticLesions` renders for one index.

    Attributes:
        image: (3, H, W) float32 in [0, 1].
        target: class index; 0 = no lesion.
        lesion_mask: (H, W) bool, the pixels the lesion changed (all False for class 0).
        background: (3, H, W) float32, the same image without its lesion.
    """

    image: Tensor
    target: int
    lesion_mask: Tensor
    background: Tensor


def _wave_field(
    rng: np.random.Generator, height: int, width: int, num_waves: int, max_freq: float
) -> np.ndarray:
    """Smooth random field (H, W) of about unit variance: a sum of random plane waves.

    Frequencies are in cycles per shorter image side, so the texture scales with the image
    and stays isotropic on non-square images. ``cos(a + b)`` is split into products of
    row and column terms (n * (H + W) cosines instead of n * H * W), summed with einsum:
    a BLAS product of these thin matrices is slower when threads are oversubscribed.
    """
    unit = min(height, width)
    freqs = rng.uniform(-max_freq, max_freq, size=(2, num_waves))
    phases = rng.uniform(0.0, 2.0 * np.pi, size=num_waves)
    amps = 1.0 / (1.0 + np.hypot(freqs[0], freqs[1]))
    rows = 2.0 * np.pi * np.outer(freqs[0], np.arange(height) / unit) + phases[:, None]
    cols = 2.0 * np.pi * np.outer(freqs[1], np.arange(width) / unit)
    row_terms = np.concatenate([amps[:, None] * np.cos(rows), -amps[:, None] * np.sin(rows)])
    col_terms = np.concatenate([np.cos(cols), np.sin(cols)])
    field = np.einsum("nh,nw->hw", row_terms, col_terms)
    return field / np.sqrt(0.5 * np.sum(amps**2))


class SyntheticLesions(Dataset[tuple[Tensor, int]]):
    """Medical-looking synthetic images whose class is decided only by a small lesion.

    Each image is pink textured tissue: smooth low-frequency noise, vessel-like dark curves
    (the zero set of another smooth random field) and fine grain, with a random brightness
    and tint per image. Class 0 ("normal") has no lesion; class ``k >= 1`` has one lesion of
    kind ``k`` at a random position. Kinds, in order: ``dark_round``, ``bright_irregular``,
    ``bright_round``, ``dark_irregular``, ``dark_ring``, ``bright_ring``. Every lesion has a
    main part (dark or bright) and a surround of the opposite sign whose pixel sums cancel,
    so lesions of all kinds share one size distribution and leave the mean intensity unchanged:
    only their shape and polarity tell the classes apart.

    The lesion's outer radius is ``lesion_size * min(H, W)`` (jittered by ±15%), about 3-4
    patches across at 224 px with 16 px patches, and 2-3 at 32 px with 4 px patches.

    Sample ``i`` is rendered on access from its own generator seeded by ``(seed, i)``, so any
    item can be produced alone, in any order, in any DataLoader worker, and always comes
    out the same. Class ``i % num_classes`` keeps the classes balanced. Nothing is cached
    (a 224 px sample takes about 5-15 ms on one CPU core).

    Args:
        num_samples: Number of samples.
        image_size: ``(H, W)``, or an int for a square image.
        num_classes: 2 to 7: "normal" plus ``num_classes - 1`` lesion kinds.
        seed: Base seed; datasets with different seeds are drawn independently.
        lesion_size: Outer lesion radius as a share of the shorter image side.

    Raises:
        TypeError: a count or the seed is not an int, or ``lesion_size`` is not a number.
        ValueError: bad sizes or counts, or an image too small to hold a lesion.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        image_size: int | tuple[int, int] = 224,
        num_classes: int = 3,
        seed: int = 0,
        lesion_size: float = 0.1,
    ) -> None:
        check_int("num_samples", num_samples, minimum=1)
        max_classes = len(_LESION_KINDS) + 1
        check_int("num_classes", num_classes)
        if not 2 <= num_classes <= max_classes:
            raise ValueError(
                f"num_classes must lie in [2, {max_classes}] (normal + up to "
                f"{len(_LESION_KINDS)} lesion kinds), got {num_classes}"
            )
        check_int("seed", seed, minimum=0)
        height, width = check_pair(
            "image_size", (image_size, image_size) if isinstance(image_size, int) else image_size
        )
        check_real("lesion_size", lesion_size, form="a float in (0, 0.25]")
        if not 0.0 < lesion_size <= 0.25:
            raise ValueError(f"lesion_size must lie in (0, 0.25], got {lesion_size}")
        if 0.85 * lesion_size * min(height, width) < 1.5:
            raise ValueError(
                f"a {height}x{width} image is too small for lesions of lesion_size="
                f"{lesion_size} (outer radius under 1.5 px); use a larger image_size or "
                "lesion_size"
            )
        self.num_samples = num_samples
        self.image_size = (height, width)
        self.num_classes = num_classes
        self.seed = seed
        self.lesion_size = float(lesion_size)
        self.classes = ["normal", *(kind[0] for kind in _LESION_KINDS[: num_classes - 1])]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """``(image (3, H, W) float32 in [0, 1], target)`` of sample ``index``."""
        sample = self.render(index)
        return sample.image, sample.target

    def lesion_mask(self, index: int) -> Tensor:
        """(H, W) bool ground-truth lesion mask of sample ``index`` (all False for class 0)."""
        return self.render(index).lesion_mask

    def lesion_patches(self, index: int, patch_size: int) -> Tensor:
        """(gh * gw,) bool: patches (row-major, timm's order) that overlap the lesion.

        Raises:
            TypeError: ``patch_size`` is not an int.
            ValueError: ``patch_size`` is below 1 or the image size is not a multiple of it.
        """
        return pixel_mask_to_patches(self.lesion_mask(index), patch_size)

    def render(self, index: int) -> LesionSample:
        """Render sample ``index``: image, target, lesion mask and lesion-free background."""
        index = check_index(index, self.num_samples)
        target = index % self.num_classes
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        tissue = self._tissue(rng)
        delta = np.zeros_like(tissue)
        if target > 0:
            self._add_lesion(rng, delta, _LESION_KINDS[target - 1])
        tint = np.asarray(_TINT) + rng.uniform(-0.03, 0.03, size=3)
        background = tint[:, None, None] * tissue
        image = tint[:, None, None] * (tissue + delta)
        return LesionSample(
            image=torch.from_numpy(image.astype(np.float32)),
            target=target,
            lesion_mask=torch.from_numpy(delta != 0),
            background=torch.from_numpy(background.astype(np.float32)),
        )

    def _tissue(self, rng: np.random.Generator) -> np.ndarray:
        height, width = self.image_size
        tissue = rng.uniform(0.44, 0.56) + 0.06 * _wave_field(rng, height, width, 12, 3.0)
        tissue += 0.025 * _wave_field(rng, height, width, 24, 10.0)
        vessel_field = _wave_field(rng, height, width, 10, 2.5)
        tissue -= rng.uniform(0.06, 0.12) * np.exp(-((vessel_field / 0.12) ** 2))
        tissue += 0.012 * rng.standard_normal((height, width))
        return np.clip(tissue, *_TISSUE_RANGE)

    def _add_lesion(
        self, rng: np.random.Generator, delta: np.ndarray, kind: tuple[str, str, float]
    ) -> None:
        _, shape, polarity = kind
        height, width = self.image_size
        radius = self.lesion_size * min(height, width) * rng.uniform(0.85, 1.15)
        center_y = rng.uniform(radius, height - radius)
        center_x = rng.uniform(radius, width - radius)
        # Work in the lesion's bounding box only; every lesion pixel lies within `radius`.
        top, left = int(center_y - radius), int(center_x - radius)
        bottom = min(height, int(np.ceil(center_y + radius)) + 1)
        right = min(width, int(np.ceil(center_x + radius)) + 1)
        dy = np.arange(top, bottom)[:, None] + 0.5 - center_y
        dx = np.arange(left, right)[None, :] + 0.5 - center_x
        angle = np.arctan2(dy, dx)
        # Outline radius as a share of `radius`, at most 1: a slightly elliptic circle, or
        # a lobulated one for irregular lesions.
        if shape == "irregular":
            harmonics = np.arange(2, 6)[:, None, None]
            amps = rng.uniform(0.05, 0.12, size=4)[:, None, None]
            phases = rng.uniform(0.0, 2.0 * np.pi, size=4)[:, None, None]
            wobble = np.sum(amps * np.cos(harmonics * angle + phases), axis=0)
            outline = (1.0 + wobble) / (1.0 + amps.sum())
        else:
            ellipticity = rng.uniform(0.0, 0.08)
            phase = rng.uniform(0.0, np.pi)
            outline = (1.0 + ellipticity * np.cos(2.0 * angle + phase)) / (1.0 + ellipticity)
        rho = np.hypot(dy, dx) / (radius * outline)
        if shape == "ring":
            main = (rho > 0.45) & (rho <= 0.85)
            surround = (rho <= 0.45) | ((rho > 0.85) & (rho <= 1.0))
        else:
            main = rho <= 0.7
            surround = (rho > 0.7) & (rho <= 1.0)
        if not main.any():
            # On tiny images the main part may miss every pixel centre: take the nearest.
            main = rho == rho.min()
            surround &= ~main
        n_main, n_surround = int(main.sum()), int(surround.sum())
        contrast = rng.uniform(*_LESION_CONTRAST)
        # Opposite signs with equal pixel sums: the lesion does not shift the mean.
        main_amp = contrast * min(1.0, n_surround / n_main) if n_surround else contrast
        surround_amp = contrast * min(1.0, n_main / n_surround) if n_surround else 0.0
        box = delta[top:bottom, left:right]
        box[main] = polarity * main_amp
        box[surround] = -polarity * surround_amp


def pixel_mask_to_patches(mask: Tensor, patch_size: int) -> Tensor:
    """Which patches a pixel mask touches.

    Args:
        mask: (..., H, W) bool pixel mask, e.g. a lesion segmentation.
        patch_size: side p of a square patch; H and W must be multiples of it.

    Returns:
        (..., L) bool in row-major patch order (timm's and :func:`maskkit.patchify`'s):
        True where at least one pixel of the patch is in the mask.

    Raises:
        TypeError: ``mask`` is not a bool tensor, or ``patch_size`` is not an int.
        ValueError: ``patch_size`` is below 1 or does not divide H and W.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}; compare it, e.g. m > 0")
    check_int("patch_size", patch_size, minimum=1)
    height, width = mask.shape[-2:]
    patch_grid((height, width), patch_size)
    pixels = rearrange(
        mask, "... (gh p1) (gw p2) -> ... (gh gw) (p1 p2)", p1=patch_size, p2=patch_size
    )
    return pixels.any(dim=-1)


def lesion_hit_counts(
    split_or_labels: MaskSplit | Tensor, lesion_patches: Tensor, *, group: str = "masked"
) -> tuple[int, int]:
    """Lesion patches in ``group`` and all lesion patches, summed over the batch.

    Sum both counts over batches and divide to get a data set's hit rate.

    Args:
        split_or_labels: a :class:`~maskkit.MaskSplit`, or its (B, L) ``labels``.
        lesion_patches: (B, L) bool, True on patches that overlap the lesion
            (:meth:`SyntheticLesions.lesion_patches`, :func:`pixel_mask_to_patches`).
        group: ``"masked"`` (default), ``"thrown"`` or ``"visible"``.

    Returns:
        ``(hits, total)`` ints.
    """
    if group not in _GROUPS:
        raise ValueError(f"group must be one of {list(_GROUPS)}, got {group!r}")
    labels = labels_of(split_or_labels)
    if not isinstance(lesion_patches, Tensor) or lesion_patches.dtype != torch.bool:
        raise TypeError("lesion_patches must be a bool tensor, True on lesion patches")
    if lesion_patches.shape != labels.shape:
        raise ValueError(
            f"lesion_patches of shape {tuple(lesion_patches.shape)} do not match the split's "
            f"(B, L) = {tuple(labels.shape)}; stack one (L,) row per sample"
        )
    lesion_patches = lesion_patches.to(labels.device)
    hits = (lesion_patches & (labels == _GROUPS[group])).sum()
    return int(hits), int(lesion_patches.sum())


def lesion_hit_rate(
    split_or_labels: MaskSplit | Tensor, lesion_patches: Tensor, *, group: str = "masked"
) -> float:
    """Share of ground-truth lesion patches that a split masks (or throws, or shows).

    Pooled over the batch: the number of lesion patches in ``group`` divided by the number
    of lesion patches, so samples without a lesion add nothing. A thrown lesion patch is
    not masked: it counts for ``group="thrown"``. Uniform random masking has an expected
    masked hit rate of ``M / L``.

    Args:
        split_or_labels: a :class:`~maskkit.MaskSplit`, or its (B, L) ``labels``.
        lesion_patches: (B, L) bool, True on patches that overlap the lesion.
        group: ``"masked"`` (default), ``"thrown"`` or ``"visible"``.

    Returns:
        The hit rate in [0, 1].

    Raises:
        ValueError: no lesion patch in the batch (the rate is undefined; accumulate
            :func:`lesion_hit_counts` over batches instead), or mismatched shapes.
    """
    hits, total = lesion_hit_counts(split_or_labels, lesion_patches, group=group)
    if total == 0:
        raise ValueError(
            "the batch has no lesion patch, so the hit rate is undefined; include samples "
            "with lesions or sum lesion_hit_counts over several batches"
        )
    return hits / total
