"""maskkit.integrations.hf against the installed transformers' ViTMAE (issue 10)."""

from __future__ import annotations

import importlib
import math
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from maskkit import RandomMasker, SAMMasker, split_counts

pytest.importorskip("transformers")  # the "hf" and "dev" extras
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import ViTMAEEmbeddings

from maskkit.integrations.hf import (
    check_mask_ratio,
    masked_loss,
    noise_from_split,
    pretrain_forward,
)

B, L, P = 3, 16, 8  # 32 x 32 images, 8 x 8 patches


def tiny_config(mask_ratio: float = 0.75, **kwargs: object) -> ViTMAEConfig:
    return ViTMAEConfig(
        image_size=32,
        patch_size=P,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        decoder_hidden_size=24,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=48,
        mask_ratio=mask_ratio,
        **kwargs,
    )


def build(mask_ratio: float = 0.75, seed: int = 0, **kwargs: object) -> ViTMAEForPreTraining:
    torch.manual_seed(seed)
    return ViTMAEForPreTraining(tiny_config(mask_ratio, **kwargs))


def images(seed: int = 1, batch: int = B) -> Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def sam_split(batch: int = B, seed: int = 2):
    weights = torch.rand(batch, 4, 4, generator=torch.Generator().manual_seed(seed))
    # 0.45 / 0.30 of 16: 4 visible, 7 masked, 5 thrown; HF keeps int(16 * 0.25) = 4.
    return SAMMasker(0.45, 0.30)(batch, L, weights, generator=torch.Generator().manual_seed(seed))


def pixel_patches(indices: Tensor) -> Tensor:
    """(B, 3, 32, 32) bool, True on the pixels of the given (B, N) patches."""
    on = torch.zeros(indices.shape[0], L, dtype=torch.bool)
    on[torch.arange(on.shape[0])[:, None], indices] = True
    return (
        on.view(-1, 4, 1, 4, 1).expand(-1, 4, P, 4, P).reshape(-1, 1, 32, 32).expand(-1, 3, -1, -1)
    )


# --- counts: maskkit keeps what ViTMAE keeps ----------------------------------------------------

GRID = [round(0.05 * i, 2) for i in range(20)]  # 0.0, 0.05, ..., 0.95


@pytest.mark.parametrize("num_patches", [16, 49, 64, 196, 256, 576, 784])
def test_visible_count_is_vitmaes_on_the_ratio_grid(num_patches: int) -> None:
    # ViTMAE's own code path: ViTMAEEmbeddings.random_masking with
    # config.mask_ratio = mask_ratio + throw_ratio (issue 10: 30 pairs used to differ).
    embeddings = ViTMAEEmbeddings(tiny_config())
    tokens = torch.zeros(1, num_patches, 1)
    checked = 0
    for mask_ratio in GRID:
        for throw_ratio in GRID:
            total = mask_ratio + throw_ratio
            if total >= 1 or math.isclose(total, 1):
                continue  # rejected by maskkit: nothing would stay visible
            embeddings.config.mask_ratio = total
            kept = embeddings.random_masking(tokens)[0].shape[1]
            if kept == 0:
                with pytest.raises(ValueError, match="no visible patch"):
                    split_counts(num_patches, mask_ratio, throw_ratio)
                continue
            counts = split_counts(num_patches, mask_ratio, throw_ratio)
            assert counts.visible == kept, (num_patches, mask_ratio, throw_ratio)
            assert sum(counts) == num_patches
            checked += 1
    assert checked > 150


# --- the noise makes ViTMAE keep the split ------------------------------------------------------


def test_noise_makes_vitmae_keep_exactly_the_split() -> None:
    model = build().eval()
    split = sam_split()
    check_mask_ratio(model.config, split)
    x = images()
    embeddings = model.vit.embeddings
    noise = noise_from_split(split)
    assert noise.dtype == torch.float32
    with torch.no_grad():
        kept, mask, ids_restore = embeddings(x, noise=noise)
        tokens = embeddings.patch_embeddings(x) + embeddings.position_embeddings[:, 1:]
    assert torch.equal(kept[:, 1:], split.gather_visible(tokens))  # visible, in split order
    assert torch.equal(ids_restore, split.ids_restore)
    assert torch.equal(mask.bool(), ~split.is_visible())  # ViTMAE removes masked and thrown


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_uniform_masking_is_vitmaes_own_forward_bit_for_bit(norm_pix_loss: bool) -> None:
    model = build(norm_pix_loss=norm_pix_loss)
    x = images()
    noise = torch.rand(B, L, generator=torch.Generator().manual_seed(4))
    split = RandomMasker(0.75)(B, L, generator=torch.Generator().manual_seed(4))
    theirs = model(pixel_values=x, noise=noise)
    theirs.loss.backward()
    their_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ours = pretrain_forward(model, x, split)
    ours.loss.backward()
    assert torch.equal(ours.logits, theirs.logits)
    assert torch.equal(ours.loss, theirs.loss)
    assert torch.equal(ours.mask, split.loss_mask()) and torch.equal(ours.mask, theirs.mask)
    assert torch.equal(ours.ids_restore, theirs.ids_restore)
    assert all(
        torch.equal(p.grad, their_grads[n])
        for n, p in model.named_parameters()
        if p.grad is not None
    )


