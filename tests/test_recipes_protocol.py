"""The recipes as a measuring protocol (issue 11): each --masker is the paper's arm, the
fine-tuning control, map sources, train/val/test with selection on val only, and initial
weights from the files users have (timm state dicts, facebookresearch/mae checkpoints).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from maskkit import CropDataset, PairedRandomResizedCrop, RandomMasker, SAMMasker
from maskkit.mae import patch_targets

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import engine_finetune  # noqa: E402
import engine_pretrain  # noqa: E402
import main_finetune  # noqa: E402
import main_pretrain  # noqa: E402
from mae_replica import MaskedAutoencoderViT  # noqa: E402
from models_msmae import (  # noqa: E402
    VisibleTokenClassifier,
    create_vit,
    load_init_encoder,
    read_init_weights,
)
from msmae_util import outputs  # noqa: E402
from msmae_util.runtime import cosine_scheduler  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402

TINY = ["--model", "vit_micro_patch8_64", "--input_size", "32", "--num_workers", "0"]
TINY += ["--num_train", "32", "--num_val", "16", "--num_test", "16", "--batch_size", "8"]
TINY += ["--no_progress", "--device", "cpu"]
TINY_DECODER = ["--decoder_embed_dim", "32", "--decoder_depth", "1", "--decoder_num_heads", "2"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pretrain_args(out: Path, *extra: str) -> argparse.Namespace:
    argv = [*TINY, *TINY_DECODER, "--output_dir", str(out), *extra]
    return main_pretrain.get_args_parser().parse_args(argv)


def finetune_args(out: Path, *extra: str) -> argparse.Namespace:
    return main_finetune.get_args_parser().parse_args([*TINY, "--output_dir", str(out), *extra])


def crop_batches(count: int = 4) -> DataLoader:
    images = [(torch.rand(3, 40, 48), k % 3) for k in range(count)]
    return DataLoader(CropDataset(images, PairedRandomResizedCrop(32), seed=0), batch_size=count)


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------ (a) the paper's arms


@pytest.mark.parametrize(
    ("masker", "extra", "weight", "arm"),
    [
        ("random", (), 0.0, "MAE"),
        ("amt", (), 0.0, "AMT"),
        ("sam", (), 0.1, "MSMAE"),
        ("random", ("--cls_loss_weight", "0.1"), 0.1, "random + head"),
        ("sam", ("--cls_loss_weight", "1"), 1.0, "MSMAE (λ = 1)"),
    ],
)
def test_each_masker_defaults_to_its_papers_arm(
    masker: str, extra: tuple[str, ...], weight: float, arm: str
) -> None:
    args = pretrain_args(Path("unused"), "--masker", masker, *extra)
    main_pretrain.resolve_arm(args)
    assert args.cls_loss_weight == weight
    assert main_pretrain.arm_name(masker, args.cls_loss_weight) == arm


def test_random_pretraining_is_a_plain_mae_objective() -> None:
    # Issue 11: `--masker random` used to keep the supervised head with λ = 0.1.
    args = pretrain_args(Path("unused"), "--masker", "random")
    main_pretrain.resolve_arm(args)
    torch.manual_seed(0)
    model = main_pretrain.build_model(args, num_classes=3)
    head = {k: v.detach().clone() for k, v in model.encoder.head.state_dict().items()}
    assert not any(p.requires_grad for p in model.encoder.head.parameters())

    # The loss is MAE's masked-patch MSE alone: no cross-entropy term, whatever the labels.
    loader = crop_batches()
    images, targets, _, _ = next(iter(loader))
    split = RandomMasker(args.random_mask_ratio)(4, 16, generator=torch.Generator().manual_seed(1))
    out = model(images, targets, split)
    other = model(images, (targets + 1) % 3, split)
    assert torch.equal(out.loss, out.recon_loss) and torch.equal(out.loss, other.loss)
    assert out.cls_loss > 0  # still monitored, never optimised
    target = patch_targets(images, 8, norm_pix=False)
    masked = target.gather(1, split.masked[..., None].expand(-1, -1, target.shape[-1]))
    torch.testing.assert_close(out.loss, F.mse_loss(out.pred, masked))
    out.loss.backward()
    assert all(p.grad is None for p in model.encoder.head.parameters())
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None
    model.zero_grad(set_to_none=True)

    # A training epoch changes the encoder, never the head; the optimizer holds no head state.
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-2, weight_decay=0.05)
    schedule = argparse.Namespace(epochs=1, warmup_epochs=0, min_lr=0.0)
    engine_pretrain.train_one_epoch(
        model,
        loader,
        optimizer,
        torch.device("cpu"),
        0,
        torch.amp.GradScaler("cpu", enabled=False),
        cosine_scheduler(optimizer, schedule, len(loader)),
        masker=RandomMasker(0.75),
        progress=False,
    )
    for name, value in model.encoder.head.state_dict().items():
        assert torch.equal(value, head[name]), name
    head_ids = {id(p) for p in model.encoder.head.parameters()}
    assert not head_ids & {id(p) for g in optimizer.param_groups for p in g["params"]}


# ----------------------------------------------------------- (b) the F-RM control


def test_random_finetuning_keeps_as_many_tokens_drawn_uniformly() -> None:
    torch.manual_seed(0)
    vit = create_vit("vit_micro_patch8_64", img_size=32, num_classes=3, global_pool="avg")
    seen: list[int] = []
    vit.blocks[0].register_forward_pre_hook(lambda _, a: seen.append(a[0].shape[1]))

    class Recording(SAMMasker):
        weights: ClassVar[list[Any]] = []

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            self.weights.append(args[2] if len(args) > 2 else kwargs.get("weights"))
            return super().__call__(*args, **kwargs)

    loader = crop_batches()
    optimizer = create_optimizer_v2(vit, opt="adamw", lr=1e-3, layer_decay=0.75)
    schedule = argparse.Namespace(epochs=1, warmup_epochs=0, min_lr=0.0)
    masker = Recording(0.45, 0.30)
    # main_finetune passes no bank for --masker random: SAM's counts, uniform weights.
    engine_finetune.train_one_epoch(
        VisibleTokenClassifier(vit),
        loader,
        optimizer,
        torch.device("cpu"),
        0,
        torch.amp.GradScaler("cpu", enabled=False),
        cosine_scheduler(optimizer, schedule, 1),
        masker=masker,
        bank=None,
        progress=False,
    )
    assert seen == [1 + 4] and masker.weights == [None]  # cls + int(16 * 0.25) patches


# -------------------------------------------------------------- (e) map sources


def test_avg_pool_leaves_the_last_cls_query_without_gradient_unless_a_cls_head_reads_it() -> None:
    torch.manual_seed(0)
    vit = create_vit("vit_micro_patch8_64", img_size=32, num_classes=3, global_pool="avg")
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    for cls_head in (False, True):
        model = VisibleTokenClassifier(vit, cls_head=cls_head)
        captured: dict[str, torch.Tensor] = {}

        def keep(_: Any, __: Any, output: torch.Tensor, into: dict = captured) -> None:
            output.retain_grad()
            into["out"] = output

        handle = vit.blocks[-1].register_forward_hook(keep)
        if cls_head:
            logits, cls_logits = model(images, with_cls=True)
            loss = F.cross_entropy(logits, targets) + 0.1 * F.cross_entropy(cls_logits, targets)
        else:
            loss = F.cross_entropy(model(images), targets)
        loss.backward()
        handle.remove()
        grad = captured["out"].grad
        assert grad is not None and grad[:, 1:].abs().sum() > 0  # patch tokens are supervised
        assert (grad[:, 0].abs().sum() > 0) == cls_head  # the cls output only with the head
        vit.zero_grad(set_to_none=True)


def test_pretrained_maps_need_a_pretrained_encoder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--map_source pretrained .* --finetune"):
        main_finetune.main(finetune_args(tmp_path))
    assert not (tmp_path / "log.jsonl").exists()


def _pretrained(folder: Path, *extra: str) -> Path:
    schedule = ("--epochs", "2", "--mask_warmup_epochs", "1", "--refresh_every", "1")
    main_pretrain.main(pretrain_args(folder, *schedule, "--warmup_epochs", "0", *extra))
    return folder / "checkpoint.pth"


@pytest.mark.slow
def test_map_sources_refresh_when_they_say(tmp_path: Path) -> None:
    encoder = str(_pretrained(tmp_path / "pre"))
    pre_bank = None
    expected = {
        "pretrained": ["masks_epoch000.png"],
        "refresh": ["masks_epoch000.png", "masks_epoch002.png"],
        "refresh_cls": ["masks_epoch000.png", "masks_epoch002.png"],
    }
    options = ("--epochs", "3", "--warmup_epochs", "1", "--refresh_every", "2", "--blr", "0.1")
    for source, pictures in expected.items():
        out = tmp_path / source
        summary = main_finetune.main(
            finetune_args(out, *options, "--finetune", encoder, "--map_source", source)
        )
        assert summary["map_source"] == source
        assert sorted(p.name for p in out.glob("masks_*.png")) == pictures
        checkpoint = outputs.load_checkpoint(out / "checkpoint.pth")
        log = read_log(out / "log.jsonl")
        if source == "refresh_cls":  # the second head trains, and its loss is logged
            assert set(checkpoint["cls_head"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}
            assert all(r["train_cls_loss"] > 0 for r in log)
        else:
            assert "cls_head" not in checkpoint and "train_cls_loss" not in log[0]
        if source == "pretrained":  # maps of the pre-trained encoder, kept all along
            pre_bank = checkpoint["bank"]["weights"]
        elif source == "refresh":  # maps of the fine-tuned model: they have moved
            assert not torch.equal(checkpoint["bank"]["weights"], pre_bank)


# -------------------------------------------------- (c) train / val / test protocol


def test_stability_is_the_last_quarter_of_val_top1() -> None:
    history = [50.0, 60.0, 70.0, 80.0, 90.0, 70.0, 80.0, 60.0]
    assert main_finetune.stability(history) == {
        "epochs": [6, 7],
        "val_acc1_min": 60.0,
        "val_acc1_max": 80.0,
        "val_acc1_std": 10.0,
    }
    assert main_finetune.stability([50.0]) is None


def _write_images(folder: Path, count: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = torch.randint(0, 256, (40, 48, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")


@pytest.mark.slow
def test_image_folder_with_and_without_a_test_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for split, count in (("train", 8), ("val", 4)):
        for k, name in enumerate(("benign", "malignant")):
            _write_images(tmp_path / "data" / split / name, count, seed=k)
    data = ("--data", "imagefolder", "--data_path", str(tmp_path / "data"), "--masker", "none")
    options = (*data, "--epochs", "2", "--warmup_epochs", "0")
    summary = main_finetune.main(finetune_args(tmp_path / "no_test", *options))
    assert summary["test"] == {"final": None, "val_selected": None}
    assert summary["splits"] == {"train": 16, "val": 8, "test": 0}
    assert "no test split" in summary["no_test_split"]
    printed = capsys.readouterr().out
    assert "final model (epoch 1): val top-1" in printed and "no test split" in printed
    assert "val-selected model (epoch" not in printed  # val chose it: no figure of it
    for k, name in enumerate(("benign", "malignant")):
        _write_images(tmp_path / "data" / "test" / name, 3, seed=10 + k)
    summary = main_finetune.main(finetune_args(tmp_path / "with_test", *options))
    assert summary["splits"]["test"] == 6 and "no_test_split" not in summary
    assert summary["test"]["final"]["num_samples"] == 6
    assert summary["test"]["val_selected"]["num_samples"] == 6
    printed = capsys.readouterr().out
    assert "test top-1" in printed and "val-selected model (epoch" in printed


@pytest.mark.slow
def test_csv_test_table(tmp_path: Path) -> None:
    images = tmp_path / "images"
    generator = torch.Generator().manual_seed(0)
    images.mkdir()
    for i in range(22):
        pixels = torch.randint(0, 256, (40, 48, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(images / f"img{i}.jpg")
    for split, rows in (("train", range(16)), ("val", range(16, 19)), ("test", range(19, 22))):
        lines = ["image_id,dx"] + [f"img{i},{'nv' if i % 2 else 'mel'}" for i in rows]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    tables = [f"--csv_{s}" for s in ("train", "val", "test")]
    tables = [
        x
        for s, t in zip(("train", "val", "test"), tables, strict=True)
        for x in (t, str(tmp_path / f"{s}.csv"))
    ]
    data = ("--data", "csv", "--image_dir", str(images), *tables, "--masker", "random")
    summary = main_finetune.main(
        finetune_args(tmp_path / "run", *data, "--epochs", "1", "--warmup_epochs", "0")
    )
    assert summary["splits"] == {"train": 16, "val": 3, "test": 3}
    assert summary["classes"] == ["mel", "nv"]
    assert summary["test"]["final"]["num_samples"] == 3


# ------------------------------------------------------------ (g) initial weights


def _tiny_mae_file(path: Path, *, finetuned: bool = False) -> dict[str, torch.Tensor]:
    """A facebookresearch/mae checkpoint of vit_micro_patch8_64's sizes at 32 px: after
    pre-training (encoder, norm, decoder) or after its global-pool fine-tuning (fc_norm and
    head, no norm), with MAE's argparse.Namespace beside the weights."""
    torch.manual_seed(3)
    mae = MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=96, depth=2, num_heads=3)
    state = mae.state_dict()
    if finetuned:
        state = {k: v for k, v in state.items() if not k.startswith(("decoder", "mask_token"))}
        state["fc_norm.weight"] = state.pop("norm.weight")
        state["fc_norm.bias"] = state.pop("norm.bias")
        state["head.weight"], state["head.bias"] = torch.zeros(5, 96), torch.zeros(5)
    torch.save({"model": state, "epoch": 799, "args": argparse.Namespace(blr=1.5e-4)}, path)
    return state


