"""MAE building blocks that handle thrown patches, and an MAE around any timm ViT.

MAE (He et al., 2022, facebookresearch/mae) encodes the visible patches, appends one mask
token per hidden patch, adds the decoder's position table and reconstructs the hidden
patches. AMT and MSMAE also *throw* patches: those get no token anywhere, so the decoder
sees ``K + M`` patch tokens instead of ``L``. The blocks here build that decoder input and
the reconstruction loss for any split; the MSMAE recipe, the benchmarks and the drop-ins
for MAE, Hugging Face and lightly are made of them:

- :func:`decoder_tokens`: ``[prefix, visible, mask tokens]`` with their position rows, in
  the split's order or in patch order (MAE's own layout when nothing is thrown).
- :func:`patch_targets`: per-patch pixel targets, optionally normalised (``norm_pix_loss``).
- :func:`reconstruction_loss`: MAE's per-patch MSE averaged over the masked patches.
- :func:`scatter_tokens`: per-token rows back to a (B, L, ...) patch-order tensor, e.g.
  predictions for MAE's ``unpatchify``.
- :class:`MaskedAutoencoder`: a timm ViT encoder, an MAE decoder and an optional supervised
  head on the encoder's cls token (MSMAE).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from ._checks import check_choice, check_int, holds
from .patches import patchify
from .split import MaskSplit, check_indices, gather_tokens
from .vit import check_timm_vit, forward_features_visible

__all__ = [
    "DecoderTokens",
    "MaskedAutoencoder",
    "PretrainOutput",
    "decoder_tokens",
    "patch_targets",
    "reconstruction_loss",
    "scatter_tokens",
]

TokenOrder = Literal["split", "patch"]


class DecoderTokens(NamedTuple):
    """The decoder's input and which patch each of its patch tokens stands for.

    Attributes:
        tokens: (B, P + K + M, D): the prefix tokens, then one token per visible or masked
            patch, position rows added.
        patches: (B, K + M) int64: the patch index of token ``P + i``.
    """

    tokens: Tensor
    patches: Tensor


def decoder_tokens(
    latent: Tensor,
    mask_token: Tensor,
    pos_embed: Tensor,
    split: MaskSplit,
    *,
    num_prefix_tokens: int,
    order: TokenOrder = "split",
) -> DecoderTokens:
    """MAE's decoder input for a split with thrown patches: no token for a thrown patch.

    Args:
        latent: (B, P + K, D) encoder output already projected to the decoder width, P
            prefix tokens first, then the visible patches in ``split.visible`` order.
        mask_token: (1, 1, D) or (D,) learned mask token.
        pos_embed: (1, L, D) position table, or (1, P + L, D) with rows for the prefix
            tokens first (MAE's ``decoder_pos_embed`` has a cls row at index 0).
        split: the batch's split.
        num_prefix_tokens: P.
        order: ``"split"`` puts the visible tokens then the mask tokens in split order (no
            sort; predictions of the masked patches are ``out[:, P + K:]``); ``"patch"``
            sorts the K + M tokens by patch index, which with nothing thrown is exactly
            MAE's un-shuffled layout.

    Returns:
        :class:`DecoderTokens`.

    Raises:
        ValueError: shapes that do not fit together, or an unknown ``order``.
    """
    check_choice("order", order, ("split", "patch"))
    batch_size, num_patches = split.ids_shuffle.shape
    num_visible, num_masked = split.visible.shape[1], split.masked.shape[1]
    width = latent.shape[-1]
    if latent.dim() != 3 or latent.shape[:2] != (batch_size, num_prefix_tokens + num_visible):
        raise ValueError(
            f"latent of shape {tuple(latent.shape)} does not match the split: expected "
            f"({batch_size}, {num_prefix_tokens} prefix + {num_visible} visible, D)"
        )
    pos_rows = pos_embed.shape[-2] if pos_embed.dim() >= 2 else -1
    if pos_embed.dim() != 3 or pos_rows not in (num_patches, num_prefix_tokens + num_patches):
        raise ValueError(
            f"pos_embed of shape {tuple(pos_embed.shape)} fits neither (1, L, D) nor "
            f"(1, P + L, D) with L = {num_patches} patches and P = {num_prefix_tokens}"
        )
    if mask_token.numel() != width:
        raise ValueError(
            f"mask_token of shape {tuple(mask_token.shape)} must hold one token of the decoder "
            f"width {width}: (1, 1, {width}) or ({width},)"
        )
    if pos_embed.shape[-1] != width:
        raise ValueError(
            f"latent and pos_embed must share the decoder width D: got {width} and "
            f"{pos_embed.shape[-1]}"
        )
    pos_embed = pos_embed.to(latent.dtype)
    prefix_pos, patch_pos = pos_embed[:, : pos_rows - num_patches], pos_embed[:, -num_patches:]
    prefix, visible = latent[:, :num_prefix_tokens], latent[:, num_prefix_tokens:]
    if prefix_pos.shape[1]:
        prefix = prefix + prefix_pos
    masks = mask_token.reshape(1, 1, width).to(latent.dtype).expand(batch_size, num_masked, -1)
    patch_tokens = torch.cat([visible, masks], dim=1)
    patches = torch.cat([split.visible, split.masked], dim=1)
    if order == "patch":
        patches, by_patch = patches.sort(dim=1)
        patch_tokens = gather_tokens(patch_tokens, by_patch)
    patch_tokens = patch_tokens + gather_tokens(patch_pos.expand(batch_size, -1, -1), patches)
    return DecoderTokens(torch.cat([prefix, patch_tokens], dim=1), patches)


def patch_targets(images: Tensor, patch_size: int, *, norm_pix: bool = False) -> Tensor:
    """Reconstruction targets: each patch's pixels, (B, C, H, W) → (B, L, p * p * C).

    With ``norm_pix`` each patch is normalised by its own mean and variance (MAE's
    ``--norm_pix_loss``: ``(x - mean) / (var + 1e-6) ** 0.5``, unbiased variance).

    Raises:
        ValueError: ``images`` is not 4-D, ``patch_size`` is not a positive int dividing H
            and W, or ``norm_pix`` with one value per patch (its variance is undefined).
    """
    check_int("patch_size", patch_size, minimum=1)
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if norm_pix and patch_size * patch_size * images.shape[1] < 2:
        raise ValueError(
            "norm_pix needs at least 2 values per patch to normalise by their variance; "
            f"patch_size={patch_size} with {images.shape[1]} channel(s) gives 1"
        )
    target = patchify(images, patch_size)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    return target


def reconstruction_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """MAE's loss: per-patch mean squared error, averaged over the patches ``mask`` selects.

    Args:
        pred: (B, N, C) predictions.
        target: (B, N, C) targets, row for row.
        mask: optional (B, N) weights, 1 on the patches in the loss (MAE's ``mask``; thrown
            and visible patches 0). None averages over every row, e.g. when ``pred`` holds
            the masked patches only.

    Returns:
        A scalar in ``pred``'s dtype; 0 (with zero gradients) when no patch is in the loss
        (``mask_ratio=0``, or N = 0), where MAE's own average would be 0 / 0 = NaN.

    Raises:
        ValueError: shapes that differ, or a mask with NaN, Inf or negative values (on
            CUDA: a device assert).
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have one shape"
        )
    per_patch = (pred - target).pow(2).mean(dim=-1)
    if mask is None:
        return per_patch.mean() if per_patch.numel() else per_patch.sum()
    if mask.shape != per_patch.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must be (B, N) = {tuple(per_patch.shape)}")
    mask = mask.to(per_patch.dtype)
    ok = torch.isfinite(mask).all() & (mask >= 0).all()
    if not holds(ok, "the loss mask must be finite and non-negative"):
        raise ValueError(
            "mask must hold finite, non-negative weights (1 on the patches in the loss, e.g. "
            "split.loss_mask()); it holds NaN, Inf or negative values"
        )
    total = mask.sum()
    # A safe denominator rather than a masked result, so the gradient stays 0, not NaN.
    return (per_patch * mask).sum() / torch.where(total > 0, total, torch.ones_like(total))


