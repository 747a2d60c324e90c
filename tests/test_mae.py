"""maskkit.mae: decoder input with thrown patches, targets, MAE's loss, and the MAE model."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit import MaskSplit, RandomMasker, SAMMasker, gather_tokens
from maskkit.mae import (
    MaskedAutoencoder,
    decoder_tokens,
    patch_targets,
    reconstruction_loss,
    scatter_tokens,
)
from maskkit.patches import patchify, unpatchify

PATCH, SIDE = 8, 32  # a 4 x 4 grid


def tiny_encoder(**kwargs: object) -> timm.models.VisionTransformer:
    torch.manual_seed(0)
    options = dict(patch_size=PATCH, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    options.update(kwargs)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=SIDE, **options)


def tiny_mae(*, norm_pix_loss: bool = False, cls_loss_weight: float = 0.1) -> MaskedAutoencoder:
    return MaskedAutoencoder(
        encoder=tiny_encoder(),
        decoder_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        norm_pix_loss=norm_pix_loss,
        cls_loss_weight=cls_loss_weight,
    ).eval()


def tiny_batch() -> tuple[torch.Tensor, torch.Tensor, MaskSplit]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, SIDE, SIDE, generator=generator)
    weights = torch.rand(3, 16, generator=generator)
    split = SAMMasker(0.45, 0.30)(3, 16, weights, generator=generator)
    return images, torch.tensor([0, 2, 1]), split


def mae_decoder_layout(
    latent: torch.Tensor, mask_token: torch.Tensor, pos: torch.Tensor, split: MaskSplit
) -> torch.Tensor:
    """facebookresearch/mae's forward_decoder input, written out: mask tokens appended,
    un-shuffled with ids_restore, cls token prepended, the (1, 1 + L, D) table added."""
    batch, num_patches = split.ids_shuffle.shape
    width = latent.shape[-1]
    masks = mask_token.repeat(batch, num_patches + 1 - latent.shape[1], 1)
    x = torch.cat([latent[:, 1:], masks], dim=1)
    x = torch.gather(x, 1, split.ids_restore.unsqueeze(-1).repeat(1, 1, width))
    return torch.cat([latent[:, :1], x], dim=1) + pos


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 4), num_patches=st.integers(2, 40), seed=st.integers(0, 2**20))
def test_patch_order_without_throwing_is_maes_decoder_input_exactly(
    batch: int, num_patches: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    split = RandomMasker(0.5)(batch, num_patches, generator=generator)
    latent = torch.randn(batch, 1 + split.visible.shape[1], 8, generator=generator)
    mask_token = torch.randn(1, 1, 8, generator=generator)
    pos = torch.randn(1, 1 + num_patches, 8, generator=generator)  # cls row first, as MAE
    out = decoder_tokens(latent, mask_token, pos, split, num_prefix_tokens=1, order="patch")
    assert torch.equal(out.tokens, mae_decoder_layout(latent, mask_token, pos, split))
    assert torch.equal(out.patches, torch.arange(num_patches).expand(batch, -1))


def test_thrown_patches_get_no_decoder_token_and_orders_agree() -> None:
    generator = torch.Generator().manual_seed(0)
    split = SAMMasker(0.45, 0.30)(2, 16, torch.rand(2, 16, generator=generator))
    num_visible, num_masked = split.visible.shape[1], split.masked.shape[1]
    latent = torch.randn(2, 1 + num_visible, 4, generator=generator)
    mask_token, pos = torch.randn(4), torch.randn(1, 16, 4, generator=generator)
    by_split = decoder_tokens(latent, mask_token, pos, split, num_prefix_tokens=1)
    by_patch = decoder_tokens(latent, mask_token, pos, split, num_prefix_tokens=1, order="patch")
    assert by_split.tokens.shape == (2, 1 + num_visible + num_masked, 4)
    assert torch.equal(by_split.patches, torch.cat([split.visible, split.masked], 1))
    assert torch.equal(by_patch.patches, by_split.patches.sort(1).values)
    assert not (by_patch.patches[:, :, None] == split.thrown[:, None, :]).any()
    # The same rows, reordered: each patch's token carries its own position row.
    for row in range(2):
        for column, patch in enumerate(by_patch.patches[row].tolist()):
            where = by_split.patches[row].tolist().index(patch)
            assert torch.equal(by_patch.tokens[row, 1 + column], by_split.tokens[row, 1 + where])
    assert torch.equal(by_split.tokens[:, 0], latent[:, 0])  # no prefix row in this table
    masked_rows = by_split.tokens[:, 1 + num_visible :]
    assert torch.equal(masked_rows, mask_token + gather_tokens(pos.expand(2, -1, -1), split.masked))


def test_decoder_tokens_name_bad_shapes() -> None:
    split = RandomMasker(0.5)(2, 16)
    latent = torch.randn(2, 9, 4)
    with pytest.raises(ValueError, match=r"fits neither \(1, L, D\) nor \(1, P \+ L, D\)"):
        decoder_tokens(latent, torch.zeros(4), torch.zeros(1, 15, 4), split, num_prefix_tokens=1)
    with pytest.raises(ValueError, match="does not match the split"):
        decoder_tokens(
            latent[:, 1:], torch.zeros(4), torch.zeros(1, 16, 4), split, num_prefix_tokens=1
        )
    with pytest.raises(ValueError, match="share the decoder width"):
        decoder_tokens(latent, torch.zeros(4), torch.zeros(1, 16, 5), split, num_prefix_tokens=1)
    for mask_token in (torch.zeros(5), torch.zeros(2, 4)):
        with pytest.raises(ValueError, match="must hold one token of the decoder width 4"):
            decoder_tokens(latent, mask_token, torch.zeros(1, 16, 4), split, num_prefix_tokens=1)
    with pytest.raises(ValueError, match="order must be one of"):
        decoder_tokens(
            latent, torch.zeros(4), torch.zeros(1, 16, 4), split, num_prefix_tokens=1, order="x"
        )  # type: ignore[arg-type]


def test_targets_loss_and_scatter_follow_mae() -> None:
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 16, 16, generator=generator)
    raw = patch_targets(images, 8)
    assert torch.equal(raw, patchify(images, 8))
    normed = patch_targets(images, 8, norm_pix=True)
    mean, var = raw.mean(-1, keepdim=True), raw.var(-1, keepdim=True)
    assert torch.equal(normed, (raw - mean) / (var + 1.0e-6) ** 0.5)  # MAE's expression
    pred = torch.randn(2, 4, 192, generator=generator)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 0, 1, 1]])
    per_patch = ((pred - raw) ** 2).mean(dim=-1)
    assert torch.equal(reconstruction_loss(pred, raw, mask), (per_patch * mask).sum() / mask.sum())
    assert torch.equal(reconstruction_loss(pred, raw), per_patch.mean())
    with pytest.raises(ValueError, match="one shape"):
        reconstruction_loss(pred[:, :3], raw)
    patches = torch.tensor([[3, 0], [1, 2]])
    rows = gather_tokens(pred, patches)
    full = scatter_tokens(rows, patches, 4, fill=-1.0)
    assert torch.equal(gather_tokens(full, patches), rows)
    assert (full[0, 1:3] == -1).all() and (full[1, [0, 3]] == -1).all()
    assert unpatchify(full, 8, (2, 2)).shape == (2, 3, 16, 16)


def perturb_patches(images: torch.Tensor, patches: torch.Tensor, sample: int) -> torch.Tensor:
    changed = images.clone()
    grid = SIDE // PATCH
    for patch in patches.tolist():
        row, col = divmod(patch, grid)
        # A ramp, not a constant: norm-pix targets ignore a patch's offset.
        ramp = torch.linspace(0, 3, PATCH * PATCH).view(PATCH, PATCH)
        changed[sample, :, row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH] += ramp
    return changed


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_thrown_patches_take_no_part_in_the_model(norm_pix_loss: bool) -> None:
    model = tiny_mae(norm_pix_loss=norm_pix_loss)
    images, targets, split = tiny_batch()
    with torch.no_grad():
        base = model(images, targets, split)
        thrown = model(perturb_patches(images, split.thrown[0], 0), targets, split)
        masked = model(perturb_patches(images, split.masked[0, :1], 0), targets, split)
        visible = model(perturb_patches(images, split.visible[0, :1], 0), targets, split)
    # Thrown pixels reach neither encoder, decoder nor loss: every output is bit-identical.
    for name in ("loss", "recon_loss", "cls_loss", "pred", "logits"):
        assert torch.equal(getattr(thrown, name), getattr(base, name)), name
    # A masked patch is a reconstruction target only: the encoder never sees it.
    assert torch.equal(masked.logits, base.logits) and torch.equal(masked.pred, base.pred)
    assert masked.recon_loss != base.recon_loss
    # A visible patch feeds the encoder, so both the head and the predictions move.
    assert not torch.equal(visible.logits, base.logits)
    assert not torch.equal(visible.pred, base.pred)


def test_thrown_pixels_get_exactly_zero_gradient() -> None:
    model = tiny_mae()
    images, targets, split = tiny_batch()
    images.requires_grad_(True)
    model(images, targets, split).loss.backward()
    grad = patchify(images.grad, PATCH)  # (B, L, p * p * C)
    thrown = gather_tokens(grad, split.thrown)
    assert torch.equal(thrown, torch.zeros_like(thrown))
    assert gather_tokens(grad, split.visible).abs().sum() > 0


def test_decoder_matches_maes_unshuffled_layout() -> None:
    """MAE's layout (tokens put back in patch order with ids_restore, thrown positions then
    dropped); attention is permutation-equivariant, so both must agree."""
    model = tiny_mae()
    images, _, split = tiny_batch()
    with torch.no_grad():
        latent = model.forward_encoder(images, split)
        pred = model.forward_decoder(latent, split)
        x = model.decoder_embed(latent)
        kept = decoder_tokens(
            x, model.mask_token, model.decoder_pos_embed, split, num_prefix_tokens=1, order="patch"
        )
        out = model.decoder_pred(model.decoder_norm(model.decoder_blocks(kept.tokens)))[:, 1:]
        reference = gather_tokens(
            scatter_tokens(out, kept.patches, model.num_patches), split.masked
        )
    torch.testing.assert_close(pred, reference, rtol=1e-4, atol=1e-5)


def test_loss_is_mse_on_masked_patches_plus_weighted_cross_entropy_on_logits() -> None:
    model = tiny_mae(cls_loss_weight=0.1)
    images, targets, split = tiny_batch()
    with torch.no_grad():
        out = model(images, targets, split)
    target = torch.stack([patchify(images, PATCH)[b, split.masked[b]] for b in range(3)])
    torch.testing.assert_close(out.recon_loss, ((out.pred - target) ** 2).mean())
    # Cross-entropy of the raw logits, not of softmax outputs (the released code's bug).
    torch.testing.assert_close(out.cls_loss, F.cross_entropy(out.logits, targets))
    assert not torch.allclose(out.cls_loss, F.cross_entropy(out.logits.softmax(-1), targets))
    torch.testing.assert_close(out.loss, out.recon_loss + 0.1 * out.cls_loss)
    assert out.pred.shape == (3, split.masked.shape[1], PATCH * PATCH * 3)


def test_zero_weight_is_a_plain_mae_with_a_frozen_head() -> None:
    model = tiny_mae(cls_loss_weight=0.0).train()
    images, targets, split = tiny_batch()
    out = model(images, targets, split)
    assert torch.equal(out.loss, out.recon_loss)  # no cross-entropy term at all
    out.loss.backward()
    head = model.encoder.get_classifier()
    assert all(not p.requires_grad and p.grad is None for p in head.parameters())
    assert model.encoder.cls_token.grad is not None  # the encoder itself still learns


def test_model_rejects_encoders_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="global_pool='token'"):
        MaskedAutoencoder(encoder=tiny_encoder(global_pool="avg"))
    with pytest.raises(ValueError, match="multiple of 4"):
        MaskedAutoencoder(encoder=tiny_encoder(), decoder_dim=18)
    with pytest.raises(ValueError, match="cls_loss_weight"):
        MaskedAutoencoder(encoder=tiny_encoder(), cls_loss_weight=-1.0)
    model = tiny_mae()
    images, targets, _ = tiny_batch()
    with pytest.raises(ValueError, match="covers 20 patches but the model has 16"):
        model(images, targets, RandomMasker(0.5)(3, 20))


def test_no_patch_in_the_loss_gives_zero_with_zero_gradient() -> None:
    # MAE's own average is 0 / 0 = NaN when nothing is masked (mask_ratio=0).
    pred = torch.randn(2, 4, 12, requires_grad=True)
    target = torch.randn(2, 4, 12)
    loss = reconstruction_loss(pred, target, torch.zeros(2, 4))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))
    assert reconstruction_loss(pred[:, :0], target[:, :0]).item() == 0.0
    images, targets, _ = tiny_batch()
    out = tiny_mae()(images, targets, RandomMasker(0.0)(3, 16))
    assert out.recon_loss.item() == 0.0 and torch.isfinite(out.loss)


def test_loss_mask_values_and_dtype_are_checked() -> None:
    pred, target = torch.randn(2, 4, 12), torch.randn(2, 4, 12)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 0, 1, float("nan")]])
    with pytest.raises(ValueError, match="finite, non-negative"):
        reconstruction_loss(pred, target, mask)
    with pytest.raises(ValueError, match="finite, non-negative"):
        reconstruction_loss(pred, target, -torch.ones(2, 4))
    loss = reconstruction_loss(pred, target, torch.ones(2, 4, dtype=torch.float64))
    assert loss.dtype == pred.dtype


def test_patch_targets_name_bad_arguments() -> None:
    images = torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match="patch_size must be an int >= 1"):
        patch_targets(images, 0)
    with pytest.raises(ValueError, match="patch_size must be an int >= 1"):
        patch_targets(images, -8)
    with pytest.raises(ValueError, match=r"images must be \(B, C, H, W\)"):
        patch_targets(images[0], 8)
    with pytest.raises(ValueError, match="at least 2 values per patch"):
        patch_targets(images, 1, norm_pix=True)
    assert torch.equal(patch_targets(images, 1), patchify(images, 1))


def test_scatter_refuses_repeated_or_out_of_range_patches() -> None:
    values = torch.randn(2, 2, 3)
    with pytest.raises(ValueError, match="repeats a patch index"):
        scatter_tokens(values, torch.tensor([[1, 1], [0, 2]]), 4)
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\).* from -1 to 2"):
        scatter_tokens(values, torch.tensor([[1, -1], [0, 2]]), 4)
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\).* from 0 to 4"):
        scatter_tokens(values, torch.tensor([[1, 3], [0, 4]]), 4)


def test_targets_and_head_are_checked() -> None:
    images, _, split = tiny_batch()
    for weight in (0.0, 0.1):
        with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\).* 0 to 5"):
            tiny_mae(cls_loss_weight=weight)(images, torch.tensor([0, 5, 1]), split)
        with pytest.raises(ValueError, match=r"targets must be \(3,\) integer class indices"):
            tiny_mae(cls_loss_weight=weight)(images, torch.tensor([0, 1]), split)
    with pytest.raises(ValueError, match="num_classes >= 1"):
        MaskedAutoencoder(encoder=tiny_encoder(num_classes=0))
    with pytest.raises(ValueError, match="finite and >= 0"):
        MaskedAutoencoder(encoder=tiny_encoder(), cls_loss_weight=float("inf"))
