"""Run hygiene of the MSMAE recipes (issue 12): exact resume with workers, guarded output
folders, refused setting changes, finished runs, stop-and-resume, file modes, stale
temporaries, and clear errors for bad checkpoints, models, ratios, folders and full disks.

The end-to-end tests share one finished 3-epoch pre-training run (``finished``), copied
by the tests that change it.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import runpy
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import main_finetune  # noqa: E402
import main_pretrain  # noqa: E402
import main_segment  # noqa: E402
from msmae_util import outputs, runs  # noqa: E402
from msmae_util.runtime import UsageError, cosine_scheduler  # noqa: E402

TINY = ["--model", "vit_micro_patch8_64", "--input_size", "32", "--device", "cpu"]
TINY_DATA = ["--num_train", "32", "--num_val", "16", "--batch_size", "8", "--no_progress"]
TINY_DECODER = ["--decoder_embed_dim", "32", "--decoder_depth", "1", "--decoder_num_heads", "2"]
# Random masking in epoch 0, maps refreshed before epochs 1 and 2.
SCHEDULE = ["--epochs", "3", "--mask_warmup_epochs", "1", "--refresh_every", "1"]
SCHEDULE += ["--warmup_epochs", "1"]


def pretrain_args(out: Path, *extra: str, workers: int = 0) -> argparse.Namespace:
    argv = [*TINY, *TINY_DATA, *TINY_DECODER, "--num_workers", str(workers)]
    argv += ["--output_dir", str(out)]
    return main_pretrain.get_args_parser().parse_args([*argv, *extra])


def finetune_args(out: Path, *extra: str) -> argparse.Namespace:
    # From scratch (no --finetune): SAM's maps come from the model being fine-tuned.
    argv = [*TINY, *TINY_DATA, "--num_workers", "0", "--map_source", "refresh"]
    argv += ["--output_dir", str(out)]
    return main_finetune.get_args_parser().parse_args([*argv, *extra])


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_state(first: Path, second: Path) -> None:
    """Two runs ended bit-identical: weights, optimizer moments, bank and log."""
    a, b = (
        outputs.load_checkpoint(first / "checkpoint.pth"),
        outputs.load_checkpoint(second / "checkpoint.pth"),
    )
    assert a["epoch"] == b["epoch"]
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for key, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][key][name]), (key, name)
    assert torch.equal(a["bank"]["weights"], b["bank"]["weights"])
    assert read_log(first / "log.jsonl") == read_log(second / "log.jsonl")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted pre-training run with 2 DataLoader workers, written under umask 022."""
    out = tmp_path_factory.mktemp("finished") / "run"
    threads, umask = torch.get_num_threads(), os.umask(0o022)
    torch.set_num_threads(1)
    try:
        main_pretrain.main(pretrain_args(out, *SCHEDULE, workers=2))
    finally:
        os.umask(umask)
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def copy_of(tmp_path: Path) -> Any:
    def copy(run: Path) -> Path:
        return Path(shutil.copytree(run, tmp_path / "copy"))

    return copy


