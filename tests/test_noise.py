"""Noise-pattern masking (ColorMAE): spectra of the colours, weights, exact lowest-noise masks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit.functional import split_counts
from maskkit.maskers import SAMMasker
from maskkit.noise import (
    DEFAULT_BAND,
    MIN_CUTOFF,
    NOISE_COLORS,
    NoisePatternMasker,
    _filtered_noise,
    color_noise,
    noise_filter,
    noise_pattern_weights,
)
from maskkit.split import MaskSplit


def check_partition(split: MaskSplit, batch_size: int, num_patches: int) -> None:
    """visible ∪ masked ∪ thrown = arange(L), each exactly once, and consistent labels."""
    every = torch.cat([split.visible, split.masked, split.thrown], dim=1)
    expected = torch.arange(num_patches, device=every.device).expand(batch_size, num_patches)
    assert torch.equal(every.sort(dim=1).values, expected)
    assert torch.equal(split.ids_shuffle.gather(1, split.ids_restore), expected)
    for indices, code in ((split.visible, 0), (split.masked, 1), (split.thrown, -1)):
        assert (split.labels.gather(1, indices) == code).all()


def band_powers(noise: torch.Tensor, band: tuple[float, float]) -> list[float]:
    """Mean periodogram of (B, S, S) windows in the low, mid and high bands (DC excluded)."""
    size = noise.shape[-1]
    power = torch.fft.fft2(noise.double()).abs().square().mean(0)
    freq = torch.fft.fftfreq(size, dtype=torch.float64)
    radial = torch.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)
    low, high = band
    bands = [(radial > 0) & (radial < low), (radial >= low) & (radial < high), radial >= high]
    return [float(power[b].mean()) for b in bands]


@pytest.mark.parametrize("color", NOISE_COLORS)
def test_each_colour_has_its_documented_spectrum(color: str) -> None:
    generator = torch.Generator().manual_seed(0)
    noise = color_noise(1000, (32, 32), color=color, generator=generator)  # type: ignore[arg-type]
    low, mid, high = band_powers(noise, DEFAULT_BAND)
    if color == "white":
        assert max(low, mid, high) / min(low, mid, high) < 1.1  # flat
    elif color == "red":
        assert low > 3 * mid and mid > 3 * high  # low-pass
    elif color == "blue":
        assert high > 2 * mid and mid > 2 * low  # high-pass
    elif color == "green":
        assert mid > 1.5 * low and mid > 1.5 * high  # band-pass
    else:
        assert mid < low / 1.5 and mid < high / 1.5  # band-stop (purple)
    # Neighbouring patches: smooth colours correlate, blue anti-correlates, white neither.
    lag1 = float((noise[:, :, 1:] * noise[:, :, :-1]).mean())
    expected = {"white": (-0.03, 0.03), "red": (0.7, 1.0), "blue": (-1.0, -0.1)}
    if color in expected:
        lower, upper = expected[color]
        assert lower < lag1 < upper, lag1


def test_windows_are_standardised_and_reproducible() -> None:
    noise = color_noise(64, (14, 10), generator=torch.Generator().manual_seed(1))
    assert noise.shape == (64, 14, 10) and noise.dtype == torch.float32
    flat = noise.reshape(64, -1)
    assert torch.allclose(flat.mean(1), torch.zeros(64), atol=1e-5)
    assert torch.allclose(flat.std(1), torch.ones(64), atol=1e-4)
    again = color_noise(64, (14, 10), generator=torch.Generator().manual_seed(1))
    assert torch.equal(noise, again)
    assert not torch.equal(
        noise, color_noise(64, (14, 10), generator=torch.Generator().manual_seed(2))
    )


@pytest.mark.parametrize("color", ["red", "blue", "green", "purple"])
def test_separable_filter_equals_the_fourier_filter(color: str) -> None:
    grid, band = (12, 9), (0.08, 0.3)
    field = _filtered_noise(5, grid, color, band, None, torch.Generator().manual_seed(3))
    # Reference: the same white noise filtered by noise_filter in the Fourier domain.
    widest = band[1] if color == "blue" else band[0]
    size = max(grid) + int(torch.tensor(0.5 / widest).ceil())
    white = torch.randn(5, size, size, generator=torch.Generator().manual_seed(3)).double()
    freq = torch.fft.fftfreq(size, dtype=torch.float64)
    radial = torch.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)
    reference = torch.fft.ifft2(torch.fft.fft2(white) * noise_filter(radial, color, band)).real
    assert torch.allclose(field.double(), reference[:, : grid[0], : grid[1]], atol=1e-4)


def test_masker_masks_exactly_the_lowest_noise() -> None:
    masker = NoisePatternMasker(0.75, color="green", throw_ratio=0.1)
    split = masker(16, 196, generator=torch.Generator().manual_seed(4))
    noise = color_noise(16, (14, 14), color="green", generator=torch.Generator().manual_seed(4))
    order = noise.reshape(16, -1).argsort(dim=1)  # lowest first
    counts = split_counts(196, 0.75, 0.1)
    for row in range(16):
        assert set(split.masked[row].tolist()) == set(order[row, : counts.masked].tolist())
        thrown = order[row, counts.masked : counts.masked + counts.thrown]
        assert set(split.thrown[row].tolist()) == set(thrown.tolist())


@settings(max_examples=40, deadline=None)
@given(
    batch_size=st.integers(1, 4),
    grid=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    mask_ratio=st.floats(0.0, 0.9),
    color=st.sampled_from(NOISE_COLORS),
    seed=st.integers(0, 2**31 - 1),
)
def test_counts_partition_and_determinism(
    batch_size: int, grid: tuple[int, int], mask_ratio: float, color: str, seed: int
) -> None:
    num_patches = grid[0] * grid[1]
    if int(num_patches * (1 - mask_ratio)) < 1:
        return
    masker = NoisePatternMasker(mask_ratio, color=color, grid=grid)  # type: ignore[arg-type]
    split = masker(batch_size, num_patches, generator=torch.Generator().manual_seed(seed))
    check_partition(split, batch_size, num_patches)
    assert split.masked.shape[1] == split_counts(num_patches, mask_ratio).masked
    again = masker(batch_size, num_patches, generator=torch.Generator().manual_seed(seed))
    assert all(torch.equal(a, b) for a, b in zip(split, again))


def test_weights_follow_the_noise_and_sharpen_towards_colormae() -> None:
    weights = noise_pattern_weights(
        32, (14, 14), sharpness=6.0, generator=torch.Generator().manual_seed(5)
    )
    noise = color_noise(32, (14, 14), generator=torch.Generator().manual_seed(5))
    assert weights.shape == (32, 14, 14)
    flat_w, flat_n = weights.reshape(32, -1), noise.reshape(32, -1)
    assert torch.allclose(flat_w.amax(1), torch.ones(32))  # 1 at the lowest noise
    assert torch.allclose(flat_w.amin(1), torch.full((32,), torch.exp(torch.tensor(-6.0)).item()))
    assert torch.equal(flat_w.argmax(1), flat_n.argmin(1))
    # Decreasing in the noise: along increasing noise, the weights never go up.
    along = flat_w.gather(1, flat_n.argsort(dim=1))
    assert (along[:, 1:] <= along[:, :-1]).all()
    ones = noise_pattern_weights(4, (5, 5), sharpness=0.0)
    assert torch.equal(ones, torch.ones(4, 5, 5))
    # Fed to a weighted masker, a sharp pattern picks nearly ColorMAE's deterministic mask.
    sharp = noise_pattern_weights(
        256, (14, 14), sharpness=60.0, generator=torch.Generator().manual_seed(6)
    )
    weighted = SAMMasker(0.75, 0.0)(256, 196, sharp, generator=torch.Generator().manual_seed(7))
    exact = NoisePatternMasker(0.75)(256, 196, generator=torch.Generator().manual_seed(6))
    overlap = (weighted.is_masked() & exact.is_masked()).sum() / exact.is_masked().sum()
    assert overlap > 0.9


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="color must be one of"):
        NoisePatternMasker(color="pink")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="band must be two frequencies 0 < low < high"):
        NoisePatternMasker(band=(0.3, 0.1))
    with pytest.raises(ValueError, match="band must be two"):
        color_noise(2, (4, 4), band=(0.1,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sharpness must lie in"):
        noise_pattern_weights(2, (4, 4), sharpness=100.0)
    with pytest.raises(TypeError, match="sharpness must be a float"):
        noise_pattern_weights(2, (4, 4), sharpness="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grid must be two positive ints"):
        color_noise(2, (4,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="takes no weights"):
        NoisePatternMasker()(2, 196, torch.rand(2, 196))
    with pytest.raises(ValueError, match="not a square"):
        NoisePatternMasker()(2, 50)
    assert "color='green'" in repr(NoisePatternMasker())


@pytest.mark.parametrize("color", ["white", "green"])
def test_color_noise_rejects_a_single_cell(color: str) -> None:
    # One value has no variance: standardising it would give NaN.
    with pytest.raises(ValueError, match=r"grid=\(1, 1\) has a single cell.*at least 2 cells"):
        color_noise(2, (1, 1), color=color)  # type: ignore[arg-type]
    noise = color_noise(2, (1, 2), color=color)  # type: ignore[arg-type]
    assert torch.isfinite(noise).all()


def test_noise_filter_rejects_unknown_colours() -> None:
    colours = r"\('white', 'red', 'blue', 'green', 'purple'\)"
    with pytest.raises(ValueError, match=rf"color must be one of {colours}, got 'teal'"):
        noise_filter(torch.linspace(0, 0.5, 8), "teal")  # type: ignore[arg-type]


def test_band_low_cut_off_is_bounded_for_memory() -> None:
    # The field is max(gh, gw) + ceil(0.5 / low) patches square: 1e-6 would take terabytes.
    message = (
        r"band=\(1e-06, 0.25\) has a low cut-off below 0.01 cycles per patch: .* "
        r"max\(gh, gw\) \+ 500000 patches per sample, so memory grows as 1 / low\^2.*"
        r"pass low in \[0.01, high\)"
    )
    with pytest.raises(ValueError, match=message):
        NoisePatternMasker(band=(1e-6, 0.25))
    for call in (color_noise, noise_pattern_weights):
        with pytest.raises(ValueError, match="low cut-off below 0.01"):
            call(2, (4, 4), band=(0.005, 0.25))
    # The bound itself is allowed: a 50-patch margin.
    assert NoisePatternMasker(band=(MIN_CUTOFF, 0.25))(2, 16).masked.shape == (2, 12)


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager() -> None:
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    masker = NoisePatternMasker(0.75, color="green")

    def sample(batch_size: int) -> MaskSplit:
        return masker(batch_size, 196)

    compiled = torch.compile(sample, fullgraph=True)
    with inductor_config.patch(fallback_random=True):
        torch.manual_seed(0)
        got = compiled(8)
    torch.manual_seed(0)
    expected = sample(8)
    # The matrix products may round differently once fused: compare the masked sets.
    assert torch.equal(got.labels, expected.labels)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCuda:
    @pytest.mark.parametrize("color", NOISE_COLORS)
    def test_masking_never_syncs_and_replays(self, color: str) -> None:
        masker = NoisePatternMasker(0.75, color=color)  # type: ignore[arg-type]
        torch.cuda.set_sync_debug_mode("error")
        try:
            first = masker(
                128, 196, device="cuda", generator=torch.Generator("cuda").manual_seed(0)
            )
            again = masker(
                128, 196, device="cuda", generator=torch.Generator("cuda").manual_seed(0)
            )
            weights = noise_pattern_weights(128, (14, 14), color=color, device="cuda")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        check_partition(first, 128, 196)
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        assert weights.is_cuda and bool((weights > 0).all())
