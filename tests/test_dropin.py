"""Drop-in examples: maskkit inside an MAE (models_mae.py style) and inside HF ViTMAE."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from maskkit import RandomMasker, SAMMasker

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"maskkit_example_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


dropin_mae = load_example("dropin_mae")


def mae_random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
    """Reference: MAE's random_masking (facebookresearch/mae, models_mae.py) as specified:
    keep the int(L * (1 - r)) patches of smallest noise in ascending-noise order; mask is
    1 on removed patches; ids_restore = argsort(ids_shuffle)."""
    batch, length, _ = x.shape
    len_keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    keep = ids_shuffle[:, :len_keep]
    x_masked = x[torch.arange(batch)[:, None], keep]
    mask = torch.ones(batch, length).scatter_(1, keep, 0.0)
    return x_masked, mask, torch.argsort(ids_shuffle, dim=1)


def mae_patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """Reference: MAE's patchify ((p, q, c) order within a patch), square images."""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)


# ---------------------------------------------------------------- MAE drop-in


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 4),
    length=st.integers(1, 50),
    dim=st.integers(1, 5),
    mask_ratio=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**31),
)
def test_random_masker_reproduces_mae_random_masking_exactly(
    batch: int, length: int, dim: int, mask_ratio: float, seed: int
) -> None:
    assume(int(length * (1 - mask_ratio)) >= 1)
    x = torch.randn(batch, length, dim)
    # Same RNG state: MAE draws torch.rand(B, L), and so does RandomMasker.
    noise = torch.rand(batch, length, generator=torch.Generator().manual_seed(seed))
    split = RandomMasker(mask_ratio)(batch, length, generator=torch.Generator().manual_seed(seed))
    expected = mae_random_masking(x, mask_ratio, noise)
    for ours, theirs in zip(dropin_mae.masking_outputs(x, split), expected, strict=True):
        assert torch.equal(ours, theirs)


