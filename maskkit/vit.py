"""timm vision transformers: what maskkit can read, and a forward on a subset of tokens.

:func:`check_timm_vit` is the one place that decides whether a model is a timm ViT that
maskkit can read (attention maps) or run on a token subset (MAE encoders, MSMAE's SAM
fine-tuning); :func:`forward_features_visible` is timm's ``forward_features`` with the
masked and thrown patches dropped after the position embedding, as MAE does.
facebookresearch/mae's ``MaskedAutoencoderViT`` keeps its own layout (a cls token and a
(1, 1 + L, D) position table, no ``num_prefix_tokens``): :func:`is_mae_vit` recognises it
and :func:`embed_mae_tokens` is its token embedding, with any subset of patches kept.
"""

from __future__ import annotations

import torch
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from .split import gather_tokens

__all__ = [
    "check_timm_vit",
    "embed_mae_tokens",
    "forward_features_visible",
    "is_mae_vit",
    "keep_patch_tokens",
]

# timm families that are not a fixed grid of patch tokens behind prefix tokens, by class
# name (not every timm version has every class), with the reason maskkit cannot use them.
_UNSUPPORTED = {
    "NaFlexVit": (
        "it embeds variable-resolution patch sequences (NaFlexEmbeds) instead of a fixed patch grid"
    ),
    "VisionTransformerSAM": (
        "SAM-ViT attends within windows over a 2-D feature map, with no cls token or token "
        "sequence to mask"
    ),
    "Hiera": "its hierarchical stages pool an unrolled token layout, with no cls token",
}


def is_mae_vit(model: nn.Module) -> bool:
    """True for facebookresearch/mae's ``MaskedAutoencoderViT`` layout (or a wrapper of it).

    That is: no ``num_prefix_tokens``, a ``patch_embed`` with ``num_patches`` L, a (1, 1, D)
    ``cls_token``, a (1, 1 + L, D) ``pos_embed`` whose row 0 belongs to the cls token, and
    a non-empty ``blocks``. MAE masks inside ``forward_encoder``, so maskkit runs such a
    model through :func:`embed_mae_tokens` and its ``blocks`` instead.
    """
    if getattr(model, "num_prefix_tokens", None) is not None:
        return False
    patch_embed = getattr(model, "patch_embed", None)
    cls_token = getattr(model, "cls_token", None)
    pos_embed = getattr(model, "pos_embed", None)
    blocks = getattr(model, "blocks", None)
    num_patches = getattr(patch_embed, "num_patches", None)
    if not (
        isinstance(patch_embed, nn.Module)
        and isinstance(num_patches, int)
        and isinstance(cls_token, Tensor)
        and isinstance(pos_embed, Tensor)
        and isinstance(blocks, (nn.Sequential, nn.ModuleList))
        and len(blocks) > 0
    ):
        return False
    width = cls_token.shape[-1]
    return tuple(cls_token.shape) == (1, 1, width) and tuple(pos_embed.shape) == (
        1,
        1 + num_patches,
        width,
    )


