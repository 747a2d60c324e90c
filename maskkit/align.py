"""Move a whole-image weight map through a crop box and a horizontal flip.

MSMAE computes each sample's cls-attention map once on the whole (resized, un-cropped)
image and masks the augmented views from it, so the map has to follow each view's crop
and flip. The released AMT (guijiejie/AMT) and MSMAE (Talented-Q/MSMAE) code divides the
crop's pixel offset by the image size before indexing the 14 x 14 map, an integer
division that truncates to 0: about 95% of their crops read the top-left cells, wherever
the crop is. Here the box is used in pixel coordinates, so the weights land where the
crop puts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import check_pair, holds
from .functional import validate_weights

__all__ = ["CropParams", "align_weights"]


class CropParams(NamedTuple):
    """A sampled crop: its box in pixels of the source image, the flip, the source's size.

    One crop holds ints and a bool; ``torch.utils.data.default_collate`` turns a batch of
    them into one ``CropParams`` of (B,) tensors, which :func:`align_weights` takes as is.
    """

    top: int | Tensor
    left: int | Tensor
    height: int | Tensor
    width: int | Tensor
    hflip: bool | Tensor
    image_height: int | Tensor
    image_width: int | Tensor

    @property
    def box(self) -> tuple[int | Tensor, int | Tensor, int | Tensor, int | Tensor]:
        """``(top, left, height, width)``, the order of ``RandomResizedCrop.get_params``."""
        return self.top, self.left, self.height, self.width

    @property
    def image_size(self) -> tuple[int | Tensor, int | Tensor]:
        """``(H, W)`` of the image the box was cut from."""
        return self.image_height, self.image_width


def align_weights(
    weights: Tensor,
    crop_box: Tensor | Sequence[float] | CropParams,
    image_size: Tensor | Sequence[int] | None = None,
    out_grid: tuple[int, int] | None = None,
    hflip: bool | Tensor = False,
) -> Tensor:
    """Weight map over a crop (and flip) of an image, from the map over the whole image.

    The map's cells tile the whole image evenly; output cells tile the crop box evenly.
    Each output cell gets the area-weighted mean of the map over the image region that
    lands in it: with separable overlap matrices ``Ry`` (gh, h0) and ``Rx`` (gw, w0)
    (overlap lengths in pixels, rows normalised to 1) the result is ``Ry @ weights @ Rx^T``,
    exact for any box, grid and aspect ratio. A flip reverses the output columns, as
    torchvision's ``hflip`` does to the cropped image.

    Batched, it runs on the weights' device: a training step aligns its batch's bank maps
    there, e.g. ``align_weights(bank[indices].to(device), crops, out_grid=grid)`` with the
    collated :class:`CropParams` of :class:`maskkit.CropDataset`.

    Args:
        weights: (h0, w0) map over the whole image, or (B, h0, w0) for a batch; finite and
            non-negative.
        crop_box: ``(top, left, height, width)`` in pixels, the order of torchvision's
            ``RandomResizedCrop.get_params``; (B, 4) for a batch. Fractional boxes are fine.
            Or a :class:`CropParams` (one crop, or a collated batch), which also gives
            ``image_size`` and ``hflip``: leave those two unset then.
        image_size: ``(H, W)`` of the image the box was cut from; for a batch, one ``(H, W)``
            for all or a (B, 2) tensor.
        out_grid: ``(gh, gw)`` cells of the output, e.g. the model's patch grid.
        hflip: whether the crop was flipped horizontally: a bool, or for a batch a (B,) bool
            tensor.

    Returns:
        (gh, gw) or (B, gh, gw) weights, float32 (float64 for float64 input), on the
        device of ``weights``.

    Raises:
        TypeError: ``weights`` is not a tensor, ``out_grid`` or ``image_size`` is missing,
            ``hflip`` (or a :class:`CropParams` field) is not a bool, number or tensor, or
            ``image_size``/``hflip`` are passed with a :class:`CropParams`.
        ValueError: a shape does not match (also between the fields of a
            :class:`CropParams`), a size is not positive, a box leaves the image, ``hflip``
            is not a bool (tensor), or the weights hold NaN, Inf or negative values. On
            CUDA the value checks are asynchronous device asserts (no host sync).
    """
    if not isinstance(weights, Tensor):
        raise TypeError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    if weights.dim() not in (2, 3):
        raise ValueError(
            f"weights must be (h0, w0) or (B, h0, w0), got shape {tuple(weights.shape)}"
        )
    if out_grid is None:
        raise TypeError("align_weights needs out_grid, the (gh, gw) cells of the output")
    if isinstance(crop_box, CropParams):
        if image_size is not None or hflip is not False:
            raise TypeError(
                "crop_box is a CropParams, which carries image_size and hflip: do not pass them"
            )
        crop_box, image_size, hflip = _from_crop_params(crop_box, weights)
    if image_size is None:
        raise TypeError("align_weights needs image_size, the (H, W) the box was cut from")
    batched = weights.dim() == 3
    grid = check_pair("out_grid", out_grid)
    dtype = torch.float64 if weights.dtype == torch.float64 else torch.float32
    device = weights.device
    maps = weights.to(dtype) if batched else weights.to(dtype).unsqueeze(0)
    batch, h0, w0 = maps.shape
    if h0 < 1 or w0 < 1:
        raise ValueError(f"weights must have at least one cell, got shape {tuple(weights.shape)}")
    validate_weights(maps)

    boxes = _as_rows("crop_box", crop_box, batch, 4, batched, dtype, device)
    sizes = _as_rows("image_size", image_size, batch, 2, batched, dtype, device)
    _check_boxes(boxes, sizes)
    expected = f"a bool or a ({batch},) bool tensor" if batched else "a bool"
    try:
        flips = torch.as_tensor(hflip, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"hflip must be {expected}, got {type(hflip).__name__} {hflip!r}") from None
    expected_flips = ((), (batch,)) if batched else ((),)
    if flips.dtype != torch.bool or flips.shape not in expected_flips:
        raise ValueError(
            f"hflip must be {expected} for weights of shape {tuple(weights.shape)}, got "
            f"{flips.dtype} of shape {tuple(flips.shape)}"
        )

    top, left, height, width = boxes.unbind(-1)
    rows = _overlap(top, height, grid[0], sizes[:, 0], h0)
    cols = _overlap(left, width, grid[1], sizes[:, 1], w0)
    aligned = torch.einsum("bih,bhw,bjw->bij", rows, maps, cols)
    aligned = torch.where(flips.reshape(-1, 1, 1), aligned.flip(-1), aligned)
    return aligned if batched else aligned.squeeze(0)


def _from_crop_params(crops: CropParams, weights: Tensor) -> tuple[Tensor, Tensor, Tensor | bool]:
    """``(boxes, image_sizes, flips)`` from one crop or a collated batch of crops.

    Raises:
        TypeError: a field is not a number or a tensor.
        ValueError: the fields differ in shape, a batch of crops does not match the
            weights' batch, or ``hflip`` holds values other than bools or 0/1 ints.
    """
    fields = {}
    for name, value in zip(CropParams._fields, crops, strict=True):
        try:
            fields[name] = torch.as_tensor(value, device=weights.device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"CropParams.{name} must be a number or a tensor, got "
                f"{type(value).__name__} {value!r}"
            ) from None
    shape = tuple(fields["top"].shape)
    if len(shape) > 1 or any(tuple(field.shape) != shape for field in fields.values()):
        listed = ", ".join(f"{name} {tuple(field.shape)}" for name, field in fields.items())
        raise ValueError(
            "CropParams fields must all be scalars (one crop) or all (B,) tensors (a batch "
            f"collated by default_collate), got shapes: {listed}"
        )
    if shape and (weights.dim() != 3 or weights.shape[0] != shape[0]):
        raise ValueError(
            f"a CropParams of {shape[0]} crops needs ({shape[0]}, h0, w0) weights, got "
            f"weights of shape {tuple(weights.shape)}"
        )
    top, left, height, width, hflip, image_height, image_width = fields.values()
    if hflip.dtype != torch.bool:
        if hflip.is_floating_point() or hflip.is_complex():
            raise ValueError(f"CropParams.hflip must hold bools (or 0/1 ints), got {hflip.dtype}")
        _check_flags(hflip)
        hflip = hflip.bool()
    boxes = torch.stack([top, left, height, width], dim=-1)
    sizes = torch.stack([image_height, image_width], dim=-1)
    return boxes, sizes, hflip if hflip.dim() else bool(hflip)


def _check_flags(flags: Tensor) -> None:
    """Integer flip flags must be 0 or 1: ``ValueError`` on CPU, a device assert on CUDA."""
    if not holds(((flags == 0) | (flags == 1)).all(), "CropParams.hflip must be bools or 0/1"):
        raise ValueError(
            f"CropParams.hflip must hold bools or 0/1 ints, got values {flags.unique().tolist()}"
        )


def _overlap(
    start: Tensor, length: Tensor, cells_out: int, extent: Tensor, cells_in: int
) -> Tensor:
    """(B, cells_out, cells_in) share of each output interval covered by each map interval.

    Output cell i spans ``start + length * [i, i + 1) / cells_out``; map cell j spans
    ``extent * [j, j + 1) / cells_in`` (all in pixels). Rows sum to 1 inside the image.
    """
    out_edges = torch.arange(cells_out + 1, dtype=start.dtype, device=start.device)
    out_edges = start[:, None] + length[:, None] * out_edges / cells_out
    in_edges = torch.arange(cells_in + 1, dtype=start.dtype, device=start.device)
    in_edges = extent[:, None] * in_edges / cells_in
    lo = torch.maximum(out_edges[:, :-1, None], in_edges[:, None, :-1])
    hi = torch.minimum(out_edges[:, 1:, None], in_edges[:, None, 1:])
    covered = (hi - lo).clamp_min(0)
    return covered / covered.sum(-1, keepdim=True)


def _as_rows(
    name: str,
    value: Tensor | Sequence[float],
    batch: int,
    width: int,
    batched: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """``value`` as a (batch, width) tensor; one row may stand for the whole batch."""
    rows = torch.as_tensor(value, device=device)
    if rows.dtype == torch.bool or rows.is_complex():
        raise ValueError(f"{name} must hold real numbers, got {rows.dtype}")
    if rows.shape == (width,):
        return rows.to(dtype).expand(batch, width)
    if batched and rows.shape == (batch, width):
        return rows.to(dtype)
    expected = f"({width},)" + (f" or ({batch}, {width})" if batched else "")
    raise ValueError(f"{name} must have shape {expected}, got {tuple(rows.shape)}")


def _check_boxes(boxes: Tensor, sizes: Tensor) -> None:
    """Every box positive and inside its image: ``ValueError`` on CPU, a device assert on CUDA."""
    top, left, height, width = boxes.unbind(-1)
    bad_size = ~((sizes > 0).all(-1) & torch.isfinite(sizes).all(-1))
    bad_box = ~((height > 0) & (width > 0) & torch.isfinite(boxes).all(-1))
    outside = (top < 0) | (left < 0) | (top + height > sizes[:, 0]) | (left + width > sizes[:, 1])
    bad = bad_size | bad_box | outside
    if not holds(~bad.any(), "align_weights got a crop box outside its image or a bad size"):
        i = int(bad.nonzero()[0, 0])
        box = [round(v, 4) for v in boxes[i].tolist()]
        size = [round(v, 4) for v in sizes[i].tolist()]
        if bool(bad_size[i]):
            problem = f"image_size {size} must be positive"
        elif bool(bad_box[i]):
            problem = f"crop_box {box} must have a positive height and width"
        else:
            problem = f"crop_box {box} (top, left, height, width) leaves the image of size {size}"
        where = f"sample {i}: " if boxes.shape[0] > 1 else ""
        raise ValueError(
            f"{where}{problem}; pass the box of RandomResizedCrop.get_params on that image"
        )