def scatter_tokens(values: Tensor, patches: Tensor, num_patches: int, fill: float = 0.0) -> Tensor:
    """Put per-token rows back in patch order: the inverse of :func:`~maskkit.gather_tokens`.

    Args:
        values: (B, N, C) rows, row ``i`` belonging to patch ``patches[:, i]``.
        patches: (B, N) distinct int64 patch indices.
        num_patches: L.
        fill: value of the patches that have no row (e.g. thrown ones).

    Returns:
        (B, L, C): MAE's ``pred`` layout, ready for ``unpatchify``.

    Raises:
        ValueError: shapes that differ, or ``patches`` repeated or outside [0, L) within a
            sample (on CUDA: a device assert).
    """
    check_int("num_patches", num_patches, minimum=1)
    check_indices("patches", patches, num_patches, distinct=True)
    if values.dim() != 3 or patches.shape != values.shape[:2]:
        raise ValueError(
            f"values (B, N, C) and patches (B, N) do not match: {tuple(values.shape)} and "
            f"{tuple(patches.shape)}"
        )
    patches = patches.long()
    out = values.new_full((values.shape[0], num_patches, values.shape[2]), fill)
    return out.scatter(1, patches.unsqueeze(-1).expand_as(values), values)


class PretrainOutput(NamedTuple):
    """What one :class:`MaskedAutoencoder` forward returns.

    Attributes:
        loss: scalar, ``recon_loss + cls_loss_weight * cls_loss`` (just ``recon_loss`` when
            ``cls_loss_weight`` is 0: a plain MAE).
        recon_loss: scalar MSE over the masked patches.
        cls_loss: scalar cross-entropy of the cls-token head; computed without gradient
            when ``cls_loss_weight`` is 0, for monitoring only.
        pred: (B, M, p * p * C) reconstructions of the masked patches, in ``split.masked``
            order.
        logits: (B, num_classes) logits of the supervised head.
    """

    loss: Tensor
    recon_loss: Tensor
    cls_loss: Tensor
    pred: Tensor
    logits: Tensor


