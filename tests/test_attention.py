"""AttentionExtractor against timm's own unfused attention (issue 3)."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from maskkit import AttentionExtractor

TOL = 1e-4

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --- reference: timm's unfused attention, reduced independently ---------------------------------


def sharpen(model: nn.Module, *, seed: int = 0, score_std: float = 4.0) -> nn.Module:
    """Re-initialise so attention is far from uniform and every bias and norm matters.

    At timm's init the softmax is nearly flat, and min-max normalisation would then hide a
    wrong temperature; random biases, norm affines and BEiT's bias table (zero at init)
    make each term of the attention show up in the maps.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(p: Tensor, std: float, mean: float = 0.0) -> None:
        p.copy_(mean + std * torch.randn(p.shape, generator=gen))

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                normal(module.weight, math.sqrt(score_std / module.in_features))
                if module.bias is not None:
                    normal(module.bias, 0.1)
        for name, module in model.named_modules():
            if isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                # q/k norms fix the scale of q and k, so their gain sets the score spread.
                gain = 3.0 if name.endswith(("q_norm", "k_norm")) else 1.0
                normal(module.weight, 0.2, mean=gain)
                normal(module.bias, 0.2)
        stds = {"q_bias": 0.1, "v_bias": 0.1, "relative_position_bias_table": 1.0}
        stds |= {"cls_token": 0.5, "dist_token": 0.5, "reg_token": 0.5, "pos_embed": 0.5}
        for name, param in model.named_parameters():
            std = stds.get(name.rsplit(".", 1)[-1])
            if std is not None:
                normal(param, std)
    return model.eval()


@functools.cache
def _built(name: str, options: tuple[tuple[str, object], ...]) -> nn.Module:
    # timm's own init draws the weights sharpen() leaves alone (the patch embedding's conv)
    # from the global RNG: seed it, or the model would depend on the tests run before.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return sharpen(timm.create_model(name, pretrained=False, **dict(options)))


def build(name: str, **kwargs: object) -> nn.Module:
    """A sharpened timm model in eval mode; a private copy, so tests may change its state."""
    return copy.deepcopy(_built(name, tuple(sorted(kwargs.items()))))


def unfused_attention(
    model: nn.Module, images: Tensor, block: int = -1, **forward_kwargs
) -> Tensor:
    """(B, heads, N, N) softmax of ``model.blocks[block]`` from timm's unfused branch."""
    flags = {m: m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}
    seen: list[Tensor] = []
    attn_drop = model.blocks[block].attn.attn_drop
    handle = attn_drop.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        for module in flags:
            module.fused_attn = False
        with torch.no_grad():
            model.forward_features(images, **forward_kwargs)
    finally:
        handle.remove()
        for module, flag in flags.items():
            module.fused_attn = flag
    assert len(seen) == 1
    return seen[0].float()


def reference_maps(
    attn: Tensor,
    *,
    num_prefix_tokens: int,
    grid: tuple[int, int],
    cls_query: bool = True,
    normalize: str = "minmax",
    head_reduction: str = "mean",
) -> Tensor:
    rows = attn[:, :, 0] if cls_query else attn[:, :, num_prefix_tokens:].mean(dim=2)
    maps = rows[:, :, num_prefix_tokens:]
    if normalize == "minmax":
        low, high = maps.min(dim=-1, keepdim=True).values, maps.max(dim=-1, keepdim=True).values
        maps = (maps - low) / (high - low)
    if head_reduction == "mean":
        maps = maps.mean(dim=1)
    elif head_reduction == "max":
        maps = maps.max(dim=1).values
    return maps.reshape(*maps.shape[:-1], *grid)


def assert_peaked(attn: Tensor) -> None:
    """Guard against a vacuous comparison: the cls rows must be far from uniform.

    Near-uniform rows are almost linear in the scores, and min-max normalisation would hide
    a wrong scale; a log-probability spread above 1 makes the softmax clearly non-linear.
    """
    assert attn[:, :, 0].log().std(dim=-1).min() > 1.0


