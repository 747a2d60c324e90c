"""maskkit.integrations.mae against a replica of facebookresearch/mae's MaskedAutoencoderViT.

The replica (``tests/mae_replica.py``) has MAE's attribute names, position-table layout
and ``random_masking`` semantics; with nothing thrown the adapter must give MAE's own
loss, predictions and gradients bit for bit (issue 10).
"""

from __future__ import annotations

import pytest
import torch
from mae_replica import MaskedAutoencoderViT, mae_vit_tiny
from torch import Tensor, nn

from maskkit import AttentionExtractor, MaskWeightBank, RandomMasker, SAMMasker, align_weights
from maskkit.integrations.mae import MAEAdapter
from maskkit.patches import patchify

B, L, P = 3, 16, 8  # 32 x 32 images, 8 x 8 patches: a 4 x 4 grid


def build(seed: int = 0, **kwargs: object) -> MaskedAutoencoderViT:
    torch.manual_seed(seed)
    return mae_vit_tiny(**kwargs)


def images(seed: int = 1, batch: int = B) -> Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def sam_split(batch: int = B, seed: int = 2):
    weights = torch.rand(batch, 4, 4, generator=torch.Generator().manual_seed(seed))
    # 0.45 / 0.30 of 16: 4 visible, 7 masked, 5 thrown.
    return SAMMasker(0.45, 0.30)(batch, L, weights, generator=torch.Generator().manual_seed(seed))


def pixel_patches(split_indices: Tensor) -> Tensor:
    """(B, 3, 32, 32) bool, True on the pixels of the given (B, N) patches."""
    on = torch.zeros(split_indices.shape[0], L, dtype=torch.bool)
    on[torch.arange(on.shape[0])[:, None], split_indices] = True
    return (
        on.view(-1, 4, 1, 4, 1).expand(-1, 4, P, 4, P).reshape(-1, 1, 32, 32).expand(-1, 3, -1, -1)
    )


def record_input_shapes(**modules: nn.Module) -> dict[str, tuple[int, ...]]:
    """The input shape each module sees first, by name (forward pre-hooks)."""
    seen: dict[str, tuple[int, ...]] = {}
    for name, module in modules.items():

        def hook(module: nn.Module, args: tuple, name: str = name) -> None:
            seen.setdefault(name, tuple(args[0].shape))

        module.register_forward_pre_hook(hook)
    return seen


# --- the adapter is the MAE ---------------------------------------------------------------------


def test_the_adapter_shares_the_maes_parameters_and_checkpoints() -> None:
    mae = build()
    adapter = MAEAdapter(mae)
    assert list(adapter.state_dict()) == list(mae.state_dict())
    ours = dict(adapter.named_parameters())
    for name, param in mae.named_parameters():
        assert ours[name] is param
    # MAE's checkpoints load both ways, strictly (misc.save_model / load_model, fine-tuning).
    other = build(seed=7)
    MAEAdapter(other).load_state_dict(adapter.state_dict())
    assert all(
        torch.equal(a, b) for a, b in zip(other.state_dict().values(), mae.state_dict().values())
    )
    adapter.load_state_dict(build(seed=8).state_dict())
    assert torch.equal(mae.cls_token, build(seed=8).cls_token)
    adapter.double()  # moving or casting the adapter moves the MAE's own tensors
    assert mae.cls_token.dtype == mae.blocks[0].attn.qkv.weight.dtype == torch.float64


@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("how", ["mask_ratio", "positional", "split"])
def test_uniform_masking_is_maes_forward_bit_for_bit(norm_pix_loss: bool, how: str) -> None:
    mae = build(norm_pix_loss=norm_pix_loss)
    adapter = MAEAdapter(mae)
    x = images()
    torch.manual_seed(11)
    loss, pred, mask = mae(x, mask_ratio=0.75)
    if how == "split":  # a masker with a generator draws MAE's noise for the same seed
        split = RandomMasker(0.75)(B, L, generator=torch.Generator().manual_seed(11))
        ours = adapter(x, split)
    else:  # MAE's own call: the adapter draws torch.rand(B, L) from the global RNG
        torch.manual_seed(11)
        ours = adapter(x, mask_ratio=0.75) if how == "mask_ratio" else adapter(x, 0.75)
    assert torch.equal(ours[0], loss)
    assert torch.equal(ours[1], pred)
    assert torch.equal(ours[2].loss_mask(), mask)