class MaskedAutoencoder(nn.Module):
    """MAE with masking-and-throwing around a timm ViT, with an optional supervised head.

    MAE pre-training with ``cls_loss_weight=0``; MSMAE pre-training (Mao et al., Sec. 3.2,
    eq. 3) with ``cls_loss_weight=0.1``: the encoder's cls token, computed on the visible
    patches, also feeds the ViT's head, and the loss is ``MSE(masked) + λ · CE``. The
    decoder (8 blocks, width 512, 16 heads by default, as MAE) sees the encoded visible
    tokens plus one mask token per masked patch, in split order, with a fixed 2-D sin-cos
    position table; prefix tokens get no decoder position (MAE's cls row is zero). Thrown
    patches take no part in encoder, decoder or loss.

    Args:
        encoder: a timm ``VisionTransformer`` with a cls token and ``global_pool="token"``;
            its head is the supervised classifier.
        decoder_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_num_heads: decoder attention heads.
        mlp_ratio: MLP width of the decoder blocks as a multiple of ``decoder_dim``.
        norm_pix_loss: reconstruct per-patch normalised pixels.
        cls_loss_weight: λ; 0 leaves the head out of the loss and freezes it
            (``requires_grad=False``), so no gradient, optimizer step or DDP reduction
            touches it.

    Raises:
        TypeError: ``encoder`` is not a timm ``VisionTransformer``.
        ValueError: no cls token or classifier head, non-square patches, a decoder width
            that is not a multiple of 4, or a negative or infinite ``cls_loss_weight``.
    """

    decoder_pos_embed: Tensor

    def __init__(
        self,
        *,
        encoder: VisionTransformer,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
        cls_loss_weight: float = 0.0,
    ) -> None:
        super().__init__()
        check_timm_vit(encoder, token_subset=True)
        if encoder.cls_token is None or encoder.global_pool != "token":
            raise ValueError(
                "the encoder needs a cls token and global_pool='token' (the supervised head "
                f"reads the cls token); got cls_token={encoder.cls_token is not None}, "
                f"global_pool={encoder.global_pool!r}"
            )
        patch_h, patch_w = encoder.patch_embed.patch_size
        if patch_h != patch_w:
            raise ValueError(f"square patches expected, got {(patch_h, patch_w)}")
        check_int("decoder_dim", decoder_dim, minimum=4)
        if decoder_dim % 4:
            raise ValueError(f"decoder_dim must be a multiple of 4 (sin-cos), got {decoder_dim}")
        if not 0 <= cls_loss_weight < float("inf"):
            raise ValueError(f"cls_loss_weight must be finite and >= 0, got {cls_loss_weight}")
        if encoder.num_classes < 1:
            raise ValueError(
                "the encoder needs a classifier head (num_classes >= 1): it is MSMAE's "
                "supervised head, and with cls_loss_weight=0 it is monitored; create the "
                "timm model with num_classes set to your number of classes"
            )
        self.encoder = encoder
        self.patch_size: int = patch_h
        self.grid: tuple[int, int] = tuple(encoder.patch_embed.grid_size)
        self.in_chans: int = encoder.patch_embed.proj.in_channels
        self.norm_pix_loss = norm_pix_loss
        self.cls_loss_weight = float(cls_loss_weight)
        if self.cls_loss_weight == 0:
            encoder.get_classifier().requires_grad_(False)

        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = build_sincos2d_pos_embed(list(self.grid), decoder_dim)  # (L, decoder_dim)
        # Fixed, as in MAE; rebuilt from the grid, so it stays out of checkpoints.
        self.register_buffer("decoder_pos_embed", pos.unsqueeze(0), persistent=False)
        self.decoder_blocks = nn.Sequential(
            *(
                Block(decoder_dim, decoder_num_heads, mlp_ratio=mlp_ratio, qkv_bias=True)
                for _ in range(decoder_depth)
            )
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * self.in_chans)
        self._init_decoder()

    def _init_decoder(self) -> None:
        # MAE's decoder init: xavier-uniform linears, unit LayerNorms, N(0, 0.02) mask token.
        trunc_normal_(self.mask_token, std=0.02)
        decoder = (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred)
        for module in decoder:
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)
                elif isinstance(layer, nn.LayerNorm):
                    nn.init.ones_(layer.weight)
                    nn.init.zeros_(layer.bias)

    @property
    def num_patches(self) -> int:
        """L, patch tokens per image."""
        return self.grid[0] * self.grid[1]

    def no_weight_decay(self) -> set[str]:
        """Token and position parameters that AdamW should not decay (as MAE and timm)."""
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()} | {"mask_token"}

    def _check_targets(self, targets: Tensor, batch_size: int) -> None:
        num_classes = self.encoder.num_classes
        if (
            not isinstance(targets, Tensor)
            or targets.shape != (batch_size,)
            or targets.is_floating_point()
            or targets.dtype == torch.bool
        ):
            described = tuple(targets.shape) if isinstance(targets, Tensor) else targets
            raise ValueError(
                f"targets must be ({batch_size},) integer class indices, got {described!r}"
            )
        ok = ((targets >= 0) & (targets < num_classes)).all()
        if not holds(ok, "targets must lie in [0, num_classes)"):
            raise ValueError(
                f"targets must lie in [0, {num_classes}) for the encoder's {num_classes}-class "
                f"head, found {targets.min().item()} to {targets.max().item()}"
            )

    def forward_encoder(self, images: Tensor, split: MaskSplit) -> Tensor:
        """Encode the visible patches: (B, C, H, W) → (B, P + K, D) normalised tokens."""
        return forward_features_visible(self.encoder, images, split.visible)

    def forward_decoder(self, latent: Tensor, split: MaskSplit) -> Tensor:
        """Predict the masked patches from the encoded visible ones.

        Args:
            latent: (B, P + K, D) encoder output.
            split: the batch's split; its thrown patches get no token.

        Returns:
            (B, M, p * p * C) pixel predictions in the order of ``split.masked``.
        """
        num_prefix = self.encoder.num_prefix_tokens
        x = decoder_tokens(
            self.decoder_embed(latent),
            self.mask_token,
            self.decoder_pos_embed,
            split,
            num_prefix_tokens=num_prefix,
        ).tokens
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, num_prefix + split.visible.shape[1] :])

    def forward_loss(self, images: Tensor, pred: Tensor, split: MaskSplit) -> Tensor:
        """Mean squared error over the masked patches only (visible and thrown excluded).

        Args:
            images: (B, C, H, W) input images.
            pred: (B, M, p * p * C) predictions in ``split.masked`` order.
            split: the batch's split.
        """
        targets = patch_targets(images.float(), self.patch_size, norm_pix=self.norm_pix_loss)
        # Every sample masks the same M patches, so the plain mean is MAE's masked average.
        return reconstruction_loss(pred.float(), split.gather_masked(targets))

    def forward(self, images: Tensor, targets: Tensor, split: MaskSplit) -> PretrainOutput:
        """One pre-training step's forward.

        Args:
            images: (B, C, H, W) normalised images.
            targets: (B,) int64 class labels in [0, num_classes); with λ = 0 they only feed
                the monitored ``cls_loss``.
            split: a :class:`maskkit.MaskSplit` over the L patches of each image.

        Raises:
            ValueError: a split over another number of patches, or targets that are not
                (B,) class indices in range (on CUDA the range is a device assert).
        """
        if split.num_patches != self.num_patches:
            raise ValueError(
                f"the split covers {split.num_patches} patches but the model has "
                f"{self.num_patches} ({self.grid[0]} x {self.grid[1]})"
            )
        self._check_targets(targets, images.shape[0])
        latent = self.forward_encoder(images, split)
        pred = self.forward_decoder(latent, split)
        recon_loss = self.forward_loss(images, pred, split)
        if self.cls_loss_weight > 0:
            logits = self.encoder.forward_head(latent)
            # Cross-entropy on raw logits; the released MSMAE code (Talented-Q/MSMAE) feeds
            # softmax outputs to CrossEntropyLoss, a double softmax that eq. 2 does not mean.
            cls_loss = F.cross_entropy(logits.float(), targets)
            loss = recon_loss + self.cls_loss_weight * cls_loss
        else:
            # A plain MAE: the head is monitored, never trained (no gradient reaches it).
            with torch.no_grad():
                logits = self.encoder.forward_head(latent.detach())
                cls_loss = F.cross_entropy(logits.float(), targets)
            loss = recon_loss
        return PretrainOutput(loss, recon_loss, cls_loss, pred, logits)
