"""Running a timm ViT on the visible tokens; patchify layout."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from maskkit import (
    RandomMasker,
    SAMMasker,
    forward_features_visible,
)
from maskkit.patches import patch_grid, patchify, unpatchify
from maskkit.vit import check_timm_vit, keep_patch_tokens


class KeepGivenPatches(nn.Module):
    """Stands in for timm's ``patch_drop`` so timm's own forward keeps chosen patches."""

    def __init__(self, visible: torch.Tensor, num_prefix_tokens: int) -> None:
        super().__init__()
        self.visible, self.num_prefix_tokens = visible, num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        rows = [patches[row, self.visible[row]] for row in range(x.shape[0])]
        return torch.cat([prefix, torch.stack(rows)], dim=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model_name": "vit_tiny_patch16_224", "img_size": 64},
        {"model_name": "vit_tiny_patch16_224", "img_size": (64, 48), "reg_tokens": 2},
        {"model_name": "vit_tiny_patch16_224", "img_size": 64, "no_embed_class": True},
        {"model_name": "deit_tiny_distilled_patch16_224", "img_size": 64},
    ],
)
def test_visible_forward_matches_timms_forward_with_the_same_patches(kwargs: dict) -> None:
    torch.manual_seed(0)
    name = kwargs.pop("model_name")
    model = timm.create_model(name, pretrained=False, num_classes=3, **kwargs).eval()
    size = (
        kwargs["img_size"] if isinstance(kwargs["img_size"], tuple) else (kwargs["img_size"],) * 2
    )
    images = torch.randn(3, 3, *size)
    num_patches = patch_grid(size, 16)[0] * patch_grid(size, 16)[1]
    with torch.no_grad():
        assert torch.allclose(
            forward_features_visible(model, images, None), model.forward_features(images), atol=1e-5
        )
        split = SAMMasker()(3, num_patches, torch.rand(3, num_patches))
        ours = forward_features_visible(model, images, split.visible)
        model.patch_drop = KeepGivenPatches(split.visible, model.num_prefix_tokens)
        reference = model.forward_features(images)
    assert ours.shape == (3, model.num_prefix_tokens + split.visible.shape[1], model.embed_dim)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_visible_forward_gives_gradients_and_logits() -> None:
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=4, global_pool="avg"
    )
    images = torch.randn(2, 3, 32, 32)
    split = RandomMasker(0.5)(2, 4)
    logits = model.forward_head(forward_features_visible(model, images, split.visible))
    logits.sum().backward()
    assert logits.shape == (2, 4) and model.patch_embed.proj.weight.grad is not None


def test_non_vit_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="lacks patch_embed, num_prefix_tokens, blocks"):
        forward_features_visible(nn.Linear(3, 3), torch.randn(1, 3, 8, 8), None)


def test_eva_is_rejected_for_token_subsets_but_readable_for_attention() -> None:
    # Eva's _pos_embed returns (tokens, rope): run on a subset it would crash later.
    eva = timm.create_model(
        "eva02_tiny_patch14_224", pretrained=False, img_size=28, depth=1, num_classes=0
    )
    with pytest.raises(TypeError, match="Eva is not a timm VisionTransformer"):
        forward_features_visible(eva, torch.randn(1, 3, 28, 28), None)
    check_timm_vit(eva)  # attention maps need less


def test_gradient_checkpointing_and_patch_dropout_follow_timm() -> None:
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=0, patch_drop_rate=0.5
    )
    images = torch.randn(2, 3, 32, 32)
    model.eval()  # patch dropout is off in eval mode
    plain = forward_features_visible(model, images, None)
    model.set_grad_checkpointing(True)
    assert torch.allclose(forward_features_visible(model, images, None), plain, atol=1e-6)
    model.train()
    dropped = forward_features_visible(model, images, None)
    # timm's PatchDropout keeps the prefix token and half of the 4 patches.
    assert dropped.shape == (2, 1 + 2, model.embed_dim)
    dropped.sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_visible_must_match_the_batch() -> None:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
    with pytest.raises(ValueError, match="visible must be"):
        forward_features_visible(model, torch.randn(2, 3, 32, 32), torch.zeros(3, 2).long())
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="repeats a patch index"):
        forward_features_visible(model, images, torch.tensor([[1, 1], [0, 2]]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        forward_features_visible(model, images, torch.tensor([[1, 4], [0, 2]]))
    with pytest.raises(TypeError, match="integer patch indices"):
        forward_features_visible(model, images, torch.ones(2, 4, dtype=torch.bool))


def test_keep_patch_tokens_keeps_prefix_first() -> None:
    x = torch.arange(2 * 6).float().view(2, 6, 1)
    kept = keep_patch_tokens(x, torch.tensor([[3, 0], [1, 2]]), num_prefix_tokens=2)
    assert kept[..., 0].tolist() == [[0, 1, 5, 2], [6, 7, 9, 10]]


def test_patchify_round_trip_and_layout() -> None:
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    # Patch 4 is row 1, column 1 of the 2x3 grid; channels last within a patch.
    assert torch.equal(patches[0, 4].view(4, 4, 3), images[0, :, 4:8, 4:8].permute(1, 2, 0))
    assert torch.equal(unpatchify(patches, 4, (2, 3)), images)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        patchify(torch.randn(1, 3, 10, 12), 4)


def test_patchify_names_a_bad_patch_size() -> None:
    with pytest.raises(ValueError, match="patch_size must be an int >= 1, got 0"):
        patchify(torch.randn(1, 3, 8, 8), 0)
    with pytest.raises(TypeError, match="patch_size must be an int"):
        patchify(torch.randn(1, 3, 8, 8), 4.0)