def test_initial_weights_from_timm_mae_and_our_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(1)
    timm_vit = create_vit("vit_micro_patch8_64", img_size=32, num_classes=7, global_pool="token")
    torch.save(timm_vit.state_dict(), tmp_path / "timm.pth")
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in timm_vit.state_dict().items()}},
        tmp_path / "ddp.pth",
    )
    mae = _tiny_mae_file(tmp_path / "mae.pth")
    assert mae["pos_embed"].shape == (1, 17, 96) and not mae["pos_embed"][0, 0].any()
    _tiny_mae_file(tmp_path / "mae_finetuned.pth", finetuned=True)

    for name, source in (
        ("timm", "timm"),
        ("ddp", "timm"),
        ("mae", "facebookresearch/mae"),
        ("mae_finetuned", "facebookresearch/mae"),
    ):
        state, found = read_init_weights(tmp_path / f"{name}.pth", option="--finetune")
        assert found == source, name
        assert not any(k.startswith(("encoder.decoder", "encoder.mask_token")) for k in state)
        # Fine-tuning: encoder copied, head (and, after MAE pre-training, fc_norm) fresh.
        vit = create_vit("vit_micro_patch8_64", img_size=32, num_classes=3, global_pool="avg")
        load_init_encoder(vit, state, name)
        reference = mae if name.startswith("mae") else timm_vit.state_dict()
        for key, value in vit.state_dict().items():
            if key.startswith(("head.", "fc_norm.")):
                continue
            assert torch.equal(value, reference[key]), (name, key)
        if name == "mae_finetuned":  # MAE's fine-tuned fc_norm is the pooled norm: kept
            assert torch.equal(vit.fc_norm.weight, mae["norm.weight"])

    # Continued pre-training: the encoder (with its norm) from MAE; the decoder from MAE is
    # not loaded, from a main_pretrain.py checkpoint it is.
    model = main_pretrain.build_model(pretrain_args(Path("u"), "--masker", "random"), 3)
    fresh_decoder = model.decoder_pred.weight.detach().clone()
    assert main_pretrain.load_init(model, str(tmp_path / "mae.pth")) == "facebookresearch/mae"
    assert torch.equal(model.encoder.norm.weight, mae["norm.weight"])
    assert torch.equal(model.encoder.blocks[1].mlp.fc2.weight, mae["blocks.1.mlp.fc2.weight"])
    assert torch.equal(model.decoder_pred.weight, fresh_decoder)
    ours = tmp_path / "ours.pth"
    outputs.save_checkpoint(ours, {"model": model.state_dict(), "script": "main_pretrain.py"})
    again = main_pretrain.build_model(pretrain_args(Path("u"), "--masker", "random"), 3)
    assert main_pretrain.load_init(again, str(ours)) == "main_pretrain.py"
    for key, value in again.state_dict().items():
        if not key.startswith("encoder.head."):
            assert torch.equal(value, model.state_dict()[key]), key