def mae_unshuffle_decoder(model, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """Reference: MAE's forward_decoder (append mask tokens, un-shuffle with ids_restore,
    add the full position embedding), on the example model's weights. (B, L, p*p*C)."""
    x = model.decoder_embed(latent)
    batch, length = ids_restore.shape
    mask_tokens = model.mask_token.repeat(batch, length + 1 - x.shape[1], 1)
    tokens = torch.cat([x[:, 1:], mask_tokens], dim=1)
    tokens = torch.gather(tokens, 1, ids_restore[..., None].repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1], tokens + model.decoder_pos_embed], dim=1)
    for block in model.decoder_blocks:
        x = block(x)
    return model.decoder_pred(model.decoder_norm(x))[:, 1:]


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_without_throwing_the_decoder_and_loss_are_maes(norm_pix_loss: bool) -> None:
    torch.manual_seed(0)
    model = dropin_mae.MaskedAutoencoder(norm_pix_loss=norm_pix_loss).eval()
    imgs = torch.rand(3, 3, 32, 32)
    split = RandomMasker(0.75)(3, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        latent = model.forward_encoder(imgs, split)
        pred = model.forward_decoder(latent, split)
        full = mae_unshuffle_decoder(model, latent, split.ids_restore)
        loss, _ = model(imgs, split)
    masked_rows = full[torch.arange(3)[:, None], split.masked]
    torch.testing.assert_close(pred, masked_rows, rtol=1e-5, atol=1e-5)
    # MAE's forward_loss: per-patch MSE averaged with the (B, L) mask.
    target = mae_patchify(imgs, 4)
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (
            target.var(-1, keepdim=True) + 1e-6
        ) ** 0.5
    mask = split.mask()
    expected = (((full - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def sam_split_for(images_count: int):
    weights = torch.rand(images_count, 8, 8, generator=torch.Generator().manual_seed(3))
    return SAMMasker(0.45, 0.30)(
        images_count, 64, weights, generator=torch.Generator().manual_seed(4)
    )


def test_thrown_patches_are_absent_from_encoder_decoder_and_loss() -> None:
    torch.manual_seed(0)
    model = dropin_mae.MaskedAutoencoder().eval()
    split = sam_split_for(2)
    n_visible, n_masked = split.visible.shape[1], split.masked.shape[1]
    assert (n_visible, n_masked, split.thrown.shape[1]) == (16, 28, 20)
    seen: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, inputs) -> None:
            seen.setdefault(name, tuple(inputs[0].shape))

        return hook

    model.blocks[0].register_forward_pre_hook(record("encoder"))
    model.decoder_blocks[0].register_forward_pre_hook(record("decoder"))
    imgs = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        loss, pred = model(imgs, split)
    assert seen == {"encoder": (2, 1 + n_visible, 64), "decoder": (2, 1 + n_visible + n_masked, 48)}
    assert pred.shape == (2, n_masked, 48)

    def perturbed(group: torch.Tensor) -> torch.Tensor:
        patches = mae_patchify(imgs, 4).clone()
        patches[torch.arange(2)[:, None], group] += 0.5
        # Back to images: the inverse of mae_patchify.
        return torch.einsum("nhwpqc->nchpwq", patches.reshape(2, 8, 8, 4, 4, 3)).reshape(
            2, 3, 32, 32
        )

    with torch.no_grad():
        loss_thrown, pred_thrown = model(perturbed(split.thrown), split)
        loss_masked, pred_masked = model(perturbed(split.masked), split)
        _, pred_visible = model(perturbed(split.visible), split)
    assert torch.equal(pred_thrown, pred) and torch.equal(loss_thrown, loss)
    assert torch.equal(pred_masked, pred) and not torch.allclose(loss_masked, loss)
    assert not torch.allclose(pred_visible, pred)
    # The loss is the MSE over exactly the masked patches.
    target = mae_patchify(imgs, 4)[torch.arange(2)[:, None], split.masked]
    torch.testing.assert_close(loss, ((pred - target) ** 2).mean())


def test_mae_example_trains_and_sam_masks_the_lesion(tmp_path: Path) -> None:
    result = dropin_mae.main(
        ["--steps", "14", "--warmup_steps", "10", "--num_samples", "48", "--out", str(tmp_path)]
    )
    losses = result["losses"]
    assert len(losses) == 14 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[7:10]) < 0.5 * sum(losses[:3])  # random-masking phase learns
    rates = result["lesion_hit_rate"]
    # Oracle weights: every lesion patch (at most 7 here) is among the 28 masked ones.
    assert rates["sam"] == 1.0
    assert 0.5 < rates["random"] < 0.95  # about the mask ratio, 0.75
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks_random.png", "masks_sam.png"]


# ---------------------------------------------------------------- HF ViTMAE drop-in


@pytest.fixture(scope="module")
def dropin_hf() -> ModuleType:
    pytest.importorskip("transformers")  # an optional dependency (the "hf" and "dev" extras)
    return load_example("dropin_hf_vitmae")


@pytest.fixture(scope="module")
def hf_model(dropin_hf):
    torch.manual_seed(0)
    return dropin_hf.build_model(mask_ratio=0.75).eval()


def test_hf_masks_exactly_the_random_split(dropin_hf, hf_model) -> None:
    images = torch.rand(3, 3, 32, 32)
    split = RandomMasker(0.75)(3, 64, generator=torch.Generator().manual_seed(5))
    dropin_hf.check_keeps_visible(hf_model.config, split)
    with torch.no_grad():
        out = hf_model(pixel_values=images, noise=dropin_hf.noise_for_split(split))
    assert torch.equal(out.mask, split.mask())
    assert torch.equal(out.mask.bool(), split.is_masked())
    assert torch.equal(out.ids_restore, split.ids_restore)
    # Nothing thrown: the masked-only loss is HF's own loss.
    torch.testing.assert_close(dropin_hf.masked_loss(hf_model, images, out.logits, split), out.loss)


def test_hf_keeps_exactly_the_sam_visible_set(dropin_hf, hf_model) -> None:
    images = torch.rand(2, 3, 32, 32)
    split = sam_split_for(2)
    dropin_hf.check_keeps_visible(hf_model.config, split)
    noise = dropin_hf.noise_for_split(split)
    assert torch.equal(torch.argsort(noise, dim=1)[:, :16], split.visible)
    with torch.no_grad():
        out = hf_model(pixel_values=images, noise=noise)
        embedded, _, _ = hf_model.vit.embeddings(images, noise=noise)
        tokens = hf_model.vit.embeddings.patch_embeddings(images)
        tokens = tokens + hf_model.vit.embeddings.position_embeddings[:, 1:]
    # HF removes masked and thrown patches alike: it cannot throw.
    assert torch.equal(out.mask.bool(), ~split.is_visible())
    assert torch.equal(out.ids_restore, split.ids_restore)
    # The encoder's patch tokens are exactly the visible ones, in split.visible order.
    assert torch.equal(embedded[:, 1:], split.gather_visible(tokens))


def test_hf_masked_loss_ignores_thrown_patches(dropin_hf, hf_model) -> None:
    images = torch.rand(2, 3, 32, 32)
    split = sam_split_for(2)
    noise = dropin_hf.noise_for_split(split)
    changed = images.clone()
    thrown = split.is_thrown().view(2, 1, 8, 1, 8, 1).expand(2, 3, 8, 4, 8, 4).reshape(2, 3, 32, 32)
    changed[thrown] = 1.0 - changed[thrown]
    with torch.no_grad():
        out = hf_model(pixel_values=images, noise=noise)
        out_changed = hf_model(pixel_values=changed, noise=noise)
    assert torch.equal(out.logits, out_changed.logits)  # thrown pixels never enter the model
    ours = dropin_hf.masked_loss(hf_model, images, out.logits, split)
    ours_changed = dropin_hf.masked_loss(hf_model, changed, out_changed.logits, split)
    assert torch.equal(ours, ours_changed)
    assert not torch.allclose(out.loss, out_changed.loss)  # HF's own loss includes them
    per_patch = ((out.logits - mae_patchify(images, 4)) ** 2).mean(-1)
    expected = per_patch[torch.arange(2)[:, None], split.masked].mean()
    torch.testing.assert_close(ours, expected)


def test_hf_mask_ratio_must_match_the_visible_count(dropin_hf) -> None:
    model = dropin_hf.build_model(mask_ratio=0.45)
    with pytest.raises(ValueError, match="mask_ratio \\+ throw_ratio"):
        dropin_hf.check_keeps_visible(model.config, sam_split_for(1))


def test_hf_example_runs(dropin_hf) -> None:
    result = dropin_hf.main(["--steps", "6", "--num_samples", "32"])
    assert len(result["losses"]) == 6 and all(torch.isfinite(torch.tensor(result["losses"])))
    assert result["losses"][-1] < result["losses"][0]
    assert result["lesion_hit_rate"] == 1.0
