"""PNG mask grids and heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskkit import RandomMasker, SAMMasker
from maskkit.demo import SyntheticLesions
from maskkit.viz import heatmap, save_mask_grid

P = 4  # patch size
H, W = 16, 24  # a 4 x 6 patch grid


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image).astype(np.int64)


def panel(canvas: np.ndarray, row: int, col: int, *, pad: int = 2, scale: int = 1) -> np.ndarray:
    top, left = pad + row * (H * scale + pad), pad + col * (W * scale + pad)
    return canvas[top : top + H * scale, left : left + W * scale]


def images_and_labels() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(3, 3, H, W, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    labels = torch.zeros(3, 24, dtype=torch.int8)
    labels[:, 1] = 1  # patch (0, 1) masked
    labels[:, 2] = -1  # patch (0, 2) thrown
    return images, labels


@pytest.mark.parametrize(("with_weights", "columns"), [(False, 2), (True, 3)])
@pytest.mark.parametrize(("max_images", "rows"), [(8, 3), (2, 2)])
@pytest.mark.parametrize(("scale", "pad"), [(1, 2), (3, 0)])
def test_png_has_the_documented_size(
    tmp_path: Path, with_weights: bool, columns: int, max_images: int, rows: int, scale, pad
) -> None:
    images, labels = images_and_labels()
    weights = torch.rand(3, 4, 6) if with_weights else None
    out = save_mask_grid(
        tmp_path / "grid.png",
        images,
        labels,
        patch_size=P,
        weights=weights,
        max_images=max_images,
        scale=scale,
        pad=pad,
    )
    canvas = read_png(out)
    grid_height = rows * H * scale + (rows + 1) * pad
    grid_width = columns * W * scale + (columns + 1) * pad
    assert canvas.shape[0] == grid_height + 14 + pad and canvas.shape[2] == 3
    assert canvas.shape[1] >= grid_width
    # The grid sits at the top left; white fills what the legend's width adds.
    assert (canvas[:grid_height, grid_width:] == 255).all()


def test_legend_shows_each_group_colour_and_only_the_parts_drawn(tmp_path: Path) -> None:
    images, labels = images_and_labels()
    plain = read_png(save_mask_grid(tmp_path / "a.png", images, labels, patch_size=P, pad=2))
    lesions = torch.zeros(3, H, W, dtype=torch.bool)
    full = read_png(
        save_mask_grid(
            tmp_path / "b.png",
            images,
            labels,
            patch_size=P,
            pad=2,
            weights=torch.rand(3, 4, 6),
            lesion_masks=lesions,
        )
    )
    grid_height = 3 * H + 4 * 2
    legend = plain[grid_height + 3 : grid_height + 10]  # inside the swatches' rows
    # The first swatch (visible) is flat mid grey, as a visible patch of a grey image.
    assert (legend[:, 3:10] == 128).all()
    colours = {tuple(int(v) for v in c) for c in np.unique(legend.reshape(-1, 3), axis=0)}
    masked = np.rint(255 * (0.4 * 0.5 + 0.6 * np.array([0.55, 0.62, 0.75])))
    assert tuple(int(v) for v in masked) in colours  # blended towards blue-grey
    assert (26, 26, 26) in colours  # thrown: darkened to a fifth
    assert full.shape[1] > plain.shape[1]  # two more entries: lesion box, weights


def test_overlay_keeps_visible_tints_masked_darkens_thrown(tmp_path: Path) -> None:
    images, labels = images_and_labels()
    canvas = read_png(save_mask_grid(tmp_path / "g.png", images, labels, patch_size=P))
    for row in range(3):
        image, overlay = panel(canvas, row, 0), panel(canvas, row, 1)
        expected = np.rint(images[row].permute(1, 2, 0).double().numpy() * 255)
        assert np.array_equal(image, expected)
        visible, masked, thrown = (np.s_[0:P, c * P : (c + 1) * P] for c in (0, 1, 2))
        assert np.array_equal(overlay[visible], image[visible])
        assert np.abs(overlay[thrown] - np.rint(0.2 * expected[thrown])).max() <= 1
        assert overlay[thrown].sum() < 0.3 * image[thrown].sum()  # clearly darker
        assert not np.array_equal(overlay[masked], image[masked])
        assert overlay[masked].sum() > overlay[thrown].sum()
        # The rest of the grid (rows 1-3) is visible and untouched.
        assert np.array_equal(overlay[P:], image[P:])


def test_split_and_labels_draw_the_same(tmp_path: Path) -> None:
    split = SAMMasker()(3, 24, torch.rand(3, 4, 6), generator=torch.Generator().manual_seed(2))
    images, _ = images_and_labels()
    a = read_png(save_mask_grid(tmp_path / "a.png", images, split, patch_size=P))
    b = read_png(save_mask_grid(tmp_path / "b.png", images, split.labels, patch_size=P))
    assert np.array_equal(a, b)


def test_heatmap_panel_follows_the_weights(tmp_path: Path) -> None:
    images, labels = images_and_labels()
    weights = torch.zeros(3, 4, 6)
    weights[:, 3, 5] = 2.0  # the highest weight, bottom-right patch
    weights[:, 0, 0] = -1.0  # the lowest weight, top-left patch
    canvas = read_png(
        save_mask_grid(tmp_path / "g.png", images, labels, patch_size=P, weights=weights)
    )
    heat = panel(canvas, 0, 2)
    assert (heat[-P:, -P:] == [252, 255, 164]).all()  # lightest colour
    assert (heat[:P, :P] == [0, 0, 4]).all()  # darkest colour
    middle = heat[P : 2 * P, :P]
    assert (middle == middle[0, 0]).all() and 4 < middle[0, 0].sum() < 252 + 255 + 164


def test_heatmap_is_monotone_and_per_map() -> None:
    ramp = torch.arange(12.0).view(1, 3, 4)
    colours = heatmap(torch.cat([ramp, 100 * ramp + 7]))
    assert colours.shape == (2, 3, 4, 3) and colours.dtype == np.uint8
    assert np.array_equal(colours[0], colours[1])  # each map is min-max scaled on its own
    brightness = colours[0].reshape(12, 3).sum(axis=1)
    assert (np.diff(brightness) > 0).all()
    assert (heatmap(torch.ones(2, 2)) == [0, 0, 4]).all()  # a constant map: darkest
    with pytest.raises(ValueError, match="NaN"):
        heatmap(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"\(gh, gw\)"):
        heatmap(torch.ones(4))


def test_lesion_box_in_green_around_the_lesion(tmp_path: Path) -> None:
    ds = SyntheticLesions(2, image_size=(H, W), num_classes=2, lesion_size=0.2, seed=4)
    images = torch.stack([ds[i][0] for i in range(2)])
    masks = torch.stack([ds.lesion_mask(i) for i in range(2)])
    split = RandomMasker()(2, 24)
    canvas = read_png(
        save_mask_grid(tmp_path / "g.png", images, split, patch_size=P, lesion_masks=masks)
    )
    green = (panel(canvas, 1, 0) == [0, 255, 0]).all(axis=-1)
    rows, cols = np.nonzero(masks[1].numpy())
    top, left = max(rows.min() - 1, 0), max(cols.min() - 1, 0)
    bottom, right = min(rows.max() + 1, H - 1), min(cols.max() + 1, W - 1)
    assert green[top, left : right + 1].all() and green[bottom, left : right + 1].all()
    assert green[top : bottom + 1, left].all() and green[top : bottom + 1, right].all()
    assert not green[top + 1 : bottom, left + 1 : right].any()  # the lesion itself stays visible
    assert not (panel(canvas, 0, 0) == [0, 255, 0]).all(axis=-1).any()  # class 0: no box


def test_normalised_images_are_restored(tmp_path: Path) -> None:
    images, labels = images_and_labels()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalised = (images - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    plain = read_png(save_mask_grid(tmp_path / "a.png", images, labels, patch_size=P))
    restored = read_png(
        save_mask_grid(tmp_path / "b.png", normalised, labels, patch_size=P, mean=mean, std=std)
    )
    assert np.abs(plain - restored).max() <= 1


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path: Path, monkeypatch) -> None:
    images, labels = images_and_labels()
    target = tmp_path / "deep" / "dir" / "g.png"  # parents are created
    save_mask_grid(target, images, labels, patch_size=P)
    before = target.read_bytes()

    def broken_save(self, fp, format=None, **params):
        fp.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_mask_grid(target, images * 0.5, labels, patch_size=P)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["g.png"]  # no temp file left


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": torch.rand(3, 1, H, W)}, r"float \(B, 3, H, W\)"),
        ({"images": torch.zeros(3, 3, H, W, dtype=torch.uint8)}, "float"),
        ({"split": torch.zeros(3, 12, dtype=torch.int8)}, r"covers \(3, 12\)"),
        ({"patch_size": 5}, "multiple of patch_size"),
        ({"weights": torch.rand(3, 3, 3)}, "weights of shape"),
        ({"lesion_masks": torch.zeros(3, H, H, dtype=torch.bool)}, "lesion_masks of shape"),
        ({"max_images": 0}, "max_images"),
        ({"mean": (0.5, 0.5, 0.5)}, "both mean and std"),
    ],
)
def test_bad_inputs_raise_before_writing(tmp_path: Path, change: dict, message: str) -> None:
    images, labels = images_and_labels()
    args = {"images": images, "split": labels, "patch_size": P, **change}
    with pytest.raises(ValueError, match=message):
        save_mask_grid(tmp_path / "g.png", args.pop("images"), args.pop("split"), **args)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("patch_size", "error", "message"),
    [(0, ValueError, "patch_size must be an int >= 1, got 0"), (4.0, TypeError, "got float")],
)
def test_patch_size_must_be_a_positive_int(
    tmp_path: Path, patch_size: object, error: type, message: str
) -> None:
    # patch_size=0 raised ZeroDivisionError.
    images, labels = images_and_labels()
    with pytest.raises(error, match=message):
        save_mask_grid(tmp_path / "g.png", images, labels, patch_size=patch_size)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("mean", "std", "error", "message"),
    [
        # Two values for 3 channels failed in view(3, 1, 1): "shape '[3, 1, 1]' is invalid".
        (
            (0.5, 0.5),
            (0.5, 0.5, 0.5),
            ValueError,
            r"mean must be 3 finite numbers, one per channel of the 3-channel images, got "
            r"\(0.5, 0.5\)",
        ),
        ((0.5,) * 3, (0.5, 0.5), ValueError, "std must be 3 finite numbers"),
        ("abc", (0.5,) * 3, TypeError, "mean must be 3 finite numbers.* got str 'abc'"),
        ((0.5,) * 3, (0.5, float("nan"), 0.5), ValueError, "std must be 3 finite numbers"),
    ],
)
def test_mean_and_std_need_one_number_per_channel(
    tmp_path: Path, mean: object, std: object, error: type, message: str
) -> None:
    images, labels = images_and_labels()
    with pytest.raises(error, match=message):
        save_mask_grid(tmp_path / "g.png", images, labels, patch_size=P, mean=mean, std=std)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


def test_mean_and_std_may_be_arrays_or_tensors(tmp_path: Path) -> None:
    images, labels = images_and_labels()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    as_tuples = save_mask_grid(tmp_path / "a.png", images, labels, patch_size=P, mean=mean, std=std)
    as_arrays = save_mask_grid(
        tmp_path / "b.png",
        images,
        labels,
        patch_size=P,
        mean=np.array(mean),  # type: ignore[arg-type]
        std=torch.tensor(std, dtype=torch.float64),  # type: ignore[arg-type]
    )
    assert np.array_equal(read_png(as_tuples), read_png(as_arrays))


def test_labels_outside_the_three_groups_are_refused(tmp_path: Path) -> None:
    # A label of 7 matched no group and was drawn as visible.
    images, labels = images_and_labels()
    labels[1, 5] = 7
    with pytest.raises(
        ValueError,
        match=r"labels must be 0 \(visible\), 1 \(masked\) or -1 \(thrown\), found \[7\]",
    ):
        save_mask_grid(tmp_path / "g.png", images, labels, patch_size=P)
    assert not any(tmp_path.iterdir())


def test_heatmap_of_any_finite_float64_range() -> None:
    # max - min of +-1e308 overflowed to Inf, and numpy raised IndexError on the colormap.
    huge = torch.tensor([[[-1e308, 0.0, 1e308]], [[0.0, 1.0, 2.0]]], dtype=torch.float64)
    small = torch.tensor([[[-1.0, 0.0, 1.0]], [[0.0, 1.0, 2.0]]], dtype=torch.float64)
    assert np.array_equal(heatmap(huge), heatmap(small))
    tiny = torch.tensor([[0.0, 5e-324]], dtype=torch.float64)  # the smallest subnormal
    assert np.array_equal(heatmap(tiny), heatmap(torch.tensor([[0.0, 1.0]])))


@pytest.mark.parametrize(
    ("weights", "error", "message"),
    [
        (torch.tensor([[float("nan"), 1.0]]), ValueError, "weights hold NaN or Inf"),
        (torch.tensor([[-float("inf"), 1.0]]), ValueError, "weights hold NaN or Inf"),
        (np.ones((2, 2)), TypeError, "weights must be a torch.Tensor, got ndarray"),
        (torch.ones(2, 0, 3), ValueError, r"\(B, gh, gw\) with gh, gw >= 1, got \(2, 0, 3\)"),
    ],
)
def test_heatmap_rejects_what_it_cannot_colour(weights: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        heatmap(weights)  # type: ignore[arg-type]
