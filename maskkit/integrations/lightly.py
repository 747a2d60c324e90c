"""lightly: maskkit splits for lightly's masked vision transformers and MAE decoders.

lightly (lightly-ai/lightly, ``lightly.models``) indexes tokens *with* the prefix tokens:
``utils.random_token_mask((B, 1 + L), mask_ratio)`` returns ``(idx_keep, idx_mask)``
over the cls token and the L patches, index 0 (the cls token) always kept, patch ``i`` at
index ``i + 1``; ``MaskedVisionTransformerTIMM.encode(images, idx_keep=...)`` encodes
the kept tokens, and its MAE example takes targets at ``idx_mask - 1``.
:func:`to_lightly` turns a split into that pair, so uniform masking is a one-line swap.

lightly's decoders cannot throw: the MAE example's decoder builds all ``1 + L`` tokens
and would give a thrown patch a token (a mask token with ``MAEDecoderTIMM``, a zero token
with ``MaskedVisionTransformerDecoderTIMM``). :func:`decode_masked` runs the decoder's own
mask token, position table, blocks and norm on the visible and masked tokens only, in
patch order (:func:`maskkit.mae.decoder_tokens`), and returns the masked patches' decoded
tokens in ``idx_mask`` order, ready for the prediction head.

Needs ``lightly`` (``pip install 'maskkit[lightly]'``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..mae import decoder_tokens
from ..split import MaskSplit, gather_tokens

try:
    import lightly  # noqa: F401  (the dependency this module adapts to)
except ImportError as error:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "maskkit.integrations.lightly needs lightly: pip install 'maskkit[lightly]'"
    ) from error

__all__ = ["decode_masked", "to_lightly"]


def to_lightly(
    split: MaskSplit, *, num_prefix_tokens: int = 1, allow_thrown: bool = False
) -> tuple[Tensor, Tensor]:
    """A split as lightly's ``(idx_keep, idx_mask)``, prefix tokens counted.

    Args:
        split: the batch's split over L patches.
        num_prefix_tokens: P, tokens before the patches in lightly's sequence (1, the cls
            token, for the MAE example; ``backbone.vit.num_prefix_tokens`` in general).
            They are always kept, as ``random_token_mask`` keeps index 0.
        allow_thrown: accept a split with thrown patches. lightly's decoders would give
            those patches a token; pass True once the decoder runs through
            :func:`decode_masked`, which drops them.

    Returns:
        ``idx_keep`` (B, P + K): ``0 .. P - 1`` then ``split.visible + P``, in that order;
        ``idx_mask`` (B, M): ``split.masked + P``. Thrown patches are in neither.

    Raises:
        TypeError: ``split`` is not a :class:`~maskkit.MaskSplit` or ``allow_thrown`` not a
            bool.
        ValueError: a split with thrown patches while ``allow_thrown`` is False.
    """
    if not isinstance(split, MaskSplit):
        raise TypeError(f"split must be a maskkit.MaskSplit, got {type(split).__name__}")
    check_int("num_prefix_tokens", num_prefix_tokens, minimum=0)
    if not isinstance(allow_thrown, bool):
        raise TypeError(f"allow_thrown must be a bool, got {type(allow_thrown).__name__}")
    num_thrown = split.thrown.shape[1]
    if num_thrown and not allow_thrown:
        raise ValueError(
            f"the split throws {num_thrown} patches per image, which lightly's decoders "
            "cannot leave out (they would get a token); decode with "
            "maskkit.integrations.lightly.decode_masked(decoder, tokens, split) and then "
            "call to_lightly(split, allow_thrown=True)"
        )
    batch_size = split.visible.shape[0]
    prefix = torch.arange(num_prefix_tokens, device=split.visible.device)
    idx_keep = torch.cat(
        [prefix.expand(batch_size, num_prefix_tokens), split.visible + num_prefix_tokens], dim=1
    )
    return idx_keep, split.masked + num_prefix_tokens


def decode_masked(decoder: nn.Module, tokens: Tensor, split: MaskSplit) -> Tensor:
    """Run a lightly MAE decoder on the visible and masked tokens; thrown ones get none.

    Takes the embedded encoder output, builds ``[prefix, visible and masked patches in
    patch order]`` with the decoder's mask token and position table, runs the decoder's
    blocks and norm, and returns the masked patches' tokens in ``split.masked`` order (the
    order of ``idx_mask``, so ``utils.get_at_index(patches, idx_mask - 1)`` are their
    targets). With nothing thrown this is exactly the MAE example's decoder pass.

    Args:
        decoder: lightly's ``MaskedVisionTransformerDecoderTIMM`` (``mask_token``,
            ``pos_embed``, ``decode``) or the older ``MAEDecoderTIMM``
            (``mask_token``, ``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``).
        tokens: (B, P + K, D') the encoder's output for ``idx_keep``, already embedded to
            the decoder width (``decoder_embed(x_encoded)``).
        split: the batch's split.

    Returns:
        (B, M, D') decoded tokens of the masked patches, for the prediction head.

    Raises:
        TypeError: ``decoder`` is none of lightly's MAE decoders.
        ValueError: the split covers another number of patches than the decoder, or
            ``tokens`` does not match the split.
    """
    mask_token = getattr(decoder, "mask_token", None)
    pos_embed = getattr(decoder, "pos_embed", None)
    if isinstance(pos_embed, Tensor) and callable(getattr(decoder, "decode", None)):
        run = decoder.decode  # MaskedVisionTransformerDecoderTIMM: blocks, then norm
    elif isinstance(getattr(decoder, "decoder_pos_embed", None), Tensor) and all(
        isinstance(getattr(decoder, name, None), nn.Module)
        for name in ("decoder_blocks", "decoder_norm")
    ):
        # MAEDecoderTIMM's own decode adds the full position table, so run its parts.
        pos_embed = decoder.decoder_pos_embed

        def run(x: Tensor) -> Tensor:
            return decoder.decoder_norm(decoder.decoder_blocks(x))

    else:
        raise TypeError(
            f"{type(decoder).__name__} is not a lightly MAE decoder: expected "
            "MaskedVisionTransformerDecoderTIMM (mask_token, pos_embed, decode) or "
            "MAEDecoderTIMM (mask_token, decoder_pos_embed, decoder_blocks, decoder_norm)"
        )
    if not isinstance(mask_token, Tensor):
        raise TypeError(f"{type(decoder).__name__} has no mask_token tensor")
    num_patches = split.num_patches
    # Both decoders store P; the table has P + L rows, so L follows from it.
    num_prefix_tokens = getattr(decoder, "num_prefix_tokens", 1)
    decoder_patches = pos_embed.shape[1] - num_prefix_tokens
    if decoder_patches != num_patches:
        raise ValueError(
            f"the split covers {num_patches} patches but the decoder's position table has "
            f"{pos_embed.shape[1]} rows = {num_prefix_tokens} prefix + {decoder_patches} "
            f"patches; draw the split over the decoder's {decoder_patches} patches"
        )
    # lightly's decoder input takes the mask token's and the position table's dtype
    # (type_as, or promotion when the mask token is mixed in); promote the same way.
    dtype = torch.promote_types(tokens.dtype, mask_token.dtype)
    x = decoder_tokens(
        tokens.to(torch.promote_types(dtype, pos_embed.dtype)),
        mask_token,
        pos_embed,
        split,
        num_prefix_tokens=num_prefix_tokens,
        order="patch",
    )
    decoded = run(x.tokens)[:, num_prefix_tokens:]
    # x.patches is sorted per row, so each masked patch's token is found by bisection.
    rows = torch.searchsorted(x.patches, split.masked.contiguous())
    return gather_tokens(decoded, rows)
