"""examples/ablation.py: the paper's Tab. 3 grid over seeds (schema and invariants only: a
grid this small measures nothing, so no accuracy is asserted)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import ablation  # noqa: E402
import main_finetune  # noqa: E402
from msmae_util import outputs  # noqa: E402

# 32 px images, 16 patches; 32 train / 16 val / 16 test images; 2 epochs per stage.
TINY = [
    *("--config", "tiny", "--input_size", "32", "--device", "cpu", "--num_workers", "0"),
    *("--num_train", "32", "--num_val", "16", "--num_test", "16"),
    *("--decoder_embed_dim", "32", "--decoder_depth", "1", "--decoder_num_heads", "2"),
    *("--pretrain_batch_size", "8", "--pretrain_epochs", "2", "--mask_warmup_epochs", "1"),
    *("--pretrain_refresh_every", "1", "--pretrain_warmup_epochs", "1"),
    *("--finetune_batch_size", "8", "--finetune_epochs", "2", "--finetune_refresh_every", "1"),
    *("--finetune_warmup_epochs", "1"),
]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grid_args(out: Path, *extra: str) -> argparse.Namespace:
    argv = [*TINY, "--output_dir", str(out), *extra]
    return ablation.get_args_parser().parse_args(argv)


@pytest.mark.slow
def test_tiny_grid_writes_the_table_the_chart_and_every_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = ablation.main(grid_args(tmp_path))
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    pre_arms, ft_arms = ["mae", "amt", "sam"], ["none", "random", "sam", "sam_refresh", "sam_cls"]
    assert [(p["arm"], p["seed"]) for p in saved["pretrain"]] == [(a, 0) for a in pre_arms]
    assert [p["name"] for p in saved["pretrain"]] == ["MAE", "AMT", "MSMAE"]
    assert [p["cls_loss_weight"] for p in saved["pretrain"]] == [0.0, 0.0, 0.1]
    runs = saved["runs"]
    assert [(r["pretrain"], r["finetune"]) for r in runs] == [
        (p, f) for p in pre_arms for f in ft_arms
    ]
    assert saved["test_split"] and saved["data"]["splits"] == {"train": 32, "val": 16, "test": 16}
    for run in runs:
        # Same epochs and batch for every arm; test figures of both models; recall per class.
        assert run["epochs"] == 2 and run["batch_size"] == 8
        assert set(run["test_top1"]) == {"final", "val_selected"}
        assert all(0 <= v <= 100 for v in run["test_top1"].values())
        assert len(run["test_recall"]["final"]) == len(saved["data"]["classes"]) == 3
        assert 0 <= run["selected"]["epoch"] < 2 and run["seconds"] > 0
        finetuned = json.loads((Path(run["dir"]) / "summary.json").read_text())
        assert finetuned["args"]["finetune"].endswith(f"pretrain_{run['pretrain']}/checkpoint.pth")
        assert finetuned["test"]["final"]["acc1"] == run["test_top1"]["final"]
    # Fine-tuning FLOPs per image: SAM and random encode int(16 * 0.25) = 4 of 16 patches.
    flops = saved["finetune_flops_per_image"]
    assert flops["none"]["train_tokens"] == 16 and flops["sam"]["train_tokens"] == 4
    assert flops["sam"]["train_forward"] == flops["random"]["train_forward"]
    assert flops["sam"]["train_forward"] < flops["none"]["train_forward"] / 2
    assert flops["sam_cls"]["train_forward"] > flops["sam"]["train_forward"]  # the cls head
    assert len({f["inference"] for f in flops.values()}) == 1  # every token at test time
    assert all(f["train_step"] > 2 * f["train_forward"] for f in flops.values())
    assert len(saved["table"]) == 15 and saved["table"][0]["test_top1_final"]["n"] == 1
    table = (tmp_path / "ablation.md").read_text()
    assert "test top-1, final" in table and "test top-1, val-selected" in table
    assert table.count("| P-SAM (MSMAE) |") == 2 * 5  # the main table and the recall table
    with Image.open(tmp_path / "ablation.png") as png:
        assert png.width > png.height > 0
    assert "| Baseline | P-RM (MAE) | all tokens |" in capsys.readouterr().out
    assert "| VI | P-SAM (MSMAE) | F-SAM: refreshed (paper) |" in table

    # The same command again: every run is finished, so nothing trains and nothing changes.
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.pth")}
    again = ablation.main(grid_args(tmp_path))
    assert again["runs"] == summary["runs"]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.pth")} == before
    assert capsys.readouterr().out.count("already finished") == 3 + 15
    # Other settings into the same folder are refused, naming the changes.
    with pytest.raises(ValueError, match=r"other settings \(--epochs: checkpoint 2, now 3\)"):
        ablation.main(grid_args(tmp_path, "--finetune_epochs", "3"))


class _InterruptedError(Exception):
    pass


@pytest.mark.slow
def test_an_interrupted_grid_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arms = ("--pretrain_arms", "sam", "--finetune_arms", "sam", "--seeds", "3")
    straight = ablation.main(grid_args(tmp_path / "straight", *arms))
    real_save = main_finetune.save_checkpoint

    def save_then_stop(path: Path, state: dict[str, Any]) -> None:
        real_save(path, state)
        if Path(path).name == "checkpoint.pth":
            raise _InterruptedError

    with monkeypatch.context() as patch:
        patch.setattr(main_finetune, "save_checkpoint", save_then_stop)
        with pytest.raises(_InterruptedError):
            ablation.main(grid_args(tmp_path / "resumed", *arms))
    assert not (tmp_path / "resumed" / "ablation.json").exists()
    resumed = ablation.main(grid_args(tmp_path / "resumed", *arms))
    run = "seed3/sam/finetune_sam/checkpoint.pth"
    a = outputs.load_checkpoint(tmp_path / "straight" / run)["model"]
    b = outputs.load_checkpoint(tmp_path / "resumed" / run)["model"]
    assert all(torch.equal(value, b[name]) for name, value in a.items())
    for key in ("test_top1", "test_recall", "val_top1_final", "selected"):
        assert resumed["runs"][0][key] == straight["runs"][0][key], key


def _row(pretrain: str, finetune: str, mean: float, std: float) -> dict[str, Any]:
    stat = {"mean": mean, "std": std, "n": 2}
    flops = {"train_forward": 8.8e9, "train_step": 2.6e10, "inference": 3.5e10, "train_tokens": 49}
    return {
        "pretrain": pretrain,
        "finetune": finetune,
        "test_top1_final": None,
        "test_top1_val_selected": None,
        "val_top1_final": stat,
        "late_val_top1_std": {"mean": 1.0, "std": 0.5, "n": 2},
        "test_recall_final": None,
        "finetune_seconds": stat,
        "pretrain_seconds": stat,
        "finetune_flops_per_image": flops,
    }


def test_without_a_test_split_the_table_and_chart_say_so(tmp_path: Path) -> None:
    summary = {
        "test_split": False,
        "note": main_finetune.NO_TEST,
        "seeds": [0, 1],
        "data": {
            "kind": "imagefolder",
            "classes": ["a", "b"],
            "splits": {"train": 9, "val": 3, "test": 0},
        },
        "epochs": {"pretrain": 12, "finetune": 6},
        "finetune_batch_size": 32,
        "table": [_row("mae", "none", 70.0, 2.0), _row("sam", "sam", 75.0, 4.0)],
        "seconds": {"runs": 100.0, "this_invocation": 100.0},
    }
    table = ablation.render_table(summary)
    assert "val top-1, final" in table and "test top-1" not in table
    assert "no test split" in table
    assert "|  | P-SAM (MSMAE) | F-SAM: pre-training maps | 75.00 ± 4.00 |" in table
    assert "| Baseline | P-RM (MAE) | all tokens | 70.00 ± 2.00 |" in table
    ablation.save_chart(tmp_path / "chart.png", summary)
    with Image.open(tmp_path / "chart.png") as png:
        assert png.size[0] > 0


def test_vit_base_flops_match_the_papers_count() -> None:
    # MSMAE Tab. 3: 16.86 G multiply-adds per image with every token, 4.37 G with SAM's 49.
    args = ablation.get_args_parser().parse_args(["--finetune_arms", "none", "sam"])
    flops = ablation.finetune_flops(args)
    assert flops["sam"]["train_tokens"] == 49
    assert flops["none"]["train_forward"] / 2e9 == pytest.approx(16.86, rel=0.05)
    assert flops["sam"]["train_forward"] / 2e9 == pytest.approx(4.37, rel=0.05)


def test_readme_and_docs_give_the_same_one_ablation_command() -> None:
    root = EXAMPLES.parent
    snippet = (root / "docs" / "snippets" / "ablation.sh").read_text()
    command = " ".join(
        line.rstrip("\\").strip() for line in snippet.splitlines() if not line.startswith("#")
    ).split()
    readme = " ".join(
        line.rstrip("\\").strip() for line in (root / "README.md").read_text().splitlines()
    )
    assert " ".join(command) in " ".join(readme.split())
    args = ablation.get_args_parser().parse_args(command[2:])
    assert (args.data, args.config, args.seeds) == ("imagefolder", "tiny", [0, 1, 2])
