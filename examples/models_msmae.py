"""MSMAE models: an MAE on a timm ViT with a supervised head, and the SAM fine-tuning classifier.

Pre-training (MSMAE, Mao et al., Sec. 3.2 and Tab. 4): the encoder is any timm
``VisionTransformer`` run on the visible patches only; the decoder (8 blocks, width 512,
16 heads by default, as in MAE) sees the encoded visible tokens plus one mask token per
*masked* patch; thrown patches take no part in encoder, decoder or loss. The encoder's cls
token also feeds a supervised head, and the loss is ``MSE(masked) + λ · CE(logits, target)``.

Fine-tuning (Sec. 3.3): :class:`VisibleTokenClassifier` encodes only the visible tokens of a
SAM split while training and every token at evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import timm
import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from maskkit import MaskSplit, forward_features_visible, gather_tokens, patchify
from maskkit.vit import check_timm_vit

__all__ = [
    "CPU_VITS",
    "MSMAE",
    "PretrainOutput",
    "VisibleTokenClassifier",
    "create_vit",
    "load_pretrained_encoder",
]


# Small ViTs for CPU runs: a timm architecture with overridden sizes, built by `create_vit`.
CPU_VITS: dict[str, tuple[str, dict[str, int]]] = {
    # 8 px patches (an 8 x 8 grid on 64 px images), 2 blocks of width 96 with 3 heads: on 2
    # CPU cores its last block's cls attention finds synthetic lesions within minutes.
    "vit_micro_patch8_64": (
        "vit_tiny_patch16_224",
        dict(patch_size=8, embed_dim=96, depth=2, num_heads=3),
    ),
}


def create_vit(
    name: str,
    *,
    img_size: int,
    num_classes: int,
    global_pool: str,
    drop_path_rate: float = 0.0,
) -> VisionTransformer:
    """Build a timm ViT by name, randomly initialised (nothing is downloaded).

    Args:
        name: a timm ViT name, e.g. ``vit_base_patch16_224``, or a key of :data:`CPU_VITS`
            (``vit_micro_patch8_64``).
        img_size: input side in pixels.
        num_classes: classes of the head.
        global_pool: ``"token"`` (cls token, MSMAE pre-training head) or ``"avg"`` (mean of
            the patch tokens, MSMAE fine-tuning).
        drop_path_rate: stochastic depth rate.

    Raises:
        ValueError: ``name`` is not a timm model.
        TypeError: the model is not a timm ``VisionTransformer``.
    """
    architecture, sizes = CPU_VITS.get(name, (name, {}))
    if architecture not in timm.list_models():
        raise ValueError(
            f"unknown timm model {name!r}; pick a ViT from timm.list_models('vit_*'), e.g. "
            f"vit_base_patch16_224, or one of {sorted(CPU_VITS)} for CPU runs"
        )
    model = timm.create_model(
        architecture,
        pretrained=False,
        img_size=img_size,
        **sizes,
        num_classes=num_classes,
        global_pool=global_pool,
        drop_path_rate=drop_path_rate,
    )
    check_timm_vit(model)
    return model


class PretrainOutput(NamedTuple):
    """What one MSMAE pre-training forward returns.

    Attributes:
        loss: scalar, ``recon_loss + cls_loss_weight * cls_loss``.
        recon_loss: scalar MSE over the masked patches.
        cls_loss: scalar cross-entropy of the cls-token head.
        pred: (B, M, p * p * C) reconstructions of the masked patches, in ``split.masked`` order.
        logits: (B, num_classes) logits of the supervised head.
    """

    loss: Tensor
    recon_loss: Tensor
    cls_loss: Tensor
    pred: Tensor
    logits: Tensor


class MSMAE(nn.Module):
    """MAE with masking-and-throwing and a supervised cls-token head (MSMAE pre-training).

    The decoder needs no un-shuffling: its input is ``[prefix, visible, mask tokens]``
    with the fixed 2-D sin-cos position embedding of ``cat([visible, masked])`` added to
    the patch tokens, and transformer blocks do not care about token order. Prefix tokens
    get no decoder position embedding (MAE's cls row of the sin-cos table is zero).

    Args:
        encoder: a timm ``VisionTransformer`` with a cls token and ``global_pool="token"``;
            its head is the supervised classifier.
        decoder_dim: decoder width (MSMAE/MAE: 512).
        decoder_depth: decoder blocks (MSMAE/MAE: 8).
        decoder_num_heads: decoder attention heads (MSMAE/MAE: 16).
        mlp_ratio: MLP width of the decoder blocks as a multiple of ``decoder_dim``.
        norm_pix_loss: reconstruct per-patch normalised pixels (MAE's ``--norm_pix_loss``).
        cls_loss_weight: λ of MSMAE eq. 3 (0.1); 0 leaves the head out of the loss: a plain
            MAE, whose attention is self-supervised (AMT).
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
        cls_loss_weight: float = 0.1,
    ) -> None:
        super().__init__()
        check_timm_vit(encoder)
        if encoder.cls_token is None or encoder.global_pool != "token":
            raise ValueError(
                "the MSMAE encoder needs a cls token and global_pool='token' (its head reads "
                f"the cls token); got cls_token={encoder.cls_token is not None}, "
                f"global_pool={encoder.global_pool!r}"
            )
        patch_h, patch_w = encoder.patch_embed.patch_size
        if patch_h != patch_w:
            raise ValueError(f"square patches expected, got {(patch_h, patch_w)}")
        if decoder_dim % 4:
            raise ValueError(f"decoder_dim must be a multiple of 4 (sin-cos), got {decoder_dim}")
        if cls_loss_weight < 0:
            raise ValueError(f"cls_loss_weight must be >= 0, got {cls_loss_weight}")
        self.encoder = encoder
        self.patch_size: int = patch_h
        self.grid: tuple[int, int] = tuple(encoder.patch_embed.grid_size)
        self.in_chans: int = encoder.patch_embed.proj.in_channels
        self.norm_pix_loss = norm_pix_loss
        self.cls_loss_weight = float(cls_loss_weight)

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
        x = self.decoder_embed(latent)
        prefix, visible = x[:, :num_prefix], x[:, num_prefix:]
        batch, num_masked = split.masked.shape
        mask_tokens = self.mask_token.to(x.dtype).expand(batch, num_masked, -1)
        positions = torch.cat([split.visible, split.masked], dim=1)  # (B, K + M)
        pos = gather_tokens(self.decoder_pos_embed.expand(batch, -1, -1), positions)
        patches = torch.cat([visible, mask_tokens], dim=1) + pos.to(x.dtype)
        x = self.decoder_blocks(torch.cat([prefix, patches], dim=1))
        x = self.decoder_norm(x)
        return self.decoder_pred(x[:, num_prefix + visible.shape[1] :])

    def forward_loss(self, images: Tensor, pred: Tensor, split: MaskSplit) -> Tensor:
        """Mean squared error over the masked patches only (visible and thrown excluded).

        Args:
            images: (B, C, H, W) input images.
            pred: (B, M, p * p * C) predictions in ``split.masked`` order.
            split: the batch's split.
        """
        target = split.gather_masked(patchify(images, self.patch_size)).float()
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6).sqrt()
        # Every sample masks the same M patches, so the plain mean is MAE's masked average.
        return (pred.float() - target).pow(2).mean()

    def forward(self, images: Tensor, targets: Tensor, split: MaskSplit) -> PretrainOutput:
        """One pre-training step's forward.

        Args:
            images: (B, C, H, W) normalised images.
            targets: (B,) int64 class labels.
            split: a :class:`maskkit.MaskSplit` over the L patches of each image.
        """
        if split.num_patches != self.num_patches:
            raise ValueError(
                f"the split covers {split.num_patches} patches but the model has "
                f"{self.num_patches} ({self.grid[0]} x {self.grid[1]})"
            )
        latent = self.forward_encoder(images, split)
        logits = self.encoder.forward_head(latent)
        pred = self.forward_decoder(latent, split)
        recon_loss = self.forward_loss(images, pred, split)
        # Cross-entropy on raw logits. The released MSMAE code feeds softmax outputs to
        # CrossEntropyLoss, a double softmax (shared/notes/anchors.md); eq. 2 means this.
        cls_loss = F.cross_entropy(logits.float(), targets)
        loss = recon_loss + self.cls_loss_weight * cls_loss
        return PretrainOutput(loss, recon_loss, cls_loss, pred, logits)


