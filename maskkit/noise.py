"""Data-independent masks from filtered noise (ColorMAE), batched and sync-free.

Hinojosa, Liu and Ghanem, "ColorMAE: Exploring data-independent masking strategies in
Masked AutoEncoders", ECCV 2024 (arXiv:2407.13036; carlosh93/ColorMAE
``models/utils/masking_generator.py``). ColorMAE filters white noise into "colours" (red:
low-pass, blue: high-pass, green: band-pass, purple: band-stop), stores large patterns,
crops a patch-grid window per sample and keeps the patches of *highest* noise visible,
masking the lowest. maskkit draws fresh filtered noise on the device for every batch (no
pattern file), which has the same distribution as a random crop of a stationary pattern.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ._checks import check_choice, check_int, check_pair
from .blockwise import _check_call, _check_grid, _refuse_weights, _resolve_grid
from .functional import check_ratios, split_from_priorities
from .maskers import Masker
from .split import MaskSplit

__all__ = [
    "NOISE_COLORS",
    "NoiseColor",
    "NoisePatternMasker",
    "color_noise",
    "noise_filter",
    "noise_pattern_weights",
]

NoiseColor = Literal["white", "red", "blue", "green", "purple"]
NOISE_COLORS: tuple[str, ...] = ("white", "red", "blue", "green", "purple")
DEFAULT_BAND = (0.1, 0.25)
# The noise is drawn on squares of side max(gh, gw) + ceil(0.5 / low), so memory grows as
# 1 / low^2. At 0.01 cycles per patch the margin is 50 patches and the roll-off spans about
# 100 patches, more than a ViT's patch grid (14 at 224 px, 64 at 1024 px with 16 px
# patches): a lower cut-off costs memory without changing the pattern on the grid.
# ColorMAE's bands (the default low of 0.1) lie ten times above it.
MIN_CUTOFF = 0.01


def _check_band(band: object) -> tuple[float, float]:
    pair = tuple(band) if isinstance(band, (tuple, list)) else (band,)
    ok = len(pair) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair
    )
    if not ok or not 0 < pair[0] < pair[1]:
        raise ValueError(
            f"band must be two frequencies 0 < low < high in cycles per patch (at most 0.5 "
            f"along an axis), e.g. {DEFAULT_BAND}; got {band!r}"
        )
    low, high = float(pair[0]), float(pair[1])
    if low < MIN_CUTOFF:
        raise ValueError(
            f"band={band!r} has a low cut-off below {MIN_CUTOFF} cycles per patch: the "
            "noise is drawn on a square of side up to max(gh, gw) + ceil(0.5 / low) = "
            f"max(gh, gw) + {math.ceil(0.5 / low)} patches per sample, so memory grows as "
            f"1 / low^2, and a roll-off at {MIN_CUTOFF} already spans about 100 patches; pass "
            f"low in [{MIN_CUTOFF}, high)"
        )
    return low, high


def noise_filter(
    frequency: Tensor, color: NoiseColor, band: tuple[float, float] = DEFAULT_BAND
) -> Tensor:
    """The amplitude response of a noise colour at radial frequencies ``f``.

    With Gaussian roll-offs ``G_c(f) = exp(-f^2 / (2 c^2))`` and ``band = (low, high)``:
    white ``1``; red (low-pass) ``G_low``; blue (high-pass) ``1 - G_high``; green
    (band-pass) ``G_high - G_low``; purple (band-stop) ``1 - G_high + G_low``.

    Args:
        frequency: radial frequencies in cycles per patch, any shape.
        color: one of :data:`NOISE_COLORS`.
        band: ``(low, high)`` cut-offs in cycles per patch.

    Returns:
        The response, same shape as ``frequency``.

    Raises:
        ValueError: ``color`` is not one of :data:`NOISE_COLORS`.
    """
    check_choice("color", color, NOISE_COLORS)
    low, high = band
    below_low = torch.exp(-0.5 * (frequency / low).square())
    below_high = torch.exp(-0.5 * (frequency / high).square())
    if color == "white":
        return torch.ones_like(frequency)
    if color == "red":
        return below_low
    if color == "blue":
        return 1.0 - below_high
    if color == "green":
        return below_high - below_low
    return 1.0 - below_high + below_low  # purple


def color_noise(
    batch_size: int,
    grid: tuple[int, int],
    *,
    color: NoiseColor = "green",
    band: tuple[float, float] = DEFAULT_BAND,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Filtered Gaussian noise on the patch grid, one independent field per sample.

    White Gaussian noise on a square of side ``max(gh, gw) + margin`` is filtered by
    :func:`noise_filter` as a circular convolution and the top-left ``grid`` window is
    kept; the margin, ``ceil(0.5 / c)`` patches for the widest Gaussian roll-off ``c`` in
    use (none for white noise), keeps the window's opposite edges from wrapping into each
    other. The Gaussian roll-offs are separable, so the filter is applied as two small
    matrix products per roll-off (rows, then columns) rather than FFTs. Each window is
    then standardised to mean 0 and variance 1.

    Args:
        batch_size: B.
        grid: (gh, gw) patch grid, at least 2 cells.
        color: one of :data:`NOISE_COLORS`.
        band: ``(low, high)`` cut-offs in cycles per patch, ``MIN_CUTOFF`` (0.01) <= low
            < high.
        device: where to draw.
        generator: optional RNG on ``device``.

    Returns:
        (B, gh, gw) float32 noise, zero mean and unit variance per sample.

    Raises:
        TypeError, ValueError: a bad ``batch_size``, ``grid``, ``color`` or ``band``, or a
            grid of a single cell.
    """
    gh, gw = check_pair("grid", grid)
    if gh * gw < 2:
        raise ValueError(
            f"grid={grid} has a single cell, and one value has no variance to standardise "
            "to 1 (it would be NaN); pass a grid of at least 2 cells"
        )
    field = _filtered_noise(batch_size, grid, color, band, device, generator)
    flat = field.reshape(batch_size, -1)
    std, mean = torch.std_mean(flat, dim=1, keepdim=True)
    return ((flat - mean) / std.clamp_min(1e-12)).view_as(field)


