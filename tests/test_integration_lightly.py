"""maskkit.integrations.lightly against the installed lightly's MAE pieces (issue 10).

The reference is lightly's MAE example (lightly-ai/lightly, ``examples/pytorch/mae.py``):
``utils.random_token_mask`` over the cls token and the patches,
``MaskedVisionTransformerTIMM.encode(images, idx_keep=...)``, a decoder over all tokens,
predictions at ``idx_mask`` and targets at ``idx_mask - 1``, ``nn.MSELoss``. Both of its
decoder patterns are covered: ``MaskedVisionTransformerDecoderTIMM`` with an outside
embedding and head (lightly 1.6) and the deprecated ``MAEDecoderTIMM``.
"""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest
import timm
import torch
from torch import Tensor, nn

from maskkit import AttentionExtractor, MaskWeightBank, SAMMasker, split_counts
from maskkit.functional import split_from_priorities

pytest.importorskip("lightly")  # the "lightly" and "dev" extras
from lightly.models import utils
from lightly.models.modules import (
    MaskedVisionTransformerDecoderTIMM,
    MaskedVisionTransformerTIMM,
)
from lightly.models.modules.masked_autoencoder_timm import MAEDecoderTIMM
from lightly.models.modules.masked_vision_transformer_timm import init_weights

from maskkit.integrations.lightly import decode_masked, to_lightly

B, L, P = 3, 16, 8  # 32 x 32 images, 8 x 8 patches


class LightlyMAE(nn.Module):
    """lightly's MAE example, tiny, with either of its decoder patterns."""

    def __init__(self, *, legacy_decoder: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        vit = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=P, embed_dim=32,
            depth=2, num_heads=4, num_classes=0,
        )  # fmt: skip
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.sequence_length = self.backbone.sequence_length
        self.legacy = legacy_decoder
        if legacy_decoder:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # deprecated in lightly 1.6
                self.decoder = MAEDecoderTIMM(
                    num_patches=L, patch_size=P, embed_dim=32, decoder_embed_dim=24,
                    decoder_depth=1, decoder_num_heads=4,
                )  # fmt: skip
            self.decoder_embed, self.prediction_head = self.decoder.embed, self.decoder.predict
        else:
            self.decoder_embed = nn.Linear(32, 24)
            self.decoder = MaskedVisionTransformerDecoderTIMM(
                num_patches=L, embed_dim=24, depth=1, num_heads=4, num_prefix_tokens=1
            )
            self.prediction_head = nn.Linear(24, P * P * 3)
            self.decoder_embed.apply(init_weights)
            self.prediction_head.apply(init_weights)
        # Spread the decoder's inputs so that every term shows up in its outputs.
        with torch.no_grad():
            self.decoder.mask_token.normal_(std=1.0)

    def lightly_decoder(self, x_encoded: Tensor, idx_keep: Tensor, idx_mask: Tensor) -> Tensor:
        """The example's forward_decoder, as lightly writes it."""
        batch_size = x_encoded.shape[0]
        x_decode = self.decoder_embed(x_encoded)
        if self.legacy:
            x_masked = utils.repeat_token(
                self.decoder.mask_token, (batch_size, self.sequence_length)
            )
            x_masked = utils.set_at_index(x_masked, idx_keep, x_decode.type_as(x_masked))
            x_decoded = self.decoder.decode(x_masked)
        else:
            x_masked = x_decode.new_zeros(batch_size, self.sequence_length, x_decode.shape[-1])
            x_masked = utils.set_at_index(x_masked, idx_keep, x_decode.type_as(x_masked))
            x_decoded = self.decoder(x_masked, idx_mask=idx_mask)
        return self.prediction_head(utils.get_at_index(x_decoded, idx_mask))

    def lightly_forward(self, images: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor]:
        idx_keep, idx_mask = utils.random_token_mask(
            size=(images.shape[0], self.sequence_length), mask_ratio=mask_ratio
        )
        x_encoded = self.backbone.encode(images=images, idx_keep=idx_keep)
        x_pred = self.lightly_decoder(x_encoded, idx_keep, idx_mask)
        target = utils.get_at_index(utils.patchify(images, P), idx_mask - 1)
        return x_pred, target

    def maskkit_forward(self, images: Tensor, split) -> tuple[Tensor, Tensor]:
        """The drop-in: to_lightly for the encoder, decode_masked for the decoder."""
        idx_keep, idx_mask = to_lightly(split, allow_thrown=True)
        x_encoded = self.backbone.encode(images=images, idx_keep=idx_keep)
        x_pred = self.prediction_head(
            decode_masked(self.decoder, self.decoder_embed(x_encoded), split)
        )
        target = utils.get_at_index(utils.patchify(images, P), idx_mask - 1)
        return x_pred, target


