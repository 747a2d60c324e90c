"""MSMAE's models around timm ViTs: building the encoder, and the SAM fine-tuning classifier.

Pre-training (MSMAE, Mao et al., Sec. 3.2) uses :class:`maskkit.mae.MaskedAutoencoder`: an
MAE whose encoder is a timm ViT run on the visible patches only, with a supervised head on
its cls token (loss = MSE + λ CE). Fine-tuning (Sec. 3.3): :class:`VisibleTokenClassifier`
encodes only the visible tokens of a SAM split while training and every token at evaluation;
:func:`load_pretrained_encoder` moves the pre-trained encoder into it.
"""

from __future__ import annotations

from collections.abc import Mapping

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from maskkit import forward_features_visible
from maskkit.vit import check_timm_vit

__all__ = [
    "CPU_VITS",
    "VisibleTokenClassifier",
    "create_vit",
    "load_pretrained_encoder",
    "vit_grid",
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
        ValueError: ``name`` is not a timm model, or not a timm ``VisionTransformer``.
    """
    architecture, sizes = CPU_VITS.get(name, (name, {}))
    if architecture not in timm.list_models():
        raise ValueError(
            f"unknown timm model {name!r}; pick a ViT from timm.list_models('vit_*'), e.g. "
            f"vit_base_patch16_224, or one of {sorted(CPU_VITS)} for CPU runs"
        )
    not_a_vit = (
        f"--model {name} is not a timm ViT: the MSMAE recipes need a timm VisionTransformer "
        f"(vit_*, deit_*), e.g. vit_base_patch16_224, or {sorted(CPU_VITS)} for CPU runs"
    )
    try:
        model = timm.create_model(
            architecture,
            pretrained=False,
            img_size=img_size,
            **sizes,
            num_classes=num_classes,
            global_pool=global_pool,
            drop_path_rate=drop_path_rate,
        )
    except TypeError as err:  # e.g. ResNet.__init__() got an unexpected keyword 'img_size'
        raise ValueError(f"{not_a_vit} ({err})") from None
    if not isinstance(model, VisionTransformer):
        raise ValueError(not_a_vit)
    check_timm_vit(model, token_subset=True)
    return model


def vit_grid(name: str, img_size: int) -> tuple[int, int]:
    """The patch grid of :func:`create_vit`'s ViT, built on the meta device (no memory,
    instant), so that ``--model`` and ``--input_size`` are checked before anything else.

    Raises:
        ValueError: not a timm ViT, or ``img_size`` not a multiple of its patch size.
    """
    with torch.device("meta"):
        vit = create_vit(name, img_size=img_size, num_classes=1, global_pool="token")
    patch = vit.patch_embed.patch_size
    if img_size % patch[0] or img_size % patch[1]:
        raise ValueError(
            f"--input_size {img_size} is not a multiple of the patch size {patch[0]} of "
            f"--model {name}"
        )
    return tuple(vit.patch_embed.grid_size)


class VisibleTokenClassifier(nn.Module):
    """A timm ViT classifier that can encode a subset of its patch tokens (SAM fine-tuning).

    Wrapping the two calls in one ``forward`` lets DistributedDataParallel see them.
    ``grid`` (gh, gw) and ``patch_size`` describe the ViT's patches.

    Args:
        vit: a timm ``VisionTransformer`` (MSMAE fine-tunes with ``global_pool="avg"``).
    """

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        check_timm_vit(vit, token_subset=True)
        self.vit = vit
        self.grid: tuple[int, int] = tuple(vit.patch_embed.grid_size)
        self.patch_size: int = vit.patch_embed.patch_size[0]

    def forward(self, images: Tensor, visible: Tensor | None = None) -> Tensor:
        """Logits (B, num_classes) from the ``visible`` (B, K) patches, or from all if None."""
        return self.vit.forward_head(forward_features_visible(self.vit, images, visible))


def load_pretrained_encoder(
    vit: VisionTransformer, state: Mapping[str, Tensor], *, prefix: str = "encoder."
) -> None:
    """Load a pre-trained encoder (``MaskedAutoencoder.encoder``) into a fine-tuning ViT, strictly.

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