def test_initial_weights_that_do_not_fit_are_refused_clearly(tmp_path: Path) -> None:
    _tiny_mae_file(tmp_path / "mae_finetuned.pth", finetuned=True)
    model = main_pretrain.build_model(pretrain_args(Path("u"), "--masker", "random"), 3)
    with pytest.raises(
        ValueError, match=r"missing keys \['norm.bias', 'norm.weight'\].*fine-tuned"
    ):
        main_pretrain.load_init(model, str(tmp_path / "mae_finetuned.pth"))
    wide = create_vit("vit_micro_patch8_64", img_size=64, num_classes=3, global_pool="avg")
    _tiny_mae_file(tmp_path / "mae.pth")
    state, _ = read_init_weights(tmp_path / "mae.pth", option="--finetune")
    with pytest.raises(
        ValueError, match=r"mae.pth.*pos_embed: checkpoint \(1, 17, 96\) vs model \(1, 65, 96\)"
    ):
        load_init_encoder(wide, state, f"--finetune {tmp_path / 'mae.pth'}")
    ours = tmp_path / "ours.pth"
    outputs.save_checkpoint(ours, {"model": model.state_dict(), "script": "main_pretrain.py"})
    other = main_pretrain.build_model(pretrain_args(Path("u"), "--decoder_embed_dim", "64"), 3)
    with pytest.raises(ValueError, match="--decoder_embed_dim"):
        main_pretrain.load_init(other, str(ours))
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="no ViT encoder"):
        read_init_weights(tmp_path / "resnet.pth", option="--init")
    torch.save({"model": {}, "script": "main_finetune.py"}, tmp_path / "ft.pth")
    with pytest.raises(ValueError, match=r"written by main_finetune\.py: --init takes"):
        read_init_weights(tmp_path / "ft.pth", option="--init")
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_init_weights(tmp_path / "text.pth", option="--init")


