"""Masker options, bad input and MaskSplit helpers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit import AMTMasker, RandomMasker, SAMMasker, gather_tokens


def test_defaults_follow_the_papers() -> None:
    assert (SAMMasker().mask_ratio, SAMMasker().throw_ratio) == (0.45, 0.30)  # MSMAE Table 4
    assert (AMTMasker().mask_ratio, AMTMasker().throw_ratio) == (0.45, 0.40)  # AMT
    assert (RandomMasker().mask_ratio, RandomMasker().throw_ratio) == (0.75, 0.0)  # MAE
    assert "mask_ratio=0.45" in repr(SAMMasker())


@pytest.mark.parametrize("masker_cls", [SAMMasker, AMTMasker])
@pytest.mark.parametrize(
    ("mask_ratio", "throw_ratio", "message"),
    [
        (-0.1, 0.2, "mask_ratio must lie in"),
        (0.5, 1.5, "throw_ratio must lie in"),
        (0.7, 0.4, "must be below 1"),
        (0.7, 0.3, "must be below 1"),  # nothing visible for any L: rejected when built
        (float("nan"), 0.1, "mask_ratio must lie in"),
    ],
)
def test_bad_ratios_fail_at_construction(
    masker_cls: type, mask_ratio: float, throw_ratio: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        masker_cls(mask_ratio, throw_ratio)


def test_non_numeric_ratio_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="mask_ratio"):
        SAMMasker("0.4", 0.3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mask_ratio must lie in"):
        RandomMasker(1.2)
    with pytest.raises(ValueError, match="must be below 1"):
        RandomMasker(1.0)


def test_split_without_visible_patch_is_rejected() -> None:
    # Possible ratios that leave nothing visible for this L fail at the call, naming L.
    with pytest.raises(ValueError, match="no visible patch out of 196"):
        SAMMasker(0.5, 0.499)(2, 196)
    with pytest.raises(ValueError, match="no visible patch out of 5"):
        RandomMasker(0.9)(2, 5)


@pytest.mark.parametrize(
    ("bad_value", "message"),
    [
        (float("nan"), "contain NaN; attention maps come out NaN"),
        (float("inf"), "contain Inf"),
        (-1.0, "non-negative, found -1.0"),
        (-1e-12, "non-negative"),
    ],
    ids=["nan", "inf", "neg", "tiny-neg"],
)
def test_bad_weight_values_raise_on_cpu(bad_value: float, message: str) -> None:
    weights = torch.rand(3, 16)
    weights[1, 5] = bad_value
    with pytest.raises(ValueError, match=message):
        SAMMasker()(3, 16, weights)


@pytest.mark.parametrize("scale", [1.0, 1e-300, 1e-310, 1e300])
def test_float64_weights_keep_their_relative_size_at_any_scale(scale: float) -> None:
    # Multiplying a sample's weights by a constant changes nothing, also where the scaled
    # values underflow (1e-300, subnormal 1e-310) or overflow (1e300) float32.
    weights = torch.tensor([[1.0, 1000.0]], dtype=torch.float64).expand(4000, 2) * scale
    split = SAMMasker(0.5, 0.0)(4000, 2, weights, generator=torch.Generator().manual_seed(0))
    heavy_masked = (split.masked[:, 0] == 1).double().mean().item()
    expected = 1000 / 1001
    sigma = (expected * (1 - expected) / 4000) ** 0.5
    assert abs(heavy_masked - expected) < 6 * sigma + 1e-3


def test_value_check_can_be_switched_off() -> None:
    weights = torch.rand(3, 16)
    weights[0, 0] = -1.0
    split = SAMMasker(validate=False)(3, 16, weights)
    assert split.visible.shape == (3, 4)


@pytest.mark.parametrize(
    ("shape", "batch_size", "num_patches"),
    [
        ((3, 15), 3, 16),
        ((2, 16), 3, 16),
        ((3, 4, 5), 3, 16),
        ((3, 16, 1, 1), 3, 16),
        ((48,), 3, 16),
    ],
)
def test_weights_of_the_wrong_shape_are_rejected(
    shape: tuple[int, ...], batch_size: int, num_patches: int
) -> None:
    with pytest.raises(ValueError, match="do not match batch_size"):
        SAMMasker()(batch_size, num_patches, torch.rand(shape))


def test_integer_or_non_tensor_weights_are_type_errors() -> None:
    with pytest.raises(TypeError, match="floating dtype"):
        SAMMasker()(2, 4, torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        SAMMasker()(2, 4, [[1.0] * 4] * 2)  # type: ignore[arg-type]


def test_random_masker_refuses_weights() -> None:
    with pytest.raises(ValueError, match="takes no weights"):
        RandomMasker()(2, 16, torch.rand(2, 16))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_sizes_are_rejected(bad: object) -> None:
    error = TypeError if isinstance(bad, (bool, float)) else ValueError
    with pytest.raises(error, match="batch_size must be an int"):
        SAMMasker()(bad, 16)  # type: ignore[arg-type]
    with pytest.raises(error, match="num_patches must be an int"):
        SAMMasker()(2, bad)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    batch_size=st.integers(1, 5),
    num_patches=st.integers(4, 60),
    width=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_helpers_agree_with_the_indices(
    batch_size: int, num_patches: int, width: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(batch_size, num_patches, generator=generator)
    split = SAMMasker(0.4, 0.3)(batch_size, num_patches, weights, generator=generator)
    x = torch.randn(batch_size, num_patches, width, generator=generator)
    for row in range(batch_size):
        assert torch.equal(split.gather_visible(x)[row], x[row, split.visible[row]])
        assert torch.equal(split.gather_masked(x)[row], x[row, split.masked[row]])
        assert torch.equal(
            gather_tokens(x[..., 0], split.visible)[row], x[row, split.visible[row], 0]
        )
        assert set(split.is_thrown()[row].nonzero().flatten().tolist()) == set(
            split.thrown[row].tolist()
        )
        assert set(split.is_visible()[row].nonzero().flatten().tolist()) == set(
            split.visible[row].tolist()
        )
    mask = split.loss_mask()
    assert mask.dtype == torch.float32
    assert torch.equal(mask.bool(), split.is_masked())
    assert torch.equal(
        split.is_visible() | split.is_masked() | split.is_thrown(),
        torch.ones(batch_size, num_patches, dtype=torch.bool),
    )
    assert split.loss_mask(torch.bfloat16).dtype == torch.bfloat16
    assert split.num_patches == num_patches
    assert all(torch.equal(a, b) for a, b in zip(split.to("cpu"), split))


def test_tokens_of_the_wrong_shape_are_refused_not_shifted() -> None:
    # Issue 12.9: (B, 1 + L, D) with the cls token still in gathered shifted tokens, and
    # (B, L - 1, D) a neighbouring sample's token, silently.
    split = SAMMasker()(2, 16, torch.rand(2, 16))
    with pytest.raises(ValueError, match=r"1 token\(s\) too many: drop the prefix"):
        split.gather_visible(torch.randn(2, 17, 8))
    with pytest.raises(ValueError, match=r"expected \(2, 16, ...\)"):
        split.gather_masked(torch.randn(2, 15, 8))
    with pytest.raises(ValueError, match=r"expected \(2, 16, ...\)"):
        split.gather_visible(torch.randn(3, 16, 8))
    with pytest.raises(ValueError, match="the same B"):
        gather_tokens(torch.randn(3, 16, 8), split.visible)


def test_gather_refuses_indices_that_would_read_another_sample() -> None:
    # Out-of-range indices used to read the neighbouring sample's row of the flat batch.
    tokens = torch.randn(2, 16, 8)
    with pytest.raises(ValueError, match=r"must lie in \[0, 16\).* from 0 to 16"):
        gather_tokens(tokens, torch.tensor([[16, 0], [0, 0]]))
    with pytest.raises(ValueError, match=r"from -1 to 3"):
        gather_tokens(tokens, torch.tensor([[3, -1], [0, 0]]))
    split = RandomMasker(0.5)(2, 16)
    with pytest.raises(TypeError, match="integer patch indices.*split.visible"):
        gather_tokens(tokens, split.is_visible())
    with pytest.raises(TypeError, match="integer patch indices"):
        gather_tokens(tokens, split.visible.float())
    with pytest.raises(TypeError, match="torch.Tensor"):
        gather_tokens(tokens.tolist(), split.visible)
    with pytest.raises(TypeError, match="torch.dtype"):
        split.loss_mask("float")
    assert torch.equal(gather_tokens(tokens, split.visible.int()), split.gather_visible(tokens))
