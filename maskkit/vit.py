"""Run a timm ViT on a subset of its patch tokens (MSMAE's SAM fine-tuning, MAE encoders)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .split import gather_tokens

__all__ = ["keep_patch_tokens", "forward_features_visible", "check_timm_vit"]


def check_timm_vit(model: nn.Module) -> None:
    """Raise ``TypeError`` unless ``model`` looks like timm's ``VisionTransformer``.

    The token-subset forward reuses timm's own ``patch_embed`` and ``_pos_embed`` so that
    class / register tokens, ``no_embed_class`` and dynamic image sizes behave as in timm.
    """
    required = ("patch_embed", "_pos_embed", "norm_pre", "blocks", "norm", "num_prefix_tokens")
    missing = [name for name in required if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not a timm VisionTransformer-style model (missing "
            f"{', '.join(missing)}); build one with timm.create_model('vit_...')"
        )


def keep_patch_tokens(x: Tensor, visible: Tensor, num_prefix_tokens: int) -> Tensor:
    """Keep the prefix tokens and the ``visible`` patch tokens of a token sequence.

    Args:
        x: (B, P + L, D) tokens, P prefix tokens (cls, register, ...) first.
        visible: (B, K) int64 patch indices (prefix tokens not counted).
        num_prefix_tokens: P.

    Returns:
        (B, P + K, D): prefix tokens, then the visible patches in the order of ``visible``.
    """
    prefix, patches = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
    return torch.cat([prefix, gather_tokens(patches, visible)], dim=1)


def forward_features_visible(model: nn.Module, images: Tensor, visible: Tensor | None) -> Tensor:
    """timm ``forward_features`` on the visible patches only (positions embedded first).

    Dropping tokens after the position embedding, as MAE does, lets a fine-tuned ViT encode
    only SAM's visible quarter while training (MSMAE Sec. 3.3) and all tokens at test time.

    Args:
        model: a timm ``VisionTransformer``.
        images: (B, C, H, W).
        visible: (B, K) patch indices to keep, or None for all tokens.

    Returns:
        (B, P + K, D) normalised tokens; ``model.forward_head`` turns them into logits.
    """
    check_timm_vit(model)
    x = model._pos_embed(model.patch_embed(images))
    if visible is not None:
        x = keep_patch_tokens(x, visible, model.num_prefix_tokens)
    x = model.norm_pre(x)
    x = model.blocks(x)
    return model.norm(x)