class VisibleTokenClassifier(nn.Module):
    """A timm ViT classifier that can encode a subset of its patch tokens (SAM fine-tuning).

    Wrapping the two calls in one ``forward`` lets DistributedDataParallel see them.

    Args:
        vit: a timm ``VisionTransformer`` (MSMAE fine-tunes with ``global_pool="avg"``).
    """

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        check_timm_vit(vit)
        self.vit = vit

    def forward(self, images: Tensor, visible: Tensor | None = None) -> Tensor:
        """Logits (B, num_classes) from the ``visible`` (B, K) patches, or from all if None."""
        return self.vit.forward_head(forward_features_visible(self.vit, images, visible))


def load_pretrained_encoder(
    vit: VisionTransformer, state: Mapping[str, Tensor], *, prefix: str = "encoder."
) -> None:
    """Load an MSMAE pre-trained encoder into a fine-tuning ViT, strictly.

    The pre-training head (on the cls token, for the pre-training classes) is dropped and the
    fine-tuning head starts fresh. When ``vit`` pools the patch tokens (``global_pool="avg"``)
    its final norm moves after the pool (``fc_norm``), so the encoder's ``norm`` is dropped
    too and ``fc_norm`` starts fresh, as in MAE fine-tuning.

    Args:
        vit: the timm ViT to fine-tune.
        state: a pre-training checkpoint's ``"model"`` state dict.
        prefix: the encoder's key prefix in ``state``.

    Raises:
        ValueError: no encoder keys, keys missing or unexpected beyond the head and norms
            named above, or tensors whose shapes differ (all listed).
    """
    encoder = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not encoder:
        raise ValueError(
            f"the checkpoint has no '{prefix}*' keys; pass a checkpoint written by "
            "main_pretrain.py (its 'model' entry)"
        )
    dropped = ("head.",) + (("norm.",) if isinstance(vit.norm, nn.Identity) else ())
    encoder = {k: v for k, v in encoder.items() if not k.startswith(dropped)}
    fresh = ("head.", "fc_norm.")
    own = vit.state_dict()
    missing = sorted(k for k in own if k not in encoder and not k.startswith(fresh))
    unexpected = sorted(k for k in encoder if k not in own)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(encoder[k].shape)} vs model {tuple(own[k].shape)}"
        for k in encoder
        if k in own and encoder[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            "the pre-trained encoder does not fit the fine-tuning model: "
            f"missing keys {missing}, unexpected keys {unexpected}, shape mismatches "
            f"{mismatched}; use the same --model and --input_size as in pre-training"
        )
    vit.load_state_dict(encoder, strict=False)