# --- throwing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_thrown_patches_get_zero_gradient_and_leave_the_loss_unchanged(norm_pix_loss: bool) -> None:
    model = build(norm_pix_loss=norm_pix_loss)
    split = sam_split()
    x = images().requires_grad_()
    out = pretrain_forward(model, x, split)
    out.loss.backward()
    thrown = pixel_patches(split.thrown)
    assert torch.equal(x.grad[thrown], torch.zeros(int(thrown.sum())))
    assert x.grad[pixel_patches(split.masked)].abs().sum() > 0
    changed = x.detach().clone()
    changed[thrown] = torch.randn(int(thrown.sum())) * 5
    with torch.no_grad():
        changed_out = pretrain_forward(model, changed, split)
        hf_loss = model(pixel_values=x.detach(), noise=noise_from_split(split)).loss
        changed_hf_loss = model(pixel_values=changed, noise=noise_from_split(split)).loss
    assert torch.equal(changed_out.loss, out.loss.detach())
    assert torch.equal(changed_out.logits, out.logits.detach())
    assert not torch.allclose(changed_hf_loss, hf_loss)  # ViTMAE's own loss counts them


def test_masked_loss_averages_over_the_masked_patches_only() -> None:
    model = build()
    split = sam_split()
    x = images()
    with torch.no_grad():
        out = pretrain_forward(model, x, split)
    per_patch = (out.logits - model.patchify(x)).pow(2).mean(dim=-1)
    expected = per_patch[split.is_masked()].mean()
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-6)
    assert torch.equal(masked_loss(model, x, out.logits, split), out.loss)


# --- errors and wrappers ------------------------------------------------------------------------


def test_a_mask_ratio_that_keeps_another_count_is_an_error() -> None:
    model = build(mask_ratio=0.45)  # keeps 8 of 16; the split has 4 visible
    with pytest.raises(ValueError, match=r"keeps int\(16 \* \(1 - 0.45\)\) = 8 patches"):
        pretrain_forward(model, images(), sam_split())
    with pytest.raises(ValueError, match="split covers 2 images"):
        pretrain_forward(build(), images(), sam_split(batch=2))


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the model under ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, **kwargs: object):
        return self.module(**kwargs)


def test_a_ddp_style_wrapper_is_unwrapped_for_the_config() -> None:
    model = build()
    split = sam_split()
    x = images()
    with torch.no_grad():
        assert torch.equal(
            pretrain_forward(Wrapper(model), x, split).loss, pretrain_forward(model, x, split).loss
        )


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "maskkit.integrations.hf")
    with pytest.raises(ImportError, match=r"pip install 'maskkit\[hf\]'"):
        importlib.import_module("maskkit.integrations.hf")


def test_wrong_models_configs_and_grids_are_named() -> None:
    model, x = build(), images()
    with pytest.raises(TypeError, match="expected a Hugging Face ViTMAEForPreTraining"):
        pretrain_forward(nn.Linear(2, 2), x, sam_split())
    with pytest.raises(TypeError, match="float mask_ratio"):
        check_mask_ratio(object(), sam_split())
    with pytest.raises(TypeError, match="mask_ratio=None"):
        check_mask_ratio(SimpleNamespace(mask_ratio=None), sam_split())
    # A split over 9 patches keeps int(9 * 0.25) = 2 visible: the count check alone passes.
    with pytest.raises(ValueError, match="covers 9 patches but 32 x 32 images .* give 16"):
        pretrain_forward(model, x, RandomMasker(0.75)(B, 9))


def test_nothing_masked_gives_a_zero_loss_not_nan() -> None:
    model = build(mask_ratio=0.0)
    split = RandomMasker(0.0)(B, L)
    with torch.no_grad():
        assert pretrain_forward(model, images(), split).loss.item() == 0.0