def embed_mae_tokens(model: nn.Module, images: Tensor, visible: Tensor | None = None) -> Tensor:
    """MAE's encoder input: patches with positions, the ``visible`` ones kept, cls first.

    facebookresearch/mae (``forward_encoder``) adds ``pos_embed[:, 1:]`` to the patch
    tokens, keeps a subset of them, then prepends ``cls_token + pos_embed[:, :1]``. Here
    the subset is given (no shuffling inside), so ``visible=None`` keeps every patch in
    patch order and ``visible=split.visible`` keeps exactly MAE's ``ids_keep``.

    Args:
        model: a model for which :func:`is_mae_vit` holds.
        images: (B, C, H, W).
        visible: (B, K) patch indices to keep, or None for all L.

    Returns:
        (B, 1 + K, D) tokens for ``model.blocks``.
    """
    x = model.patch_embed(images) + model.pos_embed[:, 1:, :]
    if visible is not None:
        x = gather_tokens(x, visible)
    cls_token = (model.cls_token + model.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
    return torch.cat([cls_token, x], dim=1)


def check_timm_vit(model: nn.Module, *, token_subset: bool = False) -> None:
    """Raise ``TypeError`` unless maskkit can use ``model`` as a timm ViT.

    Reading attention maps needs ``patch_embed``, an int ``num_prefix_tokens`` and a
    non-empty ``blocks`` sequence: timm's ``VisionTransformer`` (DeiT, register tokens,
    DINOv2, ...), ``Eva`` and ``Beit`` have them. Running a token subset
    (``token_subset=True``) needs timm's ``VisionTransformer`` itself (or a subclass),
    whose ``_pos_embed`` returns the tokens with prefix tokens first: ``Eva`` (rotary
    embeddings returned beside the tokens), ``NaFlexVit`` (variable-resolution patches)
    and hierarchical models such as Hiera or SAM-ViT are rejected. facebookresearch/mae's
    ``MaskedAutoencoderViT`` (:func:`is_mae_vit`) is readable for attention maps; its
    token-subset forward is :class:`maskkit.integrations.mae.MAEAdapter`.
    """
    name = type(model).__name__
    for cls in type(model).__mro__:
        if cls.__name__ in _UNSUPPORTED:
            raise TypeError(
                f"timm's {cls.__name__} is not supported by maskkit: "
                f"{_UNSUPPORTED[cls.__name__]}. Use a ViT with a patch grid instead (vit_*, "
                "deit_*, DINOv2; Eva and BEiT for attention maps)"
            )
    if not token_subset and is_mae_vit(model):
        return
    blocks = getattr(model, "blocks", None)
    missing = [
        attribute
        for attribute, present in (
            ("patch_embed", isinstance(getattr(model, "patch_embed", None), nn.Module)),
            ("num_prefix_tokens", isinstance(getattr(model, "num_prefix_tokens", None), int)),
            ("blocks", isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0),
        )
        if not present
    ]
    if missing:
        raise TypeError(
            f"{name} lacks {', '.join(missing)}: maskkit needs a timm ViT-style model with "
            "patch_embed, num_prefix_tokens and blocks[i].attn, e.g. "
            f"timm.create_model('vit_base_patch16_224'){_hint(model)}"
        )
    if token_subset and not isinstance(model, VisionTransformer):
        raise TypeError(
            f"{name} is not a timm VisionTransformer: encoding a subset of tokens needs "
            "timm's VisionTransformer (vit_*, deit_*, and their register-token variants); "
            f"Eva, NaFlexVit, Hiera and SAM-ViT embed positions differently{_hint(model)}"
        )


def _hint(model: nn.Module) -> str:
    """Where to go instead, for the models people most often pass by mistake."""
    if is_mae_vit(model):
        return (
            "; for facebookresearch/mae's MaskedAutoencoderViT use "
            "maskkit.integrations.mae.MAEAdapter(model)"
        )
    if type(model).__module__.startswith("transformers."):
        return (
            "; Hugging Face models are driven through their `noise` argument: see "
            "maskkit.integrations.hf (attention maps: output_attentions=True)"
        )
    inner = getattr(model, "vit", None)
    if isinstance(inner, VisionTransformer):
        return f"; {type(model).__name__} wraps a timm ViT in .vit: pass model.vit"
    return ""


def keep_patch_tokens(x: Tensor, visible: Tensor, num_prefix_tokens: int) -> Tensor:
    """Keep the prefix tokens and the ``visible`` patch tokens of a token sequence.

    Args:
        x: (B, P + L, D) tokens, P prefix tokens (cls, register, ...) first.
        visible: (B, K) distinct int64 patch indices (prefix tokens not counted).
        num_prefix_tokens: P.

    Returns:
        (B, P + K, D): prefix tokens, then the visible patches in the order of ``visible``.

    Raises:
        ValueError: ``visible`` repeats a patch or lies outside [0, L) (see
            :func:`~maskkit.gather_tokens`).
    """
    prefix, patches = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
    return torch.cat([prefix, gather_tokens(patches, visible, distinct=True)], dim=1)


def forward_features_visible(
    model: VisionTransformer, images: Tensor, visible: Tensor | None
) -> Tensor:
    """timm ``forward_features`` on the visible patches only (positions embedded first).

    Dropping tokens after the position embedding, as MAE does, lets a fine-tuned ViT encode
    only SAM's visible quarter while training (MSMAE Sec. 3.3) and all tokens at test time.
    The rest follows timm: ``patch_drop``, ``norm_pre``, the blocks (with gradient
    checkpointing when ``model.set_grad_checkpointing()`` is on) and ``norm``.

    Args:
        model: a timm ``VisionTransformer``.
        images: (B, C, H, W).
        visible: (B, K) patch indices to keep, or None for all tokens.

    Returns:
        (B, P + K, D) normalised tokens; ``model.forward_head`` turns them into logits.

    Raises:
        TypeError: ``model`` is not a timm ``VisionTransformer``.
        ValueError: ``visible`` does not match the batch, or holds repeated or
            out-of-range patch indices (on CUDA: a device assert).
    """
    check_timm_vit(model, token_subset=True)
    x = model._pos_embed(model.patch_embed(images))
    if visible is not None:
        if not isinstance(visible, Tensor) or visible.dim() != 2 or visible.shape[0] != x.shape[0]:
            got = tuple(visible.shape) if isinstance(visible, Tensor) else type(visible).__name__
            raise ValueError(
                f"visible must be (B, K) patch indices for the batch of {x.shape[0]} images, "
                f"got {got}"
            )
        x = keep_patch_tokens(x, visible, model.num_prefix_tokens)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    if model.grad_checkpointing and not torch.jit.is_scripting():
        x = checkpoint_seq(model.blocks, x)
    else:
        x = model.blocks(x)
    return model.norm(x)