@pytest.fixture
def no_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a recipe gets as far as reading its data."""

    def built(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the recipe read its data before refusing")

    monkeypatch.setattr(main_pretrain, "build_datasets", built)
    monkeypatch.setattr(main_finetune, "build_datasets", built)


class _InterruptedError(Exception):
    pass


def interrupt_after_first_checkpoint(monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    real_save = module.save_checkpoint

    def save_then_stop(path: Path, state: dict[str, Any]) -> None:
        real_save(path, state)
        raise _InterruptedError

    monkeypatch.setattr(module, "save_checkpoint", save_then_stop)


# ------------------------------------------------- 1: exact resume with DataLoader workers


@pytest.mark.slow
def test_resume_with_workers_is_bit_identical(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 12.1: with --num_workers 2 the first resumed epoch's loss differed (0.58053 vs
    # 0.58454). Each epoch's workers start anew from the restored global RNG and copy the
    # dataset's epoch; the crops come from per-sample generators.
    run = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        interrupt_after_first_checkpoint(patch, main_pretrain)
        with pytest.raises(_InterruptedError):
            main_pretrain.main(pretrain_args(run, *SCHEDULE, workers=2))
    shutil.copytree(run, tmp_path / "no_workers")
    resume = ("--resume", str(run / "checkpoint.pth"))
    main_pretrain.main(pretrain_args(run, *SCHEDULE, *resume, workers=2))
    assert_same_state(finished, run)
    # --num_workers may differ on resume: it changes nothing in the result.
    other = tmp_path / "no_workers"
    resume = ("--resume", str(other / "checkpoint.pth"))
    main_pretrain.main(pretrain_args(other, *SCHEDULE, *resume, workers=0))
    assert_same_state(finished, other)


# ---------------------------------------------------------- 2: changed settings on resume


@pytest.mark.slow
@pytest.mark.usefixtures("no_building")
@pytest.mark.parametrize(
    ("changes", "listed"),
    [
        (("--masker", "amt", "--cls_loss_weight", "0"), ["--cls_loss_weight", "--masker"]),
        (("--seed", "1", "--crop_min_scale", "0.3"), ["--crop_min_scale", "--seed"]),
        (("--mask_ratio", "0.4", "--throw_ratio", "0.35"), ["--mask_ratio", "--throw_ratio"]),
        (("--epochs", "4"), ["--epochs"]),
        (("--blr", "2e-3"), ["--blr", "--lr"]),  # lr is derived from blr
    ],
)
def test_resume_refuses_changed_settings_and_lists_them(
    finished: Path, changes: tuple[str, ...], listed: list[str]
) -> None:
    checkpoint = str(finished / "checkpoint.pth")
    args = pretrain_args(finished, *SCHEDULE, *changes, "--resume", checkpoint)
    with pytest.raises(ValueError, match="--allow_changed_args") as caught:
        main_pretrain.main(args)
    message = str(caught.value)
    assert checkpoint in message
    assert sorted(re.findall(r"(--\w+): checkpoint", message)) == listed


@pytest.mark.slow
@pytest.mark.usefixtures("no_building")
def test_resume_allows_only_the_changes_it_is_told_to(finished: Path) -> None:
    changes = ("--seed", "1", "--crop_min_scale", "0.3", "--allow_changed_args", "seed")
    args = pretrain_args(
        finished, *SCHEDULE, *changes, "--resume", str(finished / "checkpoint.pth")
    )
    with pytest.raises(ValueError, match="--crop_min_scale: checkpoint 0.2, now 0.3") as caught:
        main_pretrain.main(args)
    assert "--seed" not in str(caught.value)


@pytest.mark.slow
def test_options_that_may_differ_on_resume(finished: Path, copy_of: Any) -> None:
    run = copy_of(finished)
    free = ("--num_workers", "1", "--device", "cpu", "--stop_after_epoch", "5")
    summary = main_pretrain.main(
        pretrain_args(run, *SCHEDULE, *free, "--resume", str(run / "checkpoint.pth"))
    )
    assert summary == json.loads((finished / "summary.json").read_text())
    assert {"resume", "output_dir", "num_workers", "no_progress", "device"} <= runs.FREE_ON_RESUME


@pytest.mark.slow
def test_allowed_longer_schedule_trains_on_with_the_new_cosine(
    finished: Path, copy_of: Any
) -> None:
    run = copy_of(finished)
    longer = ("--epochs", "4", "--allow_changed_args", "epochs")
    args = pretrain_args(run, *SCHEDULE, *longer, "--resume", str(run / "checkpoint.pth"))
    summary = main_pretrain.main(args)
    log = read_log(run / "log.jsonl")
    assert [r["epoch"] for r in log] == [0, 1, 2, 3]
    assert log[:3] == read_log(finished / "log.jsonl")
    assert summary["epochs"] == 4 and summary["final"]["loss"] == log[-1]["loss"]
    # The lr schedule follows the new --epochs (the old one had ended at --min_lr 0).
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    scheduler = cosine_scheduler(optimizer, args, 4)  # 32 images / batch 8: 4 steps
    scheduler.step_update(4 * 4 - 1)
    assert log[-1]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9)
    assert log[-1]["lr"] > 0


def test_check_resume_args_lists_changes_and_processes() -> None:
    saved = {"seed": 0, "masker": "sam", "num_workers": 4, "image_dir": ["a", "b"]}
    checkpoint = {"args": saved, "rng": [{}, {}], "epoch": 0}
    now = argparse.Namespace(
        seed=0, masker="sam", num_workers=0, image_dir=["a", "b"], allow_changed_args=None
    )
    assert runs.check_resume_args(checkpoint, now, world_size=2, path="c.pth") == set()
    now.masker, now.image_dir = "amt", ["c"]
    with pytest.raises(ValueError) as caught:
        runs.check_resume_args(checkpoint, now, world_size=1, path="c.pth")
    message = str(caught.value)
    assert "--masker: checkpoint 'sam', now 'amt'" in message
    assert "--image_dir: checkpoint ['a', 'b'], now ['c']" in message
    assert "processes: checkpoint 2, now 1" in message
    now.allow_changed_args = ["masker", "--image_dir", "world_size"]
    allowed = runs.check_resume_args(checkpoint, now, world_size=1, path="c.pth")
    assert allowed == {"masker", "image_dir", "world_size"}


# ---------------------------------------------------------------- 3: finished runs


@pytest.mark.slow
def test_resuming_a_finished_run_keeps_its_results(
    finished: Path, copy_of: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_of(finished)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    summary = main_pretrain.main(
        pretrain_args(run, *SCHEDULE, "--resume", str(run / "checkpoint.pth"))
    )
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert summary == json.loads(before["summary.json"])
    assert "already finished" in capsys.readouterr().out
    # Killed after its last checkpoint, before summary.json: the summary is rebuilt from
    # the checkpoint, with the last epoch's stats (not "final": {}).
    (run / "summary.json").unlink()
    rebuilt = main_pretrain.main(
        pretrain_args(run, *SCHEDULE, "--resume", str(run / "checkpoint.pth"))
    )
    original = json.loads(before["summary.json"])
    assert rebuilt["final"] == original["final"] != {}
    assert rebuilt["val_lesion_hit_rate"] == original["val_lesion_hit_rate"]
    assert json.loads((run / "summary.json").read_text())["final"] == original["final"]
    assert read_log(run / "log.jsonl") == read_log(finished / "log.jsonl")


# ------------------------------------------------------------ 4: guarded output folder


@pytest.mark.slow
@pytest.mark.usefixtures("no_building")
def test_new_run_into_a_folder_with_results_is_refused(finished: Path) -> None:
    with pytest.raises(ValueError, match="--overwrite") as caught:
        main_pretrain.main(pretrain_args(finished, *SCHEDULE))
    assert "checkpoint.pth" in str(caught.value) and "--resume" in str(caught.value)
    assert (finished / "summary.json").exists()
    with pytest.raises(ValueError, match="--overwrite starts a new run"):
        main_pretrain.main(
            pretrain_args(finished, "--overwrite", "--resume", str(finished / "checkpoint.pth"))
        )


@pytest.mark.slow
def test_overwrite_replaces_our_outputs_only(finished: Path, copy_of: Any) -> None:
    run = copy_of(finished)
    (run / "notes.txt").write_text("mine")
    (run / "masks_final.png").write_bytes(b"not ours")
    main_pretrain.main(
        pretrain_args(
            run, "--epochs", "1", "--masker", "random", "--overwrite", "--warmup_epochs", "0"
        )
    )
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pth",
        "log.jsonl",
        "masks_final.png",
        "notes.txt",
        "summary.json",
    ]  # masks_epoch001.png and masks_epoch002.png of the old run are gone
    assert [r["epoch"] for r in read_log(run / "log.jsonl")] == [0]


def test_prepare_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert runs.prepare_output_dir(out, resume=False, overwrite=False) == out and out.is_dir()
    for name in ("checkpoint.pth", "masks_epoch007.png", "masks_epoch1234.png", "keep.txt"):
        (out / name).write_text("x")
    with pytest.raises(ValueError, match=r"checkpoint\.pth, masks_epoch007\.png"):
        runs.prepare_output_dir(out, resume=False, overwrite=False)
    runs.prepare_output_dir(out, resume=True, overwrite=False)
    assert len(list(out.iterdir())) == 4  # resume keeps everything
    runs.prepare_output_dir(out, resume=False, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # Rank > 0 checks but never writes.
    runs.prepare_output_dir(tmp_path / "elsewhere", resume=False, overwrite=False, is_main=False)
    assert not (tmp_path / "elsewhere").exists()


# ------------------------------------------------------------------- 5: file modes


@pytest.mark.slow
def test_every_output_is_readable_by_the_group_and_others(finished: Path) -> None:
    names = sorted(p.name for p in finished.iterdir())
    assert names == [
        "checkpoint.pth",
        "log.jsonl",
        "masks_epoch001.png",
        "masks_epoch002.png",
        "summary.json",
    ]
    for path in finished.iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path.name  # written under umask 022


def test_outputs_follow_the_umask(tmp_path: Path) -> None:
    umask = os.umask(0o027)
    try:
        outputs.save_checkpoint(tmp_path / "checkpoint.pth", {"epoch": 0})
        outputs.write_json(tmp_path / "summary.json", {"a": 1})
        outputs.JsonLinesLog(tmp_path / "log.jsonl").write({"epoch": 0})
    finally:
        os.umask(umask)
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o777 == 0o640, path.name


# ------------------------------------------------------------ 6: stale temporary files

STALE = (".checkpoint.pth.0badc0de.tmp", ".summary.json.12ab34cd.tmp")


@pytest.mark.slow
def test_start_and_resume_remove_stale_temporaries(finished: Path, copy_of: Any) -> None:
    run = copy_of(finished)
    for name in (*STALE, ".notes.tmp"):
        (run / name).write_bytes(b"half a file")
    main_pretrain.main(pretrain_args(run, *SCHEDULE, "--resume", str(run / "checkpoint.pth")))
    assert not any((run / name).exists() for name in STALE)
    assert (run / ".notes.tmp").exists()  # not of our naming: kept


def test_a_new_run_removes_stale_temporaries(tmp_path: Path) -> None:
    for name in STALE:
        (tmp_path / name).write_bytes(b"half a file")
    runs.prepare_output_dir(
        tmp_path, resume=False, overwrite=False
    )  # temporaries alone: no results
    assert list(tmp_path.iterdir()) == []


def test_resume_after_a_kill_mid_log_line(tmp_path: Path) -> None:
    # A kill while appending epoch 2's line (before its checkpoint) leaves half a line;
    # the run resumes from epoch 1's checkpoint and drops it with the later epochs.
    path = tmp_path / "log.jsonl"
    path.write_text('{"epoch": 0, "loss": 1.0}\n{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "lo')
    outputs.JsonLinesLog(path, start_epoch=2).write({"epoch": 2, "loss": 0.25})
    assert [r["epoch"] for r in read_log(path)] == [0, 1, 2]


# ------------------------------------------------------------------ 7: stop after epoch


@pytest.mark.slow
def test_stop_after_epoch_then_resume_ends_as_the_uninterrupted_run(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "stopped"
    result = main_pretrain.main(pretrain_args(run, *SCHEDULE, "--stop_after_epoch", "1", workers=2))
    assert result["stopped_after_epoch"] == 1
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pth",
        "log.jsonl",
        "masks_epoch001.png",
    ]  # no summary.json: the run is not finished
    assert outputs.load_checkpoint(run / "checkpoint.pth")["epoch"] == 1
    assert f"--resume {run / 'checkpoint.pth'}" in capsys.readouterr().out
    main_pretrain.main(pretrain_args(run, *SCHEDULE, "--resume", str(run / "checkpoint.pth")))
    assert_same_state(finished, run)


@pytest.mark.slow
@pytest.mark.usefixtures("no_building")
def test_stop_after_an_epoch_already_trained_is_refused(finished: Path) -> None:
    resume = ("--resume", str(finished / "checkpoint.pth"))
    with pytest.raises(ValueError, match=r"--stop_after_epoch 1\b.* up to epoch 2"):
        main_pretrain.main(pretrain_args(finished, *SCHEDULE, *resume, "--stop_after_epoch", "1"))


def test_stop_after_epoch_must_not_be_negative(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        pretrain_args(Path("unused"), "--stop_after_epoch", "-1")
    assert "--stop_after_epoch" in capsys.readouterr().err


# ------------------------------------------------------- 10: impossible ratios, up front


@pytest.mark.parametrize(
    "option",
    ["--mask_ratio", "--throw_ratio", "--random_mask_ratio", "--crop_min_scale"],
)
@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_out_of_range_ratios_fail_at_parsing(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        pretrain_args(Path("unused"), option, value)
    assert option in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1.0", "1"])
def test_mask_ratio_of_one_fails_at_parsing(value: str) -> None:
    with pytest.raises(SystemExit):
        pretrain_args(Path("unused"), "--random_mask_ratio", value)
    with pytest.raises(SystemExit):
        finetune_args(Path("unused"), "--mask_ratio", value)


@pytest.mark.usefixtures("no_building")
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--mask_ratio", "0.7", "--throw_ratio", "0.3"), r"--mask_ratio 0\.7 \+ --throw_ratio"),
        # 16 patches of 32 px images: 16 * (1 - 0.95) < 1 leaves none visible.
        (("--mask_ratio", "0.45", "--throw_ratio", "0.5"), "no visible patch out of 16"),
        (("--random_mask_ratio", "0.0"), r"--random_mask_ratio 0\.0 masks no patch out of 16"),
        (("--mask_ratio", "0.0"), r"--mask_ratio 0\.0 \+ --throw_ratio 0\.3 masks no patch"),
    ],
)
def test_impossible_pretraining_ratios_fail_before_anything_is_built(
    tmp_path: Path, options: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        main_pretrain.main(pretrain_args(tmp_path, *options))
    assert not tmp_path.joinpath("log.jsonl").exists()


@pytest.mark.usefixtures("no_building")
def test_impossible_finetuning_ratios_fail_before_anything_is_built(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--mask_ratio 0\.6 \+ --throw_ratio 0\.4"):
        main_finetune.main(finetune_args(tmp_path, "--mask_ratio", "0.6", "--throw_ratio", "0.4"))
    # Without SAM the ratios are unused.
    with pytest.raises(AssertionError, match="read its data"):
        main_finetune.main(
            finetune_args(
                tmp_path, "--masker", "none", "--mask_ratio", "0.6", "--throw_ratio", "0.4"
            )
        )


# --------------------------------------------------------- 13: clear errors, up front


def _bad_checkpoints(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.pth" for name in ("empty", "text", "random", "pickle")}
    paths["empty"].write_bytes(b"")
    paths["text"].write_text("hello, this is not a checkpoint\n")
    paths["random"].write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.getcwd, ())

    torch.save({"model": Payload()}, paths["pickle"])
    paths["tensor"] = folder / "tensor.pth"
    torch.save(torch.zeros(3), paths["tensor"])
    paths["folder"] = folder / "a_folder.pth"
    paths["folder"].mkdir()
    return paths


@pytest.mark.usefixtures("no_building")
@pytest.mark.parametrize("kind", ["empty", "text", "random", "pickle", "tensor", "folder"])
def test_unreadable_checkpoints_are_named_without_unsafe_advice(tmp_path: Path, kind: str) -> None:
    path = _bad_checkpoints(tmp_path / "bad")[kind]
    with pytest.raises((ValueError, FileNotFoundError)) as caught:
        main_pretrain.main(pretrain_args(tmp_path / "run", "--resume", str(path)))
    message = str(caught.value)
    assert str(path) in message
    assert "weights_only" not in message.replace("weights_only=True", "")
    # torch's own message (which advises weights_only=False) is not chained either.
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def _fake_checkpoint(path: Path, **entries: Any) -> Path:
    base = dict(epoch=0, rng=[], args={}, optimizer={}, scaler={}, lr_scheduler={}, bank={})
    torch.save({**base, **entries}, path)
    return path


@pytest.mark.usefixtures("no_building")
@pytest.mark.parametrize("labelled", [True, False])
def test_a_finetuning_checkpoint_given_to_pretraining_says_who_wrote_it(
    tmp_path: Path, labelled: bool
) -> None:
    entries: dict[str, Any] = {"model": {"blocks.0.attn.qkv.weight": torch.zeros(1)}}
    entries["best_acc1"] = 50.0
    if labelled:
        entries["script"] = "main_finetune.py"
    path = _fake_checkpoint(tmp_path / "ft.pth", **entries)
    with pytest.raises(ValueError, match=r"written by main_finetune\.py") as caught:
        main_pretrain.main(pretrain_args(tmp_path / "run", "--resume", str(path)))
    assert f"main_finetune.py --resume {path}" in str(caught.value)


@pytest.mark.slow
@pytest.mark.usefixtures("no_building")
def test_a_pretraining_checkpoint_given_to_finetuning_resume_says_who_wrote_it(
    finished: Path, tmp_path: Path
) -> None:
    path = finished / "checkpoint.pth"
    with pytest.raises(ValueError, match=r"written by main_pretrain\.py") as caught:
        main_finetune.main(finetune_args(tmp_path, "--resume", str(path)))
    assert "--finetune" in str(caught.value)  # what to do with it instead


@pytest.mark.usefixtures("no_building")
def test_finetune_from_a_finetuning_checkpoint_says_who_wrote_it(tmp_path: Path) -> None:
    path = _fake_checkpoint(tmp_path / "ft.pth", model={}, best_acc1=1.0, script="main_finetune.py")
    with pytest.raises(ValueError, match=r"written by main_finetune\.py.*--finetune"):
        main_finetune.main(finetune_args(tmp_path / "run", "--finetune", str(path)))


@pytest.mark.usefixtures("no_building")
@pytest.mark.parametrize("script", [main_pretrain, main_finetune])
def test_a_model_that_is_not_a_vit_is_refused_by_name(tmp_path: Path, script: Any) -> None:
    make_args = pretrain_args if script is main_pretrain else finetune_args
    with pytest.raises(ValueError, match=r"--model resnet18 .*timm ViT"):
        script.main(make_args(tmp_path, "--model", "resnet18"))
    with pytest.raises(ValueError, match=r"--input_size 36 .* patch size 8"):
        script.main(make_args(tmp_path, "--input_size", "36"))


@pytest.mark.usefixtures("no_building")
@pytest.mark.parametrize("script", [main_pretrain, main_finetune])
def test_an_output_dir_that_is_a_file_fails_first(tmp_path: Path, script: Any) -> None:
    path = tmp_path / "results.txt"
    path.write_text("mine")
    make_args = pretrain_args if script is main_pretrain else finetune_args
    with pytest.raises(ValueError, match=rf"--output_dir {re.escape(str(path))} is a file"):
        script.main(make_args(path))
    with pytest.raises(ValueError, match="is a file"):
        script.main(make_args(path / "run"))
    assert path.read_text() == "mine"


class _FullDisk:
    """A file that takes about 1 kB, then fails as a full disk does."""

    def __init__(self, file: Any) -> None:
        self.file, self.written = file, 0

    def write(self, data: bytes) -> int:
        if self.written > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


@pytest.mark.slow
def test_a_full_disk_is_the_last_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Inside torch.save a full disk is a RuntimeError ("file write failed") whose context
    # is the OSError; the script's entry point still ends with one line that says so.
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, file: real_save(obj, _FullDisk(file)))
    out = tmp_path / "run"
    argv = [*TINY, *TINY_DATA, *TINY_DECODER, "--num_workers", "0", "--epochs", "1"]
    argv += ["--masker", "random", "--warmup_epochs", "0", "--output_dir", str(out)]
    monkeypatch.setattr(sys, "argv", ["main_pretrain.py", *argv])
    with pytest.raises(SystemExit) as caught:
        runpy.run_path(str(EXAMPLES / "main_pretrain.py"), run_name="__main__")
    message = caught.value.code
    assert isinstance(message, str) and "\n" not in message  # printed as the last line
    assert message.startswith("No space left on device") and str(out) in message
    assert [p.name for p in out.iterdir()] == ["log.jsonl"]  # no half-written checkpoint


def test_run_main_turns_a_full_disk_into_one_line(tmp_path: Path) -> None:
    def full(args: argparse.Namespace) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("file write failed") from err

    (tmp_path / "checkpoint.pth").write_bytes(b"")
    with pytest.raises(SystemExit) as caught:
        runs.run_main(full, argparse.Namespace(output_dir=str(tmp_path)))
    message = str(caught.value.code)
    assert message.startswith("No space left on device") and "\n" not in message
    assert f"--resume {tmp_path / 'checkpoint.pth'}" in message

    def other(args: argparse.Namespace) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        runs.run_main(other, argparse.Namespace(output_dir=str(tmp_path)))


# ------------------------------------------- 14: bad option values, refused at parsing

SCRIPTS = {"pretrain": main_pretrain, "finetune": main_finetune, "segment": main_segment}


def segment_args(out: Path, *extra: str) -> argparse.Namespace:
    argv = [*TINY, "--num_train", "16", "--num_val", "8", "--num_test", "8", "--batch_size", "8"]
    argv += ["--decoder_channels", "16", "--num_workers", "0", "--no_progress"]
    return main_segment.get_args_parser().parse_args([*argv, "--output_dir", str(out), *extra])


RECIPE_ARGS = {"pretrain": pretrain_args, "finetune": finetune_args, "segment": segment_args}


@pytest.fixture
def nothing_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any of the three recipes gets as far as reading its data."""

    def built(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the recipe read its data before refusing")

    monkeypatch.setattr(main_pretrain, "build_datasets", built)
    monkeypatch.setattr(main_finetune, "build_datasets", built)
    monkeypatch.setattr(main_segment, "build_segmentation_data", built)


def refused_at_parsing(script: str, *argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    """The argparse error line of ``script``'s parser for ``argv``."""
    with pytest.raises(SystemExit) as caught:
        SCRIPTS[script].get_args_parser().parse_args(list(argv))
    assert caught.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


SHARED_BAD = [
    # Negative clipping multiplied the gradients by a negative factor: gradient ascent.
    ("--clip_grad", "-1", "> 0"),
    ("--clip_grad", "nan", "> 0"),
    ("--clip_grad", "0", "> 0"),  # zeroes every gradient
    ("--weight_decay", "-1", ">= 0"),
    ("--weight_decay", "nan", ">= 0"),
    ("--min_lr", "-0.5", ">= 0"),
    ("--lr", "-1", "> 0"),
    ("--lr", "nan", "> 0"),
    ("--epochs", "0", "int >= 1"),
    ("--epochs", "-1", "int >= 1"),
    ("--warmup_epochs", "-1", "int >= 0"),
    ("--batch_size", "0", "int >= 1"),
    ("--input_size", "0", "int >= 1"),
    ("--seed", "-1", "int >= 0"),
]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize(("option", "value", "need"), SHARED_BAD)
def test_shared_options_out_of_range_are_refused_at_parsing(
    script: str, option: str, value: str, need: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refused_at_parsing(script, option, value, capsys=capsys)
    assert f"argument {option}: " in line and need in line and line.endswith(f"got {value}")


@pytest.mark.parametrize(
    ("script", "option", "value", "need"),
    [
        # argparse reads "--blr -1e-3" as two options; "--blr=-1e-3" reaches our type.
        ("pretrain", "--blr=-1e-3", None, "> 0"),
        ("finetune", "--blr=-1e-3", None, "> 0"),
        ("pretrain", "--blr", "inf", "> 0"),
        ("pretrain", "--cls_loss_weight", "-1", ">= 0"),
        ("pretrain", "--mask_warmup_epochs", "-1", "int >= 0"),
        ("pretrain", "--refresh_every", "0", "int >= 1"),
        ("pretrain", "--decoder_num_heads", "0", "int >= 1"),
        ("pretrain", "--decoder_embed_dim", "0", "int >= 1"),
        ("pretrain", "--decoder_depth", "-1", "int >= 0"),
        ("finetune", "--refresh_every", "0", "int >= 1"),
        ("finetune", "--cls_head_weight", "-1", ">= 0"),
        ("finetune", "--cls_head_weight", "nan", ">= 0"),
        ("finetune", "--layer_decay", "-1", "(0, 1]"),  # timm froze every other block
        ("finetune", "--layer_decay", "0", "(0, 1]"),
        ("finetune", "--layer_decay", "1.5", "(0, 1]"),
        ("finetune", "--smoothing", "-0.5", "[0, 1)"),  # torch ignored it: no smoothing
        ("finetune", "--smoothing", "nan", "[0, 1)"),
        ("finetune", "--smoothing", "1", "[0, 1)"),
        ("finetune", "--drop_path", "1.5", "[0, 1)"),
        ("segment", "--drop_path", "2", "[0, 1)"),
        ("segment", "--decoder_channels", "0", "int >= 1"),
        ("segment", "--num_train", "0", "int >= 1"),
        ("segment", "--num_val", "0", "int >= 1"),
        ("segment", "--num_test", "0", "int >= 1"),
        ("segment", "--bce_weight", "nan", ">= 0"),
        ("segment", "--num_overlays", "-1", "int >= 0"),
        ("segment", "--num_mask_classes", "1", "int >= 2"),
        ("segment", "--split_seed", "-1", "int >= 0"),
    ],
)
def test_recipe_options_out_of_range_are_refused_at_parsing(
    script: str, option: str, value: str | None, need: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [option] if value is None else [option, value]
    line = refused_at_parsing(script, *argv, capsys=capsys)
    name, _, given = option.partition("=")
    assert f"argument {name}: " in line and need in line
    assert line.endswith(f"got {value if value is not None else given}")


@pytest.mark.parametrize("value", ["1.5", "nan", "0"])
def test_crop_min_scale_states_the_range_it_takes(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refused_at_parsing("pretrain", "--crop_min_scale", value, capsys=capsys)
    assert f"must lie in (0, 1], got {value}" in line


def test_an_unparsable_value_names_the_range(capsys: pytest.CaptureFixture[str]) -> None:
    line = refused_at_parsing("finetune", "--epochs", "abc", capsys=capsys)
    assert line.endswith("argument --epochs: the value must be an int >= 1, got abc")


def test_boundary_values_are_accepted() -> None:
    argv = ["--layer_decay", "1", "--smoothing", "0", "--drop_path", "0", "--clip_grad", "1e-3"]
    argv += ["--weight_decay", "0", "--min_lr", "0", "--warmup_epochs", "0", "--epochs", "1"]
    args = main_finetune.get_args_parser().parse_args(argv)
    assert (args.layer_decay, args.smoothing, args.drop_path) == (1.0, 0.0, 0.0)
    assert (args.clip_grad, args.weight_decay, args.epochs) == (1e-3, 0.0, 1)
    assert main_finetune.get_args_parser().parse_args([]).clip_grad is None  # no clipping


# ------------------------------------------ 15: bad combinations, refused before building


@pytest.mark.usefixtures("nothing_built")
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_warmup_longer_than_the_run_is_refused(tmp_path: Path, script: str) -> None:
    # The lr never reached its peak; timm only warned that the cosine "will have no effect".
    masker = {"pretrain": ("--masker", "random"), "finetune": ("--masker", "none")}
    options = ("--epochs", "2", "--warmup_epochs", "5", *masker.get(script, ()))
    with pytest.raises(UsageError, match=r"--warmup_epochs 5 exceeds --epochs 2"):
        SCRIPTS[script].main(RECIPE_ARGS[script](tmp_path / "run", *options))
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("nothing_built")
@pytest.mark.parametrize(
    ("script", "options", "message"),
    [
        (
            "pretrain",
            ("--min_lr", "10"),
            r"--min_lr 10 is above the peak lr, the lr 3\.125e-05 \(--blr 0\.001 \* "
            r"effective batch 8 / 256\)",
        ),
        (
            "finetune",
            ("--min_lr", "1", "--lr", "0.5"),
            r"--min_lr 1 is above the peak lr, --lr 0\.5",
        ),
        ("segment", ("--min_lr", "0.01", "--lr", "0.001"), r"--min_lr 0\.01 .* --lr 0\.001"),
    ],
)
def test_a_cosine_floor_above_the_peak_lr_is_refused(
    tmp_path: Path, script: str, options: tuple[str, ...], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        SCRIPTS[script].main(RECIPE_ARGS[script](tmp_path / "run", *options))
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("nothing_built")
@pytest.mark.parametrize(
    ("script", "options", "message"),
    [
        ("pretrain", ("--data_path", "DIR"), r"--data_path is only read with --data imagefolder"),
        ("finetune", ("--data_path", "DIR"), r"--data_path .* --data is synthetic"),
        (
            "finetune",
            ("--data", "imagefolder", "--data_path", "D", "--csv_train", "t.csv"),
            r"--csv_train is only read with --data csv, but --data is imagefolder",
        ),
        ("pretrain", ("--image_dir", "a", "b"), r"--image_dir is only read with --data csv"),
        ("segment", ("--data_path", "DIR"), r"--data_path is only read with --data folder"),
        ("segment", ("--csv_test", "t.csv"), r"--csv_test is only read with --data csv"),
        (
            "segment",
            ("--data", "csv", "--num_mask_classes", "3"),
            r"only read with --mask_mode multi",
        ),
    ],
)
def test_options_the_data_source_ignores_are_refused(
    tmp_path: Path, script: str, options: tuple[str, ...], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        SCRIPTS[script].main(RECIPE_ARGS[script](tmp_path, *options))


@pytest.mark.parametrize("script", ["pretrain", "finetune"])
@pytest.mark.parametrize(
    ("option", "value", "need"),
    [
        ("--num_train", "0", "int >= 1"),
        ("--num_val", "0", "int >= 1"),
        ("--num_test", "-1", "int >= 0"),
        ("--data_seed", "-1", "int >= 0"),  # maskkit's message named --seed
        ("--num_workers", "-1", "int >= 0"),
    ],
)
def test_data_counts_and_seeds_are_refused_by_their_own_name(
    script: str, option: str, value: str, need: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refused_at_parsing(script, option, value, capsys=capsys)
    assert f"argument {option}: " in line and need in line and line.endswith(f"got {value}")


@pytest.mark.usefixtures("nothing_built")
def test_decoder_heads_must_divide_its_width(tmp_path: Path) -> None:
    # timm's Attention asserted "dim should be divisible by num_heads", naming no option.
    with pytest.raises(UsageError, match="--decoder_embed_dim 32 .* --decoder_num_heads 3"):
        main_pretrain.main(pretrain_args(tmp_path, "--decoder_num_heads", "3"))


@pytest.mark.usefixtures("nothing_built")
def test_random_pretraining_names_the_sam_ratios_of_its_report(tmp_path: Path) -> None:
    # --masker random still draws SAM splits for the val lesion hit-rate report.
    options = ("--masker", "random", "--mask_ratio", "0.9", "--throw_ratio", "0.3")
    with pytest.raises(UsageError, match=r"--mask_ratio 0\.9 \+ --throw_ratio 0\.3: .*below 1"):
        main_pretrain.main(pretrain_args(tmp_path, *options))


@pytest.mark.usefixtures("nothing_built")
@pytest.mark.parametrize(
    ("script", "option"),
    [("pretrain", "--init"), ("finetune", "--finetune"), ("segment", "--finetune")],
)
def test_a_missing_initial_checkpoint_is_refused_first(
    tmp_path: Path, script: str, option: str
) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(UsageError, match=rf"^{option} {re.escape(str(missing))}: no such file$"):
        SCRIPTS[script].main(RECIPE_ARGS[script](tmp_path / "run", option, str(missing)))
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("nothing_built")
def test_an_unknown_device_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--device tpu: "):
        main_pretrain.main(pretrain_args(tmp_path, "--device", "tpu"))


# ------------------------------------------------------------ 16: resume, model-only files


@pytest.mark.usefixtures("nothing_built")
def test_resuming_from_best_pth_says_it_holds_weights_only(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    best = run / "best.pth"
    args = finetune_args(run)
    selected = {"model": {"w": torch.zeros(1)}, "epoch": 1, "val": {}, "args": vars(args)}
    outputs.save_checkpoint(best, {**selected, "script": "main_finetune.py"})
    with pytest.raises(UsageError, match="model-only checkpoint") as caught:
        main_finetune.main(finetune_args(run, "--resume", str(best)))
    assert f"resume from {run / 'checkpoint.pth'}" in str(caught.value)


def test_resume_refuses_fewer_epochs_than_trained() -> None:
    # Stopped after epoch 1, resumed with --epochs 1 (allowed to change): it passed as a
    # finished run, reporting the "final model (epoch 0)" with epoch 1's weights.
    checkpoint = {"args": {"epochs": 3}, "rng": [{}], "epoch": 1}
    now = argparse.Namespace(epochs=1, allow_changed_args=["epochs"], stop_after_epoch=None)
    with pytest.raises(UsageError, match=r"--epochs 1: c\.pth has trained up to epoch 1"):
        runs.check_resume_args(checkpoint, now, world_size=1, path="c.pth")
    now.epochs = 2  # the run ends with the checkpoint's epoch: finished
    assert runs.check_resume_args(checkpoint, now, world_size=1, path="c.pth") == {"epochs"}


@pytest.mark.slow
@pytest.mark.usefixtures("no_building")
def test_resume_with_fewer_epochs_than_trained_is_refused(finished: Path) -> None:
    resume = ("--resume", str(finished / "checkpoint.pth"), "--allow_changed_args", "epochs")
    args = pretrain_args(finished, *SCHEDULE[2:], "--epochs", "2", *resume)
    with pytest.raises(UsageError, match="has trained up to epoch 2"):
        main_pretrain.main(args)


# ------------------------------------------------- 17: one line for the user's errors


def test_run_main_prints_a_usage_error_as_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(args: argparse.Namespace) -> None:
        raise UsageError("--epochs 1: no good")

    with pytest.raises(SystemExit) as caught:
        runs.run_main(refuse, argparse.Namespace(output_dir="unused"))
    assert caught.value.code == 2
    assert capsys.readouterr().err == "error: --epochs 1: no good\n"

    def bug(args: argparse.Namespace) -> None:
        raise ValueError("a bug's own message")

    with pytest.raises(ValueError, match="a bug's own message"):  # keeps its traceback
        runs.run_main(bug, argparse.Namespace(output_dir="unused"))


@pytest.mark.parametrize(
    ("script", "options", "message"),
    [
        (
            "main_pretrain.py",
            ("--warmup_epochs", "5"),
            "error: --warmup_epochs 5 exceeds --epochs 1",
        ),
        ("main_finetune.py", ("--finetune", "nope.pth"), "error: --finetune nope.pth: no "),
        ("main_segment.py", ("--data_path", "DIR"), "error: --data_path is only read"),
    ],
)
def test_scripts_end_a_refusal_without_a_traceback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    script: str,
    options: tuple[str, ...],
    message: str,
) -> None:
    # Tiny settings: a regression would train for seconds, not minutes.
    argv = [*TINY, "--num_train", "8", "--num_val", "8", "--num_test", "8", "--epochs", "1"]
    argv += ["--num_workers", "0", "--batch_size", "8", "--no_progress"]
    masker = {"main_pretrain.py": ["--masker", "random"], "main_finetune.py": ["--masker", "none"]}
    argv += [*masker.get(script, []), "--output_dir", str(tmp_path / "run"), *options]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as caught:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err
