"""MaskingSchedule: warm-up epochs of random masking, then a refresh every K epochs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maskkit import MaskingSchedule


def test_msmae_pretraining_schedule() -> None:
    # MSMAE Tab. 4: 300 epochs, random masking during a 40-epoch warm-up, maps updated every 40.
    schedule = MaskingSchedule(warmup_epochs=40, refresh_every=40)
    assert [e for e in range(300) if schedule.use_random(e)] == list(range(40))
    assert [e for e in range(300) if schedule.should_refresh(e)] == [
        40, 80, 120, 160, 200, 240, 280,
    ]  # fmt: skip


def test_msmae_finetuning_schedule() -> None:
    # MSMAE Tab. 5: 100 epochs, maps updated every 20, from the pre-trained model's maps.
    schedule = MaskingSchedule(warmup_epochs=0, refresh_every=20)
    assert not any(schedule.use_random(e) for e in range(100))
    assert [e for e in range(100) if schedule.should_refresh(e)] == [0, 20, 40, 60, 80]


def test_defaults_are_msmae_pretraining() -> None:
    assert MaskingSchedule() == MaskingSchedule(warmup_epochs=40, refresh_every=40)


@given(warmup=st.integers(0, 50), every=st.integers(1, 30))
def test_refresh_epochs_and_last_refresh(warmup: int, every: int) -> None:
    schedule = MaskingSchedule(warmup_epochs=warmup, refresh_every=every)
    refreshes = set(range(warmup, 200, every))
    last = None
    for epoch in range(200):
        assert schedule.use_random(epoch) == (epoch < warmup)
        assert schedule.should_refresh(epoch) == (epoch in refreshes)
        if epoch in refreshes:
            last = epoch
        # Maps in use at `epoch` come from the latest refresh at or before it.
        assert schedule.last_refresh(epoch) == last
        # Masking from maps never starts before a refresh has produced them.
        assert schedule.use_random(epoch) or last is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"warmup_epochs": 1.5}, "warmup_epochs"),
        ({"refresh_every": 0}, "refresh_every"),
        ({"refresh_every": True}, "refresh_every"),
    ],
)
def test_bad_options_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MaskingSchedule(**kwargs)


@pytest.mark.parametrize("epoch", [-1, 2.0, None])
def test_bad_epochs_are_rejected(epoch: object) -> None:
    schedule = MaskingSchedule()
    for method in (schedule.use_random, schedule.should_refresh, schedule.last_refresh):
        with pytest.raises(ValueError, match="epoch must be an int"):
            method(epoch)  # type: ignore[arg-type]