def lightly_noise_split(seed: int, batch: int, num_patches: int, mask_ratio: float):
    """The split of lightly's random_token_mask draws: noise over 1 + L tokens, cls dropped."""
    torch.manual_seed(seed)
    noise = torch.rand(batch, 1 + num_patches)
    return split_from_priorities(noise[:, 1:], split_counts(num_patches, mask_ratio))


def images(seed: int = 1, batch: int = B) -> Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def sam_split(batch: int = B, seed: int = 2):
    weights = torch.rand(batch, 4, 4, generator=torch.Generator().manual_seed(seed))
    return SAMMasker(0.45, 0.30)(batch, L, weights, generator=torch.Generator().manual_seed(seed))


def pixel_patches(indices: Tensor) -> Tensor:
    """(B, 3, 32, 32) bool, True on the pixels of the given (B, N) patches."""
    on = torch.zeros(indices.shape[0], L, dtype=torch.bool)
    on[torch.arange(on.shape[0])[:, None], indices] = True
    return (
        on.view(-1, 4, 1, 4, 1).expand(-1, 4, P, 4, P).reshape(-1, 1, 32, 32).expand(-1, 3, -1, -1)
    )


# --- indices ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "num_patches", "mask_ratio"),
    [(1, 16, 0.75), (4, 49, 0.6), (2, 196, 0.75), (3, 64, 0.0), (2, 576, 0.9)],
)
def test_to_lightly_is_random_token_mask_for_the_same_noise(
    batch: int, num_patches: int, mask_ratio: float
) -> None:
    torch.manual_seed(9)
    idx_keep, idx_mask = utils.random_token_mask((batch, 1 + num_patches), mask_ratio)
    ours = to_lightly(lightly_noise_split(9, batch, num_patches, mask_ratio))
    assert torch.equal(ours[0], idx_keep) and torch.equal(ours[1], idx_mask)


def test_prefix_tokens_are_kept_and_patches_offset() -> None:
    split = sam_split()
    idx_keep, idx_mask = to_lightly(split, num_prefix_tokens=3, allow_thrown=True)
    assert torch.equal(idx_keep[:, :3], torch.arange(3).expand(B, 3))
    assert torch.equal(idx_keep[:, 3:], split.visible + 3)
    assert torch.equal(idx_mask, split.masked + 3)
    # Kept and masked cover every token but the thrown patches (lightly's test invariant).
    covered = torch.cat([idx_keep, idx_mask, split.thrown + 3], dim=1).sort(dim=1).values
    assert torch.equal(covered, torch.arange(3 + L).expand(B, -1))


def test_a_throwing_split_needs_decode_masked() -> None:
    with pytest.raises(ValueError, match="decode_masked"):
        to_lightly(sam_split())


# --- the MAE example, bit for bit ---------------------------------------------------------------


@pytest.mark.parametrize("legacy_decoder", [False, True], ids=["decoder_timm", "mae_decoder_timm"])
def test_uniform_masking_is_the_lightly_examples_forward_bit_for_bit(legacy_decoder: bool) -> None:
    model = LightlyMAE(legacy_decoder=legacy_decoder)
    x = images()
    torch.manual_seed(4)
    pred, target = model.lightly_forward(x, 0.75)
    loss = nn.MSELoss()(pred, target)
    loss.backward()
    their_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ours_pred, ours_target = model.maskkit_forward(x, lightly_noise_split(4, B, L, 0.75))
    ours_loss = nn.MSELoss()(ours_pred, ours_target)
    ours_loss.backward()
    assert torch.equal(ours_pred, pred) and torch.equal(ours_target, target)
    assert torch.equal(ours_loss, loss)
    ours_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert ours_grads.keys() == their_grads.keys()
    # lightly mixes its mask token in at every position (times 0 or 1), maskkit only at the
    # masked ones: the same gradient summed in another order, ~1e-9 apart.
    mask_token = "decoder.mask_token"
    torch.testing.assert_close(ours_grads[mask_token], their_grads[mask_token], rtol=0, atol=1e-8)
    assert all(torch.equal(ours_grads[n], their_grads[n]) for n in their_grads if n != mask_token)


# --- throwing -----------------------------------------------------------------------------------