def test_uniform_masking_gradients_are_maes() -> None:
    mae = build(norm_pix_loss=True)
    adapter = MAEAdapter(mae)
    x = images()
    torch.manual_seed(3)
    mae(x)[0].backward()
    theirs = {name: p.grad.clone() for name, p in mae.named_parameters() if p.grad is not None}
    mae.zero_grad()
    torch.manual_seed(3)
    adapter(x)[0].backward()
    ours = {name: p.grad for name, p in adapter.named_parameters() if p.grad is not None}
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


def test_uniform_masking_is_maes_under_autocast() -> None:
    # MAE's decoder concatenates a float32 mask token and adds a float32 position table,
    # which promotes its stream under autocast; the adapter must promote the same way.
    mae = build()
    adapter = MAEAdapter(mae)
    x = images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(5)
        loss, pred, _ = mae(x)
        torch.manual_seed(5)
        ours_loss, ours_pred, _ = adapter(x)
    assert pred.dtype == ours_pred.dtype == torch.bfloat16
    assert torch.equal(ours_loss, loss) and torch.equal(ours_pred, pred)


# --- throwing -----------------------------------------------------------------------------------


def reference_decoder(mae: MaskedAutoencoderViT, latent: Tensor, split) -> Tensor:
    """Per sample, MAE's decoder on the cls token, the visible tokens and the masked
    patches' mask tokens only, in patch order; thrown patches dropped by boolean indexing."""
    rows = []
    embedded = mae.decoder_embed(latent)
    for b in range(latent.shape[0]):
        tokens = mae.mask_token[0].expand(L, -1).clone()
        tokens[split.visible[b]] = embedded[b, 1:]
        tokens = tokens + mae.decoder_pos_embed[0, 1:]
        keep = ~split.is_thrown()[b]
        x = torch.cat([embedded[b, :1] + mae.decoder_pos_embed[0, :1], tokens[keep]])[None]
        for block in mae.decoder_blocks:
            x = block(x)
        out = torch.zeros(L, mae.decoder_pred.out_features)
        out[keep] = mae.decoder_pred(mae.decoder_norm(x))[0, 1:]
        rows.append(out)
    return torch.stack(rows)


