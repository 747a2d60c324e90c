"""Geometry of align_weights: exact references, properties over random boxes, bad input."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit import align_weights

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def crops(draw: st.DrawFn, max_side: int = 48) -> dict:
    """An image size, a map grid, an integer box inside the image, an output grid, a flip."""
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    top = draw(st.integers(0, height - 1))
    left = draw(st.integers(0, width - 1))
    return {
        "image_size": (height, width),
        "map_grid": (draw(st.integers(1, 9)), draw(st.integers(1, 9))),
        "box": (
            top,
            left,
            draw(st.integers(1, height - top)),
            draw(st.integers(1, width - left)),
        ),
        "out_grid": (draw(st.integers(1, 9)), draw(st.integers(1, 9))),
        "hflip": draw(st.booleans()),
    }


def _overlap(lo: Fraction, hi: Fraction, cell_lo: Fraction, cell_hi: Fraction) -> Fraction:
    return max(Fraction(0), min(hi, cell_hi) - max(lo, cell_lo))


def _one_hot_reference(case: dict, row: int, col: int) -> list[list[Fraction]]:
    """Exact aligned map of a map that is 1 on cell (row, col), 0 elsewhere.

    The hot region is carried into output coordinates (rows: (y - top) * gh / height;
    columns likewise, mirrored when flipped) and each output cell's covered share is
    measured there, with rational arithmetic.
    """
    (height, width), (h0, w0) = case["image_size"], case["map_grid"]
    top, left, box_h, box_w = case["box"]
    gh, gw = case["out_grid"]
    y0, y1 = Fraction(row * height, h0), Fraction((row + 1) * height, h0)
    x0, x1 = Fraction(col * width, w0), Fraction((col + 1) * width, w0)
    ys = sorted((y - top) * gh / box_h for y in (y0, y1))
    xs = sorted((x - left) * gw / box_w for x in (x0, x1))
    if case["hflip"]:
        xs = sorted(gw - x for x in xs)
    return [
        [
            _overlap(*ys, Fraction(p), Fraction(p + 1))
            * _overlap(*xs, Fraction(q), Fraction(q + 1))
            for q in range(gw)
        ]
        for p in range(gh)
    ]


@SETTINGS
@given(case=crops(), data=st.data())
def test_one_hot_map_lands_where_the_crop_puts_its_region(case: dict, data: st.DataObject) -> None:
    h0, w0 = case["map_grid"]
    row, col = data.draw(st.integers(0, h0 - 1)), data.draw(st.integers(0, w0 - 1))
    weights = torch.zeros(h0, w0, dtype=torch.float64)
    weights[row, col] = 1.0

    aligned = align_weights(
        weights, case["box"], case["image_size"], case["out_grid"], hflip=case["hflip"]
    )

    expected = torch.tensor(
        [[float(v) for v in line] for line in _one_hot_reference(case, row, col)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(aligned, expected, atol=1e-9, rtol=1e-9)
    # The peak: the output cell holding the hot region's visible centre is positive.
    (height, width), (top, left, box_h, box_w) = case["image_size"], case["box"]
    gh, gw = case["out_grid"]
    y_lo, y_hi = max(row * height / h0, top), min((row + 1) * height / h0, top + box_h)
    x_lo, x_hi = max(col * width / w0, left), min((col + 1) * width / w0, left + box_w)
    if y_hi > y_lo and x_hi > x_lo:
        p = min(int(((y_lo + y_hi) / 2 - top) * gh / box_h), gh - 1)
        q = min(int(((x_lo + x_hi) / 2 - left) * gw / box_w), gw - 1)
        assert aligned[p, gw - 1 - q if case["hflip"] else q] > 0
    else:
        assert not aligned.any()


@st.composite
def divisible_crops(draw: st.DrawFn) -> dict:
    """Sizes where a pixel-level reference is exact: the map's cells and the output cells
    both cover whole pixels (H = h0 * a, box height = gh * c, ...)."""
    h0, w0 = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    gh, gw = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    c, d = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    box_h, box_w = gh * c, gw * d
    a = draw(st.integers(-(-box_h // h0), -(-box_h // h0) + 3))
    b = draw(st.integers(-(-box_w // w0), -(-box_w // w0) + 3))
    height, width = h0 * a, w0 * b
    return {
        "map_grid": (h0, w0),
        "pixels_per_cell": (a, b),
        "image_size": (height, width),
        "box": (
            draw(st.integers(0, height - box_h)),
            draw(st.integers(0, width - box_w)),
            box_h,
            box_w,
        ),
        "out_grid": (gh, gw),
        "hflip": draw(st.booleans()),
    }


@SETTINGS
@given(case=divisible_crops(), seed=st.integers(0, 2**31 - 1))
def test_matches_cropping_and_flipping_the_pixel_map(case: dict, seed: int) -> None:
    weights = torch.rand(case["map_grid"], generator=torch.Generator().manual_seed(seed))
    weights = weights.double()
    (a, b), (gh, gw) = case["pixels_per_cell"], case["out_grid"]
    top, left, box_h, box_w = case["box"]
    pixels = weights.repeat_interleave(a, 0).repeat_interleave(b, 1)
    crop = pixels[top : top + box_h, left : left + box_w]
    if case["hflip"]:
        crop = crop.flip(-1)
    expected = crop.reshape(gh, box_h // gh, gw, box_w // gw).mean((1, 3))

    aligned = align_weights(
        weights, case["box"], case["image_size"], case["out_grid"], hflip=case["hflip"]
    )

    torch.testing.assert_close(aligned, expected, atol=1e-12, rtol=1e-12)


@SETTINGS
@given(case=crops(), value=st.floats(0.0, 1e4), fraction=st.floats(0.0, 0.99))
def test_uniform_map_stays_uniform(case: dict, value: float, fraction: float) -> None:
    top, left, box_h, box_w = case["box"]
    # A fractional box too: shrink it by a share of a pixel.
    box = (top + fraction / 2, left, box_h - fraction / 2, box_w * (1 - fraction / 2))
    weights = torch.full(case["map_grid"], value)
    for crop_box in (case["box"], box):
        aligned = align_weights(
            weights, crop_box, case["image_size"], case["out_grid"], hflip=case["hflip"]
        )
        torch.testing.assert_close(aligned, torch.full(case["out_grid"], value))


@SETTINGS
@given(
    height=st.integers(1, 64),
    width=st.integers(1, 64),
    h0=st.integers(1, 12),
    w0=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_identity_crop_returns_the_map(
    height: int, width: int, h0: int, w0: int, seed: int
) -> None:
    weights = torch.rand(h0, w0, generator=torch.Generator().manual_seed(seed))
    aligned = align_weights(weights, (0, 0, height, width), (height, width), (h0, w0))
    torch.testing.assert_close(aligned, weights)
    flipped = align_weights(weights, (0, 0, height, width), (height, width), (h0, w0), hflip=True)
    torch.testing.assert_close(flipped, weights.flip(-1))


@SETTINGS
@given(cases=st.lists(crops(max_side=32), min_size=1, max_size=5), seed=st.integers(0, 999))
def test_batched_form_equals_single_form(cases: list[dict], seed: int) -> None:
    grid = cases[0]["map_grid"]
    out_grid = cases[0]["out_grid"]
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(len(cases), *grid, generator=generator)
    boxes = torch.tensor([case["box"] for case in cases])
    sizes = torch.tensor([case["image_size"] for case in cases])
    flips = torch.tensor([case["hflip"] for case in cases])

    batched = align_weights(weights, boxes, sizes, out_grid, hflip=flips)

    single = torch.stack(
        [
            align_weights(w, case["box"], case["image_size"], out_grid, hflip=case["hflip"])
            for w, case in zip(weights, cases, strict=True)
        ]
    )
    torch.testing.assert_close(batched, single)


def test_batch_may_share_one_image_size_and_one_flip() -> None:
    weights = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[0, 0, 8, 8], [2, 4, 6, 4], [5, 1, 3, 7]])
    shared = align_weights(weights, boxes, (8, 8), (2, 2), hflip=True)
    per_sample = align_weights(
        weights, boxes, torch.tensor([[8, 8]] * 3), (2, 2), hflip=torch.ones(3, dtype=torch.bool)
    )
    torch.testing.assert_close(shared, per_sample)


def test_crop_offset_is_followed_unlike_amt() -> None:
    # The released AMT and MSMAE code divides the crop offset by the image size (0 after
    # truncation), so a bottom-right crop read the top-left cells of the map.
    weights = torch.zeros(14, 14)
    weights[7:, 7:] = 1.0
    aligned = align_weights(weights, (112, 112, 112, 112), (224, 224), (14, 14))
    torch.testing.assert_close(aligned, torch.ones(14, 14))


def test_output_dtype_and_device_follow_the_input() -> None:
    box, size = (1, 2, 5, 6), (8, 8)
    assert align_weights(torch.ones(4, 4, dtype=torch.float16), box, size, (2, 2)).dtype == (
        torch.float32
    )
    assert align_weights(torch.ones(4, 4, dtype=torch.float64), box, size, (2, 2)).dtype == (
        torch.float64
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    generator = torch.Generator().manual_seed(0)
    weights = torch.rand(6, 14, 14, generator=generator)
    boxes = torch.tensor([[0, 0, 224, 224], [10, 20, 100, 150], [50, 0, 174, 90]] * 2)
    flips = torch.tensor([False, True, False, True, True, False])
    expected = align_weights(weights, boxes, (224, 224), (14, 14), hflip=flips)
    got = align_weights(weights.cuda(), boxes.cuda(), (224, 224), (14, 14), hflip=flips.cuda())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_box": (-1, 0, 4, 4)}, "leaves the image"),
        ({"crop_box": (0, 0, 9, 4)}, "leaves the image"),
        ({"crop_box": (0, 5, 4, 4)}, "leaves the image"),
        ({"crop_box": (0, 0, 0, 4)}, "positive height and width"),
        ({"crop_box": (0, 0, 4, -2)}, "positive height and width"),
        ({"crop_box": (0, 0, float("nan"), 4)}, "positive height and width"),
        ({"crop_box": (0, 0, 4)}, "crop_box must have shape"),
        ({"image_size": (0, 8)}, "image_size"),
        ({"image_size": (8, 8, 3)}, "image_size must have shape"),
        ({"out_grid": (0, 2)}, "out_grid"),
        ({"out_grid": (2.0, 2)}, "out_grid"),
        ({"weights": torch.ones(16)}, "weights must be"),
        ({"weights": torch.ones(1, 1, 4, 4)}, "weights must be"),
        ({"hflip": torch.tensor([True, False])}, "hflip must be a bool"),
    ],
)
def test_bad_single_input_is_rejected(kwargs: dict, message: str) -> None:
    args = {
        "weights": torch.ones(4, 4),
        "crop_box": (0, 0, 4, 4),
        "image_size": (8, 8),
        "out_grid": (2, 2),
    }
    with pytest.raises(ValueError, match=message):
        align_weights(**{**args, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_box": torch.tensor([[0, 0, 4, 4], [6, 0, 4, 4]])}, "sample 1: crop_box"),
        ({"crop_box": torch.tensor([[0, 0, 4, 4]] * 3)}, r"crop_box must have shape"),
        ({"image_size": torch.tensor([[8, 8], [3, 8]])}, "sample 1: crop_box"),
        ({"hflip": torch.tensor([True, False, True])}, r"\(2,\) bool tensor"),
        ({"hflip": torch.tensor([1, 0])}, "bool"),
    ],
)
def test_bad_batched_input_is_rejected(kwargs: dict, message: str) -> None:
    args = {
        "weights": torch.ones(2, 4, 4),
        "crop_box": torch.tensor([[0, 0, 4, 4]] * 2),
        "image_size": (8, 8),
        "out_grid": (2, 2),
    }
    with pytest.raises(ValueError, match=message):
        align_weights(**{**args, **kwargs})


def test_non_tensor_weights_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="torch.Tensor"):
        align_weights([[1.0]], (0, 0, 1, 1), (1, 1), (1, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bad", "message"), [(float("nan"), "contain NaN"), (-0.5, "non-negative")], ids=["nan", "neg"]
)
def test_nan_or_negative_maps_are_refused(bad: float, message: str) -> None:
    # Issue 12.11: align_weights passed NaN and negative maps through to the masker.
    weights = torch.rand(2, 4, 4)
    weights[1, 2, 2] = bad
    with pytest.raises(ValueError, match=message):
        align_weights(weights, torch.tensor([[0, 0, 8, 8]] * 2), (8, 8), (2, 2))


def test_hflip_advice_fits_the_input() -> None:
    with pytest.raises(ValueError, match=r"hflip must be a bool for weights of shape \(4, 4\)"):
        align_weights(torch.rand(4, 4), (0, 0, 8, 8), (8, 8), (2, 2), hflip=torch.tensor([True]))
    with pytest.raises(ValueError, match=r"a bool or a \(2,\) bool tensor"):
        align_weights(
            torch.rand(2, 4, 4), torch.tensor([[0, 0, 8, 8]] * 2), (8, 8), (2, 2), hflip=1
        )


def _crop(**fields: object):
    from maskkit import CropParams

    one = {"top": 0, "left": 0, "height": 4, "width": 4, "hflip": False}
    return CropParams(**{**one, "image_height": 8, "image_width": 8, **fields})


def test_hflip_that_is_no_bool_is_named() -> None:
    # A string or None reached torch.as_tensor ("new(): invalid data type 'str'").
    with pytest.raises(TypeError, match="hflip must be a bool, got str 'yes'"):
        align_weights(torch.ones(4, 4), (0, 0, 4, 4), (8, 8), (2, 2), hflip="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"a bool or a \(2,\) bool tensor, got NoneType None"):
        align_weights(torch.ones(2, 4, 4), (0, 0, 4, 4), (8, 8), (2, 2), hflip=None)  # type: ignore[arg-type]


_PAIR = torch.tensor([0, 0])
_BATCH_OF_TWO = {
    "top": _PAIR,
    "left": _PAIR,
    "height": _PAIR + 4,
    "width": _PAIR + 4,
    "hflip": torch.tensor([True, False]),
    "image_height": _PAIR + 8,
    "image_width": _PAIR + 8,
}


@pytest.mark.parametrize(
    ("fields", "batch", "error", "message"),
    [
        # Fields of mixed shapes failed in torch.stack ("stack expects each tensor ...").
        (
            {"hflip": torch.tensor([True, False])},
            2,
            ValueError,
            r"must all be scalars .* got shapes: top \(\), .*hflip \(2,\), image_height \(\)",
        ),
        ({**_BATCH_OF_TWO, "top": torch.zeros(2, 1)}, 2, ValueError, r"top \(2, 1\), left \(2,\)"),
        (_BATCH_OF_TWO, 3, ValueError, r"a CropParams of 2 crops needs \(2, h0, w0\) weights"),
        ({"hflip": "yes"}, 2, TypeError, "CropParams.hflip must be a number or a tensor, got str"),
        ({"top": None}, 2, TypeError, "CropParams.top must be a number or a tensor, got NoneType"),
        # A float or an int other than 0/1 used to become a flip silently.
        ({"hflip": 0.5}, 2, ValueError, r"CropParams.hflip must hold bools \(or 0/1 ints\)"),
        (
            {"hflip": 2},
            2,
            ValueError,
            r"CropParams.hflip must hold bools or 0/1 ints, got values \[2\]",
        ),
    ],
)
def test_bad_crop_params_name_the_field(
    fields: dict, batch: int, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        align_weights(torch.ones(batch, 4, 4), _crop(**fields), out_grid=(2, 2))


def test_crop_params_flip_may_be_zero_one_ints() -> None:
    weights = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    as_ints = {**_BATCH_OF_TWO, "hflip": torch.tensor([1, 0])}
    expected = align_weights(weights, _crop(**_BATCH_OF_TWO), out_grid=(2, 2))
    assert torch.equal(align_weights(weights, _crop(**as_ints), out_grid=(2, 2)), expected)
