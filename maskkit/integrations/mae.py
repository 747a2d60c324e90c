"""facebookresearch/mae: run an existing ``MaskedAutoencoderViT`` on maskkit splits.

MAE (He et al., 2022; facebookresearch/mae, ``models_mae.py``) masks inside its own
``forward_encoder`` with uniform noise and cannot throw. :class:`MAEAdapter` wraps a
``MaskedAutoencoderViT`` instance, shares its trained modules (no copy, no edit to MAE's
files) and runs it on any :class:`~maskkit.MaskSplit`: the encoder sees the visible
patches, the decoder the visible ones plus one mask token per masked patch (a thrown
patch gets no token anywhere), and the loss covers the masked patches only. The decoder
input, the targets and the loss are :mod:`maskkit.mae`'s blocks.

With nothing thrown, the adapter computes exactly what MAE computes for the same noise:
``MAEAdapter(mae)(imgs, mask_ratio=0.75)`` draws MAE's ``torch.rand(B, L)`` and returns
MAE's loss and predictions bit for bit (``tests/test_integration_mae.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_ratio
from ..functional import sample_split
from ..mae import decoder_tokens, patch_targets, reconstruction_loss, scatter_tokens
from ..patches import patchify, unpatchify
from ..split import MaskSplit
from ..vit import embed_mae_tokens, is_mae_vit

__all__ = ["MAEAdapter"]

# What MAEAdapter reads from facebookresearch/mae's MaskedAutoencoderViT.
_MAE_ATTRIBUTES = (
    "patch_embed",
    "cls_token",
    "pos_embed",
    "blocks",
    "norm",
    "decoder_embed",
    "mask_token",
    "decoder_pos_embed",
    "decoder_blocks",
    "decoder_norm",
    "decoder_pred",
    "norm_pix_loss",
)


class MAEAdapter(nn.Module):
    """facebookresearch/mae's ``MaskedAutoencoderViT`` driven by maskkit splits.

    The adapter holds the MAE's own submodules and parameters under the MAE's own names
    (shared, not copied), so ``adapter.state_dict()`` *is* the MAE's state dict: MAE's
    ``misc.save_model`` / ``load_model``, its fine-tuning script and its visualisation
    notebook read the checkpoints unchanged, and an optimizer or DDP built on the adapter
    trains the MAE.

    ``forward(imgs, split)`` returns ``(loss, pred, split)`` in MAE's shapes:

    - ``loss``: MAE's per-patch MSE (on normalised pixels with ``norm_pix_loss``) averaged
      over the masked patches; visible and thrown patches are not in it.
    - ``pred``: (B, L, p * p * C) in patch order, as MAE's, so ``adapter.unpatchify(pred)``
      (or MAE's own ``unpatchify``) turns it into images. Rows of visible and masked
      patches are the decoder's outputs; thrown patches had no decoder token, so their
      rows are ``fill`` (0 by default, the mean pixel after normalisation).
    - ``split``: the split used (drawn here when none is given), whose
      ``split.loss_mask()`` is the (B, L) float mask of the loss (MAE's ``mask`` when
      nothing is thrown) and ``split.is_visible()`` / ``is_masked()`` / ``is_thrown()``
      the bool masks for pictures.

    Without a split it masks like MAE: ``adapter(imgs, mask_ratio=0.75)`` draws
    ``torch.rand(B, L)`` from the global RNG (as MAE's ``random_masking``) and keeps the
    ``int(L * (1 - mask_ratio))`` patches of lowest noise, so MAE's
    ``model(samples, mask_ratio=args.mask_ratio)`` call works unchanged.

    Args:
        model: a ``MaskedAutoencoderViT`` (or a model with its attributes: ``patch_embed``,
            ``cls_token``, ``pos_embed`` (1, 1 + L, D) with the cls row first, ``blocks``,
            ``norm``, ``decoder_embed``, ``mask_token``, ``decoder_pos_embed``
            (1, 1 + L, D'), ``decoder_blocks``, ``decoder_norm``, ``decoder_pred`` and
            ``norm_pix_loss``).
        fill: value of the thrown patches' rows in ``pred``; finite.

    Raises:
        TypeError: ``model`` lacks one of those attributes.
        ValueError: a position table without its cls row, non-square patches, a
            ``decoder_pred`` that does not output ``p * p * C`` values, or a non-finite
            ``fill``.
    """

    # The MAE's own modules and parameters, registered here under the same names.
    patch_embed: nn.Module
    cls_token: Tensor
    pos_embed: Tensor
    blocks: nn.ModuleList
    norm: nn.Module
    decoder_embed: nn.Module
    mask_token: Tensor
    decoder_pos_embed: Tensor
    decoder_blocks: nn.ModuleList
    decoder_norm: nn.Module
    decoder_pred: nn.Module

    def __init__(self, model: nn.Module, *, fill: float = 0.0) -> None:
        super().__init__()
        patch_size, grid, in_chans = _check_mae(model)
        if isinstance(fill, bool) or not isinstance(fill, (int, float)):
            raise TypeError(f"fill must be a finite float, got {type(fill).__name__} {fill!r}")
        if not math.isfinite(fill):
            raise ValueError(f"fill must be a finite float, got {fill!r}")
        for name, module in model.named_children():
            self.add_module(name, module)
        for name, param in model.named_parameters(recurse=False):
            self.register_parameter(name, param)
        transient = getattr(model, "_non_persistent_buffers_set", set())
        for name, buffer in model.named_buffers(recurse=False):
            self.register_buffer(name, buffer, persistent=name not in transient)
        self.training = model.training
        self.norm_pix_loss = bool(model.norm_pix_loss)
        self.fill = float(fill)
        self.patch_size = patch_size
        self.grid = grid
        self.in_chans = in_chans

    @property
    def num_patches(self) -> int:
        """L, patch tokens per image."""
        return self.grid[0] * self.grid[1]

    def extra_repr(self) -> str:
        return f"num_patches={self.num_patches}, norm_pix_loss={self.norm_pix_loss}"

    def patchify(self, imgs: Tensor) -> Tensor:
        """(B, C, H, W) → (B, L, p * p * C), MAE's patch layout."""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, L, p * p * C) → (B, C, H, W), e.g. ``pred`` back to images."""
        return unpatchify(x, self.patch_size, self.grid)

    def forward_encoder(self, imgs: Tensor, split: MaskSplit) -> Tensor:
        """Encode the visible patches: (B, C, H, W) → (B, 1 + K, D), cls token first."""
        x = embed_mae_tokens(self, imgs, split.visible)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_decoder(self, latent: Tensor, split: MaskSplit) -> Tensor:
        """Predict every visible and masked patch from the encoded visible ones.

        The decoder sees the cls token, then the K visible and M masked patches in patch
        order (with nothing thrown, MAE's un-shuffled sequence), each with its row of
        ``decoder_pos_embed``; thrown patches get no token.

        Args:
            latent: (B, 1 + K, D) encoder output.
            split: the batch's split.

        Returns:
            (B, L, p * p * C) predictions in patch order; thrown rows are ``fill``.
        """
        x = self.decoder_embed(latent)
        # MAE concatenates its float32 mask token and adds its float32 position table,
        # which promotes the decoder's stream under autocast; promote the same way.
        dtype = torch.promote_types(x.dtype, self.mask_token.dtype)
        dtype = torch.promote_types(dtype, self.decoder_pos_embed.dtype)
        tokens = decoder_tokens(
            x.to(dtype),
            self.mask_token,
            self.decoder_pos_embed,
            split,
            num_prefix_tokens=1,
            order="patch",
        )
        x = tokens.tokens
        for block in self.decoder_blocks:
            x = block(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        return scatter_tokens(pred, tokens.patches, split.num_patches, fill=self.fill)

    def forward_loss(self, imgs: Tensor, pred: Tensor, split: MaskSplit) -> Tensor:
        """MAE's loss over the masked patches: visible and thrown patches are left out.

        Args:
            imgs: (B, C, H, W) input images.
            pred: (B, L, p * p * C) predictions in patch order.
            split: the batch's split.
        """
        target = patch_targets(imgs, self.patch_size, norm_pix=self.norm_pix_loss)
        return reconstruction_loss(pred, target, split.loss_mask())

    def forward(
        self,
        imgs: Tensor,
        split: MaskSplit | float | None = None,
        mask_ratio: float | None = None,
    ) -> tuple[Tensor, Tensor, MaskSplit]:
        """One pre-training forward: ``(loss, pred, split)``.

        Args:
            imgs: (B, C, H, W) images.
            split: the batch's split over L patches, e.g. from a
                :class:`~maskkit.SAMMasker`; a float is read as ``mask_ratio`` (MAE's
                positional argument); None masks uniformly with ``mask_ratio``.
            mask_ratio: share of patches masked when no split is given (default 0.75,
                MAE's).

        Returns:
            ``loss`` (scalar), ``pred`` (B, L, p * p * C) in patch order with thrown rows
            ``fill``, and the split.

        Raises:
            ValueError: a split that does not fit the images, or both a split and
                ``mask_ratio``.
        """
        if isinstance(split, (int, float)) and not isinstance(split, bool):
            if mask_ratio is not None:
                raise ValueError("pass the mask ratio once: as `split` or as `mask_ratio`")
            split, mask_ratio = None, split
        if split is None:
            ratio = 0.75 if mask_ratio is None else check_ratio("mask_ratio", mask_ratio)
            split = sample_split(
                imgs.shape[0], self.num_patches, mask_ratio=ratio, device=imgs.device
            )
        elif not isinstance(split, MaskSplit):
            raise TypeError(f"split must be a maskkit MaskSplit, got {type(split).__name__}")
        elif mask_ratio is not None:
            raise ValueError("mask_ratio is only used without a split; the split sets the ratios")
        batch_size, num_patches = split.ids_shuffle.shape
        if (batch_size, num_patches) != (imgs.shape[0], self.num_patches):
            raise ValueError(
                f"the split covers {batch_size} images x {num_patches} patches, but the batch "
                f"has {imgs.shape[0]} images of {self.num_patches} patches "
                f"({self.grid[0]} x {self.grid[1]})"
            )
        latent = self.forward_encoder(imgs, split)
        pred = self.forward_decoder(latent, split)
        loss = self.forward_loss(imgs, pred, split)
        return loss, pred, split


def _check_mae(model: nn.Module) -> tuple[int, tuple[int, int], int]:
    """Check ``model`` has MAE's layout; returns ``(patch_size, grid, in_chans)``."""
    name = type(model).__name__
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {name}")
    missing = [attribute for attribute in _MAE_ATTRIBUTES if not hasattr(model, attribute)]
    if missing:
        raise TypeError(
            f"{name} lacks {', '.join(missing)}: MAEAdapter wraps facebookresearch/mae's "
            "MaskedAutoencoderViT (models_mae.py); for a timm ViT use "
            "maskkit.mae.MaskedAutoencoder"
        )
    num_patches = getattr(model.patch_embed, "num_patches", None)
    if not isinstance(num_patches, int):
        raise TypeError(f"{name}.patch_embed has no int num_patches (timm's PatchEmbed has)")
    for table in ("pos_embed", "decoder_pos_embed"):
        shape = tuple(getattr(model, table).shape)
        if len(shape) != 3 or shape[:2] != (1, 1 + num_patches):
            raise ValueError(
                f"{name}.{table} has shape {shape}, expected (1, 1 + L, D) = (1, "
                f"{1 + num_patches}, D): facebookresearch/mae's position tables have a cls "
                "row at index 0 before the L patch rows"
            )
    if not is_mae_vit(model):
        raise TypeError(
            f"{name} does not have facebookresearch/mae's encoder layout: a (1, 1, D) "
            "cls_token matching pos_embed, a non-empty blocks list and no num_prefix_tokens"
        )
    if tuple(model.mask_token.shape) != (1, 1, model.decoder_pos_embed.shape[-1]):
        raise ValueError(
            f"{name}.mask_token has shape {tuple(model.mask_token.shape)}, expected "
            f"(1, 1, {model.decoder_pos_embed.shape[-1]}) like decoder_pos_embed"
        )
    patch_h, patch_w = _pair(model.patch_embed.patch_size)
    if patch_h != patch_w:
        raise ValueError(f"square patches expected, got {(patch_h, patch_w)}")
    grid_size = getattr(model.patch_embed, "grid_size", None)
    if grid_size is not None:
        grid = _pair(grid_size)
    else:
        side = math.isqrt(num_patches)
        grid = (side, side)
    if grid[0] * grid[1] != num_patches:
        raise ValueError(f"{name}.patch_embed: grid {grid} does not hold {num_patches} patches")
    out_features = getattr(model.decoder_pred, "out_features", None)
    if not isinstance(out_features, int) or out_features % (patch_h * patch_h):
        raise ValueError(
            f"{name}.decoder_pred must be a Linear with p * p * C outputs for p = {patch_h}, "
            f"got out_features={out_features}"
        )
    return patch_h, grid, out_features // (patch_h * patch_h)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])