def test_thrown_patches_have_no_token_in_encoder_or_decoder() -> None:
    mae = build().eval()
    adapter = MAEAdapter(mae)
    split = sam_split()
    assert (split.visible.shape[1], split.masked.shape[1], split.thrown.shape[1]) == (4, 7, 5)
    seen = record_input_shapes(encoder=mae.blocks[0], decoder=mae.decoder_blocks[0])
    x = images()
    with torch.no_grad():
        loss, pred, returned = adapter(x, split)
        latent = adapter.forward_encoder(x, split)
        expected = reference_decoder(mae, latent, split)
    assert returned is split
    assert seen == {"encoder": (B, 1 + 4, 32), "decoder": (B, 1 + 4 + 7, 24)}
    assert pred.shape == (B, L, P * P * 3)
    assert torch.equal(pred[split.is_thrown()], torch.zeros(B * 5, P * P * 3))
    torch.testing.assert_close(pred, expected, rtol=0, atol=1e-6)
    # The loss is the MSE over exactly the masked patches.
    target = patchify(x, P)
    masked = split.is_masked()
    torch.testing.assert_close(
        loss, (pred[masked] - target[masked]).pow(2).mean(), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_thrown_patches_get_zero_gradient_and_leave_the_loss_unchanged(norm_pix_loss: bool) -> None:
    adapter = MAEAdapter(build(norm_pix_loss=norm_pix_loss))
    split = sam_split()
    x = images().requires_grad_()
    loss, pred, _ = adapter(x, split)
    loss.backward()
    thrown, masked, visible = (
        pixel_patches(i) for i in (split.thrown, split.masked, split.visible)
    )
    assert torch.equal(x.grad[thrown], torch.zeros(int(thrown.sum())))
    assert x.grad[masked].abs().min() >= 0 and x.grad[masked].abs().sum() > 0
    assert x.grad[visible].abs().sum() > 0
    changed = x.detach().clone()
    changed[thrown] = torch.randn(int(thrown.sum())) * 5
    with torch.no_grad():
        changed_loss, changed_pred, _ = adapter(changed, split)
    assert torch.equal(changed_loss, loss.detach()) and torch.equal(changed_pred, pred.detach())


def test_thrown_rows_take_the_fill_value() -> None:
    adapter = MAEAdapter(build(), fill=-1.5)
    split = sam_split()
    with torch.no_grad():
        loss, pred, _ = adapter(images(), split)
        plain_loss, plain_pred, _ = MAEAdapter(adapter)(images(), split)  # fill 0, same modules
    assert torch.equal(pred[split.is_thrown()], torch.full((B * 5, 192), -1.5))
    assert torch.equal(loss, plain_loss)
    assert torch.equal(pred[~split.is_thrown()], plain_pred[~split.is_thrown()])


def test_predictions_feed_maes_unpatchify_and_its_picture() -> None:
    mae = build()
    adapter = MAEAdapter(mae)
    split = sam_split()
    x = images()
    with torch.no_grad():
        _, pred, _ = adapter(x, split)
    y = mae.unpatchify(pred)
    assert torch.equal(adapter.unpatchify(pred), y) and y.shape == x.shape
    assert torch.equal(adapter.patchify(x), mae.patchify(x))
    # MAE's notebook pastes the visible patches over the reconstruction; with throwing,
    # paste by split.is_visible() and show the masked patches' predictions.
    visible = adapter.unpatchify(split.is_visible().float()[..., None].expand(-1, -1, 192))
    masked = adapter.unpatchify(split.is_masked().float()[..., None].expand(-1, -1, 192))
    paste = x * visible + y * masked
    assert torch.equal(paste[pixel_patches(split.thrown)], torch.zeros(B * 5 * 192))


# --- training with SAM weights ------------------------------------------------------------------


def test_a_few_sam_steps_train_the_mae_through_the_adapter() -> None:
    mae = build()
    adapter = MAEAdapter(mae)
    data = images(batch=8)
    bank = MaskWeightBank(8, (4, 4))
    bank.refresh(AttentionExtractor(mae), [(data, torch.arange(8))], progress=False)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-3)
    masker = SAMMasker(0.45, 0.30)
    before = mae.decoder_pred.weight.detach().clone()
    losses = []
    for step in range(6):
        indices = torch.arange(8)
        weights = align_weights(bank[indices], torch.tensor([[0, 0, 32, 32]] * 8), (32, 32), (4, 4))
        split = masker(8, L, weights, generator=torch.Generator().manual_seed(step))
        loss, _, _ = adapter(data, split)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert not torch.equal(mae.decoder_pred.weight, before)  # the MAE itself trained
    assert losses[-1] < losses[0]


# --- errors -------------------------------------------------------------------------------------


def test_position_table_without_the_cls_row_is_an_error() -> None:
    mae = build()
    mae.decoder_pos_embed = nn.Parameter(mae.decoder_pos_embed[:, 1:].clone(), requires_grad=False)
    with pytest.raises(ValueError, match="cls row at index 0"):
        MAEAdapter(mae)


def test_non_mae_models_are_a_type_error() -> None:
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
    with pytest.raises(TypeError, match="lacks .*decoder_embed.*maskkit.mae.MaskedAutoencoder"):
        MAEAdapter(vit)


def test_bad_calls_raise() -> None:
    adapter = MAEAdapter(build())
    x = images()
    with pytest.raises(ValueError, match="split covers 2 images x 16 patches"):
        adapter(x, sam_split(batch=2))
    with pytest.raises(ValueError, match="pass the mask ratio once"):
        adapter(x, 0.5, mask_ratio=0.5)
    with pytest.raises(ValueError, match="only used without a split"):
        adapter(x, sam_split(), mask_ratio=0.5)
    with pytest.raises(TypeError, match="MaskSplit"):
        adapter(x, torch.zeros(3, 16))
    with pytest.raises(ValueError, match="finite"):
        MAEAdapter(build(), fill=float("nan"))
    with pytest.raises(TypeError, match="fill must be a finite float, got str"):
        MAEAdapter(build(), fill="0")


def test_nothing_masked_gives_a_zero_loss_not_nan() -> None:
    # MAE's own forward returns 0 / 0 = NaN at mask_ratio=0.
    with torch.no_grad():
        loss, pred, _ = MAEAdapter(build())(images(), mask_ratio=0.0)
    assert loss.item() == 0.0 and pred.shape[1] == 16
