"""AttMask: deterministic top-k ("high", "low"), hints, per-sample masking probability."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit.attmask import AttMaskMasker, attmask_priorities
from maskkit.functional import split_counts
from maskkit.split import MaskSplit


def check_partition(split: MaskSplit, batch_size: int, num_patches: int) -> None:
    """visible ∪ masked ∪ thrown = arange(L), each exactly once, and consistent labels."""
    every = torch.cat([split.visible, split.masked, split.thrown], dim=1)
    expected = torch.arange(num_patches, device=every.device).expand(batch_size, num_patches)
    assert torch.equal(every.sort(dim=1).values, expected)
    assert torch.equal(split.ids_shuffle.gather(1, split.ids_restore), expected)
    for indices, code in ((split.visible, 0), (split.masked, 1), (split.thrown, -1)):
        assert (split.labels.gather(1, indices) == code).all()


def assert_frequency(observed: float, expected: float, draws: int) -> None:
    # Six binomial standard errors: a false alarm is about 1e-9.
    bound = 6 * math.sqrt(max(expected * (1 - expected), 1e-12) / draws) + 1e-9
    assert abs(observed - expected) <= bound, (observed, expected, bound)


def as_set(indices: torch.Tensor) -> set[int]:
    return set(indices.tolist())


@pytest.mark.parametrize("throw_ratio", [0.0, 0.25])
def test_high_masks_exactly_the_most_attended_share(throw_ratio: float) -> None:
    batch_size, num_patches = 32, 196
    attention = torch.rand(batch_size, 14, 14, generator=torch.Generator().manual_seed(0))
    masker = AttMaskMasker(0.4, mode="high", masking_prob=1.0, throw_ratio=throw_ratio)
    split = masker(batch_size, num_patches, attention)
    counts = split_counts(num_patches, 0.4, throw_ratio)
    order = attention.reshape(batch_size, -1).argsort(dim=1, descending=True)
    for row in range(batch_size):
        assert as_set(split.masked[row]) == as_set(order[row, : counts.masked])
        top = counts.masked + counts.thrown
        assert as_set(split.thrown[row]) == as_set(order[row, counts.masked : top])
    # Deterministic: no generator needed, same split every time.
    assert torch.equal(split.labels, masker(batch_size, num_patches, attention).labels)


def test_low_masks_exactly_the_least_attended_share() -> None:
    attention = torch.rand(16, 100, generator=torch.Generator().manual_seed(1))
    split = AttMaskMasker(0.3, mode="low", masking_prob=1.0)(16, 100, attention)
    order = attention.argsort(dim=1)
    for row in range(16):
        assert as_set(split.masked[row]) == as_set(order[row, :30])


def test_hints_reveal_the_documented_number_of_top_tokens() -> None:
    batch_size, num_patches, mask_ratio = 4000, 100, 0.3
    masker = AttMaskMasker(mask_ratio, mode="hints", masking_prob=1.0, show_max=0.1)
    num_hints, pool = masker.hint_counts(num_patches)
    assert (num_hints, pool) == (int(0.1 * 0.3 * 100), 10) == (3, 10)  # AttMask's defaults
    attention = torch.rand(num_patches).expand(batch_size, num_patches)
    split = masker(batch_size, num_patches, attention, generator=torch.Generator().manual_seed(2))
    counts = split_counts(num_patches, mask_ratio)
    order = attention[0].argsort(descending=True)
    top = as_set(order[: counts.masked + num_hints])
    hint_pool = order[:pool]
    for row in range(0, batch_size, 97):
        masked = as_set(split.masked[row])
        revealed = top - masked
        assert masked <= top and len(revealed) == num_hints  # top M + R minus R hints
        assert revealed <= as_set(hint_pool)  # hints come from the H most attended
        assert revealed <= as_set(split.visible[row])
    # Hints are uniform over the pool: each of the H top tokens is revealed w.p. R / H.
    revealed_share = split.is_visible()[:, hint_pool].double().mean(0)
    for share in revealed_share.tolist():
        assert_frequency(share, num_hints / pool, batch_size)


def test_each_sample_follows_its_attention_with_masking_prob() -> None:
    batch_size, num_patches = 4000, 64
    attention = torch.rand(batch_size, num_patches, generator=torch.Generator().manual_seed(3))
    masker = AttMaskMasker(0.3, mode="high", masking_prob=0.5)
    split = masker(batch_size, num_patches, attention, generator=torch.Generator().manual_seed(4))
    num_masked = split.masked.shape[1]
    top = attention.topk(num_masked, dim=1).indices.sort(1).values
    guided = (split.masked.sort(1).values == top).all(1)
    # A uniform draw of 19 of 64 equals the top 19 with probability 1 / C(64, 19) ~ 1e-16.
    assert_frequency(guided.double().mean().item(), 0.5, batch_size)
    _, returned = attmask_priorities(
        attention, masking_prob=0.5, generator=torch.Generator().manual_seed(4)
    )
    assert torch.equal(returned, guided)
    # Unguided samples are uniform: each patch masked w.p. M / L.
    unguided = split.is_masked()[~guided].double().mean(0)
    for share in unguided[:8].tolist():
        assert_frequency(share, num_masked / num_patches, int((~guided).sum()))


@settings(max_examples=60, deadline=None)
@given(
    batch_size=st.integers(1, 5),
    num_patches=st.integers(4, 120),
    mask_ratio=st.floats(0.05, 0.7),
    throw_ratio=st.sampled_from([0.0, 0.1]),
    mode=st.sampled_from(["high", "hints", "low"]),
    masking_prob=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_counts_partition_and_determinism(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    throw_ratio: float,
    mode: str,
    masking_prob: float,
    seed: int,
) -> None:
    masker = AttMaskMasker(
        mask_ratio, mode=mode, masking_prob=masking_prob, throw_ratio=throw_ratio
    )  # type: ignore[arg-type]
    attention = torch.rand(batch_size, num_patches, generator=torch.Generator().manual_seed(seed))
    if int(num_patches * (1 - (mask_ratio + throw_ratio))) < 1:
        return
    if mode == "hints":
        try:
            masker.hint_counts(num_patches)
        except ValueError as error:
            assert "hints" in str(error)
            return
    split = masker(
        batch_size, num_patches, attention, generator=torch.Generator().manual_seed(seed)
    )
    check_partition(split, batch_size, num_patches)
    counts = split_counts(num_patches, mask_ratio, throw_ratio)
    assert split.masked.shape[1] == counts.masked and split.thrown.shape[1] == counts.thrown
    again = masker(
        batch_size, num_patches, attention, generator=torch.Generator().manual_seed(seed)
    )
    assert all(torch.equal(a, b) for a, b in zip(split, again))


def test_attention_from_the_extractor_drives_the_masker() -> None:
    timm = pytest.importorskip("timm")
    from maskkit.attention import AttentionExtractor

    model = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0).eval()
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    extractor = AttentionExtractor(model)
    with extractor.capture() as captured, torch.no_grad():
        model.forward_features(images)
    maps = captured.maps  # (B, 4, 4) on the same view the student sees
    split = AttMaskMasker(0.5, masking_prob=1.0)(3, 16, maps)
    top = maps.reshape(3, 16).topk(8, dim=1).indices
    for row in range(3):
        assert as_set(split.masked[row]) == as_set(top[row])


def test_options_and_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        AttMaskMasker(mode="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="masking_prob must lie in"):
        AttMaskMasker(masking_prob=1.5)
    with pytest.raises(ValueError, match="show_ratio=0.2 exceeds show_max=0.1"):
        AttMaskMasker(mode="hints", show_ratio=0.2, show_max=0.1)
    with pytest.raises(TypeError, match="validate must be a bool"):
        AttMaskMasker(validate=1)  # type: ignore[arg-type]
    masker = AttMaskMasker(0.3, mode="hints", show_max=0.9, show_ratio=0.05)
    with pytest.raises(ValueError, match="do not fit"):
        masker(2, 100, torch.rand(2, 100))
    with pytest.raises(TypeError, match="needs the teacher's attention"):
        AttMaskMasker()(2, 16)
    with pytest.raises(ValueError, match="do not match batch_size"):
        AttMaskMasker()(2, 16, torch.rand(2, 15))
    bad = torch.rand(2, 16)
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="attention holds NaN or Inf"):
        AttMaskMasker()(2, 16, bad)
    with pytest.raises(ValueError, match="differs from attention.device"):
        AttMaskMasker()(2, 16, torch.rand(2, 16), device="meta")
    assert "mode='high'" in repr(AttMaskMasker())


def test_priorities_need_attention_of_shape_b_l() -> None:
    expected = r"attention must be \(B, L\) scores, one row per sample, got shape "
    with pytest.raises(ValueError, match=expected + r"\(2, 4, 4\); flatten .*flatten\(1\)"):
        attmask_priorities(torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match=expected + r"\(16,\)"):
        attmask_priorities(torch.rand(16))
    priorities, _ = attmask_priorities(torch.rand(2, 4, 4).flatten(1))
    assert priorities.shape == (2, 16)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["high", "hints"])
def test_torch_compile_fullgraph_matches_eager(mode: str) -> None:
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    masker = AttMaskMasker(0.3, mode=mode)  # type: ignore[arg-type]
    attention = torch.rand(8, 196)

    def sample(att: torch.Tensor) -> MaskSplit:
        return masker(att.shape[0], att.shape[1], att)

    compiled = torch.compile(sample, fullgraph=True)
    with inductor_config.patch(fallback_random=True):
        torch.manual_seed(0)
        got = compiled(attention)
    torch.manual_seed(0)
    expected = sample(attention)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCuda:
    @pytest.mark.parametrize("mode", ["high", "hints", "low"])
    def test_masking_never_syncs_and_replays(self, mode: str) -> None:
        masker = AttMaskMasker(0.4, mode=mode)  # type: ignore[arg-type]
        attention = torch.rand(128, 14, 14, device="cuda", dtype=torch.bfloat16)
        torch.cuda.set_sync_debug_mode("error")
        try:
            first = masker(128, 196, attention, generator=torch.Generator("cuda").manual_seed(0))
            again = masker(128, 196, attention, generator=torch.Generator("cuda").manual_seed(0))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        check_partition(first, 128, 196)
        assert all(torch.equal(a, b) for a, b in zip(first, again))
