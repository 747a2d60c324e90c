"""Which timm models maskkit supports: the tested list of docs/guides/timm.md (issue 10).

timm is maskkit's native path: :class:`maskkit.AttentionExtractor` reads the cls
attention of a timm ViT, :func:`maskkit.forward_features_visible` encodes a token subset.
Each row below is one model family, built small; the attention maps themselves are
checked against timm's unfused attention in ``tests/test_attention.py``.
"""

from __future__ import annotations

import pytest
import timm
import torch

from maskkit import AttentionExtractor, SAMMasker, forward_features_visible

# name: (timm model, create_model options, image side, extractor options, token subset works)
SUPPORTED = {
    "vit": ("vit_tiny_patch16_224", {}, 32, {}, True),
    "vit_qk_norm": ("vit_tiny_patch16_224", {"qk_norm": True}, 32, {}, True),
    "vit_dynamic_img_size": ("vit_tiny_patch16_224", {"dynamic_img_size": True}, 32, {}, True),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}, 32, {}, True),
    "deit3_no_embed_class": ("deit3_small_patch16_224", {}, 32, {}, True),
    "vit_reg_tokens": ("vit_tiny_patch16_224", {"reg_tokens": 4}, 32, {}, True),
    "dinov2": ("vit_small_patch14_dinov2", {}, 28, {}, True),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", {}, 28, {}, True),
    "siglip_no_cls_token": (
        "vit_base_patch16_siglip_224",
        {"embed_dim": 64, "num_heads": 2},
        32,
        {"no_cls_token": "mean_query"},
        True,
    ),
    "eva02_rope": ("eva02_tiny_patch14_224", {}, 28, {}, False),
    "beit_rel_bias": ("beit_base_patch16_224", {"embed_dim": 64, "num_heads": 2}, 32, {}, False),
}

UNSUPPORTED = {
    "naflexvit": ("naflexvit_base_patch16_gap", {"embed_dim": 64, "num_heads": 2}, "NaFlexVit"),
    "samvit": (
        "samvit_base_patch16",
        {"embed_dim": 64, "num_heads": 2, "img_size": 64, "global_attn_indexes": (0,)},
        "VisionTransformerSAM",
    ),
    "hiera": ("hiera_tiny_224", {}, "Hiera"),
}


def create(name: str, options: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    if not name.startswith("hiera"):  # Hiera has per-stage depths
        options = {"depth": 1, **options}
    return timm.create_model(name, pretrained=False, num_classes=0, **options).eval()


@pytest.mark.parametrize("case", list(SUPPORTED))
def test_supported_models(case: str) -> None:
    name, options, side, extractor_options, token_subset = SUPPORTED[case]
    model = create(name, {**options, "img_size": side})
    images = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    patch = model.patch_embed.patch_size[0]
    grid = (side // patch, side // patch)
    maps = AttentionExtractor(model, **extractor_options)(images)
    assert maps.shape == (2, *grid) and torch.isfinite(maps).all()
    num_patches = grid[0] * grid[1]
    split = SAMMasker(0.5, 0.25)(2, num_patches, torch.rand(2, num_patches))
    if not token_subset:
        with pytest.raises(TypeError, match="is not a timm VisionTransformer"):
            forward_features_visible(model, images, split.visible)
        return
    with torch.no_grad():
        everything = torch.arange(num_patches).expand(2, -1)
        torch.testing.assert_close(
            forward_features_visible(model, images, everything),
            model.forward_features(images),
            rtol=0,
            atol=1e-5,
        )
        subset = forward_features_visible(model, images, split.visible)
    assert subset.shape == (2, model.num_prefix_tokens + split.visible.shape[1], model.embed_dim)


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_unsupported_models_raise_a_clear_error(case: str) -> None:
    name, options, cls_name = UNSUPPORTED[case]
    model = create(name, options)
    with pytest.raises(TypeError, match=f"timm's {cls_name} is not supported by maskkit"):
        AttentionExtractor(model)
    with pytest.raises(TypeError, match=f"timm's {cls_name} is not supported by maskkit"):
        forward_features_visible(model, torch.zeros(1, 3, 64, 64), None)