@pytest.mark.slow
def test_continued_pretraining_and_finetuning_from_files(tmp_path: Path) -> None:
    _tiny_mae_file(tmp_path / "mae.pth")
    schedule = ("--epochs", "1", "--warmup_epochs", "0", "--masker", "random")
    summary = main_pretrain.main(
        pretrain_args(tmp_path / "pre", *schedule, "--init", str(tmp_path / "mae.pth"))
    )
    assert summary["init"] == {"path": str(tmp_path / "mae.pth"), "format": "facebookresearch/mae"}
    torch.manual_seed(1)
    vit = create_vit("vit_micro_patch8_64", img_size=32, num_classes=7, global_pool="token")
    torch.save(vit.state_dict(), tmp_path / "timm.pth")
    options = ("--epochs", "1", "--warmup_epochs", "0", "--finetune", str(tmp_path / "timm.pth"))
    summary = main_finetune.main(finetune_args(tmp_path / "ft", *options))
    assert summary["init"]["format"] == "timm" and summary["map_source"] == "pretrained"


def test_initial_weights_with_nan_or_inf_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    # Probe I11: NaN weights in a --finetune file showed only as "loss is nan at epoch 0".
    vit = create_vit("vit_micro_patch8_64", img_size=32, num_classes=3, global_pool="token")
    state = {key: value.clone() for key, value in vit.state_dict().items()}
    state["blocks.1.attn.qkv.weight"][0, 0] = float("nan")
    state["blocks.0.mlp.fc1.bias"][3] = float("inf")  # an earlier key: the one named
    torch.save({"model": state}, tmp_path / "nan.pth")
    for option in ("--finetune", "--init"):
        with pytest.raises(
            ValueError, match=rf"{option} .*nan\.pth: tensor 'model\.blocks\.0\.mlp\.fc1\.bias'"
        ):
            read_init_weights(tmp_path / "nan.pth", option=option)
    # main_segment.py reads its --finetune checkpoint with load_checkpoint directly.
    outputs.save_checkpoint(tmp_path / "pre.pth", {"model": state, "script": "main_pretrain.py"})
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        outputs.load_checkpoint(
            tmp_path / "pre.pth", expect="main_pretrain.py", option="--finetune"
        )
    # Finite weights load; a resumed checkpoint is the run's own and is not scanned.
    torch.save(vit.state_dict(), tmp_path / "ok.pth")
    assert read_init_weights(tmp_path / "ok.pth", option="--finetune")[1] == "timm"
    assert "model" in outputs.load_checkpoint(tmp_path / "pre.pth")
