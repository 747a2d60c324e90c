"""The segmentation recipe (examples/main_segment.py, issue 14): loss, metrics, the paired
augmentation, BUSI / CSV data, the SETR model, the script end to end and its resume."""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import engine_segment  # noqa: E402
import main_pretrain  # noqa: E402
import main_segment  # noqa: E402
import segment_data  # noqa: E402
from models_msmae import create_vit  # noqa: E402
from models_setr import SETR, load_encoder  # noqa: E402
from msmae_util import outputs  # noqa: E402

# 32 px images in 8 px patches (a 4 x 4 grid) and a narrow decoder: seconds on a CPU.
TINY = [
    *("--model", "vit_micro_patch8_64", "--input_size", "32", "--decoder_channels", "16"),
    *("--num_train", "32", "--num_val", "16", "--num_test", "16", "--batch_size", "8"),
    *("--lr", "1e-3", "--num_workers", "0", "--num_overlays", "4", "--no_progress"),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Tiny models on a shared 2-core machine: intra-op threads only add contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def segment_args(out: Path, *extra: str) -> argparse.Namespace:
    argv = [*TINY, "--device", "cpu", "--output_dir", str(out), *extra]
    return main_segment.get_args_parser().parse_args(argv)


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------- loss


def test_binary_loss_is_dice_plus_half_bce_by_hand() -> None:
    logits = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere
    masks = torch.tensor([[[1, 0], [0, 0]]])
    # Σ p t = 0.5, Σ p = 2, Σ t = 1; BCE of p = 0.5 is ln 2 on every pixel.
    terms = engine_segment.segmentation_loss(logits, masks, smooth=0.0)
    assert terms.dice.item() == pytest.approx(1 - 1.0 / 3.0)
    assert terms.bce.item() == pytest.approx(math.log(2))
    assert terms.loss.item() == pytest.approx(2 / 3 + 0.5 * math.log(2))
    smoothed = engine_segment.segmentation_loss(logits, masks, bce_weight=2.0)  # s = 1
    assert smoothed.dice.item() == pytest.approx(1 - (2 * 0.5 + 1) / (2 + 1 + 1))
    assert smoothed.loss.item() == pytest.approx(0.5 + 2 * math.log(2))
    sure = engine_segment.segmentation_loss(
        torch.tensor([[[[30.0, -30.0], [-30.0, -30.0]]]]), masks
    )
    assert sure.loss.item() == pytest.approx(0.0, abs=1e-6)


def test_multiclass_loss_is_foreground_dice_plus_half_ce_by_hand() -> None:
    logits = torch.zeros(1, 3, 1, 2)  # p = 1/3 for each of 3 classes
    masks = torch.tensor([[[1, 2]]])
    # Class 1 (and 2): Σ p t = 1/3, Σ p = 2/3, Σ t = 1: 1 - (2/3) / (5/3) = 3/5.
    terms = engine_segment.segmentation_loss(logits, masks, smooth=0.0)
    assert terms.dice.item() == pytest.approx(3 / 5)
    assert terms.bce.item() == pytest.approx(math.log(3))  # the cross-entropy
    assert terms.loss.item() == pytest.approx(3 / 5 + 0.5 * math.log(3))


# ---------------------------------------------------------------------------- metrics


def _rows(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows)[:, None, :]  # (B, 1, W) images one pixel high


def test_dice_and_iou_per_image_and_dataset_level_by_hand() -> None:
    masks = _rows([1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1])
    preds = _rows([1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0])
    # A: TP 1, FP 1, FN 1 → Dice 1/2, IoU 1/3. B: empty, correctly → 1, 1.
    # C: TP 2, FN 2 → Dice 2/3, IoU 1/2. Summed: TP 3, FP 1, FN 3 → 6/10, 3/7.
    counts = engine_segment.pixel_counts(preds, masks, num_classes=2)
    assert counts[:, :, 0].tolist() == [[1, 0, 2], [1, 0, 0], [1, 0, 2]]
    meter = engine_segment.SegmentationMeter(num_classes=2)
    meter.update(preds[:2], masks[:2], loss=1.0)
    meter.update(preds[2:], masks[2:], loss=4.0)
    report = meter.report(["background", "lesion"])
    assert report["dice_dataset"] == pytest.approx(100 * 6 / 10)
    assert report["iou_dataset"] == pytest.approx(100 * 3 / 7)
    assert report["dice_per_image"] == pytest.approx(100 * (1 / 2 + 1 + 2 / 3) / 3)
    assert report["iou_per_image"] == pytest.approx(100 * (1 / 3 + 1 + 1 / 2) / 3)
    assert report["loss"] == pytest.approx((1.0 * 2 + 4.0 * 1) / 3)  # weighted by images
    assert report["num_images"] == 3 and report["num_empty_masks"] == 1
    assert "per_class" not in report


def test_multiclass_metrics_average_the_foreground_classes() -> None:
    masks = _rows([1, 1, 2, 0])
    preds = _rows([1, 2, 2, 2])
    # Class 1: TP 1, FN 1 → 2/3, 1/2. Class 2: TP 1, FP 2 → 2/4, 1/3.
    meter = engine_segment.SegmentationMeter(num_classes=3)
    meter.update(preds, masks)
    report = meter.report(["background", "a", "b"])
    assert report["per_class"]["a"]["dice_dataset"] == pytest.approx(100 * 2 / 3)
    assert report["per_class"]["b"]["iou_per_image"] == pytest.approx(100 * 1 / 3)
    assert report["dice_dataset"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)
    assert report["iou_dataset"] == pytest.approx(100 * (1 / 2 + 1 / 3) / 2)


def test_predict_thresholds_one_logit_and_argmaxes_several() -> None:
    binary = torch.tensor([[[[-0.1, 0.0, 0.1]]]])
    assert engine_segment.predict(binary).tolist() == [[[0, 0, 1]]]
    several = torch.tensor([[[[0.0, 2.0]], [[1.0, 0.0]], [[0.5, 3.0]]]])
    assert engine_segment.predict(several).tolist() == [[[1, 2]]]


# ----------------------------------------------------------------------- augmentation


def _painted(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A black image with a white square off the centre, and the square as its mask."""
    image = torch.zeros(3, height, width)
    mask = torch.zeros(height, width, dtype=torch.int64)
    image[:, 8:24, 26:46] = 1.0
    mask[8:24, 26:46] = 1
    return image, mask


@pytest.mark.parametrize("index", range(6))
def test_the_mask_follows_the_painted_square_through_rotation_crop_and_flip(index: int) -> None:
    image, mask = _painted(40, 56)
    generator = torch.Generator().manual_seed(index)
    options = dict(rotation=40.0, crop_min_scale=0.3, hflip_prob=0.5)
    exact = segment_data.PairedAugment(32, interpolation=InterpolationMode.NEAREST_EXACT, **options)
    params = exact.sample((40, 56), generator)
    view, view_mask = exact.apply(image, mask, params)
    assert view.shape == (3, 32, 32) and view_mask.shape == (32, 32)
    assert view_mask.dtype == torch.int64
    # Nearest neighbours on both: every output pixel samples the same input pixel.
    assert torch.equal(view[0], view_mask.float())
    # Bilinear images (the default) agree up to the square's blurred edge.
    smooth_view, smooth_mask = segment_data.PairedAugment(32, **options).apply(image, mask, params)
    assert torch.equal(smooth_mask, view_mask)
    square, labelled = smooth_view[0] > 0.5, smooth_mask.bool()
    if labelled.sum() > 4:
        overlap = (square & labelled).sum() / (square | labelled).sum()
        assert overlap > 0.8
        centre = [torch.nonzero(m).float().mean(0) for m in (square, labelled)]
        assert torch.dist(*centre) < 1.0  # pixels


def test_augmentation_moves_the_square_and_the_default_only_rotates() -> None:
    image, mask = _painted(40, 56)
    augment = segment_data.PairedAugment(32, rotation=15.0)
    params = augment.sample((40, 56), torch.Generator().manual_seed(3))
    assert params.box == (0, 0, 40, 56) and not params.hflip and 14 < abs(params.angle) <= 15
    view, view_mask = augment(image, mask, generator=torch.Generator().manual_seed(3))
    _, plain_mask = segment_data.resize_pair(image, mask, 32)
    assert not torch.equal(view_mask, plain_mask)  # rotated...
    assert (view[0] > 0.5).eq(view_mask.bool()).float().mean() > 0.97  # ...together


def test_views_are_a_function_of_seed_epoch_and_index() -> None:
    items = [_painted(40, 56) for _ in range(3)]
    views = segment_data.SegmentationViews(
        items, size=32, augment=segment_data.PairedAugment(32, rotation=30.0), seed=5
    )
    first = [views[i][1] for i in range(3)]
    backwards = [views[i][1] for i in (2, 1, 0)][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, backwards))
    views.set_epoch(1)
    assert not all(torch.equal(views[i][1], first[i]) for i in range(3))
    image, mask, index = segment_data.SegmentationViews(items, size=32)[1]
    assert index == 1 and image.shape == (3, 32, 32) and mask.shape == (32, 32)


# --------------------------------------------------------------------------------- data


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _busi(root: Path, *, broken: bool = False) -> dict[str, Path]:
    """A BUSI-style folder: 6 benign, 4 malignant and 2 normal 24 x 20 images, one benign
    image with two masks; with ``broken``, four bad pairs of every kind."""
    rng = np.random.default_rng(0)
    for name, count in (("benign", 6), ("malignant", 4), ("normal", 2)):
        for k in range(1, count + 1):
            stem = root / name / f"{name} ({k})"
            _png(stem.with_name(stem.name + ".png"), rng.integers(0, 256, (20, 24, 3), np.uint8))
            mask = np.zeros((20, 24), np.uint8)
            if name != "normal":
                mask[2 + k : 8 + k, 3:9] = 255
            _png(stem.with_name(stem.name + "_mask.png"), mask)
    second = np.zeros((20, 24), np.uint8)
    second[12:16, 15:20] = 255
    _png(root / "benign" / "benign (2)_mask_1.png", second)
    bad: dict[str, Path] = {}
    if broken:
        _png(root / "benign" / "wide.png", rng.integers(0, 256, (20, 24, 3), np.uint8))
        _png(root / "benign" / "wide_mask.png", np.zeros((20, 25), np.uint8))
        bad["mismatched"] = root / "benign" / "wide_mask.png"
        _png(root / "malignant" / "lonely.png", rng.integers(0, 256, (20, 24, 3), np.uint8))
        bad["no_mask"] = root / "malignant" / "lonely.png"
        _png(root / "malignant" / "orphan_mask.png", np.zeros((20, 24), np.uint8))
        bad["no_image"] = root / "malignant" / "orphan_mask.png"
        (root / "benign" / "garbage.png").write_bytes(b"not a png")
        _png(root / "benign" / "garbage_mask.png", np.zeros((20, 24), np.uint8))
        bad["corrupt"] = root / "benign" / "garbage.png"
    return bad


def data_args(**values: Any) -> argparse.Namespace:
    defaults = main_segment.get_args_parser().parse_args([])
    return argparse.Namespace(**{**vars(defaults), "num_workers": 0, **values})


def test_busi_folder_pairs_merge_several_masks(tmp_path: Path) -> None:
    _busi(tmp_path)
    pairs, classes, problems = segment_data.find_folder_pairs(tmp_path)
    assert classes == ["benign", "malignant", "normal"] and problems == []
    assert len(pairs) == 12
    image, masks, group = next(p for p in pairs if p[0].endswith("benign (2).png"))
    assert [Path(m).name for m in masks] == ["benign (2)_mask.png", "benign (2)_mask_1.png"]
    assert group == 0
    reader = segment_data.MaskPairs([segment_data.PairFiles(image, masks, 0, 1)], num_classes=2)
    pixels, mask = reader[0]
    assert pixels.shape == (3, 20, 24) and pixels.dtype == torch.uint8
    expected = torch.zeros(20, 24, dtype=torch.int64)
    expected[4:10, 3:9] = 1  # benign (2)_mask.png
    expected[12:16, 15:20] = 1  # benign (2)_mask_1.png
    assert torch.equal(mask, expected)


def test_folder_data_is_split_per_class_and_multiclass_masks_carry_the_class(
    tmp_path: Path,
) -> None:
    _busi(tmp_path)
    args = data_args(data="folder", data_path=str(tmp_path), val_fraction=0.25)
    splits = segment_data.build_segmentation_data(args)
    assert splits.classes == ["background", "lesion"]
    # Per class, round(fraction * n): benign 6 → 2 val + 1 test, malignant 4 → 1 + 1,
    # normal 2 → 0 + 0 (Python rounds 0.5 to even).
    sizes = {name: len(getattr(splits, name)) for name in ("train", "val", "test")}
    assert sizes == {"train": 7, "val": 3, "test": 2}
    assert sorted(chain(*splits.files.values())) == sorted(str(p) for p in tmp_path.rglob("*).png"))
    again = segment_data.build_segmentation_data(args)
    assert again.files == splits.files  # seeded by --split_seed
    multi = segment_data.build_segmentation_data(
        data_args(data="folder", data_path=str(tmp_path), mask_mode="multiclass")
    )
    assert multi.classes == ["background", "benign", "malignant", "normal"]
    values = {int(multi.train[i][1].max()) for i in range(len(multi.train))}
    assert values == {0, 1, 2}  # normal images have empty masks


def test_broken_pairs_are_named_or_skipped(tmp_path: Path) -> None:
    bad = _busi(tmp_path, broken=True)
    args = data_args(data="folder", data_path=str(tmp_path))
    with pytest.raises(ValueError, match="broken") as failure:
        segment_data.build_segmentation_data(args)
    message = str(failure.value)
    assert str(bad["no_mask"]) in message and str(bad["no_image"]) in message
    args.skip_corrupt = True
    with pytest.warns(UserWarning, match="skipping"):
        splits = segment_data.build_segmentation_data(args)
    skipped = "\n".join(chain(*splits.skipped_files.values()))
    for path in bad.values():
        assert str(path) in skipped, path
    assert "is 24x20 but its mask" in skipped
    assert len(splits.train) + len(splits.val) + len(splits.test) == 12
    assert not [p for p in chain(*splits.files.values()) if "wide" in p or "garbage" in p]


def test_export_images_links_train_and_val_images_for_pretraining(tmp_path: Path) -> None:
    _busi(tmp_path / "busi")
    data = ("--data", "folder", "--data_path", str(tmp_path / "busi"), "--val_fraction", "0.25")
    out = tmp_path / "images"
    args = segment_args(tmp_path / "unused", *data, "--export_images", str(out))
    summary = main_segment.main(args)
    assert summary["images"] == {"train": 7, "val": 3}
    assert not (tmp_path / "unused").exists()  # nothing trained
    linked = sorted(p.relative_to(out).parts[:2] for p in out.rglob("*.png"))
    assert len(linked) == 10 and {split for split, _ in linked} == {"train", "val"}
    assert {cls for _, cls in linked} == {"benign", "malignant", "normal"}
    assert not list(out.rglob("*_mask*"))
    files = json.loads((out / "splits.json").read_text())
    test_names = {Path(p).name for p in files["test"]}
    assert len(test_names) == 2 and not test_names & {p.name for p in out.rglob("*.png")}
    with pytest.raises(ValueError, match="exists"):
        main_segment.main(args)


def test_size_mismatch_found_when_reading_names_both_files(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    _png(tmp_path / "a_mask.png", np.zeros((8, 9), np.uint8))
    pair = segment_data.PairFiles(str(tmp_path / "a.png"), (str(tmp_path / "a_mask.png"),), 0, 1)
    with pytest.raises(segment_data.BadPairError, match=r"a\.png is 8x8 but its mask .*a_mask"):
        segment_data.MaskPairs([pair], num_classes=2)[0]


def test_csv_pairs_explicit_splits_and_class_valued_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = []
    for k in range(8):
        _png(tmp_path / "img" / f"{k}.png", rng.integers(0, 256, (12, 12, 3), np.uint8))
        mask = np.zeros((12, 12), np.uint8)
        mask[2:5, 2:5], mask[7:9, 7:9] = 1, 2
        _png(tmp_path / "masks" / f"{k}.png", mask)
        rows.append(f"img/{k}.png,masks/{k}.png")
    (tmp_path / "train.csv").write_text("image,mask\n" + "\n".join(rows[:6]) + "\n")
    (tmp_path / "test.csv").write_text("image,mask\n" + "\n".join(rows[6:]) + "\n")
    args = data_args(
        data="csv",
        csv_train=str(tmp_path / "train.csv"),
        csv_test=str(tmp_path / "test.csv"),
        val_fraction=0.34,
        mask_mode="multiclass",
        num_mask_classes=3,
    )
    splits = segment_data.build_segmentation_data(args)
    assert splits.classes == ["background", "1", "2"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 2, 2)
    _, mask = splits.test[0]
    assert sorted(mask.unique().tolist()) == [0, 1, 2]
    args.num_mask_classes = 2  # found when the pair is read (with --skip_corrupt: at start)
    with pytest.raises(segment_data.BadPairError, match="values .*--num_mask_classes is 2"):
        segment_data.build_segmentation_data(args).test[0]
    (tmp_path / "val.csv").write_text("image,mask\nimg/0.png,masks/0.png;masks/nope.png\n")
    args.csv_val = str(tmp_path / "val.csv")
    with pytest.raises(ValueError, match=r"val\.csv line 2: no such file"):
        segment_data.build_segmentation_data(args)


def test_data_options_are_checked() -> None:
    with pytest.raises(ValueError, match="--csv_train"):
        segment_data.build_segmentation_data(data_args(data="csv"))
    with pytest.raises(ValueError, match="--num_mask_classes"):
        segment_data.build_segmentation_data(
            data_args(data="csv", csv_train="x.csv", mask_mode="multiclass")
        )
    with pytest.raises(ValueError, match="--data_path"):
        segment_data.build_segmentation_data(data_args(data="folder"))


def test_synthetic_masks_are_the_lesions() -> None:
    args = data_args(input_size=32, num_train=6, num_val=3, num_test=3, mask_mode="multiclass")
    splits = segment_data.build_segmentation_data(args)
    lesions = splits.train.lesions
    assert splits.classes == ["background", "dark_round", "bright_irregular"]
    for index in range(6):
        image, mask = splits.train[index]
        sample = lesions.render(index)
        assert torch.equal(image, sample.image)
        assert torch.equal(mask, sample.lesion_mask.long() * sample.target)


# -------------------------------------------------------------------------------- model


@pytest.mark.parametrize("head", ["naive", "pup"])
def test_setr_gives_full_resolution_logits(head: str) -> None:
    torch.manual_seed(0)
    encoder = create_vit("vit_micro_patch8_64", img_size=32, num_classes=0, global_pool="token")
    model = SETR(encoder=encoder, num_classes=3, head=head, channels=8).eval()
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 3, 32, 32)
    if head == "pup":
        assert len(model.decoder.stages) == 3  # 8 px patches: 3 doublings
    assert "encoder.pos_embed" in model.no_weight_decay()


def test_load_encoder_takes_a_pretraining_checkpoint_at_another_size() -> None:
    args = main_pretrain.get_args_parser().parse_args(
        [
            *("--model", "vit_micro_patch8_64", "--input_size", "32"),
            *("--decoder_embed_dim", "16", "--decoder_depth", "1", "--decoder_num_heads", "2"),
        ]
    )
    args.cls_loss_weight = 0.1
    state = main_pretrain.build_model(args, num_classes=3).state_dict()
    same = create_vit("vit_micro_patch8_64", img_size=32, num_classes=0, global_pool="token")
    load_encoder(same, state)
    for name, value in same.state_dict().items():
        assert torch.equal(value, state[f"encoder.{name}"]), name
    larger = create_vit("vit_micro_patch8_64", img_size=48, num_classes=0, global_pool="token")
    load_encoder(larger, state)  # the 4 x 4 position table resampled to 6 x 6
    assert larger.pos_embed.shape == (1, 1 + 36, 96)
    assert torch.equal(larger.pos_embed[:, 0], state["encoder.pos_embed"][:, 0])
    with pytest.raises(ValueError, match="no 'encoder"):
        load_encoder(same, same.state_dict())


# ------------------------------------------------------------------------- the script


@pytest.mark.parametrize(
    "option, value",
    [("--val_fraction", "1"), ("--crop_min_scale", "0"), ("--rotation", "200"), ("--hflip", "2")],
)
def test_out_of_range_options_are_refused(tmp_path: Path, option: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"out of range: {option} "):
        main_segment.main(segment_args(tmp_path, option, value))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        main_segment.main(segment_args(tmp_path, "--input_size", "36"))
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_defaults_are_the_papers() -> None:
    args = main_segment.get_args_parser().parse_args([])
    assert (args.batch_size, args.epochs, args.lr, args.weight_decay) == (8, 200, 1e-4, 1e-4)
    assert args.bce_weight == 0.5 and args.rotation > 0 and args.crop_min_scale == 1.0
    assert args.finetune == "" and args.mask_mode == "binary"
    groups = {g.title.split(" ")[0] for g in main_segment.get_args_parser()._action_groups}
    assert {"model", "loss", "optimizer", "data", "runtime"} <= groups


def test_tiny_run_end_to_end(tmp_path: Path) -> None:
    summary = main_segment.main(segment_args(tmp_path, "--epochs", "3"))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "best.pth",
        "checkpoint.pth",
        "log.jsonl",
        "overlays_best.png",
        "overlays_final.png",
        "summary.json",
    ]
    log = read_log(tmp_path / "log.jsonl")
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    best = saved["best"]
    # best.pth is the val-selected epoch's model: re-evaluated, it gives the logged numbers.
    logged = log[best["epoch"]]
    assert best["val"]["dice_dataset"] == pytest.approx(logged["val_dice_dataset"], abs=1e-9)
    assert logged["val_dice_dataset"] == max(r["val_dice_dataset"] for r in log)
    for result in (saved["final"]["test"], best["test"], best["val"]):
        assert result["num_images"] == 16
        for key in main_segment.SELECT_METRICS:
            assert 0.0 <= result[key] <= 100.0
    assert set(saved["metrics"]) >= set(main_segment.SELECT_METRICS)
    assert saved["splits"] == {"train": 32, "val": 16, "test": 16}
    with Image.open(tmp_path / "overlays_best.png") as png:
        assert png.width >= 3 * 32 * 5 and png.height > 4 * 32 * 5
    checkpoint = outputs.load_checkpoint(tmp_path / "checkpoint.pth")
    assert set(checkpoint) == {
        *("model", "optimizer", "scaler", "lr_scheduler", "epoch", "rng", "args", "best"),
        *("script", "stats"),
    }
    assert checkpoint["best"]["epoch"] == best["epoch"]
    assert outputs.load_checkpoint(tmp_path / "best.pth")["epoch"] == best["epoch"]


@pytest.mark.slow
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    # Crops, flips and workers too: each view is drawn from (seed, epoch, index).
    options = ("--epochs", "3", "--crop_min_scale", "0.5", "--hflip", "0.5", "--drop_path", "0.1")
    options = (*options, "--num_workers", "2", "--num_train", "16", "--num_overlays", "0")
    straight = main_segment.main(segment_args(tmp_path / "straight", *options))
    stopped = main_segment.main(
        segment_args(tmp_path / "resumed", *options, "--stop_after_epoch", "1")
    )
    assert stopped["stopped_after_epoch"] == 1
    assert not (tmp_path / "resumed" / "summary.json").exists()
    checkpoint = tmp_path / "resumed" / "checkpoint.pth"
    resumed = main_segment.main(
        segment_args(tmp_path / "resumed", *options, "--resume", str(checkpoint))
    )
    for name in ("checkpoint.pth", "best.pth"):
        a = outputs.load_checkpoint(tmp_path / "straight" / name)
        b = outputs.load_checkpoint(tmp_path / "resumed" / name)
        assert a["epoch"] == b["epoch"]
        for key, value in a["model"].items():
            assert torch.equal(value, b["model"][key]), (name, key)
    assert read_log(tmp_path / "straight" / "log.jsonl") == read_log(
        tmp_path / "resumed" / "log.jsonl"
    )
    for part in ("train", "final", "best"):
        assert resumed[part] == straight[part], part


def test_output_folder_guard_resume_checks_and_finished_runs(tmp_path: Path) -> None:
    options = ("--epochs", "2", "--num_train", "8", "--num_val", "4", "--num_test", "4")
    main_segment.main(segment_args(tmp_path, *options, "--stop_after_epoch", "0"))
    with pytest.raises(ValueError, match="holds the results of an earlier run"):
        main_segment.main(segment_args(tmp_path, *options))
    checkpoint = str(tmp_path / "checkpoint.pth")
    with pytest.raises(ValueError, match="--bce_weight: checkpoint 0.5, now 1.0"):
        main_segment.main(
            segment_args(tmp_path, *options, "--resume", checkpoint, "--bce_weight", "1")
        )
    # Options that change no number may differ; the run finishes.
    done = main_segment.main(
        segment_args(tmp_path, *options, "--resume", checkpoint, "--num_overlays", "2")
    )
    summary = (tmp_path / "summary.json").read_text()
    assert json.loads(summary) == json.loads(json.dumps(done))
    again = main_segment.main(segment_args(tmp_path, *options, "--resume", checkpoint))
    assert again == json.loads(summary)  # finished: nothing trained, nothing rewritten
    assert (tmp_path / "summary.json").read_text() == summary
    with pytest.raises(ValueError, match="written by main_segment.py, not main_pretrain.py"):
        main_segment.main(segment_args(tmp_path / "other", *options, "--finetune", checkpoint))
    # --overwrite starts afresh and removes this recipe's own files too.
    main_segment.main(segment_args(tmp_path, *options, "--overwrite", "--num_overlays", "0"))
    assert not list(tmp_path.glob("overlays_*.png"))
    assert [r["epoch"] for r in read_log(tmp_path / "log.jsonl")] == [0, 1]


def test_busi_folder_run_skips_and_lists_broken_pairs(tmp_path: Path) -> None:
    bad = _busi(tmp_path / "busi", broken=True)
    data = ("--data", "folder", "--data_path", str(tmp_path / "busi"), "--skip_corrupt")
    options = (*data, "--epochs", "1", "--batch_size", "2", "--val_fraction", "0.25")
    with pytest.warns(UserWarning, match="skipping"):
        summary = main_segment.main(segment_args(tmp_path / "run", *options))
    assert summary["splits"] == {"train": 7, "val": 3, "test": 2}
    skipped = json.dumps(summary["skipped_files"])
    assert all(str(path) in skipped for path in bad.values())
    files = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert {name: len(paths) for name, paths in files.items()} == summary["splits"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--master_addr", "127.0.0.1", "--master_port", str(_free_port())),
        str(EXAMPLES / "main_segment.py"),
        *TINY,
        *("--device", "cpu", "--epochs", "2", "--batch_size", "4", "--num_test", "15"),
        *("--output_dir", str(tmp_path)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2
    # Each rank evaluated its shard; the sums cover every test image once.
    assert summary["final"]["test"]["num_images"] == 15
    assert summary["best"]["test"]["num_images"] == 15
    assert [r["epoch"] for r in read_log(tmp_path / "log.jsonl")] == [0, 1]
    assert len(outputs.load_checkpoint(tmp_path / "checkpoint.pth")["rng"]) == 2


# ------------------------------------------------ bad data refused by name (probe findings)


def _mask_file(path: Path, mask: np.ndarray, **options: Any) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path, **options)
    return str(path)


def test_binary_masks_are_lesion_at_half_their_value_range(tmp_path: Path) -> None:
    # Probe S08: "nonzero is lesion" counted a JPEG mask's compression noise as lesion.
    truth = np.zeros((32, 32), np.uint8)
    truth[5:18, 7:20] = 255
    jpeg = _mask_file(tmp_path / "m.jpg", truth, quality=75)
    with Image.open(jpeg) as raw:
        noisy = np.asarray(raw)
    assert (noisy > 0).mean() > 1.5 * (truth > 0).mean()  # the noise the old rule took in
    assert np.array_equal(segment_data.load_mask(jpeg, raw=False), truth > 0)
    # BUSI's 0/255 PNGs read as before, and so do masks of 0s and 1s, 1-bit and 16-bit.
    for name, mask in {
        "busi.png": truth,
        "ones.png": truth // 255,
        "deep.png": truth.astype(np.uint16) * 257,  # 0 / 65535
        "twelve.png": (truth > 0).astype(np.uint16) * 4095,
    }.items():
        assert np.array_equal(
            segment_data.load_mask(_mask_file(tmp_path / name, mask), raw=False), truth > 0
        )
    bilevel = _mask_file(tmp_path / "bilevel.png", truth > 0)
    assert np.array_equal(segment_data.load_mask(bilevel, raw=False), truth > 0)
    # 16-bit noise below half the range is not lesion: 0..4095 with the lesion at 4095.
    deep = (truth > 0).astype(np.uint16) * 4095 + 100
    assert np.array_equal(
        segment_data.load_mask(_mask_file(tmp_path / "d.png", deep), raw=False), truth > 0
    )
    # Values that never reach half the range are refused rather than guessed.
    labels = _mask_file(tmp_path / "labels.png", (truth > 0).astype(np.uint8) * 3)
    with pytest.raises(segment_data.BadPairError, match=r"labels\.png holds values \[0, 3\]"):
        segment_data.load_mask(labels, raw=False)


def test_class_index_masks_name_their_stray_values(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    mask = np.array([[0, 1, 2, 7]] * 4, np.uint8)
    pair = segment_data.PairFiles(
        str(tmp_path / "a.png"), (_mask_file(tmp_path / "a_mask.png", mask),), 0, None
    )
    with pytest.raises(
        segment_data.BadPairError, match=r"a_mask\.png holds values \[7\] that are no class index"
    ):
        segment_data.MaskPairs([pair], num_classes=3)[0]


def _csv_pairs(root: Path, count: int) -> list[str]:
    rng = np.random.default_rng(2)
    rows = []
    for k in range(count):
        _png(root / "img" / f"{k}.png", rng.integers(0, 256, (12, 12, 3), np.uint8))
        mask = np.zeros((12, 12), np.uint8)
        mask[2:6, 2:6] = 255
        _png(root / "img" / f"{k}_mask.png", mask)
        rows.append(f"img/{k}.png,img/{k}_mask.png")
    return rows


def test_csv_tables_are_read_as_the_classification_tables_are(tmp_path: Path) -> None:
    # Probe S25: a Latin-1 table raised a bare UnicodeDecodeError without the file name.
    rows = _csv_pairs(tmp_path, 2)
    (tmp_path / "t.csv").write_bytes(
        ("image,mask,note\n" + f"{rows[0]},gr\u00fcn\n").encode("latin-1")
    )
    with pytest.raises(ValueError, match=r"t\.csv is not UTF-8 text .*iconv -f latin1"):
        segment_data.read_csv_pairs(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_bytes(b"")
    with pytest.raises(ValueError, match=r"t\.csv is empty"):
        segment_data.read_csv_pairs(tmp_path / "t.csv")


def test_csv_repeated_rows_and_images_in_two_splits_are_refused(tmp_path: Path) -> None:
    # Probe S22/S23: repeated rows trained twice; rows of val.csv also in train.csv.
    rows = _csv_pairs(tmp_path, 6)
    (tmp_path / "train.csv").write_text("image,mask\n" + "\n".join([*rows[:4], rows[1]]) + "\n")
    with pytest.raises(ValueError, match=r"1 image\(s\) on two rows, .*1\.png: lines 3 and 6"):
        segment_data.read_csv_pairs(tmp_path / "train.csv")
    (tmp_path / "train.csv").write_text("image,mask\n" + "\n".join(rows[:4]) + "\n")
    (tmp_path / "val.csv").write_text("image,mask\n" + "\n".join(rows[3:5]) + "\n")
    (tmp_path / "test.csv").write_text("image,mask\n" + rows[5] + "\n")
    tables = {f"csv_{s}": str(tmp_path / f"{s}.csv") for s in ("train", "val", "test")}
    with pytest.raises(ValueError, match=r"1 file\(s\) are in both the train and the val split"):
        segment_data.build_segmentation_data(data_args(data="csv", **tables))


def test_folder_splits_sharing_an_image_are_refused(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        _busi(tmp_path / split)
    shared = tmp_path / "test" / "benign" / "benign (1).png"
    shared.unlink()
    shared.symlink_to(tmp_path / "train" / "benign" / "benign (1).png")
    with pytest.raises(ValueError, match=r"in both the train and the test split.*benign \(1\)"):
        segment_data.build_segmentation_data(data_args(data="folder", data_path=str(tmp_path)))


@pytest.mark.parametrize("name", ["val", "test"])
def test_a_zero_fraction_names_the_option(tmp_path: Path, name: str) -> None:
    # Probe S29: --test_fraction 0 passed the option check, then "test split is empty".
    _busi(tmp_path)
    args = data_args(data="folder", data_path=str(tmp_path), **{f"{name}_fraction": 0.0})
    with pytest.raises(ValueError, match=rf"--{name}_fraction 0 carves no {name} split"):
        segment_data.build_segmentation_data(args)


def test_a_zero_fraction_is_fine_where_the_split_is_given(tmp_path: Path) -> None:
    rows = _csv_pairs(tmp_path, 6)
    (tmp_path / "train.csv").write_text("image,mask\n" + "\n".join(rows[:5]) + "\n")
    (tmp_path / "test.csv").write_text("image,mask\n" + rows[5] + "\n")
    tables = dict(csv_train=str(tmp_path / "train.csv"), csv_test=str(tmp_path / "test.csv"))
    splits = segment_data.build_segmentation_data(
        data_args(data="csv", test_fraction=0.0, val_fraction=0.2, **tables)
    )
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 1, 1)


def test_skip_corrupt_warnings_do_not_advise_it_and_may_not_empty_a_split(
    tmp_path: Path,
) -> None:
    # Probe finding 12: with --skip_corrupt on, the warnings advised passing --skip_corrupt.
    bad = _busi(tmp_path, broken=True)
    _png(tmp_path / "benign" / "faint.png", np.zeros((20, 24, 3), np.uint8))
    _png(tmp_path / "benign" / "faint_mask.png", np.full((20, 24), 3, np.uint8))
    with pytest.warns(UserWarning) as caught:
        splits = segment_data.build_segmentation_data(
            data_args(data="folder", data_path=str(tmp_path), skip_corrupt=True)
        )
    messages = [str(w.message) for w in caught]
    assert any(str(bad["corrupt"]) in m for m in messages)
    assert any("faint_mask.png holds values [3]" in m for m in messages)
    assert not [m for m in messages if "--skip_corrupt" in m]
    assert "faint" not in json.dumps(splits.files)
    # A split given on disk whose every pair is broken is refused, naming it.
    for split in ("train", "val", "test"):
        _busi(tmp_path / "splits" / split)
    for path in (tmp_path / "splits" / "val").rglob("*).png"):
        path.write_bytes(b"not a png")
    args = data_args(data="folder", data_path=str(tmp_path / "splits"), skip_corrupt=True)
    with (
        pytest.warns(UserWarning),
        pytest.raises(ValueError, match=r"--skip_corrupt skipped all 12 pairs of the val split"),
    ):
        segment_data.build_segmentation_data(args)
