"""MSMAE's models around timm ViTs: building the encoder, and the SAM fine-tuning classifier.

Pre-training (MSMAE, Mao et al., Sec. 3.2) uses :class:`maskkit.mae.MaskedAutoencoder`: an
MAE whose encoder is a timm ViT run on the visible patches only, with a supervised head on
its cls token (loss = MSE + λ CE). Fine-tuning (Sec. 3.3): :class:`VisibleTokenClassifier`
encodes only the visible tokens of a SAM split while training and every token at evaluation;
:func:`load_pretrained_encoder` moves the pre-trained encoder into it, and
:func:`read_init_weights` reads the weight files users have (a ``main_pretrain.py``
checkpoint, a facebookresearch/mae checkpoint, a timm ``VisionTransformer`` state dict).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from msmae_util.outputs import load_checkpoint
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from maskkit import forward_features_visible
from maskkit.vit import check_timm_vit

__all__ = [
    "CPU_VITS",
    "VisibleTokenClassifier",
    "create_vit",
    "load_init_encoder",
    "load_pretrained_encoder",
    "read_init_weights",
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

    Wrapping the calls in one ``forward`` lets DistributedDataParallel see them. ``grid``
    (gh, gw) and ``patch_size`` describe the ViT's patches.

    With ``cls_head`` a second classifier (LayerNorm + Linear) reads the cls token beside
    the ViT's own head. A ViT that pools its patch tokens (``global_pool="avg"``) gives the
    last block's cls output no gradient, so the cls-attention maps that SAM masks by drift
    unsupervised while fine-tuning; the extra head's loss keeps the cls token supervised,
    as in MSMAE pre-training. Predictions always come from the ViT's own head.

    Args:
        vit: a timm ``VisionTransformer`` (MSMAE fine-tunes with ``global_pool="avg"``).
        cls_head: add the cls-token classifier (needs a cls token).
    """

    def __init__(self, vit: VisionTransformer, *, cls_head: bool = False) -> None:
        super().__init__()
        check_timm_vit(vit, token_subset=True)
        self.vit = vit
        self.grid: tuple[int, int] = tuple(vit.patch_embed.grid_size)
        self.patch_size: int = vit.patch_embed.patch_size[0]
        self.cls_head: nn.Module | None = None
        if cls_head:
            if vit.cls_token is None:
                raise ValueError("a cls-token head needs a ViT with a cls token")
            width, classes = vit.embed_dim, vit.num_classes
            self.cls_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, classes))

    def forward(
        self, images: Tensor, visible: Tensor | None = None, *, with_cls: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (B, num_classes) from the ``visible`` (B, K) patches, or from all if None;
        with ``with_cls`` also the cls head's logits, as a pair."""
        tokens = forward_features_visible(self.vit, images, visible)
        logits = self.vit.forward_head(tokens)
        if not with_cls:
            return logits
        if self.cls_head is None:
            raise ValueError("with_cls=True needs a model built with cls_head=True")
        return logits, self.cls_head(tokens[:, 0])


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


# facebookresearch/mae's pre-training checkpoints also hold its decoder, which is not loaded:
# its fixed sin-cos table orders the two grid axes unlike maskkit's decoder.
_MAE_DECODER = ("decoder_", "mask_token")


def read_init_weights(path: str | Path, *, option: str) -> tuple[dict[str, Tensor], str]:
    """The weights of an initial checkpoint, with the encoder's keys under ``encoder.``.

    Three formats are read, with PyTorch's safe loader (``weights_only=True``; an
    ``argparse.Namespace``, which MAE's training checkpoints hold, is allowed):

    - a ``main_pretrain.py`` checkpoint: its whole ``MaskedAutoencoder`` state (encoder,
      decoder, head);
    - a facebookresearch/mae checkpoint, ``{"model": state}`` with MAE's names (timm's
      names for the encoder: ``cls_token``, ``pos_embed`` with a cls row, ``patch_embed.*``,
      ``blocks.*``, and ``norm.*`` after pre-training or ``fc_norm.*`` + ``head.*`` after
      its global-pool fine-tuning), e.g. ``mae_pretrain_vit_base.pth``; its decoder, if
      any, is left out;
    - a timm ``VisionTransformer`` state dict (``model.state_dict()``), also under a
      ``"model"`` or ``"state_dict"`` entry, with or without DDP's ``module.`` prefix.

    Returns:
        The state (encoder keys prefixed ``encoder.``) and the format's name.

    Raises:
        ValueError: the file is no checkpoint, is a checkpoint of another recipe, or holds
            no ViT weights (all named).
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = load_checkpoint(path, option=option)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{option} {path} holds a {type(checkpoint).__name__}, not weights")
    script = checkpoint.get("script") or ("main_finetune.py" if "best_acc1" in checkpoint else None)
    if script is not None and script != "main_pretrain.py":
        raise ValueError(
            f"{path} was written by {script}: {option} takes a main_pretrain.py checkpoint, a "
            "facebookresearch/mae checkpoint or a timm VisionTransformer state dict"
        )
    state = checkpoint.get("model", checkpoint.get("state_dict", checkpoint))
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"{path} holds no state dict (a 'model' or 'state_dict' entry, or the tensors "
            f"themselves): it is not a checkpoint {option} reads"
        )
    if any(k.startswith("encoder.") for k in state):
        return dict(state), "main_pretrain.py"
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if "patch_embed.proj.weight" not in state:
        raise ValueError(
            f"{path} holds no ViT encoder (no 'patch_embed.proj.weight'); its first keys are "
            f"{sorted(state)[:5]}"
        )
    mae = "model" in checkpoint or any(k.startswith(_MAE_DECODER) for k in state)
    encoder = {f"encoder.{k}": v for k, v in state.items() if not k.startswith(_MAE_DECODER)}
    return encoder, "facebookresearch/mae" if mae else "timm"


def load_init_encoder(vit: VisionTransformer, state: Mapping[str, Tensor], source: str) -> None:
    """:func:`load_pretrained_encoder` with a hint for the two conventions that trip users:
    MAE's fine-tuned checkpoints (global pool: ``fc_norm``, no ``norm``) given to a
    cls-token encoder, and a position table with a cls row for a ViT without one (MAE's
    all-zero cls row is dropped, which changes nothing)."""
    state = dict(state)
    table = state.get("encoder.pos_embed")
    if (
        table is not None
        and getattr(vit, "no_embed_class", False)
        and table.shape[1] == vit.pos_embed.shape[1] + 1
        and not table[:, 0].any()
    ):
        state["encoder.pos_embed"] = table[:, 1:]
    try:
        load_pretrained_encoder(vit, state)
    except ValueError as err:
        hint = ""
        if "encoder.fc_norm.weight" in state and "encoder.norm.weight" not in state:
            hint = (
                "; it is a fine-tuned (global-pool) checkpoint, with fc_norm and no final "
                "norm: pre-training needs the encoder's norm, so start it from a pre-training "
                "checkpoint (e.g. MAE's mae_pretrain_vit_base.pth)"
            )
        raise ValueError(f"{source}: {err}{hint}") from None
