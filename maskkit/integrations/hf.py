"""Hugging Face ViTMAE: drive ``ViTMAEForPreTraining`` with maskkit splits, through ``noise``.

``ViTMAEForPreTraining.forward(pixel_values, noise=...)`` keeps the
``int(L * (1 - config.mask_ratio))`` patches of *smallest* noise, in ascending-noise
order (``ViTMAEEmbeddings.random_masking``); ``noise`` is the public way to choose the
mask (transformers issues #20328, #20431). A split's ``ids_restore`` is each patch's rank
in ``ids_shuffle``, visible patches first, so as noise it makes ViTMAE keep exactly the
split's visible patches in the split's order and return the split's ``ids_restore``. The
model is not changed.

ViTMAE cannot throw: it keeps or removes. With a masking-and-throwing split (AMT, SAM),
``config.mask_ratio`` must be ``mask_ratio + throw_ratio``, so that ViTMAE keeps the
split's visible patches (maskkit's visible count is ViTMAE's, the same float expression:
:func:`maskkit.split_counts`); masked and thrown patches are then both removed from the
encoder, both get a mask token in ViTMAE's decoder, and ``outputs.loss`` covers both.
:func:`pretrain_forward` replaces that loss with the one over the masked patches only, so
thrown patches stay out of the loss and get no gradient; ViTMAE's decoder still spends
mask tokens on them (an MAE whose decoder drops them: :mod:`maskkit.integrations.mae`,
:class:`maskkit.mae.MaskedAutoencoder`).

Needs ``transformers`` (``pip install 'maskkit[hf]'``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..mae import patch_targets, reconstruction_loss
from ..split import MaskSplit

try:
    import transformers
except ImportError as error:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "maskkit.integrations.hf needs Hugging Face transformers: pip install 'maskkit[hf]'"
    ) from error

__all__ = ["check_mask_ratio", "masked_loss", "noise_from_split", "pretrain_forward"]


def noise_from_split(split: MaskSplit) -> Tensor:
    """ViTMAE ``noise`` (B, L) float32 whose ascending argsort is ``split.ids_shuffle``.

    ViTMAE keeps the patches of smallest noise: these ranks put the visible patches first
    (then masked, then thrown), without ties, so it keeps exactly ``split.visible`` in that
    order. ViTMAE's count must match: see :func:`check_mask_ratio`.
    """
    return split.ids_restore.float()


def check_mask_ratio(config: Any, split: MaskSplit) -> None:
    """Raise ``ValueError`` unless ViTMAE with ``config`` keeps the split's visible patches.

    ViTMAE keeps ``int(L * (1 - config.mask_ratio))`` patches; the split has K visible
    ones. Set ``config.mask_ratio = mask_ratio + throw_ratio`` of the masker (the same
    float sum), e.g. ``model.config.mask_ratio = masker.mask_ratio + masker.throw_ratio``.

    Args:
        config: a ``ViTMAEConfig`` (anything with ``mask_ratio``).
        split: the batch's split.

    Raises:
        TypeError: ``config`` has no float ``mask_ratio``.
    """
    mask_ratio = getattr(config, "mask_ratio", None)
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)):
        raise TypeError(
            f"config must be a ViTMAEConfig with a float mask_ratio, got {type(config).__name__} "
            f"with mask_ratio={mask_ratio!r}"
        )
    num_patches, num_visible = split.num_patches, split.visible.shape[1]
    kept = int(num_patches * (1 - mask_ratio))
    if kept != num_visible:
        raise ValueError(
            f"ViTMAE keeps int({num_patches} * (1 - {mask_ratio})) = {kept} patches "
            f"but the split has {num_visible} visible; set config.mask_ratio to the masker's "
            "mask_ratio + throw_ratio (ViTMAE cannot throw: it removes masked and thrown "
            "patches alike)"
        )


def masked_loss(model: nn.Module, pixel_values: Tensor, logits: Tensor, split: MaskSplit) -> Tensor:
    """ViTMAE's reconstruction loss over the split's masked patches only.

    ViTMAE's own ``loss`` averages over every removed patch, masked and thrown; this is
    the same per-patch MSE (on per-patch normalised pixels when ``config.norm_pix_loss``)
    averaged over ``split.loss_mask()``, which is 0 on visible and thrown patches. With
    nothing thrown it equals ViTMAE's loss bit for bit.

    Args:
        model: the ``ViTMAEForPreTraining`` (or a DDP wrapper of it); its config gives the
            patch size and ``norm_pix_loss``.
        pixel_values: (B, C, H, W) the images given to the model.
        logits: (B, L, p * p * C) ``outputs.logits``.
        split: the split whose noise produced ``logits``.
    """
    config = _config(model)
    target = patch_targets(pixel_values, config.patch_size, norm_pix=config.norm_pix_loss)
    return reconstruction_loss(logits, target, split.loss_mask())


def pretrain_forward(
    model: nn.Module, pixel_values: Tensor, split: MaskSplit, **kwargs: Any
) -> Any:
    """``model(pixel_values, noise=...)`` for a split, with the loss over masked patches.

    Checks that ViTMAE keeps exactly the split's visible patches
    (:func:`check_mask_ratio`), runs the model with :func:`noise_from_split` and replaces
    ``outputs.loss`` with :func:`masked_loss`. ``outputs.mask`` stays ViTMAE's (1 on every
    removed patch, masked or thrown); ``split.loss_mask()`` is the mask of the loss.

    Args:
        model: a ``ViTMAEForPreTraining``, or a DDP wrapper of one.
        pixel_values: (B, C, H, W) images.
        split: the batch's split over the model's L patches.
        **kwargs: passed on to the model (e.g. ``interpolate_pos_encoding``).

    Returns:
        ViTMAE's ``ViTMAEForPreTrainingOutput`` with the masked-only ``loss``.

    Raises:
        TypeError: ``model`` is not a Hugging Face ViTMAE model.
        ValueError: ``config.mask_ratio`` keeps another number of patches than the split's
            visible count, or the split does not match the batch or its patch grid.
    """
    config = _config(model)
    if split.ids_shuffle.shape[0] != pixel_values.shape[0]:
        raise ValueError(
            f"the split covers {split.ids_shuffle.shape[0]} images but pixel_values holds "
            f"{pixel_values.shape[0]}"
        )
    height, width = pixel_values.shape[-2:]
    num_patches = (height // config.patch_size) * (width // config.patch_size)
    if split.num_patches != num_patches:
        raise ValueError(
            f"the split covers {split.num_patches} patches but {height} x {width} images cut "
            f"into {config.patch_size}-pixel patches give {num_patches}; draw the split "
            f"with num_patches={num_patches}"
        )
    check_mask_ratio(config, split)
    outputs = model(pixel_values=pixel_values, noise=noise_from_split(split), **kwargs)
    outputs["loss"] = masked_loss(model, pixel_values, outputs.logits, split)
    return outputs


def _config(model: nn.Module) -> Any:
    """The ViTMAE config of ``model`` or of the model inside a DDP-style ``.module`` wrapper."""
    inner = getattr(model, "module", None)
    if isinstance(inner, nn.Module) and not hasattr(model, "config"):
        model = inner
    config = getattr(model, "config", None)
    if not isinstance(config, transformers.ViTMAEConfig):
        raise TypeError(
            "expected a Hugging Face ViTMAEForPreTraining (or a DDP wrapper of one), got "
            f"{type(model).__name__}; timm ViTs take splits directly: "
            "maskkit.forward_features_visible or maskkit.mae.MaskedAutoencoder"
        )
    return config
