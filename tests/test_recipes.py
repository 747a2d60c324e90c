"""The MSMAE recipes in examples/: models, optimizer and schedule, engines, scripts end to end.

The pre-training model itself (maskkit.mae.MaskedAutoencoder) is tested in test_mae.py.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from maskkit import (
    CropDataset,
    MaskWeightBank,
    PairedRandomResizedCrop,
    RandomMasker,
    SAMMasker,
    align_weights,
)
from maskkit.mae import MaskedAutoencoder

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import engine_finetune  # noqa: E402
import engine_pretrain  # noqa: E402
import main_finetune  # noqa: E402
import main_pretrain  # noqa: E402
import quickstart  # noqa: E402
from models_msmae import VisibleTokenClassifier, create_vit, load_pretrained_encoder  # noqa: E402
from msmae_util import outputs  # noqa: E402
from msmae_util.data import train_loader  # noqa: E402
from msmae_util.runtime import (  # noqa: E402
    DistributedContext,
    amp_settings,
    cosine_scheduler,
)
from timm.optim import create_optimizer_v2  # noqa: E402

# 32 px images in 8 px patches: a 4 x 4 grid, 16 patches (4 visible, 7 masked, 5 thrown).
TINY = ["--model", "vit_micro_patch8_64", "--input_size", "32", "--num_workers", "0"]
TINY_DATA = ["--num_train", "32", "--num_val", "16", "--num_test", "16", "--batch_size", "8"]
TINY_DATA += ["--no_progress"]
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


def tiny_mae(cls_loss_weight: float = 0.1) -> MaskedAutoencoder:
    torch.manual_seed(0)
    args = pretrain_args(Path("unused"), "--cls_loss_weight", str(cls_loss_weight))
    return main_pretrain.build_model(args, num_classes=3).eval()


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_vit("vit_micro_patch8_64", img_size=32, num_classes=3, global_pool="avg")


def schedule_args(**values: float) -> argparse.Namespace:
    return argparse.Namespace(**{"epochs": 10, "warmup_epochs": 2, "min_lr": 0.1, **values})


# ------------------------------------------------------------------------ models


def test_create_vit_names_an_unknown_model() -> None:
    with pytest.raises(ValueError, match="unknown timm model 'vit_nonexistent'"):
        create_vit("vit_nonexistent", img_size=32, num_classes=2, global_pool="token")


def test_amp_is_refused_on_cpu() -> None:
    with pytest.raises(ValueError, match="--amp bf16 needs a CUDA device"):
        amp_settings("bf16", torch.device("cpu"))
    dtype, scaler = amp_settings("auto", torch.device("cpu"))
    assert dtype is None and not scaler.is_enabled()


def test_visible_token_classifier_with_every_token_is_timm_forward() -> None:
    vit = tiny_vit().eval()
    images = torch.randn(2, 3, 32, 32)
    every = torch.arange(16).expand(2, 16)
    classifier = VisibleTokenClassifier(vit)
    assert classifier.grid == (4, 4) and classifier.patch_size == 8
    with torch.no_grad():
        reference = vit(images)
        torch.testing.assert_close(classifier(images), reference)
        torch.testing.assert_close(classifier(images, every), reference)


def test_load_pretrained_encoder_copies_weights_and_names_bad_keys() -> None:
    state = tiny_mae().state_dict()
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


# ------------------------------------------------------- optimizer and lr schedule


def mae_lr(lr: float, min_lr: float, warmup_epochs: float, epochs: int, epoch: float) -> float:
    """facebookresearch/mae util/lr_sched.adjust_learning_rate, written out."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / (epochs - warmup_epochs)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def test_cosine_scheduler_is_maes_per_iteration_schedule_with_layer_scales() -> None:
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.AdamW(
        [{"params": params[:1], "lr_scale": 0.25}, {"params": params[1:]}], lr=1.0
    )
    steps = 7
    scheduler = cosine_scheduler(optimizer, schedule_args(), steps)
    for update in range(10 * steps):
        scheduler.step_update(update)
        expected = mae_lr(1.0, 0.1, 2, 10, update / steps)
        assert optimizer.param_groups[1]["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25 * expected, rel=1e-12)


def test_cosine_scheduler_state_restores_exactly(tmp_path: Path) -> None:
    def build(lr: float, epochs: int) -> tuple[torch.optim.Optimizer, Any]:
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        return optimizer, cosine_scheduler(optimizer, schedule_args(epochs=epochs), 5)

    optimizer, scheduler = build(1.0, 10)
    # Through a checkpoint file: the state is plain types, read by the safe unpickler.
    outputs.save_checkpoint(tmp_path / "c.pth", {"lr_scheduler": scheduler.state_dict()})
    saved = outputs.load_checkpoint(tmp_path / "c.pth")["lr_scheduler"]
    # A resumed run rebuilds its scheduler, then loads the saved state over it: the
    # checkpoint's schedule continues, whatever the new one would have been.
    resumed_optimizer, resumed = build(2.0, 20)
    resumed.load_state_dict(saved)
    for update in (0, 3, 17, 49):
        scheduler.step_update(update)
        resumed.step_update(update)
        assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_layer_decay_groups_follow_mae() -> None:
    vit = tiny_vit()
    optimizer = create_optimizer_v2(
        vit, opt="adamw", lr=1.0, weight_decay=0.05, betas=(0.9, 0.999), layer_decay=0.5
    )
    assert isinstance(optimizer, torch.optim.AdamW)
    by_param = {
        id(p): (group["lr_scale"], group["weight_decay"])
        for group in optimizer.param_groups
        for p in group["params"]
    }
    depth = len(vit.blocks)
    # MAE (util/lr_decay.py, from BEiT): scale = decay ** (depth + 1 - layer_id); the
    # embeddings are layer 0, blocks.i layer i + 1, the rest (norms, head) layer depth + 1.
    params = dict(vit.named_parameters())
    for name, param in params.items():
        if name.startswith("blocks."):
            layer_id = int(name.split(".")[1]) + 1
        elif name.startswith(("cls_token", "pos_embed", "patch_embed", "reg_token")):
            layer_id = 0
        else:
            layer_id = depth + 1
        assert by_param[id(param)][0] == pytest.approx(0.5 ** (depth + 1 - layer_id)), name
        no_decay = param.ndim == 1 or name in ("cls_token", "pos_embed")
        assert by_param[id(param)][1] == (0.0 if no_decay else 0.05), name
    assert by_param[id(params["head.weight"])][0] == 1.0
    assert by_param[id(params["cls_token"])][0] == pytest.approx(0.5 ** (depth + 1))


@pytest.mark.parametrize("cls_loss_weight", [0.1, 0.0])
def test_pretrain_groups_skip_decay_on_tokens_and_leave_a_frozen_head_out(
    cls_loss_weight: float,
) -> None:
    model = tiny_mae(cls_loss_weight)
    optimizer = create_optimizer_v2(
        model, opt="adamw", lr=1.0, weight_decay=0.05, betas=(0.9, 0.95)
    )
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        if name.startswith("encoder.head.") and cls_loss_weight == 0:
            # λ = 0 freezes the head: no optimizer step (nor DDP reduction) touches it.
            assert not param.requires_grad and id(param) not in decay, name
            continue
        skip = param.ndim == 1 or name in ("mask_token", "encoder.cls_token", "encoder.pos_embed")
        assert decay[id(param)] == (0.0 if skip else 0.05), name
    assert optimizer.defaults["betas"] == (0.9, 0.95)


# ---------------------------------------------------------------------- outputs


def test_checkpoint_round_trips_rng_state_with_weights_only(tmp_path: Path) -> None:
    outputs.save_checkpoint(tmp_path / "c.pth", {"rng": [outputs.rng_state()]})
    first = torch.rand(3)
    target = torch.nn.Linear(1, 1)
    checkpoint = {"rng": torch.load(tmp_path / "c.pth", weights_only=True)["rng"]}
    checkpoint["linear"] = target.state_dict()
    outputs.save_checkpoint(tmp_path / "c.pth", checkpoint)
    outputs.resume(tmp_path / "c.pth", {"linear": target}, rank=0)
    assert torch.equal(torch.rand(3), first)
    with pytest.warns(UserWarning, match="no RNG state for rank 1"):
        outputs.resume(tmp_path / "c.pth", {}, rank=1)


def test_interrupted_checkpoint_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint.pth"
    outputs.save_checkpoint(path, {"epoch": 1})

    def failing_save(obj: object, file: Any) -> None:
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        outputs.save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert outputs.load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_resumed_log_drops_the_epochs_it_will_train_again(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = outputs.JsonLinesLog(path)
    for epoch in range(3):
        log.write({"epoch": epoch, "loss": float(epoch)})
    # The checkpoint of epoch 1 was the last written: the resumed run starts at epoch 2.
    outputs.JsonLinesLog(path, start_epoch=2).write({"epoch": 2, "loss": 9.0})
    assert read_log(path) == [
        {"epoch": 0, "loss": 0.0},
        {"epoch": 1, "loss": 1.0},
        {"epoch": 2, "loss": 9.0},
    ]
    outputs.JsonLinesLog(path)  # a fresh run starts a fresh log
    assert path.read_text() == ""


# ---------------------------------------------------------------------- engines


def crop_batches(bank_size: int = 4, batch_size: int = 4) -> DataLoader:
    """Batches (images, targets, crops, indices) of 40 x 48 images cropped to 32 px."""
    images = [(torch.rand(3, 40, 48), k % 3) for k in range(bank_size)]
    dataset = CropDataset(images, PairedRandomResizedCrop(32), seed=0)
    return DataLoader(dataset, batch_size=batch_size)


class RecordingMasker:
    """Wraps a masker and keeps the weights each call got."""

    def __init__(self, masker: Any) -> None:
        self.masker, self.weights = masker, []

    def __call__(self, batch_size: int, num_patches: int, weights: Any = None, **kw: Any) -> Any:
        self.weights.append(weights)
        return self.masker(batch_size, num_patches, weights, **kw)


def run_pretrain_epoch(model: MaskedAutoencoder, loader: Any, **options: Any) -> dict[str, float]:
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    return engine_pretrain.train_one_epoch(
        model,
        loader,
        optimizer,
        torch.device("cpu"),
        0,
        torch.amp.GradScaler("cpu", enabled=False),
        cosine_scheduler(optimizer, schedule_args(epochs=1, warmup_epochs=0), len(loader)),
        progress=False,
        **options,
    )


def test_pretrain_step_aligns_the_bank_maps_of_its_batch_with_each_crop() -> None:
    loader = crop_batches()
    bank = MaskWeightBank(4, grid=(5, 6))
    bank.update(torch.arange(4), torch.rand(4, 5, 6))
    masker = RecordingMasker(SAMMasker())
    run_pretrain_epoch(tiny_mae(), loader, masker=masker, bank=bank)
    (_, _, crops, indices) = next(iter(loader))
    expected = align_weights(bank[indices], crops, out_grid=(4, 4))
    assert len(masker.weights) == 1
    torch.testing.assert_close(masker.weights[0], expected)
    # Without a bank the masker draws uniformly: no weights at all.
    uniform = RecordingMasker(RandomMasker(0.75))
    stats = run_pretrain_epoch(tiny_mae(), loader, masker=uniform)
    assert uniform.weights == [None]
    assert set(stats) == {"loss", "recon_loss", "cls_loss", "cls_acc", "lr"}


def test_non_finite_loss_stops_training() -> None:
    images = torch.full((2, 3, 32, 32), float("nan"))
    batch = next(iter(crop_batches(2, 2)))
    loader = [(images, torch.tensor([0, 1]), batch[2], torch.tensor([0, 1]))]
    with pytest.raises(SystemExit, match="loss is nan"):
        run_pretrain_epoch(tiny_mae(), loader, masker=SAMMasker(), bank=MaskWeightBank(2, (4, 4)))


def test_sam_finetuning_encodes_only_the_visible_quarter() -> None:
    vit = tiny_vit()
    seen: list[int] = []
    vit.blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[1]))
    loader = crop_batches(2, 2)
    optimizer = create_optimizer_v2(vit, opt="adamw", lr=1e-3, layer_decay=0.75)
    scheduler = cosine_scheduler(optimizer, schedule_args(epochs=1, warmup_epochs=0), 1)
    bank = MaskWeightBank(2, grid=(4, 4))
    for masker, tokens in ((SAMMasker(0.45, 0.30), 1 + 4), (None, 1 + 16)):
        seen.clear()
        engine_finetune.train_one_epoch(
            VisibleTokenClassifier(vit),
            loader,
            optimizer,
            torch.device("cpu"),
            0,
            torch.amp.GradScaler("cpu", enabled=False),
            scheduler,
            masker=masker,
            bank=bank,
            progress=False,
        )
        assert seen == [tokens]  # cls token + the kept patches
    seen.clear()
    engine_finetune.evaluate(
        VisibleTokenClassifier(vit), loader, torch.device("cpu"), num_classes=3
    )
    assert seen == [1 + 16]  # evaluation always sees every token