def _filtered_noise(
    batch_size: int,
    grid: tuple[int, int],
    color: NoiseColor,
    band: tuple[float, float],
    device: torch.device | str | None,
    generator: torch.Generator | None,
) -> Tensor:
    """(B, gh, gw) filtered noise before standardisation (checks the options)."""
    check_int("batch_size", batch_size, minimum=1)
    gh, gw = check_pair("grid", grid)
    check_choice("color", color, NOISE_COLORS)
    low, high = _check_band(band)
    widest = {"white": None, "blue": high}.get(color, low)
    size = max(gh, gw) + (0 if widest is None else math.ceil(0.5 / widest))
    white = torch.randn(
        batch_size, size, size, device=device, dtype=torch.float32, generator=generator
    )
    window = white[:, :gh, :gw]
    if color == "white":
        return window
    if color == "red":
        return _gaussian_blur(white, gh, gw, low)
    below_high = _gaussian_blur(white, gh, gw, high)
    if color == "blue":
        return window - below_high
    below_low = _gaussian_blur(white, gh, gw, low)
    if color == "green":
        return below_high - below_low
    return window - below_high + below_low  # purple


def _gaussian_blur(field: Tensor, gh: int, gw: int, cutoff: float) -> Tensor:
    """Top-left (gh, gw) window of the circular convolution of (B, S, S) fields with the
    Gaussian low-pass ``exp(-f^2 / (2 cutoff^2))``, as ``rows @ field @ cols``."""
    size = field.shape[-1]
    freq = torch.fft.fftfreq(size, device=field.device)
    impulse = torch.fft.ifft(torch.exp(-0.5 * (freq / cutoff).square())).real.float()
    positions = torch.arange(size, device=field.device)
    circulant = impulse[(positions[:, None] - positions[None, :]) % size]  # (S, S), symmetric
    return circulant[:gh] @ field @ circulant[:gw].T


