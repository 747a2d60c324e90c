"""SETR: a timm ViT encoder with SETR's Naive or PUP decoder, for semantic segmentation.

Zheng et al., "Rethinking semantic segmentation from a sequence-to-sequence perspective
with transformers" (CVPR 2021), Sec. 3.3. The encoder's last-layer patch tokens (B, L, D)
are laid out as a (B, D, gh, gw) feature map and decoded to per-pixel logits:

- Naive: 1 x 1 conv + batch norm + ReLU + 1 x 1 conv to the classes, then one bilinear
  upsampling to the image size;
- PUP (progressive upsampling): conv 3 x 3 + batch norm + ReLU + 2x bilinear upsampling,
  repeated until the patch grid reaches the image resolution (4 times for 16 px patches),
  then a 1 x 1 conv to the classes.

MSMAE (Mao et al., Sec. 4.4, Tab. 2) transfers its pre-trained ViT-B into SETR for breast
lesion segmentation; "Baseline" is the same SETR with a randomly initialised ViT.
:func:`load_encoder` loads a ``main_pretrain.py`` checkpoint's encoder into it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch.nn.functional as F
from einops import rearrange
from models_msmae import load_pretrained_encoder
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from maskkit.vit import check_timm_vit

__all__ = ["HEADS", "SETR", "NaiveHead", "PUPHead", "load_encoder"]

HEADS = ("naive", "pup")


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class NaiveHead(nn.Module):
    """SETR-Naive: two 1 x 1 convs on the patch grid, then one bilinear upsampling.

    Args:
        in_channels: D, the encoder's width.
        num_classes: output channels (1 for a binary mask).
        channels: width of the hidden 1 x 1 conv (SETR: 256).
    """

    def __init__(self, in_channels: int, num_classes: int, *, channels: int = 256) -> None:
        super().__init__()
        self.project = _conv_bn_relu(in_channels, channels, 1)
        self.classify = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, D, gh, gw) features → (B, num_classes, *size) logits."""
        logits = self.classify(self.project(features))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class PUPHead(nn.Module):
    """SETR-PUP: ``stages`` x (conv 3 x 3 + BN + ReLU + 2x bilinear), then a 1 x 1 classifier.

    Args:
        in_channels: D, the encoder's width.
        num_classes: output channels (1 for a binary mask).
        stages: number of 2x upsamplings, ``ceil(log2(patch_size))`` (SETR: 4 for 16 px).
        channels: width of every stage (SETR: 256).
    """

    def __init__(
        self, in_channels: int, num_classes: int, *, stages: int, channels: int = 256
    ) -> None:
        super().__init__()
        if stages < 1:
            raise ValueError(f"stages must be >= 1, got {stages}")
        widths = [in_channels] + [channels] * stages
        self.stages = nn.ModuleList(
            _conv_bn_relu(widths[k], widths[k + 1], 3) for k in range(stages)
        )
        self.classify = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, D, gh, gw) features → (B, num_classes, *size) logits."""
        x = features
        for stage in self.stages:
            x = F.interpolate(stage(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        logits = self.classify(x)
        if tuple(logits.shape[-2:]) != tuple(size):  # patch sizes that are not powers of 2
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


class SETR(nn.Module):
    """A timm ViT encoder and a SETR decoder: images (B, 3, H, W) → logits (B, C, H, W).

    The encoder is any timm ``VisionTransformer`` (no classifier needed: build it with
    ``num_classes=0`` and ``global_pool="token"``, which keeps its final norm); its prefix
    tokens (cls, registers) are dropped before decoding. Its state dict keys start with
    ``encoder.``, as in a ``main_pretrain.py`` checkpoint.

    Args:
        encoder: the timm ViT.
        num_classes: output channels: 1 for binary masks (one foreground logit), K for K
            classes including the background.
        head: ``"naive"`` or ``"pup"``.
        channels: decoder width (SETR: 256).
    """

    def __init__(
        self,
        *,
        encoder: VisionTransformer,
        num_classes: int,
        head: str = "pup",
        channels: int = 256,
    ) -> None:
        super().__init__()
        check_timm_vit(encoder, token_subset=True)  # forward_features: prefix tokens first
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.encoder = encoder
        self.grid: tuple[int, int] = tuple(encoder.patch_embed.grid_size)
        self.patch_size: int = encoder.patch_embed.patch_size[0]
        self.num_classes = num_classes
        width = encoder.embed_dim
        if head == "naive":
            self.decoder: nn.Module = NaiveHead(width, num_classes, channels=channels)
        else:
            stages = max(1, math.ceil(math.log2(self.patch_size)))
            self.decoder = PUPHead(width, num_classes, stages=stages, channels=channels)

    def no_weight_decay(self) -> set[str]:
        """The encoder's tokens and position table (timm's optimizer factory reads this)."""
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()}

    def forward(self, images: Tensor) -> Tensor:
        """Per-pixel logits (B, num_classes, H, W) of images (B, 3, H, W)."""
        tokens = self.encoder.forward_features(images)  # (B, P + L, D), final norm applied
        patches = tokens[:, self.encoder.num_prefix_tokens :]
        gh, gw = self.grid
        features = rearrange(patches, "b (gh gw) d -> b d gh gw", gh=gh, gw=gw)
        return self.decoder(features, tuple(images.shape[-2:]))


def load_encoder(
    encoder: VisionTransformer, state: Mapping[str, Tensor], *, prefix: str = "encoder."
) -> None:
    """Load a pre-trained encoder into the segmentation encoder, strictly.

    As :func:`models_msmae.load_pretrained_encoder` (the pre-training head is dropped; any
    key missing, unexpected or of another shape is an error), except that a position table
    of another (square) grid is resampled bicubically to the encoder's grid (timm's
    ``resample_abs_pos_embed``), so a ViT pre-trained at 224 px can segment at 256 px.

    Args:
        encoder: the SETR encoder (a timm ViT).
        state: a ``main_pretrain.py`` checkpoint's ``"model"`` state dict.
        prefix: the encoder's key prefix in ``state``.

    Raises:
        ValueError: see :func:`models_msmae.load_pretrained_encoder`.
    """
    key = f"{prefix}pos_embed"
    table = state.get(key)
    if table is not None and table.shape != encoder.pos_embed.shape:
        prefix_tokens = 0 if encoder.no_embed_class else encoder.num_prefix_tokens
        old_patches = table.shape[1] - prefix_tokens
        old_side = math.isqrt(old_patches)
        if old_side * old_side == old_patches and table.shape[2] == encoder.embed_dim:
            state = dict(state)
            state[key] = resample_abs_pos_embed(
                table,
                new_size=list(encoder.patch_embed.grid_size),
                old_size=[old_side, old_side],
                num_prefix_tokens=prefix_tokens,
            )
    load_pretrained_encoder(encoder, state, prefix=prefix)