def test_thrown_patches_have_no_decoder_token() -> None:
    model = LightlyMAE().eval()
    split = sam_split()
    seen: dict[str, tuple[int, ...]] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        seen.setdefault("decoder", tuple(args[0].shape))

    model.decoder.blocks[0].register_forward_pre_hook(hook)
    x = images()
    with torch.no_grad():
        pred, _ = model.maskkit_forward(x, split)
        # Reference: lightly's own decoder dropping the thrown tokens through its idx_keep.
        idx_keep, idx_mask = to_lightly(split, allow_thrown=True)
        x_decode = model.decoder_embed(model.backbone.encode(x, idx_keep=idx_keep))
        full = utils.set_at_index(x_decode.new_zeros(B, 1 + L, 24), idx_keep, x_decode)
        kept_patches = torch.cat([split.visible, split.masked], dim=1).sort(dim=1).values
        idx_decode = torch.cat([torch.zeros(B, 1, dtype=torch.long), kept_patches + 1], dim=1)
        decoded = model.decoder(full, idx_mask=idx_mask, idx_keep=idx_decode)
        rows = (kept_patches[:, None, :] == split.masked[..., None]).long().argmax(-1)
        expected = model.prediction_head(utils.get_at_index(decoded[:, 1:], rows))
    assert seen == {"decoder": (B, 1 + 4 + 7, 24)}
    assert pred.shape == (B, 7, P * P * 3)
    torch.testing.assert_close(pred, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("legacy_decoder", [False, True], ids=["decoder_timm", "mae_decoder_timm"])
def test_thrown_patches_get_zero_gradient_and_leave_the_loss_unchanged(
    legacy_decoder: bool,
) -> None:
    model = LightlyMAE(legacy_decoder=legacy_decoder)
    split = sam_split()
    x = images().requires_grad_()
    pred, target = model.maskkit_forward(x, split)
    loss = nn.MSELoss()(pred, target)
    loss.backward()
    thrown = pixel_patches(split.thrown)
    assert torch.equal(x.grad[thrown], torch.zeros(int(thrown.sum())))
    assert x.grad[pixel_patches(split.masked)].abs().sum() > 0
    changed = x.detach().clone()
    changed[thrown] = torch.randn(int(thrown.sum())) * 5
    with torch.no_grad():
        changed_pred, changed_target = model.maskkit_forward(changed, split)
    assert torch.equal(nn.MSELoss()(changed_pred, changed_target), loss.detach())


def test_decode_masked_rejects_other_modules() -> None:
    with pytest.raises(TypeError, match="not a lightly MAE decoder"):
        decode_masked(nn.Linear(3, 3), torch.zeros(1, 5, 3), sam_split(batch=1))


@pytest.mark.parametrize("legacy_decoder", [False, True])
@pytest.mark.parametrize("prefix", [1, 8])
def test_a_split_over_another_grid_is_named(legacy_decoder: bool, prefix: int) -> None:
    # A 9-patch split on a 16-patch decoder: with 8 "prefix" tokens its table rows used to
    # be split 8 + 9 silently.
    decoder = LightlyMAE(legacy_decoder=legacy_decoder).decoder
    split = SAMMasker(0.45, 0.30)(2, 9, torch.rand(2, 9))
    tokens = torch.zeros(2, prefix + split.visible.shape[1], 24)
    with pytest.raises(ValueError, match="covers 9 patches but .* 17 rows = 1 prefix \\+ 16"):
        decode_masked(decoder, tokens, split)


def test_to_lightly_checks_its_arguments() -> None:
    split = sam_split()
    with pytest.raises(TypeError, match="allow_thrown must be a bool"):
        to_lightly(split, allow_thrown="no")
    with pytest.raises(TypeError, match="split must be a maskkit.MaskSplit"):
        to_lightly(split.labels)


# --- training lightly's MAE with SAM weights ----------------------------------------------------


def test_a_few_steps_of_lightlys_mae_with_sam_weights() -> None:
    model = LightlyMAE()
    data = images(batch=8)
    # AMT-style weights from the backbone itself: cls attention over all patches, unmasked.
    bank = MaskWeightBank(8, (4, 4))
    bank.refresh(AttentionExtractor(model.backbone), [(data, torch.arange(8))], progress=False)
    assert not torch.equal(bank[torch.arange(8)], torch.ones(8, 4, 4))
    masker = SAMMasker(0.45, 0.30)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    before = model.backbone.vit.blocks[0].attn.qkv.weight.detach().clone()
    losses = []
    for step in range(8):
        split = masker(8, L, bank[torch.arange(8)], generator=torch.Generator().manual_seed(step))
        pred, target = model.maskkit_forward(data, split)
        loss = nn.MSELoss()(pred, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert not torch.equal(model.backbone.vit.blocks[0].attn.qkv.weight, before)


def test_missing_lightly_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lightly", None)
    monkeypatch.delitem(sys.modules, "maskkit.integrations.lightly")
    with pytest.raises(ImportError, match=r"pip install 'maskkit\[lightly\]'"):
        importlib.import_module("maskkit.integrations.lightly")
