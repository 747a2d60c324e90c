"""Cls-token attention maps from timm vision transformers, with fused attention left on.

SAM (MSMAE) and AMT mask by the last block's cls-token attention over the patches.
timm's ``AttentionExtract`` sees nothing while ``fused_attn`` is on (SDPA never
materialises the softmax) and keeps full (B, heads, N, N) maps for every block when
it is off. :class:`AttentionExtractor` reads one block only:

- timm's standard ``Attention``: a pre-hook takes the block's input and computes the
  cls query against all keys, O(N) memory per head; every block keeps fused attention.
- any other timm attention (EVA's rotary embedding, BEiT's relative position bias):
  ``fused_attn`` is switched off on that one block and the softmax is read at the
  input of its ``attn_drop`` module.

Two MAE wrappers are read through the ViT inside them, with every patch token in patch
order: facebookresearch/mae's ``MaskedAutoencoderViT``, which masks (shuffles) inside
``forward_encoder``, runs here unmasked (:func:`maskkit.vit.embed_mae_tokens`, then its
blocks), and lightly's ``MaskedVisionTransformerTIMM`` runs its own ``encode`` without
``idx_keep``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange

# Imported from vision_transformer, where every timm >= 1.0 exposes the class ViT blocks use.
from timm.models.vision_transformer import Attention
from torch import Tensor, nn

from ._checks import check_choice, check_int
from .vit import check_timm_vit, embed_mae_tokens, is_mae_vit

__all__ = ["AttentionExtractor", "CapturedAttention", "eval_mode"]

HeadReduction = Literal["mean", "max", "none"]
Normalize = Literal["minmax", "none"]
NoClsToken = Literal["error", "mean_query"]

_HEAD_REDUCTIONS = ("mean", "max", "none")
_NORMALIZE = ("minmax", "none")
_NO_CLS_TOKEN = ("error", "mean_query")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module of ``model`` in eval mode; restore each one's own flag on exit.

    ``model.train(previous)`` would not do: it sets one flag for every submodule, while a
    model may hold frozen parts in eval mode inside a training one.
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


class _StopForwardError(Exception):
    """Raised by an extraction hook once the map is known; the rest of the forward is skipped."""


class CapturedAttention:
    """Maps recorded by :meth:`AttentionExtractor.capture`.

    A forward run inside the ``with`` block stores its maps here; when several run,
    the last one wins.
    """

    def __init__(self) -> None:
        self._maps: Tensor | None = None

    @property
    def maps(self) -> Tensor:
        """(B, gh, gw) float32, detached; (B, heads, gh, gw) with ``head_reduction="none"``.

        Raises:
            RuntimeError: no forward inside the ``with`` block reached the hooked block.
        """
        if self._maps is None:
            raise RuntimeError(
                "no attention was captured: run the model's forward (e.g. "
                "model.forward_features(x)) inside `with extractor.capture() as captured:` "
                "before reading captured.maps"
            )
        return self._maps


class AttentionExtractor:
    """Cls-token attention maps, one per image, from a timm ViT-style model.

    The default map follows AMT's code (guijiejie/AMT): the last block's softmax
    attention row of the cls query, patch columns only (cls, distillation and register
    tokens dropped, per ``model.num_prefix_tokens``), min-max normalised per head over
    the patches, then averaged over heads. MSMAE's eq. 5 averages the heads *before*
    normalising: ``normalize="none"`` gives that mean, and a min-max of it is the
    paper's order (the two differ when heads have different ranges). The grid follows
    the input, so non-square images and ``dynamic_img_size`` models give their own
    (gh, gw).

    Two ways to use it::

        maps = extractor(images)                 # no_grad, eval mode, model restored
        with extractor.capture() as captured:    # around a forward the caller runs
            feats = model.forward_features(images)
        maps = captured.maps

    For timm's standard ``Attention`` the map is computed in float32 from the block's
    input (also under autocast). Other attention modules (EVA, BEiT, ...) are read in
    their own unfused computation. The model is left as found: train/eval mode of
    every module, every ``fused_attn`` flag, no hooks. The maps are read, not checked:
    NaN pixels (or a diverged model) give NaN maps, which the maskers,
    :func:`~maskkit.align_weights` and :meth:`~maskkit.MaskWeightBank.refresh` refuse,
    naming the images or the model as the likely cause.

    MAE models are read unmasked, in patch order: facebookresearch/mae's
    ``MaskedAutoencoderViT`` (cls token, (1, 1 + L, D) ``pos_embed``, no
    ``num_prefix_tokens``; its ``forward_encoder`` would shuffle the patches) and lightly's
    ``MaskedVisionTransformerTIMM`` (the timm ViT in its ``vit``, run by its ``encode``
    without ``idx_keep``). Call the extractor on them; :meth:`capture` refuses
    ``MaskedAutoencoderViT``, whose own forward shuffles.

    Args:
        model: A timm ``VisionTransformer``-style model (``patch_embed``,
            ``blocks[i].attn`` and ``num_prefix_tokens``), facebookresearch/mae's
            ``MaskedAutoencoderViT`` (or :class:`maskkit.integrations.mae.MAEAdapter`), or
            lightly's ``MaskedVisionTransformerTIMM``.
        block: Index into ``model.blocks`` of the block to read; negative counts from the end.
        head_reduction: ``"mean"`` or ``"max"`` over heads, or ``"none"`` to keep them,
            giving (B, heads, gh, gw).
        normalize: ``"minmax"`` rescales each head's map to [0, 1] over the patches (a
            constant map becomes zeros); ``"none"`` keeps the softmax probabilities.
        no_cls_token: What to do for a model without a cls token (e.g. ``class_token=False``):
            ``"error"`` raises ``ValueError``; ``"mean_query"`` averages the attention rows of
            all patch queries instead of the cls row (O(L * N) memory for that block).

    Raises:
        TypeError: ``model`` is none of the above: it lacks ``patch_embed``,
            ``num_prefix_tokens`` or ``blocks[block].attn`` with either timm's ``Attention``
            or an ``attn_drop`` (e.g. Hugging Face models, timm's NaFlexVit, SAM-ViT or
            Hiera).
        ValueError: an option is unknown, ``block`` is out of range, or the model has no cls
            token while ``no_cls_token="error"``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        block: int = -1,
        head_reduction: HeadReduction = "mean",
        normalize: Normalize = "minmax",
        no_cls_token: NoClsToken = "error",
    ) -> None:
        check_choice("head_reduction", head_reduction, _HEAD_REDUCTIONS)
        check_choice("normalize", normalize, _NORMALIZE)
        check_choice("no_cls_token", no_cls_token, _NO_CLS_TOKEN)
        self.model = model
        self._vit, self._forward, self._kind = _readable(model)
        self.attn = _find_attention(self._vit, block)
        # MAE's layout has exactly one prefix token, its cls token, and no attribute for it.
        self.num_prefix_tokens: int = 1 if self._kind == "mae" else self._vit.num_prefix_tokens
        self.has_cls_token = getattr(self._vit, "cls_token", None) is not None
        if not self.has_cls_token and no_cls_token == "error":
            raise ValueError(
                f"{type(model).__name__} has no cls token (cls_token is None), so there is no "
                "cls attention row; pass no_cls_token='mean_query' to average the attention "
                "rows of all patch queries instead"
            )
        self.block = block
        self.head_reduction = head_reduction
        self.normalize = normalize
        self.no_cls_token = no_cls_token
        # An exact type check: EVA and BEiT attention also carry `qkv` but add rotary
        # embeddings or a position bias that the fast path does not reproduce.
        self.fast_path = type(self.attn) is Attention

    def __repr__(self) -> str:
        path = "fast" if self.fast_path else "general"
        return (
            f"{type(self).__name__}({type(self.model).__name__}, block={self.block}, "
            f"head_reduction={self.head_reduction!r}, normalize={self.normalize!r}, "
            f"no_cls_token={self.no_cls_token!r}, path={path!r})"
        )

    def __call__(self, images: Tensor) -> Tensor:
        """Maps for a batch of images from one no-grad, eval-mode pass.

        The pass stops as soon as the map is known, so later blocks and the head never run.

        Args:
            images: (B, C, H, W) input images.

        Returns:
            (B, gh, gw) float32 maps; (B, heads, gh, gw) with ``head_reduction="none"``.

        Raises:
            ValueError: ``images`` is not 4-D.
            RuntimeError: the forward never reached the block's attention softmax (an
                attention module that bypasses ``attn_drop``), or the block saw fewer patch
                tokens than the image has patches.
        """
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        captured = CapturedAttention()
        with (
            eval_mode(self.model),
            torch.no_grad(),
            self._hooks(captured, stop_forward=True),
            contextlib.suppress(_StopForwardError),
        ):
            self._forward(images)
        return captured.maps

    @contextlib.contextmanager
    def capture(self) -> Iterator[CapturedAttention]:
        """Hook the block for forwards the caller runs (train or eval mode, grads allowed).

        The forward runs to the end with its usual outputs; the maps are computed without
        grad from the attention before dropout and stored detached. Hooks and flags are
        restored on exit, also on error.

        Yields:
            A :class:`CapturedAttention` whose ``maps`` hold the last captured forward.

        Raises:
            TypeError: the model is facebookresearch/mae's ``MaskedAutoencoderViT`` (or an
                adapter of it), whose forward shuffles the patches: maps captured there
                would come out in shuffled order. Call the extractor instead.
        """
        if self._kind == "mae":
            raise TypeError(
                f"capture() cannot read {type(self.model).__name__}: an MAE forward masks and "
                "shuffles the patches, so the captured maps would be in shuffled order; call "
                "extractor(images), which runs every patch unshuffled"
            )
        captured = CapturedAttention()
        with self._hooks(captured, stop_forward=False):
            yield captured

    @contextlib.contextmanager
    def _hooks(self, captured: CapturedAttention, *, stop_forward: bool) -> Iterator[None]:
        image_size: list[tuple[int, int]] = []

        def record_image_size(module: nn.Module, args: tuple[Any, ...]) -> None:
            image_size[:] = [tuple(args[0].shape[-2:])]

        def store(probs: Tensor) -> None:
            if not image_size:
                raise RuntimeError(
                    "the hooked attention ran without model.patch_embed: cannot tell the grid"
                )
            captured._maps = self._reduce(probs, image_size[0])
            if stop_forward:
                raise _StopForwardError

        def read_query_keys(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> None:
            x = args[0] if args else kwargs["x"]
            attn_mask = args[1] if len(args) > 1 else kwargs.get("attn_mask")
            is_causal = args[2] if len(args) > 2 else kwargs.get("is_causal", False)
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                probs = self._fast_probs(x.float(), attn_mask, is_causal)
            store(probs)

        def read_softmax(module: nn.Module, args: tuple[Any, ...]) -> None:
            attn = args[0].detach()  # (B, heads, N, N), before dropout
            store(attn[:, :, self._query_rows(attn.shape[-1])].float().mean(dim=2))

        handles = [self._vit.patch_embed.register_forward_pre_hook(record_image_size)]
        fused = getattr(self.attn, "fused_attn", None)
        try:
            if self.fast_path:
                hook = self.attn.register_forward_pre_hook(read_query_keys, with_kwargs=True)
            else:
                if fused is not None:
                    self.attn.fused_attn = False
                hook = self.attn.attn_drop.register_forward_pre_hook(read_softmax)
            handles.append(hook)
            yield
        finally:
            for handle in handles:
                handle.remove()
            if fused is not None:
                self.attn.fused_attn = fused

    def _query_rows(self, num_tokens: int) -> slice:
        # The cls token is always token 0 in timm (before distillation and register tokens).
        return slice(0, 1) if self.has_cls_token else slice(self.num_prefix_tokens, num_tokens)

    def _fast_probs(self, x: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
        """Softmax rows of the selected queries, averaged over them: (B, heads, N) float32.

        Mirrors timm ``Attention.forward`` on its unfused branch for those rows only.
        """
        attn = self.attn
        num_tokens = x.shape[1]
        rows = self._query_rows(num_tokens)
        width = attn.qkv.out_features // 3
        weight = attn.qkv.weight.float()
        bias = attn.qkv.bias.float() if attn.qkv.bias is not None else None
        q_bias, k_bias = (None, None) if bias is None else (bias[:width], bias[width : 2 * width])
        q = F.linear(x[:, rows], weight[:width], q_bias)
        k = F.linear(x, weight[width : 2 * width], k_bias)
        q = rearrange(q, "b q (h d) -> b h q d", h=attn.num_heads)
        k = rearrange(k, "b n (h d) -> b h n d", h=attn.num_heads)
        q, k = _run_float32(attn.q_norm, q), _run_float32(attn.k_norm, k)
        scores = (q * attn.scale) @ k.transpose(-2, -1)  # (B, heads, Q, N)
        # Same precedence as timm's resolve_self_attn_mask: is_causal overrides attn_mask.
        if is_causal:
            queries = torch.arange(num_tokens, device=x.device)[rows]
            keys = torch.arange(num_tokens, device=x.device)
            scores = scores.masked_fill(keys > queries[:, None], float("-inf"))
        elif attn_mask is not None:
            attn_mask = attn_mask[..., rows, :]
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask.float()
        return scores.softmax(dim=-1).mean(dim=2)

    def _reduce(self, probs: Tensor, image_size: tuple[int, int]) -> Tensor:
        """(B, heads, N) softmax rows → normalised, head-reduced maps on the patch grid."""
        grid_h, grid_w = _grid_size(self._vit.patch_embed, image_size)
        patches = probs[..., self.num_prefix_tokens :]
        if patches.shape[-1] != grid_h * grid_w:
            raise RuntimeError(
                f"the hooked block saw {patches.shape[-1]} patch tokens but a "
                f"{image_size[0]}x{image_size[1]} image gives a {grid_h}x{grid_w} grid; "
                "capture a forward over all patches (no token masking or patch dropout)"
            )
        if self.normalize == "minmax":
            low = patches.amin(dim=-1, keepdim=True)
            span = patches.amax(dim=-1, keepdim=True) - low
            patches = (patches - low) / span.clamp_min(torch.finfo(patches.dtype).tiny)
        if self.head_reduction == "mean":
            patches = patches.mean(dim=1)
        elif self.head_reduction == "max":
            patches = patches.amax(dim=1)
        return rearrange(patches, "... (gh gw) -> ... gh gw", gh=grid_h, gw=grid_w)


_ModelKind = Literal["timm", "mae", "lightly"]


def _readable(model: nn.Module) -> tuple[nn.Module, Callable[[Tensor], Any], _ModelKind]:
    """The ViT to hook, the forward that runs all its patches in patch order, and the kind."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inner = getattr(model, "vit", None)
    encode = getattr(model, "encode", None)
    if isinstance(inner, nn.Module) and callable(encode) and not hasattr(model, "blocks"):
        # lightly's MaskedVisionTransformerTIMM: its encode(images) without idx_keep runs
        # every token, prefix tokens first, in patch order (lightly/models/modules).
        try:
            check_timm_vit(inner)
        except TypeError as error:
            raise TypeError(
                f"{type(model).__name__} wraps a {type(inner).__name__} in .vit, which maskkit "
                f"cannot read: {error}"
            ) from error
        return inner, encode, "lightly"
    if is_mae_vit(model):

        def forward_unshuffled(images: Tensor) -> Tensor:
            x = embed_mae_tokens(model, images)
            for block in model.blocks:
                x = block(x)
            return x

        return model, forward_unshuffled, "mae"
    return model, getattr(model, "forward_features", model), "timm"


def _find_attention(model: nn.Module, block: int) -> nn.Module:
    """Return ``model.blocks[block].attn`` after checking the model is a timm ViT."""
    check_timm_vit(model)
    blocks = model.blocks
    check_int("block", block)
    if not -len(blocks) <= block < len(blocks):
        raise ValueError(
            f"block {block} is out of range for a model with {len(blocks)} blocks; use an "
            f"index in [-{len(blocks)}, {len(blocks) - 1}] (-1 is the last block)"
        )
    attn = getattr(blocks[block], "attn", None)
    if not isinstance(attn, nn.Module):
        raise TypeError(
            f"{type(model).__name__}.blocks[{block}] has no attn module; maskkit reads "
            "timm-style blocks whose attention module is blocks[i].attn"
        )
    if type(attn) is not Attention and not isinstance(getattr(attn, "attn_drop", None), nn.Module):
        raise TypeError(
            f"blocks[{block}].attn is {type(attn).__name__}, which is neither timm's Attention "
            "nor a module with an attn_drop that receives the softmax attention"
        )
    return attn


def _grid_size(patch_embed: nn.Module, image_size: tuple[int, int]) -> tuple[int, int]:
    """Patch grid (gh, gw) of an image, including timm's dynamic padding when enabled."""
    if hasattr(patch_embed, "dynamic_feat_size"):
        return tuple(patch_embed.dynamic_feat_size(image_size))
    patch_h, patch_w = patch_embed.patch_size
    return image_size[0] // patch_h, image_size[1] // patch_w


def _run_float32(module: nn.Module, x: Tensor) -> Tensor:
    """Apply ``module`` to float32 ``x``, or in its parameters' dtype if those are not float32."""
    param = next(module.parameters(), None)
    if param is None or param.dtype == torch.float32:
        return module(x)
    return module(x.to(param.dtype)).float()
