"""The MSMAE recipes in examples/: model, loss, schedules, scripts end to end, resume, data."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from maskkit import MaskSplit, SAMMasker, patchify, unpatchify

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import engine_finetune  # noqa: E402
import engine_pretrain  # noqa: E402
import main_finetune  # noqa: E402
import main_pretrain  # noqa: E402
import quickstart  # noqa: E402
from models_msmae import (  # noqa: E402
    MSMAE,
    VisibleTokenClassifier,
    create_vit,
    load_pretrained_encoder,
)
from util import checkpoint as checkpoint_util  # noqa: E402
from util.amp import amp_settings  # noqa: E402
from util.log import JsonLinesLog  # noqa: E402
from util.lr_sched import WarmupCosineSchedule  # noqa: E402
from util.optim import build_adamw  # noqa: E402

# 32 px images in 8 px patches: a 4 x 4 grid, 16 patches (4 visible, 7 masked, 5 thrown).
TINY = ["--model", "vit_micro_patch8_64", "--input_size", "32", "--num_workers", "0"]
TINY_DATA = ["--num_train", "32", "--num_val", "16", "--batch_size", "8", "--no_progress"]
TINY_DECODER = ["--decoder_embed_dim", "32", "--decoder_depth", "1", "--decoder_num_heads", "2"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Tiny models on a shared 2-core machine: intra-op threads only add contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pretrain_args(out: Path, *extra: str) -> Any:
    argv = [*TINY, *TINY_DATA, *TINY_DECODER, "--device", "cpu", "--output_dir", str(out)]
    return main_pretrain.get_args_parser().parse_args([*argv, *extra])


def finetune_args(out: Path, *extra: str) -> Any:
    argv = [*TINY, *TINY_DATA, "--device", "cpu", "--output_dir", str(out)]
    return main_finetune.get_args_parser().parse_args([*argv, *extra])


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tiny_msmae(*, norm_pix_loss: bool = False, cls_loss_weight: float = 0.1) -> MSMAE:
    torch.manual_seed(0)
    encoder = create_vit("vit_micro_patch8_64", img_size=32, num_classes=3, global_pool="token")
    model = MSMAE(
        encoder=encoder,
        decoder_dim=32,
        decoder_depth=2,
        decoder_num_heads=2,
        norm_pix_loss=norm_pix_loss,
        cls_loss_weight=cls_loss_weight,
    )
    return model.eval()


def tiny_batch() -> tuple[torch.Tensor, torch.Tensor, MaskSplit]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=generator)
    targets = torch.tensor([0, 1, 2])
    weights = torch.rand(3, 16, generator=generator)
    split = SAMMasker(0.45, 0.30)(3, 16, weights, generator=generator)
    return images, targets, split


def perturb_patches(images: torch.Tensor, patches: torch.Tensor, sample: int) -> torch.Tensor:
    """Add noise to the given patches of one sample, leaving every other pixel unchanged."""
    pixels = patchify(images, 8).clone()
    pixels[sample, patches] += 5.0 * torch.randn_like(pixels[sample, patches])
    return unpatchify(pixels, 8, (4, 4))


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_thrown_patches_take_no_part_in_the_loss(norm_pix_loss: bool) -> None:
    model = tiny_msmae(norm_pix_loss=norm_pix_loss)
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
    assert torch.equal(masked.logits, base.logits)
    assert torch.equal(masked.pred, base.pred)
    assert masked.recon_loss != base.recon_loss
    # A visible patch feeds the encoder, so both the head and the predictions move.
    assert not torch.equal(visible.logits, base.logits)
    assert not torch.equal(visible.pred, base.pred)


def test_decoder_matches_an_unshuffled_mae_decoder() -> None:
    """Reference: MAE's layout (tokens put back in patch order with ids_restore, thrown
    positions then dropped); attention is permutation-equivariant, so both must agree."""
    model = tiny_msmae()
    images, _, split = tiny_batch()
    with torch.no_grad():
        latent = model.forward_encoder(images, split)
        pred = model.forward_decoder(latent, split)
        x = model.decoder_embed(latent)
        prefix, visible = x[:, :1], x[:, 1:]
        batch, num_masked = split.masked.shape
        num_thrown = split.thrown.shape[1]
        mask_tokens = model.mask_token.expand(batch, num_masked + num_thrown, -1)
        full = torch.cat([visible, mask_tokens], dim=1)  # in ids_shuffle order
        full = torch.gather(full, 1, split.ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        full = full + model.decoder_pos_embed  # patch order now
        kept = split.kept()  # sorted non-thrown patches
        tokens = torch.gather(full, 1, kept[..., None].expand(-1, -1, x.shape[-1]))
        out = model.decoder_blocks(torch.cat([prefix, tokens], dim=1))
        out = model.decoder_pred(model.decoder_norm(out))[:, 1:]
        # Rows of `out` follow `kept`; pick the masked patches in split.masked order.
        where = (kept[:, None, :] == split.masked[:, :, None]).float().argmax(-1)
        reference = torch.gather(out, 1, where[..., None].expand(-1, -1, out.shape[-1]))
    torch.testing.assert_close(pred, reference, rtol=1e-4, atol=1e-5)


def test_loss_is_mse_on_masked_patches_plus_weighted_cross_entropy_on_logits() -> None:
    model = tiny_msmae(cls_loss_weight=0.1)
    images, targets, split = tiny_batch()
    with torch.no_grad():
        out = model(images, targets, split)
    target = torch.stack([patchify(images, 8)[b, split.masked[b]] for b in range(3)])
    torch.testing.assert_close(out.recon_loss, ((out.pred - target) ** 2).mean())
    # Cross-entropy of the raw logits, not of softmax outputs (the released code's bug).
    torch.testing.assert_close(out.cls_loss, F.cross_entropy(out.logits, targets))
    assert not torch.allclose(out.cls_loss, F.cross_entropy(out.logits.softmax(-1), targets))
    torch.testing.assert_close(out.loss, out.recon_loss + 0.1 * out.cls_loss)
    assert out.pred.shape == (3, split.masked.shape[1], 8 * 8 * 3)


def test_create_vit_names_an_unknown_model() -> None:
    with pytest.raises(ValueError, match="unknown timm model 'vit_nonexistent'"):
        create_vit("vit_nonexistent", img_size=32, num_classes=2, global_pool="token")


def test_amp_is_refused_on_cpu() -> None:
    with pytest.raises(ValueError, match="--amp bf16 needs a CUDA device"):
        amp_settings("bf16", torch.device("cpu"))
    dtype, scaler = amp_settings("auto", torch.device("cpu"))
    assert dtype is None and not scaler.is_enabled()


def test_msmae_rejects_an_encoder_without_a_cls_head() -> None:
    encoder = create_vit("vit_micro_patch8_64", img_size=32, num_classes=3, global_pool="avg")
    with pytest.raises(ValueError, match="global_pool='token'"):
        MSMAE(encoder=encoder)


def test_visible_token_classifier_with_every_token_is_timm_forward() -> None:
    torch.manual_seed(0)
    vit = create_vit("vit_micro_patch8_64", img_size=32, num_classes=3, global_pool="avg").eval()
    images = torch.randn(2, 3, 32, 32)
    every = torch.arange(16).expand(2, 16)
    with torch.no_grad():
        reference = vit(images)
        torch.testing.assert_close(VisibleTokenClassifier(vit)(images), reference)
        torch.testing.assert_close(VisibleTokenClassifier(vit)(images, every), reference)


def test_load_pretrained_encoder_copies_weights_and_names_bad_keys() -> None:
    state = tiny_msmae().state_dict()
    vit = create_vit("vit_micro_patch8_64", img_size=32, num_classes=5, global_pool="avg")
    load_pretrained_encoder(vit, state)
    for name, value in vit.state_dict().items():
        if not name.startswith(("head.", "fc_norm.")):
            assert torch.equal(value, state[f"encoder.{name}"]), name
    broken = {k: v for k, v in state.items() if k != "encoder.blocks.0.attn.qkv.weight"}
    broken["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight.*extra\.weight"):
        load_pretrained_encoder(vit, broken)
    wrong_size = create_vit("vit_micro_patch8_64", img_size=64, num_classes=5, global_pool="avg")
    with pytest.raises(ValueError, match="pos_embed: checkpoint"):
        load_pretrained_encoder(wrong_size, state)
    with pytest.raises(ValueError, match="no 'encoder"):
        load_pretrained_encoder(vit, vit.state_dict())


# ------------------------------------------------------------------ optimiser, schedule


def test_warmup_cosine_schedule_values() -> None:
    schedule = WarmupCosineSchedule(lr=1.0, min_lr=0.1, warmup_epochs=2, epochs=10)
    assert schedule(0.0) == 0.0
    assert schedule(1.0) == pytest.approx(0.5)
    assert schedule(2.0) == pytest.approx(1.0)
    assert schedule(6.0) == pytest.approx(0.55)  # half-way down the cosine
    assert schedule(10.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="min_lr"):
        WarmupCosineSchedule(lr=0.1, min_lr=1.0, warmup_epochs=0, epochs=1)


def test_layer_decay_groups_follow_mae() -> None:
    vit = create_vit("vit_micro_patch8_64", img_size=32, num_classes=3, global_pool="avg")
    optimizer = build_adamw(vit, lr=1.0, weight_decay=0.05, betas=(0.9, 0.999), layer_decay=0.5)
    by_param = {
        id(p): (group["lr_scale"], group["weight_decay"])
        for group in optimizer.param_groups
        for p in group["params"]
    }
    depth = len(vit.blocks)
    # MAE (util/lr_decay.py): scale = decay ** (depth + 1 - layer_id); embeddings are layer 0,
    # blocks.i layer i + 1, the rest (norm, head) layer depth + 1.
    expected_scale = {
        "cls_token": 0.5 ** (depth + 1),
        "patch_embed.proj.weight": 0.5 ** (depth + 1),
        "blocks.0.attn.qkv.weight": 0.5**depth,
        f"blocks.{depth - 1}.mlp.fc1.weight": 0.5,
        "head.weight": 1.0,
        "fc_norm.weight": 1.0,
    }
    params = dict(vit.named_parameters())
    for name, scale in expected_scale.items():
        assert by_param[id(params[name])][0] == pytest.approx(scale), name
    for name, param in params.items():
        no_decay = param.ndim == 1 or name in ("cls_token", "pos_embed")
        assert by_param[id(param)][1] == (0.0 if no_decay else 0.05), name


def test_pretrain_groups_skip_decay_on_tokens_and_one_dimensional_params() -> None:
    model = tiny_msmae()
    optimizer = build_adamw(model, lr=1.0, weight_decay=0.05, betas=(0.9, 0.95))
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        skip = param.ndim == 1 or name in ("mask_token", "encoder.cls_token", "encoder.pos_embed")
        assert decay[id(param)] == (0.0 if skip else 0.05), name
    assert optimizer.defaults["betas"] == (0.9, 0.95)


# ----------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trips_rng_state_with_weights_only(tmp_path: Path) -> None:
    import random

    import numpy as np

    state = checkpoint_util.get_rng_state()
    checkpoint_util.save_checkpoint(tmp_path / "c.pth", {"rng": [state]})
    first = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint_util.restore_rng(checkpoint_util.load_checkpoint(tmp_path / "c.pth")["rng"], 0)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])
    assert first[2] == again[2]


def test_interrupted_checkpoint_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint.pth"
    checkpoint_util.save_checkpoint(path, {"epoch": 1})

    def failing_save(obj: object, file: Any) -> None:
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_util.save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert checkpoint_util.load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_resumed_log_drops_the_epochs_it_will_train_again(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = JsonLinesLog(path)
    for epoch in range(3):
        log.write({"epoch": epoch, "loss": float(epoch)})
    # The checkpoint of epoch 1 was the last written: the resumed run starts at epoch 2.
    JsonLinesLog(path, start_epoch=2).write({"epoch": 2, "loss": 9.0})
    assert read_log(path) == [
        {"epoch": 0, "loss": 0.0},
        {"epoch": 1, "loss": 1.0},
        {"epoch": 2, "loss": 9.0},
    ]
    JsonLinesLog(path)  # a fresh run starts a fresh log
    assert path.read_text() == ""


# -------------------------------------------------------------------------- engines


def test_non_finite_loss_stops_training() -> None:
    model = tiny_msmae()
    images = torch.full((2, 3, 32, 32), float("nan"))
    loader = [(images, torch.tensor([0, 1]), torch.ones(2, 4, 4), torch.tensor([0, 1]))]
    optimizer = build_adamw(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    with pytest.raises(SystemExit, match="loss is nan"):
        engine_pretrain.train_one_epoch(
            model,
            loader,
            optimizer,
            torch.device("cpu"),
            0,
            torch.amp.GradScaler("cpu", enabled=False),
            masker=SAMMasker(),
            use_weights=True,
            num_patches=16,
            lr_schedule=WarmupCosineSchedule(1e-3, 0.0, 0, 1),
            progress=False,
        )


def test_sam_finetuning_encodes_only_the_visible_quarter() -> None:
    torch.manual_seed(0)
    vit = create_vit("vit_micro_patch8_64", img_size=32, num_classes=3, global_pool="avg")
    seen: list[int] = []
    vit.blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[1]))
    loader = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), torch.rand(2, 4, 4), None)]
    optimizer = build_adamw(vit, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999), layer_decay=0.75)
    for masker, tokens in ((SAMMasker(0.45, 0.30), 1 + 4), (None, 1 + 16)):
        seen.clear()
        engine_finetune.train_one_epoch(
            VisibleTokenClassifier(vit),
            loader,
            optimizer,
            torch.device("cpu"),
            0,
            torch.amp.GradScaler("cpu", enabled=False),
            masker=masker,
            num_patches=16,
            lr_schedule=WarmupCosineSchedule(1e-3, 0.0, 0, 1),
            progress=False,
        )
        assert seen == [tokens]  # cls token + the kept patches
    seen.clear()
    engine_finetune.evaluate(
        VisibleTokenClassifier(vit), loader, torch.device("cpu"), num_classes=3
    )
    assert seen == [1 + 16]  # evaluation always sees every token


def test_classification_report_from_a_known_confusion_matrix() -> None:
    confusion = torch.tensor([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
    report = engine_finetune.classification_report(confusion)
    assert report["acc1"] == pytest.approx(100.0 * 5 / 8)
    assert report["recall"] == [0.75, 0.5, None]
    assert report["confusion"] == confusion.tolist()
    assert report["num_samples"] == 8


# --------------------------------------------------------------------- scripts end to end


def test_pretrain_runs_end_to_end_and_the_loss_decreases(tmp_path: Path) -> None:
    args = pretrain_args(
        tmp_path,
        *("--epochs", "6", "--mask_warmup_epochs", "3", "--refresh_every", "2"),
        *("--warmup_epochs", "1", "--blr", "2e-2"),
    )
    summary = main_pretrain.main(args)
    log = read_log(tmp_path / "log.jsonl")
    assert [r["epoch"] for r in log] == list(range(6))
    assert [r["masking"] for r in log] == ["random"] * 3 + ["weighted"] * 3
    assert log[-1]["recon_loss"] < 0.8 * log[0]["recon_loss"]
    assert sorted(p.name for p in tmp_path.glob("masks_epoch*.png")) == [
        "masks_epoch003.png",
        "masks_epoch005.png",
    ]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["final"] == pytest.approx(summary["final"])
    assert set(saved["lesion_hit_rate"]) == {"attention", "uniform"}
    assert all(0.0 <= v <= 1.0 for v in saved["lesion_hit_rate"].values())
    checkpoint = checkpoint_util.load_checkpoint(tmp_path / "checkpoint.pth")
    assert set(checkpoint) == {
        *("model", "optimizer", "scaler", "lr_schedule", "bank", "epoch", "rng", "args"),
    }
    assert checkpoint["epoch"] == 5
    # A refresh logs how much of the held-out lesions the fresh maps would mask.
    assert set(log[3]["lesion_hit_rate"]) == {"attention", "uniform"}
    assert "lesion_hit_rate" not in log[4]
    # Every sample's map was refreshed: none is the bank's initial all-ones map.
    maps = checkpoint["bank"]["weights"].flatten(1)
    assert bool((maps != 1).any(dim=1).all())
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1


def test_amt_pretraining_refuses_a_supervised_loss(tmp_path: Path) -> None:
    args = pretrain_args(tmp_path, "--masker", "amt", "--cls_loss_weight", "0.1")
    with pytest.raises(ValueError, match="--cls_loss_weight must be 0"):
        main_pretrain.main(args)


def test_pretraining_refuses_a_map_masker_that_never_starts(tmp_path: Path) -> None:
    args = pretrain_args(tmp_path, "--epochs", "3", "--mask_warmup_epochs", "3")
    with pytest.raises(ValueError, match="would never mask by maps"):
        main_pretrain.main(args)


class _InterruptedError(Exception):
    pass


def _interrupt_after_first_checkpoint(monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    real_save = module.save_training_state

    def save_then_stop(path: Path, **state: Any) -> None:
        real_save(path, **state)
        raise _InterruptedError

    monkeypatch.setattr(module, "save_training_state", save_then_stop)


@pytest.mark.parametrize("masker", ["sam", "random"])
def test_pretrain_resume_ends_where_an_uninterrupted_run_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, masker: str
) -> None:
    schedule = ("--epochs", "2", "--mask_warmup_epochs", "1", "--refresh_every", "1")
    options = (*schedule, "--warmup_epochs", "1", "--masker", masker)
    main_pretrain.main(pretrain_args(tmp_path / "straight", *options))

    with monkeypatch.context() as patch:
        _interrupt_after_first_checkpoint(patch, main_pretrain)
        with pytest.raises(_InterruptedError):
            main_pretrain.main(pretrain_args(tmp_path / "resumed", *options))
    first = tmp_path / "resumed" / "checkpoint.pth"
    main_pretrain.main(pretrain_args(tmp_path / "resumed", *options, "--resume", str(first)))

    straight = checkpoint_util.load_checkpoint(tmp_path / "straight" / "checkpoint.pth")
    resumed = checkpoint_util.load_checkpoint(first)
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert torch.equal(straight["bank"]["weights"], resumed["bank"]["weights"])
    assert read_log(tmp_path / "straight" / "log.jsonl") == read_log(
        tmp_path / "resumed" / "log.jsonl"
    )


def test_finetune_runs_end_to_end_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pre = ("--epochs", "1", "--warmup_epochs", "0", "--masker", "random")
    main_pretrain.main(pretrain_args(tmp_path / "pre", *pre))
    pretrained = str(tmp_path / "pre" / "checkpoint.pth")
    options = ("--epochs", "2", "--warmup_epochs", "1", "--refresh_every", "1")
    options = (*options, "--finetune", pretrained, "--blr", "5e-3")
    summary = main_finetune.main(finetune_args(tmp_path / "straight", *options))
    assert summary["val"]["num_samples"] == 16
    assert len(summary["val"]["recall"]) == 3
    assert sum(map(sum, summary["val"]["confusion"])) == 16
    assert (tmp_path / "straight" / "masks_epoch001.png").exists()

    with monkeypatch.context() as patch:
        _interrupt_after_first_checkpoint(patch, main_finetune)
        with pytest.raises(_InterruptedError):
            main_finetune.main(finetune_args(tmp_path / "resumed", *options))
    first = tmp_path / "resumed" / "checkpoint.pth"
    resumed_summary = main_finetune.main(
        finetune_args(tmp_path / "resumed", *options, "--resume", str(first))
    )
    straight = checkpoint_util.load_checkpoint(tmp_path / "straight" / "checkpoint.pth")
    resumed = checkpoint_util.load_checkpoint(first)
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert resumed_summary["val"] == summary["val"]
    assert read_log(tmp_path / "straight" / "log.jsonl") == read_log(
        tmp_path / "resumed" / "log.jsonl"
    )


def test_full_token_finetuning_loss_decreases(tmp_path: Path) -> None:
    options = ("--epochs", "5", "--warmup_epochs", "1", "--masker", "none", "--blr", "5e-3")
    main_finetune.main(finetune_args(tmp_path, *options, "--smoothing", "0"))
    log = read_log(tmp_path / "log.jsonl")
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert not list(tmp_path.glob("masks_*.png"))  # no maps without SAM


# ------------------------------------------------------------------------------ data


def _write_images(folder: Path, names: list[str], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = torch.randint(0, 256, (40, 48, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / name)


def _image_folder(root: Path) -> Path:
    for split, count in (("train", 8), ("val", 4)):
        for k, name in enumerate(("benign", "malignant")):
            _write_images(root / split / name, [f"{i}.png" for i in range(count)], seed=k)
    (root / "train" / "benign" / "broken.png").write_bytes(b"not a png")
    return root / "train" / "benign" / "broken.png"


def test_imagefolder_names_a_corrupt_file_or_skips_and_reports_it(tmp_path: Path) -> None:
    broken = _image_folder(tmp_path / "data")
    data = ("--data", "imagefolder", "--data_path", str(tmp_path / "data"), "--masker", "none")
    options = (*data, "--epochs", "1", "--warmup_epochs", "0")
    with pytest.raises(ValueError, match="broken.png"):
        main_finetune.main(finetune_args(tmp_path / "strict", *options))
    with pytest.warns(UserWarning, match="skipping unreadable image .*broken.png"):
        summary = main_finetune.main(finetune_args(tmp_path / "skip", *options, "--skip_corrupt"))
    assert summary["skipped_files"] == {"train": [str(broken)], "val": []}
    assert summary["classes"] == ["benign", "malignant"]
    assert summary["val"]["num_samples"] == 8
    # Read into memory up front (--cache_images): the same file is found and reported.
    cached = ("--skip_corrupt", "--cache_images")
    with pytest.warns(UserWarning, match="broken.png"):
        summary = main_finetune.main(finetune_args(tmp_path / "cached", *options, *cached))
    assert summary["skipped_files"] == {"train": [str(broken)], "val": []}


def test_csv_data_pretrains(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _write_images(images, [f"img{i}.jpg" for i in range(12)], seed=0)
    for split, rows in (("train", range(8)), ("val", range(8, 12))):
        lines = ["image_id,dx"] + [f"img{i},{'nv' if i % 2 else 'mel'}" for i in rows]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    tables = ("--csv_train", str(tmp_path / "train.csv"), "--csv_val", str(tmp_path / "val.csv"))
    data = ("--data", "csv", "--image_dir", str(images), *tables)
    options = ("--epochs", "2", "--mask_warmup_epochs", "1", "--warmup_epochs", "0")
    summary = main_pretrain.main(pretrain_args(tmp_path / "run", *data, *options))
    assert summary["world_size"] == 1
    assert "lesion_hit_rate" not in summary  # only synthetic data has lesion masks
    assert math.isfinite(summary["final"]["loss"])


def test_csv_data_needs_its_tables(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--csv_train"):
        main_pretrain.main(pretrain_args(tmp_path, "--data", "csv"))


# ------------------------------------------------------------------------- quickstart


def test_quickstart_writes_the_summary_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--out", str(tmp_path), "--num_train", "32", "--num_val", "12", "--input_size", "32"]
    argv += ["--batch_size", "8", "--mask_warmup_epochs", "1", "--pretrain_epochs", "2"]
    argv += ["--finetune_epochs", "1", "--decoder_embed_dim", "32", "--decoder_depth", "1"]
    argv += ["--decoder_num_heads", "2"]
    summary = quickstart.main(quickstart.get_args_parser().parse_args(argv))
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert set(saved["lesion_hit_rate"]) == {"random", "amt", "sam"}
    assert all(0.0 <= v <= 1.0 for v in saved["lesion_hit_rate"].values())
    assert set(saved["finetune_acc1"]) == {"sam", "full"}
    assert all(0.0 <= v <= 100.0 for v in saved["finetune_acc1"].values())
    with Image.open(tmp_path / "masks.png") as png:
        assert png.width > png.height > 0
    assert "lesion hit rate" in capsys.readouterr().out
