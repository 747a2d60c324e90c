"""The MSMAE recipes under torchrun: two gloo processes on the CPU (127.0.0.1)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT_S = 300
TINY = [
    *("--model", "vit_micro_patch8_64", "--input_size", "32", "--device", "cpu"),
    *("--num_train", "32", "--num_val", "15", "--batch_size", "4", "--num_workers", "0"),
    *("--num_test", "15", "--no_progress"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<script>`` on 2 local processes, as the module docstrings say."""
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--master_addr", "127.0.0.1", "--master_port", str(_free_port())),
        str(EXAMPLES / script),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp_pretrain")
    torchrun(
        "main_pretrain.py",
        *TINY,
        *("--decoder_embed_dim", "32", "--decoder_depth", "1", "--decoder_num_heads", "2"),
        *("--epochs", "2", "--mask_warmup_epochs", "1", "--refresh_every", "1"),
        *("--warmup_epochs", "1", "--output_dir", str(out)),
    )
    return out


def test_ddp_pretraining_writes_once_and_refreshes_every_sample(pretrained: Path) -> None:
    # Rank 0 alone writes: one log line per epoch, one file of each kind.
    assert sorted(p.name for p in pretrained.iterdir()) == [
        "checkpoint.pth",
        "log.jsonl",
        "masks_epoch001.png",
        "summary.json",
    ]
    log = [json.loads(line) for line in (pretrained / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    summary = json.loads((pretrained / "summary.json").read_text())
    assert summary["world_size"] == 2
    # lr = blr * batch_size * world_size / 256
    assert summary["args"]["lr"] == pytest.approx(1e-3 * 4 * 2 / 256)
    checkpoint = torch.load(pretrained / "checkpoint.pth", weights_only=True)
    # Each rank refreshed its shard; the all-gather put all 32 maps in the saved bank.
    maps = checkpoint["bank"]["weights"].flatten(1)
    assert bool((maps != 1).any(dim=1).all())
    assert len(checkpoint["rng"]) == 2  # one RNG state per rank, for an exact resume


def test_ddp_amt_pretraining_trains_with_a_frozen_head(tmp_path: Path) -> None:
    # λ = 0 freezes the head, which then gets no gradient: DDP must not wait for one.
    torchrun(
        "main_pretrain.py",
        *TINY,
        *("--decoder_embed_dim", "32", "--decoder_depth", "1", "--decoder_num_heads", "2"),
        *("--masker", "amt", "--epochs", "2", "--mask_warmup_epochs", "1"),
        *("--refresh_every", "1", "--warmup_epochs", "1", "--output_dir", str(tmp_path)),
    )
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert checkpoint["args"]["cls_loss_weight"] == 0.0
    assert len(checkpoint["optimizer"]["state"]) == len(checkpoint["model"]) - 2  # no head


def test_ddp_finetuning_evaluates_every_sample_once(pretrained: Path, tmp_path: Path) -> None:
    torchrun(
        "main_finetune.py",
        *TINY,
        *("--epochs", "1", "--warmup_epochs", "0", "--refresh_every", "1"),
        *("--finetune", str(pretrained / "checkpoint.pth"), "--output_dir", str(tmp_path)),
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2
    # 15 validation images split 8 / 7 over the ranks, summed into one confusion matrix.
    assert summary["val"]["num_samples"] == 15
    assert sum(map(sum, summary["val"]["confusion"])) == 15
    # Every rank reads rank 0's best.pth for the val-selected model's test figures.
    assert summary["test"]["val_selected"]["num_samples"] == 15


def test_ddp_stop_after_epoch_then_resume_ends_as_the_uninterrupted_run(
    pretrained: Path, tmp_path: Path
) -> None:
    # Issue 12.7 under torchrun: every rank stops after the checkpoint, and the resumed run
    # (each rank restoring its own RNG state) ends bit-identical to the uninterrupted one.
    options = [
        *TINY,
        *("--decoder_embed_dim", "32", "--decoder_depth", "1", "--decoder_num_heads", "2"),
        *("--epochs", "2", "--mask_warmup_epochs", "1", "--refresh_every", "1"),
        *("--warmup_epochs", "1", "--output_dir", str(tmp_path)),
    ]
    stopped = torchrun("main_pretrain.py", *options, "--stop_after_epoch", "0")
    assert "stopped after epoch 0" in stopped.stdout
    assert not (tmp_path / "summary.json").exists()
    torchrun("main_pretrain.py", *options, "--resume", str(tmp_path / "checkpoint.pth"))
    straight = torch.load(pretrained / "checkpoint.pth", weights_only=True)
    resumed = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert torch.equal(straight["bank"]["weights"], resumed["bank"]["weights"])
    log = (tmp_path / "log.jsonl").read_text()
    assert log == (pretrained / "log.jsonl").read_text()


def test_ddp_ablation_runs_every_arm_in_one_process_group(tmp_path: Path) -> None:
    # The process group is set up once by the ablation; each recipe run uses it.
    torchrun(
        "ablation.py",
        *("--config", "tiny", "--input_size", "32", "--device", "cpu", "--num_workers", "0"),
        *("--num_train", "32", "--num_val", "15", "--num_test", "15"),
        *("--decoder_embed_dim", "32", "--decoder_depth", "1", "--decoder_num_heads", "2"),
        *("--pretrain_batch_size", "4", "--pretrain_epochs", "2", "--mask_warmup_epochs", "1"),
        *("--pretrain_refresh_every", "1", "--finetune_batch_size", "4"),
        *("--finetune_epochs", "1", "--finetune_warmup_epochs", "0"),
        *("--pretrain_arms", "sam", "--finetune_arms", "none", "sam_cls"),
        *("--output_dir", str(tmp_path)),
    )
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["finetune"] for r in saved["runs"]] == ["none", "sam_cls"]
    for run in saved["runs"]:
        summary = json.loads((Path(run["dir"]) / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["test"]["final"]["num_samples"] == 15
