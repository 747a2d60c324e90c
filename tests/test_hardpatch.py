"""Hard-patch mining: hardest share always masked, the rest uniform, HPM's alpha schedule."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit.functional import split_counts, split_from_priorities
from maskkit.hardpatch import (
    HardPatchMasker,
    HardPatchSchedule,
    hard_patch_count,
    hard_patch_priorities,
)
from maskkit.split import MaskSplit

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hpm_step.py"


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


@settings(max_examples=80, deadline=None)
@given(
    batch_size=st.integers(1, 6),
    num_patches=st.integers(2, 200),
    mask_ratio=st.floats(0.0, 0.9),
    throw_ratio=st.sampled_from([0.0, 0.05]),
    alpha=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_hardest_share_is_always_masked(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    throw_ratio: float,
    alpha: float,
    seed: int,
) -> None:
    if int(num_patches * (1 - (mask_ratio + throw_ratio))) < 1:
        return
    generator = torch.Generator().manual_seed(seed)
    losses = torch.randn(batch_size, num_patches, generator=generator)  # any sign
    masker = HardPatchMasker(mask_ratio, alpha=alpha, throw_ratio=throw_ratio)
    split = masker(batch_size, num_patches, losses, generator=generator)
    check_partition(split, batch_size, num_patches)
    counts = split_counts(num_patches, mask_ratio, throw_ratio)
    assert split.masked.shape[1] == counts.masked and split.thrown.shape[1] == counts.thrown
    num_hard = int(counts.masked * alpha)  # HPM: int((L - len_keep) * keep_ratio)
    hardest = losses.topk(num_hard, dim=1).indices
    assert split.is_masked().gather(1, hardest).all()
    first = masker(batch_size, num_patches, losses, generator=torch.Generator().manual_seed(seed))
    again = masker(batch_size, num_patches, losses, generator=torch.Generator().manual_seed(seed))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_the_rest_is_uniform() -> None:
    draws, num_patches = 20_000, 20
    losses = torch.arange(num_patches, dtype=torch.float32).expand(draws, num_patches)
    masker = HardPatchMasker(0.5, alpha=0.4)  # M = 10, k = 4: patches 16..19 always masked
    split = masker(draws, num_patches, losses, generator=torch.Generator().manual_seed(1))
    masked = split.is_masked().double().mean(0)
    assert (masked[16:] == 1).all()
    # The other 6 masked patches are uniform over the remaining 16: 6 / 16 each.
    for share in masked[:16].tolist():
        assert_frequency(share, 6 / 16, draws)
    # Visible ones too: and the masked draw is the same with any (finite) loss values left.
    shifted = masker(draws, num_patches, losses * 3 - 7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(shifted.labels, split.labels)


def test_alpha_zero_is_uniform_and_per_call_alpha_overrides() -> None:
    draws = 20_000
    losses = torch.arange(10.0).expand(draws, 10)
    split = HardPatchMasker(0.5, alpha=0.0)(
        draws, 10, losses, generator=torch.Generator().manual_seed(2)
    )
    for share in split.is_masked().double().mean(0).tolist():
        assert_frequency(share, 0.5, draws)
    masker = HardPatchMasker(0.5, alpha=0.0)
    full = masker(4, 10, losses[:4], alpha=1.0)
    assert (full.masked.sort(1).values == torch.arange(5, 10)).all()  # all 5 by loss
    with pytest.raises(ValueError, match="alpha must lie in"):
        masker(4, 10, losses[:4], alpha=1.5)


def test_priorities_put_the_hardest_first() -> None:
    losses = torch.randn(8, 50, generator=torch.Generator().manual_seed(3))
    priorities = hard_patch_priorities(losses, 7, generator=torch.Generator().manual_seed(4))
    hard = priorities >= 1
    assert (hard.sum(1) == 7).all()
    assert torch.equal(hard, torch.zeros_like(hard).scatter_(1, losses.topk(7, 1).indices, True))
    assert (priorities < 2).all() and (priorities >= 0).all()
    assert hard_patch_count(147, 0.5) == 73 and hard_patch_count(147, 0.0) == 0


@pytest.mark.parametrize("throw_ratio", [0.0, 0.1])
def test_masker_makes_the_groups_of_its_priorities(throw_ratio: float) -> None:
    """The top-k split has the groups the full sort of hard_patch_priorities would give."""
    losses = torch.randn(64, 196, generator=torch.Generator().manual_seed(5))
    masker = HardPatchMasker(0.6, alpha=0.5, throw_ratio=throw_ratio)
    split = masker(64, 196, losses, generator=torch.Generator().manual_seed(6))
    counts = masker.counts(196)
    priorities = hard_patch_priorities(
        losses, hard_patch_count(counts.masked, 0.5), generator=torch.Generator().manual_seed(6)
    )
    reference = split_from_priorities(priorities, counts)
    assert torch.equal(split.labels, reference.labels)
    for got, want in zip(split[:3], reference[:3]):  # groups in patch order
        assert torch.equal(got, want.sort(dim=1).values)


def test_alpha_schedule_follows_hpm() -> None:
    schedule = HardPatchSchedule(200)  # HPM: keep_ratio = (epoch + 1) / total_epoch * 0.5
    assert schedule(0) == pytest.approx(0.5 / 200)
    assert schedule(99) == pytest.approx(0.25)
    assert schedule(199) == pytest.approx(0.5)
    assert schedule(400) == pytest.approx(0.5)  # stays at the end value
    assert hard_patch_count(147, schedule(0)) == 0  # HPM falls back to random masking
    custom = HardPatchSchedule(10, start=0.1, end=0.3)
    assert [round(custom(e), 6) for e in (0, 4, 9)] == [0.12, 0.2, 0.3]
    with pytest.raises(ValueError, match="total_epochs must be an int >= 1"):
        HardPatchSchedule(0)
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        schedule(-1)
    with pytest.raises(ValueError, match="end must lie in"):
        HardPatchSchedule(10, end=1.5)


def test_inputs_are_checked() -> None:
    with pytest.raises(TypeError, match="needs predicted per-patch losses"):
        HardPatchMasker()(2, 16)
    with pytest.raises(ValueError, match="alpha must lie in"):
        HardPatchMasker(alpha=-0.1)
    with pytest.raises(ValueError, match="do not match batch_size"):
        HardPatchMasker()(2, 16, torch.rand(3, 16))
    bad = torch.randn(2, 16)
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="losses holds NaN or Inf"):
        HardPatchMasker()(2, 16, bad)
    assert HardPatchMasker(validate=False)(2, 16, bad).masked.shape == (2, 12)
    assert "alpha=0.5" in repr(HardPatchMasker())


def test_priorities_check_num_hard_and_the_losses_shape() -> None:
    losses = torch.randn(2, 16)
    for bad in (20, 17, -1):
        with pytest.raises(
            ValueError, match=rf"num_hard must lie in \[0, L\] = \[0, 16\].*got {bad}; take it"
        ):
            hard_patch_priorities(losses, bad)
    with pytest.raises(TypeError, match="num_hard must be an int, got float 2.0"):
        hard_patch_priorities(losses, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"losses must be \(B, L\).*got shape \(2, 4, 4\)"):
        hard_patch_priorities(torch.randn(2, 4, 4), 3)
    assert ((hard_patch_priorities(losses, 16) >= 1).sum(1) == 16).all()  # the bounds work
    assert (hard_patch_priorities(losses, 0) < 1).all()


def _load_example():
    spec = importlib.util.spec_from_file_location("hpm_step", EXAMPLE)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["hpm_step"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_example_step_trains_the_loss_predictor_and_masks_by_it() -> None:
    example = _load_example()
    torch.manual_seed(0)
    model = example.TinyHPM(image_size=32, patch_size=4, embed_dim=32)
    teacher = example.TinyHPM(image_size=32, patch_size=4, embed_dim=32)
    teacher.load_state_dict(model.state_dict())
    teacher.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.rand(6, 3, 32, 32)
    before = model.loss_head.weight.detach().clone()
    out = example.train_step(
        model, teacher, example.HardPatchMasker(0.75), images, optimizer,
        alpha=0.5, ema=0.9, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert all(math.isfinite(float(out[k])) for k in ("loss", "reconstruction", "loss_prediction"))
    assert not torch.equal(before, model.loss_head.weight)  # the loss head learns
    # The split came from the teacher's predictions: its 24 hardest of 48 masked are masked.
    split, predicted = out["split"], out["teacher_predicted"]
    assert predicted.shape == (6, 64) and split.masked.shape == (6, 48)
    assert split.is_masked().gather(1, predicted.topk(24, dim=1).indices).all()
    for relative in (True, False):
        target = torch.rand(3, 10)
        perfect = example.loss_prediction_loss(target * 50, target, relative=relative)
        reverse = example.loss_prediction_loss(-target * 50, target, relative=relative)
        assert perfect < reverse


@pytest.mark.slow
def test_example_runs_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    example = _load_example()
    args = example.get_args_parser().parse_args(
        ["--steps", "4", "--epochs", "2", "--batch_size", "4"]
    )
    history = example.main(args)
    assert [h["alpha"] for h in history] == [0.25, 0.25, 0.5, 0.5]
    assert "alpha 0.500" in capsys.readouterr().out


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager() -> None:
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    masker = HardPatchMasker(0.75, alpha=0.5)
    losses = torch.randn(8, 196)

    def sample(predicted: torch.Tensor) -> MaskSplit:
        return masker(predicted.shape[0], predicted.shape[1], predicted)

    compiled = torch.compile(sample, fullgraph=True)
    with inductor_config.patch(fallback_random=True):
        torch.manual_seed(0)
        got = compiled(losses)
    torch.manual_seed(0)
    expected = sample(losses)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCuda:
    def test_masking_never_syncs_and_replays(self) -> None:
        losses = torch.randn(256, 196, device="cuda")
        masker = HardPatchMasker(0.75, alpha=0.5)
        torch.cuda.set_sync_debug_mode("error")
        try:
            first = masker(256, 196, losses, generator=torch.Generator("cuda").manual_seed(0))
            again = masker(256, 196, losses, generator=torch.Generator("cuda").manual_seed(0))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        check_partition(first, 256, 196)
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        hardest = losses.topk(73, dim=1).indices
        assert first.is_masked().gather(1, hardest).all()


def test_benchmark_reference_is_hpms_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """HPM's loop as benchmarks/bench_strategies.py re-implements it masks the same way."""
    # The benchmark scripts import each other (common, bench_masking) as top-level modules.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("bench_strategies")
    losses = torch.randn(16, 196, generator=torch.Generator().manual_seed(9))
    mask = bench.hpm_reference(losses, 0.75, 0.5).bool()
    assert (mask.sum(1) == 147).all()
    assert mask.gather(1, losses.topk(73, dim=1).indices).all()  # int(147 * 0.5) hardest