# --- every model family matches timm ------------------------------------------------------------

# name, create_model kwargs, image (H, W), fast path expected
MODELS = {
    "vit_tiny": ("vit_tiny_patch16_224", {}, (224, 224), True),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {"depth": 3}, (224, 224), True),
    "vit_reg4": ("vit_tiny_patch16_224", {"depth": 3, "reg_tokens": 4}, (224, 224), True),
    "vit_qk_norm": ("vit_tiny_patch16_224", {"depth": 3, "qk_norm": True}, (224, 224), True),
    "vit_non_square": (
        "vit_tiny_patch16_224",
        {"depth": 3, "img_size": (224, 160)},
        (224, 160),
        True,
    ),
    "dinov2_small": ("vit_small_patch14_dinov2", {"depth": 3, "img_size": 98}, (98, 98), True),
    "eva02_rope": ("eva02_tiny_patch14_224", {"depth": 3}, (224, 224), False),
    "beit_rel_bias": (
        "beit_base_patch16_224",
        {"depth": 2, "embed_dim": 192, "num_heads": 3},
        (224, 224),
        False,
    ),
}


@pytest.mark.parametrize("case", list(MODELS))
def test_default_maps_match_timm_unfused(case: str) -> None:
    name, kwargs, (height, width), fast = MODELS[case]
    model = build(name, **kwargs)
    images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(1))
    patch_h, patch_w = model.patch_embed.patch_size
    grid = (height // patch_h, width // patch_w)

    extractor = AttentionExtractor(model)
    maps = extractor(images)

    attn = unfused_attention(model, images)
    assert_peaked(attn)
    expected = reference_maps(attn, num_prefix_tokens=model.num_prefix_tokens, grid=grid)
    assert extractor.fast_path is fast
    assert extractor.model is model
    assert maps.dtype == torch.float32
    assert maps.shape == (2, *grid)
    torch.testing.assert_close(maps, expected, atol=TOL, rtol=0)


def test_distilled_and_register_tokens_are_excluded() -> None:
    for name, kwargs, prefix in (
        ("deit_tiny_distilled_patch16_224", {"img_size": 64, "depth": 2}, 2),
        ("vit_tiny_patch16_224", {"img_size": 64, "depth": 2, "reg_tokens": 4}, 5),
    ):
        model = build(name, **kwargs)
        assert model.num_prefix_tokens == prefix
        images = torch.randn(2, 3, 64, 64)
        raw = AttentionExtractor(model, normalize="none", head_reduction="none")(images)
        attn = unfused_attention(model, images)
        # The patch columns of the cls row, not its first 16 columns.
        torch.testing.assert_close(raw.flatten(2), attn[:, :, 0, prefix:], atol=TOL, rtol=0)


TINY = {"img_size": 32, "depth": 2}
SMALL = {
    "fast": ("vit_tiny_patch16_224", {"img_size": 64, "depth": 3}),
    "general": ("eva02_tiny_patch14_224", {"img_size": 56, "depth": 3}),
}


@pytest.mark.parametrize("path", list(SMALL))
@pytest.mark.parametrize("head_reduction", ["mean", "max", "none"])
@pytest.mark.parametrize("normalize", ["minmax", "none"])
def test_options_match_timm_unfused(path: str, head_reduction: str, normalize: str) -> None:
    name, kwargs = SMALL[path]
    model = build(name, **kwargs)
    size = kwargs["img_size"]
    images = torch.randn(3, 3, size, size)
    grid = model.patch_embed.grid_size

    maps = AttentionExtractor(model, head_reduction=head_reduction, normalize=normalize)(images)

    expected = reference_maps(
        unfused_attention(model, images),
        num_prefix_tokens=model.num_prefix_tokens,
        grid=grid,
        normalize=normalize,
        head_reduction=head_reduction,
    )
    heads = model.blocks[-1].attn.num_heads
    assert maps.shape == ((3, heads, *grid) if head_reduction == "none" else (3, *grid))
    torch.testing.assert_close(maps, expected, atol=TOL, rtol=0)
    if normalize == "minmax" and head_reduction != "mean":
        assert torch.allclose(maps.amax(dim=(-2, -1)), torch.ones(()))


@pytest.mark.parametrize("path", list(SMALL))
@pytest.mark.parametrize("block", [0, 1, -2])
def test_block_option_reads_that_block(path: str, block: int) -> None:
    name, kwargs = SMALL[path]
    model = build(name, **kwargs)
    size = kwargs["img_size"]
    images = torch.randn(2, 3, size, size)

    maps = AttentionExtractor(model, block=block, normalize="none")(images)

    expected = reference_maps(
        unfused_attention(model, images, block=block),
        num_prefix_tokens=model.num_prefix_tokens,
        grid=model.patch_embed.grid_size,
        normalize="none",
    )
    torch.testing.assert_close(maps, expected, atol=TOL, rtol=0)


# --- grid follows the input ---------------------------------------------------------------------


def dynamic_vit(pad: bool) -> nn.Module:
    return build(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        dynamic_img_size=True,
        dynamic_img_pad=pad,
    )


@settings(max_examples=25, deadline=None)
@given(
    pad=st.booleans(),
    height=st.integers(8, 72),
    width=st.integers(8, 72),
    batch=st.integers(1, 3),
)
def test_dynamic_img_size_grid_follows_input(
    pad: bool, height: int, width: int, batch: int
) -> None:
    if not pad:  # without padding timm needs whole patches
        height, width = 8 * (height // 8), 8 * (width // 8)
    model = dynamic_vit(pad)
    images = torch.randn(batch, 3, height, width)

    maps = AttentionExtractor(model)(images)

    grid = (math.ceil(height / 8), math.ceil(width / 8))
    assert maps.shape == (batch, *grid)
    if grid == (1, 1):  # a constant map: min-max gives zeros, not 0 / 0
        assert torch.equal(maps, torch.zeros_like(maps))
    else:
        expected = reference_maps(unfused_attention(model, images), num_prefix_tokens=1, grid=grid)
        torch.testing.assert_close(maps, expected, atol=TOL, rtol=0)


# --- models without a cls token, masks ------------------------------------------------------------

NO_CLS = {
    "fast": (
        "vit_tiny_patch16_224",
        {"img_size": 64, "depth": 2, "class_token": False, "reg_tokens": 1, "global_pool": "avg"},
    ),
    "general": (
        "eva02_tiny_patch14_224",
        {"img_size": 56, "depth": 2, "class_token": False, "global_pool": "avg"},
    ),
}


@pytest.mark.parametrize("path", list(NO_CLS))
def test_no_cls_token_raises_and_names_the_alternative(path: str) -> None:
    name, kwargs = NO_CLS[path]
    model = build(name, **kwargs)
    with pytest.raises(ValueError, match="no_cls_token='mean_query'"):
        AttentionExtractor(model)


@pytest.mark.parametrize("path", list(NO_CLS))
def test_mean_query_averages_patch_query_rows(path: str) -> None:
    name, kwargs = NO_CLS[path]
    model = build(name, **kwargs)
    images = torch.randn(2, 3, kwargs["img_size"], kwargs["img_size"])

    maps = AttentionExtractor(model, no_cls_token="mean_query", normalize="none")(images)

    expected = reference_maps(
        unfused_attention(model, images),
        num_prefix_tokens=model.num_prefix_tokens,
        grid=model.patch_embed.grid_size,
        cls_query=False,
        normalize="none",
    )
    torch.testing.assert_close(maps, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fast_path_applies_attention_masks(kind: str) -> None:
    name, kwargs = SMALL["fast"]
    model = build(name, **kwargs)
    images = torch.randn(2, 3, 64, 64)
    num_tokens = 1 + 16
    gen = torch.Generator().manual_seed(3)
    if kind == "bool":
        attn_mask = torch.rand(2, 1, num_tokens, num_tokens, generator=gen) > 0.4
        attn_mask |= torch.eye(num_tokens, dtype=torch.bool)  # no fully masked row
    else:
        attn_mask = 3.0 * torch.randn(2, 1, num_tokens, num_tokens, generator=gen)
    extractor = AttentionExtractor(model, normalize="none", head_reduction="none")

    with extractor.capture() as captured, torch.no_grad():
        model.forward_features(images, attn_mask=attn_mask)

    attn = unfused_attention(model, images, attn_mask=attn_mask)
    expected = reference_maps(
        attn, num_prefix_tokens=1, grid=(4, 4), normalize="none", head_reduction="none"
    )
    torch.testing.assert_close(captured.maps, expected, atol=TOL, rtol=0)
    unmasked = reference_maps(
        unfused_attention(model, images), num_prefix_tokens=1, grid=(4, 4), normalize="none"
    )
    assert not torch.allclose(captured.maps.mean(dim=1), unmasked, atol=1e-2)


def test_fast_path_applies_causal_masking() -> None:
    name, kwargs = NO_CLS["fast"]
    model = build(name, **kwargs)
    images = torch.randn(2, 3, 64, 64)
    extractor = AttentionExtractor(model, no_cls_token="mean_query", normalize="none")

    with extractor.capture() as captured, torch.no_grad():
        model.forward_features(images, is_causal=True)

    expected = reference_maps(
        unfused_attention(model, images, is_causal=True),
        num_prefix_tokens=1,
        grid=(4, 4),
        cls_query=False,
        normalize="none",
    )
    torch.testing.assert_close(captured.maps, expected, atol=TOL, rtol=0)


# --- the model is left as found -----------------------------------------------------------------


def hook_counts(model: nn.Module) -> int:
    return sum(
        len(hooks)
        for module in model.modules()
        for hooks in (
            module._forward_hooks,
            module._forward_pre_hooks,
            module._forward_hooks_with_kwargs,
            module._forward_pre_hooks_with_kwargs,
            module._backward_hooks,
        )
    )


def model_state(model: nn.Module) -> tuple[dict[str, bool], dict[str, bool]]:
    modes = {name: module.training for name, module in model.named_modules()}
    flags = {name: m.fused_attn for name, m in model.named_modules() if hasattr(m, "fused_attn")}
    return modes, flags


@pytest.mark.parametrize("path", list(SMALL))
def test_call_restores_modes_flags_hooks_and_outputs(path: str) -> None:
    name, kwargs = SMALL[path]
    model = build(name, **kwargs)
    model.train()
    model.blocks[0].eval()  # mixed modes must come back module by module
    model.blocks[1].attn.fused_attn = False  # and a non-default flag stays as set
    images = torch.randn(2, 3, kwargs["img_size"], kwargs["img_size"])
    with torch.no_grad():
        before = model(images)
    state = model_state(model)

    AttentionExtractor(model)(images)

    assert model_state(model) == state
    assert hook_counts(model) == 0
    with torch.no_grad():
        assert torch.equal(model(images), before)


@pytest.mark.parametrize("path", list(SMALL))
def test_state_is_restored_when_the_forward_raises(path: str) -> None:
    name, kwargs = SMALL[path]
    model = build(name, **kwargs)
    model.train()
    state = model_state(model)
    extractor = AttentionExtractor(model)

    with pytest.raises(AssertionError):  # timm's strict image size check
        extractor(torch.randn(1, 3, 2 * kwargs["img_size"], kwargs["img_size"]))
    assert model_state(model) == state
    assert hook_counts(model) == 0

    def fail(module: nn.Module, args: tuple) -> None:
        raise KeyError("raised after the hooked attention ran")

    handle = model.blocks[-1].mlp.register_forward_pre_hook(fail)
    with pytest.raises(KeyError), extractor.capture():
        model.forward_features(torch.randn(1, 3, kwargs["img_size"], kwargs["img_size"]))
    handle.remove()
    assert model_state(model) == state
    assert hook_counts(model) == 0


@pytest.mark.parametrize("path", list(SMALL))
def test_only_the_general_path_unfuses_and_only_its_block(path: str) -> None:
    name, kwargs = SMALL[path]
    model = build(name, **kwargs)
    extractor = AttentionExtractor(model, block=1)
    before = {i: block.attn.fused_attn for i, block in enumerate(model.blocks)}
    with extractor.capture():
        inside = {i: block.attn.fused_attn for i, block in enumerate(model.blocks)}
    expected = dict(before)
    if not extractor.fast_path:
        expected[1] = False
    assert inside == expected
    assert {i: block.attn.fused_attn for i, block in enumerate(model.blocks)} == before


@pytest.mark.parametrize("path", list(SMALL))
def test_call_stops_the_forward_once_the_map_is_known(path: str) -> None:
    name, kwargs = SMALL[path]
    model = build(name, **kwargs)
    images = torch.randn(1, 3, kwargs["img_size"], kwargs["img_size"])
    calls: list[str] = []
    handles = [
        model.blocks[-1].mlp.register_forward_hook(lambda *_: calls.append("mlp")),
        model.norm.register_forward_hook(lambda *_: calls.append("norm")),
    ]
    extractor = AttentionExtractor(model)
    extractor(images)
    assert calls == []
    with extractor.capture(), torch.no_grad():  # the hook form never cuts the caller's forward
        model.forward_features(images)
    assert calls == ["mlp", "norm"]
    for handle in handles:
        handle.remove()


# --- hook form ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(SMALL))
def test_capture_in_training_mode_with_grads(path: str) -> None:
    name, kwargs = SMALL[path]
    model = build(name, **kwargs)
    images = torch.randn(2, 3, kwargs["img_size"], kwargs["img_size"])
    extractor = AttentionExtractor(model)
    expected = extractor(images)
    with torch.no_grad():
        plain = model(images)

    model.train()  # drop rates are zero, so the training forward computes the same function
    with extractor.capture() as captured:
        logits = model(images)
    logits.square().mean().backward()

    assert model.training and all(m.training for m in model.modules())
    assert not captured.maps.requires_grad
    torch.testing.assert_close(captured.maps, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(logits.detach(), plain, atol=1e-5, rtol=1e-5)
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert hook_counts(model) == 0


def test_capture_keeps_the_last_forward() -> None:
    name, kwargs = SMALL["fast"]
    model = build(name, **kwargs)
    first, second = torch.randn(2, 2, 3, 64, 64)
    extractor = AttentionExtractor(model)
    with extractor.capture() as captured, torch.no_grad():
        model.forward_features(first)
        model.forward_features(second)
    torch.testing.assert_close(captured.maps, extractor(second), atol=0, rtol=0)
    assert not torch.allclose(captured.maps, extractor(first), atol=1e-2)


# --- errors -------------------------------------------------------------------------------------


def test_capture_without_forward_raises() -> None:
    extractor = AttentionExtractor(build("vit_tiny_patch16_224", **TINY))
    with extractor.capture() as captured:
        pass
    with pytest.raises(RuntimeError, match="no attention was captured"):
        _ = captured.maps


class SkipsAttnDrop(nn.Module):
    """A timm-like attention whose softmax never passes through ``attn_drop``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fused_attn = True
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, **kwargs: object) -> Tensor:
        return self.proj(F.scaled_dot_product_attention(x[:, None], x[:, None], x[:, None])[:, 0])


def test_attention_that_bypasses_attn_drop_raises() -> None:
    model = build("vit_tiny_patch16_224", **TINY)
    model.blocks[-1].attn = SkipsAttnDrop(model.embed_dim)
    extractor = AttentionExtractor(model)
    assert not extractor.fast_path
    with pytest.raises(RuntimeError, match="no attention was captured"):
        extractor(torch.randn(1, 3, 32, 32))
    assert model.blocks[-1].attn.fused_attn is True
    assert hook_counts(model) == 0


def test_token_masking_in_the_forward_raises() -> None:
    model = build("vit_tiny_patch16_224", **TINY, patch_drop_rate=0.5)
    model.train()  # patch dropout only acts in training
    with (
        pytest.raises(RuntimeError, match="patch dropout"),
        AttentionExtractor(model).capture(),
    ):
        model.forward_features(torch.randn(2, 3, 32, 32))
    assert hook_counts(model) == 0


class NoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 4, stride=4)
        self.num_prefix_tokens = 1
        self.blocks = nn.Sequential(nn.Linear(8, 8))


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (nn.Sequential(nn.Conv2d(3, 8, 3)), "patch_embed, num_prefix_tokens, blocks"),
        (NoBlocks(), r"blocks\[-1\] has no attn"),
    ],
)
def test_non_vit_models_raise_type_error(model: nn.Module, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        AttentionExtractor(model)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"block": 2}, ValueError, "out of range"),
        ({"block": -3}, ValueError, "out of range"),
        ({"block": "last"}, TypeError, "block must be an int"),
        ({"head_reduction": "sum"}, ValueError, "head_reduction must be one of"),
        ({"normalize": "softmax"}, ValueError, "normalize must be one of"),
        ({"no_cls_token": "ignore"}, ValueError, "no_cls_token must be one of"),
    ],
)
def test_bad_options_raise(options: dict, error: type, match: str) -> None:
    model = build("vit_tiny_patch16_224", **TINY)
    with pytest.raises(error, match=match):
        AttentionExtractor(model, **options)


def test_images_must_be_4d() -> None:
    extractor = AttentionExtractor(build("vit_tiny_patch16_224", **TINY))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        extractor(torch.randn(3, 32, 32))


# --- autocast -----------------------------------------------------------------------------------


def block_input_and_maps(
    model: nn.Module, images: Tensor, device: str, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Maps under autocast, with the input the hooked block saw in that same pass."""
    seen: list[Tensor] = []
    handle = model.blocks[-1].attn.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        with torch.autocast(device, dtype=dtype):
            maps = AttentionExtractor(model, head_reduction="none")(images)
    finally:
        handle.remove()
    return seen[0], maps


def float32_block_maps(model: nn.Module, block_input: Tensor) -> Tensor:
    """Per-head min-max maps of timm's unfused attention in float32 on a given block input."""
    attn = model.blocks[-1].attn
    seen: list[Tensor] = []
    handle = attn.attn_drop.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    flag, attn.fused_attn = attn.fused_attn, False
    try:
        with torch.no_grad():
            attn(block_input.float())
    finally:
        handle.remove()
        attn.fused_attn = flag
    grid = model.patch_embed.grid_size
    return reference_maps(seen[0], num_prefix_tokens=1, grid=grid, head_reduction="none")


def check_autocast(device: str, dtype: torch.dtype) -> None:
    name, kwargs = SMALL["fast"]
    model = build(name, **kwargs).to(device)
    images = torch.randn(2, 3, 64, 64, device=device)

    block_input, maps = block_input_and_maps(model, images, device, dtype)

    # The fast path works in float32 even where timm's own attention runs in low precision.
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps, float32_block_maps(model, block_input), atol=TOL, rtol=0)

    name, kwargs = SMALL["general"]
    model = build(name, **kwargs).to(device)
    images = torch.randn(2, 3, 56, 56, device=device)
    with torch.autocast(device, dtype=dtype):
        maps = AttentionExtractor(model)(images)
    expected = AttentionExtractor(model)(images)
    assert maps.dtype == torch.float32
    # Low precision runs through every block here: close, not equal.
    assert (maps - expected).abs().mean() < 0.05


def test_cpu_bf16_autocast() -> None:
    check_autocast("cpu", torch.bfloat16)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast(dtype: torch.dtype) -> None:
    check_autocast("cuda", dtype)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("case", ["vit_tiny", "eva02_rope"])
def test_cuda_float32_matches_timm_unfused(case: str) -> None:
    name, kwargs, (height, width), _ = MODELS[case]
    model = build(name, **kwargs).cuda()
    images = torch.randn(2, 3, height, width, device="cuda")
    maps = AttentionExtractor(model)(images)
    grid = model.patch_embed.grid_size
    expected = reference_maps(unfused_attention(model, images), num_prefix_tokens=1, grid=grid)
    torch.testing.assert_close(maps, expected, atol=1e-3, rtol=0)  # TF32 matmuls may be on


# --- behaviour: a supervised model attends to what decides its class ------------------------------

IMAGE, PATCH, SQUARE = 32, 4, 8


def square_images(count: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Noisy images of three classes: no square (0), a bright square with horizontal (1) or
    vertical (2) stripes at a random place.

    The empty class makes the model find the square in both striped classes: with two
    classes it could detect one pattern and call every other image the second class without
    looking at its square. The background level varies from image to image, so the image
    mean tells nothing.

    Returns:
        images (count, 1, 32, 32), labels (count,), inside (count, 32, 32) bool.
    """
    background = 0.25 + 0.5 * torch.rand(count, 1, 1, generator=gen)
    noise = 0.1 * torch.randn(count, IMAGE, IMAGE, generator=gen)
    labels = torch.randint(0, 3, (count,), generator=gen)
    top, left = torch.randint(0, IMAGE - SQUARE + 1, (2, count, 1, 1), generator=gen)
    rows = torch.arange(IMAGE).view(1, IMAGE, 1)
    cols = torch.arange(IMAGE).view(1, 1, IMAGE)
    inside = (rows >= top) & (rows < top + SQUARE) & (cols >= left) & (cols < left + SQUARE)
    inside &= (labels > 0).view(count, 1, 1)
    stripes = torch.where(labels.view(count, 1, 1) == 1, rows % 2, cols % 2) * 2 - 1
    square = (0.3 + 0.2 * stripes) * inside
    return (background + noise + square)[:, None], labels, inside


def test_supervised_maps_concentrate_on_the_deciding_square() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=IMAGE,
        patch_size=PATCH,
        in_chans=1,
        embed_dim=64,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
        num_classes=3,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    # Small ops: one thread costs ~1.5x on an idle machine, but intra-op threads spinning on
    # a busy one made this loop 10-20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(200):
            images, labels, _ = square_images(32, gen)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)

    images, labels, inside = square_images(384, gen)
    model.eval()
    with torch.no_grad():
        accuracy = (model(images).argmax(dim=1) == labels).float().mean()
    maps = AttentionExtractor(model, normalize="none")(images)[labels > 0]
    coverage = F.avg_pool2d(inside[labels > 0, None].float(), PATCH)[:, 0]  # patch share inside

    mass_inside = (maps * coverage).sum(dim=(1, 2)) / maps.sum(dim=(1, 2))
    peak = maps.flatten(1).argmax(dim=1)
    peak_on_square = coverage.flatten(1).gather(1, peak[:, None]).squeeze(1) > 0
    assert accuracy > 0.95
    # The square is 1/16 of the image and touches about 1/10 of the patches. Seeds 0-3 gave
    # 13-15x that share of the map mass and the peak on the square for every image.
    assert mass_inside.mean() > 5 * SQUARE**2 / IMAGE**2
    assert peak_on_square.float().mean() > 0.9


# --- MAE wrappers: facebookresearch/mae and lightly (issue 10) ----------------------------------


def mae_replica_pair() -> tuple[nn.Module, nn.Module]:
    """A replica of facebookresearch/mae's MaskedAutoencoderViT, sharpened, and a timm ViT
    loaded with its encoder weights (MAE's own conversion: same names, cls row first)."""
    from mae_replica import mae_vit_tiny

    torch.manual_seed(0)
    mae = sharpen(mae_vit_tiny(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4))
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
        depth=2, num_heads=4, num_classes=0,
    )  # fmt: skip
    encoder = {k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder", "mask"))}
    vit.load_state_dict(encoder)
    return mae, vit.eval()


def mae_unfused_attention(mae: nn.Module, images: Tensor, block: int = -1) -> Tensor:
    """(B, heads, N, N) softmax of an MAE block on every patch, unshuffled, timm's unfused
    branch: the cls token with its position row, then the patches in patch order."""
    attn = mae.blocks[block].attn
    seen: list[Tensor] = []
    handle = attn.attn_drop.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    flags = {m: m.fused_attn for m in mae.modules() if hasattr(m, "fused_attn")}
    try:
        for module in flags:
            module.fused_attn = False
        with torch.no_grad():
            x = mae.patch_embed(images) + mae.pos_embed[:, 1:]
            x = torch.cat([(mae.cls_token + mae.pos_embed[:, :1]).expand(len(x), -1, -1), x], 1)
            for module in mae.blocks:
                x = module(x)
    finally:
        handle.remove()
        for module, flag in flags.items():
            module.fused_attn = flag
    return seen[block].float()


@pytest.mark.parametrize("block", [-1, 0])
def test_mae_maps_match_the_unfused_reference_in_patch_order(block: int) -> None:
    from maskkit.integrations.mae import MAEAdapter

    mae, vit = mae_replica_pair()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    attn = mae_unfused_attention(mae, images, block)
    assert_peaked(attn)
    expected = reference_maps(attn, num_prefix_tokens=1, grid=(4, 4))
    maps = AttentionExtractor(mae, block=block)(images)
    torch.testing.assert_close(maps, expected, rtol=0, atol=TOL)
    # Patch order: the same maps as timm's ViT with the MAE's weights, which never shuffles.
    torch.testing.assert_close(maps, AttentionExtractor(vit, block=block)(images), rtol=0, atol=TOL)
    # The adapter has the MAE's layout and modules, so it reads the same.
    assert torch.equal(AttentionExtractor(MAEAdapter(mae), block=block)(images), maps)
    assert hook_counts(mae) == 0


def test_mae_maps_do_not_depend_on_the_rng_and_capture_refuses_mae() -> None:
    mae, _ = mae_replica_pair()
    images = torch.randn(2, 3, 32, 32)
    extractor = AttentionExtractor(mae)
    torch.manual_seed(0)
    first = extractor(images)
    torch.manual_seed(1)
    assert torch.equal(extractor(images), first)  # nothing random: no masking inside
    with pytest.raises(TypeError, match="shuffled order"), extractor.capture():
        mae(images, mask_ratio=0.0)
    assert hook_counts(mae) == 0


def lightly_backbone() -> tuple[nn.Module, nn.Module]:
    pytest.importorskip("lightly")
    from lightly.models.modules import MaskedVisionTransformerTIMM

    vit = build("vit_tiny_patch16_224", **TINY)
    backbone = MaskedVisionTransformerTIMM(vit=vit, weight_initialization="skip")
    sharpen(backbone, score_std=8.0)  # lightly re-initialises the position table (sin-cos)
    return backbone.eval(), vit


def test_lightly_backbone_maps_match_timm_unfused() -> None:
    backbone, vit = lightly_backbone()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    attn = unfused_attention(vit, images)
    assert_peaked(attn)
    expected = reference_maps(attn, num_prefix_tokens=1, grid=(2, 2))
    maps = AttentionExtractor(backbone)(images)
    torch.testing.assert_close(maps, expected, rtol=0, atol=TOL)
    # The capture form reads a forward over every token (no idx_keep).
    with AttentionExtractor(backbone).capture() as captured:
        backbone.encode(images)
    torch.testing.assert_close(captured.maps, maps, rtol=0, atol=TOL)
    assert hook_counts(backbone) == 0


def test_hugging_face_models_raise_a_clear_error() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTMAEConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=64,
    )  # fmt: skip
    with pytest.raises(TypeError, match="Hugging Face models .* output_attentions"):
        AttentionExtractor(transformers.ViTMAEForPreTraining(config))