def noise_pattern_weights(
    batch_size: int,
    grid: tuple[int, int],
    *,
    color: NoiseColor = "green",
    sharpness: float = 10.0,
    band: tuple[float, float] = DEFAULT_BAND,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """ColorMAE-style masking weights for the weighted maskers (higher = masked sooner).

    ``exp(-sharpness * u)`` with ``u`` the :func:`color_noise` field min-max scaled to
    [0, 1] per sample: the weight is 1 where the noise is lowest (ColorMAE masks those)
    and ``exp(-sharpness)`` where it is highest (ColorMAE keeps those visible). With
    :class:`~maskkit.SAMMasker` or :class:`~maskkit.AMTMasker` the draw follows the pattern
    more closely as ``sharpness`` grows; :class:`NoisePatternMasker` is the limit, ColorMAE's
    deterministic rule.

    Args:
        batch_size: B.
        grid: (gh, gw) patch grid.
        color: one of :data:`NOISE_COLORS`.
        sharpness: s in [0, 80]; 0 gives uniform weights.
        band: ``(low, high)`` cut-offs in cycles per patch, ``MIN_CUTOFF`` (0.01) <= low
            < high.
        device: where to draw.
        generator: optional RNG on ``device``.

    Returns:
        (B, gh, gw) float32 weights in ``[exp(-sharpness), 1]``.

    Raises:
        TypeError, ValueError: a bad ``batch_size``, ``grid``, ``color``, ``sharpness`` or
            ``band``.
    """
    if isinstance(sharpness, bool) or not isinstance(sharpness, (int, float)):
        raise TypeError(f"sharpness must be a float, got {type(sharpness).__name__}")
    if not 0 <= sharpness <= 80:
        raise ValueError(
            f"sharpness must lie in [0, 80] (exp(-80) is near float32's smallest normal "
            f"number), got {sharpness}"
        )
    noise = _filtered_noise(batch_size, grid, color, band, device, generator)
    low = noise.amin(dim=(1, 2), keepdim=True)
    span = (noise.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-12)
    return torch.exp(-sharpness * (noise - low) / span)


class NoisePatternMasker(Masker):
    """ColorMAE's data-independent masking, with exact counts (arXiv:2407.13036).

    Each sample gets a fresh :func:`color_noise` field; the M patches of lowest noise are
    masked (M from :func:`~maskkit.split_counts`; ColorMAE keeps the
    ``int(L * (1 - mask_ratio))`` strongest visible, the same count), the next lowest are
    thrown with ``throw_ratio``, the highest stay visible. Green noise (band-pass) is
    ColorMAE's best; red gives large blobs, blue scattered patches, purple both.

    Args:
        mask_ratio: share of patches masked (ColorMAE: 0.75).
        color: one of :data:`NOISE_COLORS`.
        band: ``(low, high)`` cut-offs in cycles per patch; None is ``(0.1, 0.25)``. The
            low cut-off must be at least ``MIN_CUTOFF`` (0.01): the noise field per sample
            is a square of side ``max(gh, gw) + ceil(0.5 / low)``.
        throw_ratio: share of patches thrown (default none).
        grid: (gh, gw) patch grid; ``None`` takes a square grid from L at each call.

    Raises:
        TypeError, ValueError: an option of the wrong type or outside its range.
    """

    def __init__(
        self,
        mask_ratio: float = 0.75,
        *,
        color: NoiseColor = "green",
        band: tuple[float, float] | None = None,
        throw_ratio: float = 0.0,
        grid: tuple[int, int] | None = None,
    ) -> None:
        self.mask_ratio, self.throw_ratio = check_ratios(mask_ratio, throw_ratio)
        self.color: NoiseColor = check_choice("color", color, NOISE_COLORS)
        self.band = DEFAULT_BAND if band is None else _check_band(band)
        self.grid = _check_grid(grid)

    def __call__(
        self,
        batch_size: int,
        num_patches: int,
        weights: Tensor | None = None,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> MaskSplit:
        """Sample noise-pattern splits for a batch.

        Args:
            batch_size: B.
            num_patches: L, patch tokens per sample (prefix tokens excluded).
            weights: must be None.
            device: where to sample.
            generator: optional RNG on ``device``, for reproducible splits.

        Returns:
            A :class:`~maskkit.MaskSplit` with the counts of :meth:`counts`.
        """
        _refuse_weights("NoisePatternMasker", "filtered noise", weights)
        _check_call(batch_size, num_patches)
        grid = _resolve_grid(num_patches, self.grid)
        noise = _filtered_noise(batch_size, grid, self.color, self.band, device, generator)
        priorities = -noise.reshape(batch_size, num_patches)  # lowest noise masked first
        return split_from_priorities(priorities, self.counts(num_patches))

    def __repr__(self) -> str:
        return (
            f"NoisePatternMasker(mask_ratio={self.mask_ratio}, color={self.color!r}, "
            f"band={self.band}, throw_ratio={self.throw_ratio}, grid={self.grid})"
        )