def test_train_loader_workers_draw_each_epochs_crops_and_repeat_them_on_resume() -> None:
    images = [(torch.rand(3, 40, 48), 0) for _ in range(8)]
    dataset = CropDataset(images, PairedRandomResizedCrop(32), seed=0)
    args = argparse.Namespace(seed=0, batch_size=4, num_workers=2)
    loader, sampler = train_loader(dataset, args, DistributedContext(0, 1, torch.device("cpu")))
    assert not loader.persistent_workers  # workers must copy the dataset's new epoch

    def boxes(epoch: int) -> torch.Tensor:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        batches = [(crops.top, crops.left, indices) for _, _, crops, indices in loader]
        return torch.cat([torch.stack(batch, dim=1) for batch in batches])

    first = boxes(0)
    assert not torch.equal(first, boxes(1))
    assert torch.equal(first, boxes(0))  # a resumed epoch sees the same order and crops


def test_classification_report_from_a_known_confusion_matrix() -> None:
    confusion = torch.tensor([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
    report = engine_finetune.classification_report(confusion)
    assert report["acc1"] == pytest.approx(100.0 * 5 / 8)
    assert report["recall"] == [0.75, 0.5, None]
    assert report["confusion"] == confusion.tolist()
    assert report["num_samples"] == 8


# ------------------------------------------------------------------ the scripts


@pytest.mark.parametrize("script", [main_pretrain, main_finetune])
def test_options_come_in_visible_groups(script: Any) -> None:
    parser = script.get_args_parser()
    groups = {group.title.split(" ")[0]: group for group in parser._action_groups}
    assert {"model", "masking", "optimizer", "data", "runtime"} <= set(groups)
    options = {a.dest for a in groups["optimizer"]._group_actions}
    assert {"blr", "lr", "min_lr", "warmup_epochs", "weight_decay"} <= options


def test_amt_pretraining_refuses_a_supervised_loss(tmp_path: Path) -> None:
    args = pretrain_args(tmp_path, "--masker", "amt", "--cls_loss_weight", "0.1")
    with pytest.raises(ValueError, match="--cls_loss_weight must be 0"):
        main_pretrain.main(args)


def test_pretraining_refuses_a_map_masker_that_never_starts(tmp_path: Path) -> None:
    args = pretrain_args(tmp_path, "--epochs", "3", "--mask_warmup_epochs", "3")
    with pytest.raises(ValueError, match="would never mask by maps"):
        main_pretrain.main(args)


def test_csv_data_needs_its_tables(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--csv_train"):
        main_pretrain.main(pretrain_args(tmp_path, "--data", "csv"))


@pytest.mark.slow
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
    assert set(saved["val_lesion_hit_rate"]) == {"attention", "uniform"}
    assert all(0.0 <= v <= 1.0 for v in saved["val_lesion_hit_rate"].values())
    assert saved["arm"] == "MSMAE" and saved["cls_loss_weight"] == 0.1
    checkpoint = outputs.load_checkpoint(tmp_path / "checkpoint.pth")
    # What resume needs and nothing else.
    assert set(checkpoint) == {
        *("model", "optimizer", "scaler", "lr_scheduler", "bank", "epoch", "rng", "args"),
        *("script", "stats"),  # who wrote it (checked by --resume); the summary's stats
        *("source", "seconds"),  # the initial weights' format; training time so far
    }
    assert checkpoint["script"] == "main_pretrain.py"
    assert checkpoint["stats"] == pytest.approx(summary["final"])
    assert set(checkpoint["rng"][0]) == {"cpu", "cuda"}
    assert checkpoint["epoch"] == 5
    # A refresh logs how much of the held-out lesions the fresh maps would mask.
    assert set(log[3]["val_lesion_hit_rate"]) == {"attention", "uniform"}
    assert "val_lesion_hit_rate" not in log[4]
    # Every sample's map was refreshed: none is the bank's initial all-ones map.
    maps = checkpoint["bank"]["weights"].flatten(1)
    assert bool((maps != 1).any(dim=1).all())
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1


class _InterruptedError(Exception):
    pass


def _interrupt_after_first_checkpoint(monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    real_save = module.save_checkpoint

    def save_then_stop(path: Path, state: dict[str, Any]) -> None:
        real_save(path, state)
        if Path(path).name == "checkpoint.pth":  # best.pth is written before it
            raise _InterruptedError

    monkeypatch.setattr(module, "save_checkpoint", save_then_stop)


@pytest.mark.slow
@pytest.mark.parametrize("masker", ["sam", "amt", "random"])
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

    straight = outputs.load_checkpoint(tmp_path / "straight" / "checkpoint.pth")
    resumed = outputs.load_checkpoint(first)
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert torch.equal(straight["bank"]["weights"], resumed["bank"]["weights"])
    assert straight["lr_scheduler"] == resumed["lr_scheduler"]
    assert read_log(tmp_path / "straight" / "log.jsonl") == read_log(
        tmp_path / "resumed" / "log.jsonl"
    )
    if masker == "amt":  # λ = 0: the head is frozen, so the optimizer holds no state for it
        trainable = len(straight["model"]) - 2  # all but head.weight and head.bias
        assert len(straight["optimizer"]["state"]) == trainable


@pytest.mark.slow
def test_finetune_runs_end_to_end_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pre = ("--epochs", "1", "--warmup_epochs", "0", "--masker", "random")
    main_pretrain.main(pretrain_args(tmp_path / "pre", *pre))
    pretrained = str(tmp_path / "pre" / "checkpoint.pth")
    options = ("--epochs", "3", "--warmup_epochs", "1", "--refresh_every", "2")
    options = (*options, "--finetune", pretrained, "--blr", "5e-3", "--map_source", "refresh")
    options = (*options, "--model_ema")
    summary = main_finetune.main(finetune_args(tmp_path / "straight", *options))
    assert summary["val"]["num_samples"] == 16
    assert len(summary["val"]["recall"]) == 3
    assert sum(map(sum, summary["val"]["confusion"])) == 16
    assert summary["splits"] == {"train": 32, "val": 16, "test": 16}
    for part in (summary, summary["ema"]):  # the raw model and its EMA
        assert part["test"]["final"]["num_samples"] == 16
        assert part["test"]["val_selected"]["num_samples"] == 16
        assert part["stability"]["epochs"] == [1, 2]
    assert "no_test_split" not in summary
    # Refreshed before epochs 0 and 2 (the paper's schedule, every --refresh_every epochs).
    assert sorted(p.name for p in (tmp_path / "straight").glob("masks_*.png")) == [
        "masks_epoch000.png",
        "masks_epoch002.png",
    ]
    # Selected on val, and on val only: the first epoch of best val top-1; test is never
    # evaluated while training.
    log = read_log(tmp_path / "straight" / "log.jsonl")
    val = [r["val_acc1"] for r in log]
    assert summary["selected"] == {"epoch": val.index(max(val)), "val_acc1": max(val)}
    assert not [k for r in log for k in r if "test" in k]
    best = outputs.load_checkpoint(tmp_path / "straight" / "best.pth")
    assert best["epoch"] == summary["selected"]["epoch"] and best["script"] == "main_finetune.py"
    ema_best = outputs.load_checkpoint(tmp_path / "straight" / "best_ema.pth")
    assert ema_best["epoch"] == summary["ema"]["selected"]["epoch"]
    assert set(best["model"]) == set(tiny_vit().state_dict())  # loads into the timm ViT

    with monkeypatch.context() as patch:
        _interrupt_after_first_checkpoint(patch, main_finetune)
        with pytest.raises(_InterruptedError):
            main_finetune.main(finetune_args(tmp_path / "resumed", *options))
    first = tmp_path / "resumed" / "checkpoint.pth"
    resumed_summary = main_finetune.main(
        finetune_args(tmp_path / "resumed", *options, "--resume", str(first))
    )
    straight = outputs.load_checkpoint(tmp_path / "straight" / "checkpoint.pth")
    resumed = outputs.load_checkpoint(first)
    for entry in ("model", "model_ema"):
        for name, value in straight[entry].items():
            assert torch.equal(value, resumed[entry][name]), (entry, name)
    for name in ("best.pth", "best_ema.pth"):
        a = outputs.load_checkpoint(tmp_path / "straight" / name)
        b = outputs.load_checkpoint(tmp_path / "resumed" / name)
        assert a["epoch"] == b["epoch"]
        assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    for key in ("val", "test", "selected", "ema"):
        assert resumed_summary[key] == summary[key], key
    assert read_log(tmp_path / "straight" / "log.jsonl") == read_log(
        tmp_path / "resumed" / "log.jsonl"
    )
    # Killed after its last checkpoint (no summary.json): resuming rebuilds the summary
    # from the checkpoint (issue 12.3); once written, resuming again leaves it as it is.
    (tmp_path / "resumed" / "summary.json").unlink()
    last = str(tmp_path / "resumed" / "checkpoint.pth")
    rebuilt = main_finetune.main(finetune_args(tmp_path / "resumed", *options, "--resume", last))
    for key in ("val", "train", "test", "selected", "ema"):
        assert rebuilt[key] == summary[key], key
    written = (tmp_path / "resumed" / "summary.json").read_bytes()
    main_finetune.main(finetune_args(tmp_path / "resumed", *options, "--resume", last))
    assert (tmp_path / "resumed" / "summary.json").read_bytes() == written


@pytest.mark.slow
def test_full_token_finetuning_loss_decreases(tmp_path: Path) -> None:
    options = ("--epochs", "5", "--warmup_epochs", "1", "--masker", "none", "--blr", "5e-3")
    main_finetune.main(finetune_args(tmp_path, *options, "--smoothing", "0"))
    log = read_log(tmp_path / "log.jsonl")
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert not list(tmp_path.glob("masks_*.png"))  # no maps without SAM


# ------------------------------------------------------------------------ data


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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ------------------------------------------------------------------ quickstart


@pytest.mark.slow
def test_quickstart_writes_the_summary_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--out", str(tmp_path), "--num_train", "32", "--num_val", "12", "--num_test", "12"]
    argv += ["--input_size", "32", "--batch_size", "8", "--mask_warmup_epochs", "1"]
    argv += ["--pretrain_epochs", "2", "--finetune_epochs", "1", "--decoder_embed_dim", "32"]
    argv += ["--decoder_depth", "1", "--decoder_num_heads", "2"]
    summary = quickstart.main(quickstart.get_args_parser().parse_args(argv))
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert set(saved["val_lesion_hit_rate"]) == {"random", "amt", "sam"}
    assert all(0.0 <= v <= 1.0 for v in saved["val_lesion_hit_rate"].values())
    assert set(saved["finetune"]) == {"none", "random", "sam"}
    for run in saved["finetune"].values():
        assert set(run["test_acc1"]) == {"final", "val_selected"}
        assert all(0.0 <= v <= 100.0 for v in run["test_acc1"].values())
    assert saved["splits"] == {"train": 32, "val": 12, "test": 12}
    with Image.open(tmp_path / "masks.png") as png:
        assert png.width > png.height > 0
    out = capsys.readouterr().out
    # Every figure names its split; the printout says what does and does not transfer.
    assert "on the val images" in out and "top-1 on the test images" in out
    assert "do not predict yours" in out and "examples/ablation.py" in out
