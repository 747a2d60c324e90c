"""Benchmarks (issues 6, 15): the baselines are correct, the timing interleaves candidates,
and the quick run writes a complete JSON.

No timing is asserted (timings belong in the results files, not in tests); the FLOP counts
are deterministic and are checked against a count by hand.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from maskkit import SAMMasker, gather_tokens, split_counts

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _load(name: str) -> ModuleType:
    # The benchmark scripts import each other as top-level modules, as when run directly.
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


SUMMARY_KEYS = {
    "sam_vs_mae_floor",
    "amt_path_vs_sam",
    "host_syncs",
    "pretrain_masking_share",
    "extraction_vs_forward",
    "finetune_step_speedup",
    "finetune_flops_ratio",
}
MASKING_CANDIDATES = {
    "mae_floor",
    "maskkit_random",
    "maskkit_sam",
    "amt_sampling",
    "hpm_loop",
    "maskkit_sam_path",
    "amt_path",
    "gather_maskkit",
    "gather_amt_boolean",
}


def test_mae_floor_is_maes_random_masking() -> None:
    bench_masking = _load("bench_masking")
    torch.manual_seed(0)
    ids_keep, mask, ids_restore = bench_masking.mae_floor(8, 196, torch.device("cpu"))
    assert ids_keep.shape == (8, 49)
    assert torch.equal(mask.sum(1), torch.full((8,), 147.0))
    assert torch.equal(mask.gather(1, ids_keep), torch.zeros(8, 49))
    # ids_restore inverts the shuffle: the kept patches sit at its first 49 positions.
    assert torch.equal(ids_restore.gather(1, ids_keep), torch.arange(49).expand(8, 49))


@pytest.mark.parametrize(("mask_ratio", "throw_ratio"), [(0.45, 0.30), (0.75, 0.0)])
def test_amt_sampling_and_loop_partition_the_patches(mask_ratio: float, throw_ratio: float) -> None:
    bench_masking = _load("bench_masking")
    weights = torch.rand(16, 196) + 0.01
    n_visible, n_masked, n_thrown = split_counts(196, mask_ratio, throw_ratio)
    _, _, is_masked, is_thrown, is_visible = bench_masking.amt_sampling(
        weights, mask_ratio=mask_ratio, throw_ratio=throw_ratio
    )
    assert torch.equal(is_masked.int() + is_thrown.int() + is_visible.int(), torch.ones(16, 196))
    assert torch.equal(is_visible.sum(1), torch.full((16,), n_visible))
    assert torch.equal(is_masked.sum(1), torch.full((16,), n_masked))
    order, labels = bench_masking.hpm_loop(weights, mask_ratio=mask_ratio, throw_ratio=throw_ratio)
    assert torch.equal(order.sort(1).values, torch.arange(196).expand(16, 196))
    assert torch.equal((labels == 0).sum(1), torch.full((16,), n_visible))
    assert torch.equal((labels == -1).sum(1), torch.full((16,), n_thrown))
    assert torch.equal(labels.gather(1, order[:, :n_masked]), torch.ones(16, n_masked).to(labels))


def test_boolean_gather_selects_the_same_tokens_as_maskkits_gather() -> None:
    bench_masking = _load("bench_masking")
    x = torch.randn(4, 196, 8)
    split = SAMMasker()(4, 196, torch.rand(4, 196) + 0.01)
    by_boolean = x[split.is_visible()].reshape(4, -1, 8)
    # Boolean indexing returns patches in index order; maskkit keeps draw order.
    assert torch.equal(by_boolean, gather_tokens(x, split.visible.sort(1).values))
    assert bench_masking.split_problem(split, 49) is None
    broken = split._replace(ids_shuffle=torch.zeros_like(split.ids_shuffle))
    assert bench_masking.split_problem(broken, 49) == "ids_shuffle rows are not permutations"


def test_measure_interleaves_rounds_of_torch_benchmark_timers() -> None:
    common = _load("common")
    calls: list[str] = []

    def candidate(name: str) -> Callable[[], None]:
        def call() -> None:
            calls.append(name)
            time.sleep(2e-3)  # longer than min_run_time: one-call blocks

        return call

    result = common.measure(
        {name: candidate(name) for name in "abc"}, label="t", rounds=3, min_run_time=1e-3, warmup=0
    )
    # blocked_autorange runs each candidate in a burst (block-size search, then blocks);
    # round r starts at candidate r, so every candidate runs first once.
    bursts = [name for i, name in enumerate(calls) if i == 0 or calls[i - 1] != name]
    assert bursts == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    for name, measurement in result.items():
        assert measurement.task_spec.description == name and measurement.task_spec.label == "t"
        entry = common.to_json(measurement)
        assert len(entry["samples_ms"]) == 3 and entry["calls_per_sample"] == [1, 1, 1]
        assert entry["min_ms"] <= entry["median_ms"] <= entry["max_ms"]
        assert entry["median_ms"] >= 2.0
    assert common.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert common.ratio(3.0, 0.0) is None and common.ratio(3.0, 1.5) == 2.0


def test_strategies_section_reuses_the_shared_floor_and_timing() -> None:
    bench_strategies = _load("bench_strategies")
    common, bench_masking = _load("common"), _load("bench_masking")
    # One MAE floor and one timing loop for every section (issue 13's benchmark used to carry
    # its own copies).
    assert bench_strategies.mae_floor is bench_masking.mae_floor
    assert bench_strategies.measure is common.measure
    strategies = bench_strategies.STRATEGIES
    row = {"mae_floor": 2.0, **dict.fromkeys(strategies, 1.0)}
    row |= dict.fromkeys(strategies.values(), 4.0)
    ratios = bench_strategies._ratios(row)  # reference / maskkit, maskkit / floor
    assert ratios["block_vs_beit_reference"] == 4.0 and ratios["hpm_vs_mae_floor"] == 0.5


def test_write_json_replaces_the_file_whole(tmp_path: Path) -> None:
    common = _load("common")
    out = tmp_path / "results" / "cpu.json"
    common.write_json(out, {"device": "cpu"})
    common.write_json(out, {"device": "cpu", "quick": True})
    assert json.loads(out.read_text()) == {"device": "cpu", "quick": True}
    assert [path.name for path in out.parent.iterdir()] == ["cpu.json"]


def _linear_conv_macs(width: int, depth: int, tokens: int, num_classes: int) -> int:
    patch_embed = 196 * (3 * 16 * 16) * width  # every patch is embedded before any is dropped
    per_token_block = 12 * width * width  # qkv 3d², proj d², MLP 4d² + 4d²
    return patch_embed + depth * tokens * per_token_block + width * num_classes


@pytest.mark.slow
def test_quick_run_writes_the_full_schema(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    command = [sys.executable, str(BENCHMARKS / "run.py"), "--device", "cpu", "--quick"]
    completed = subprocess.run(
        [*command, "--threads", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"wrote {out}" in completed.stdout
    results = json.loads(out.read_text())

    assert results["device"] == "cpu" and results["quick"] is True
    assert results["host"]["torch_threads"] == 1
    assert len(results["host"]["load_average_end_1_5_15min"]) == 3
    assert "_measurements" not in json.dumps(results)  # Measurement objects stay in memory
    assert {"torch", "timm", "maskkit", "python", "platform"} <= set(results["versions"])
    summary = results["summary"]
    assert set(summary) >= SUMMARY_KEYS
    assert set(summary["goals"]) == SUMMARY_KEYS
    assert summary["host_syncs"] is None  # no device to sync with on CPU
    for key in SUMMARY_KEYS - {"host_syncs"}:
        assert isinstance(summary[key], float) and summary[key] > 0, key
        goal = summary["goals"][key]
        assert goal["value"] == summary[key] and isinstance(goal["met"], bool)

    # Issue 13's strategies: their headline ratios and targets join the run's summary.
    strategies = results["strategies"]
    strategy_keys = set(strategies["targets"])
    assert {"block_vs_beit_reference", "hpm_vs_hpm_reference"} <= strategy_keys
    assert set(summary) == SUMMARY_KEYS | strategy_keys | {"scope", "goals"}
    for key in strategy_keys:
        assert summary[key] == strategies["summary"][key] > 0, key
        assert isinstance(strategies["targets"][key]["met"], bool)
    assert set(strategies["medians_ms"]) == set(strategies["ratios"])

    masking = results["masking"]
    headline = masking["timings"]["B256_L196"]
    assert set(headline) == MASKING_CANDIDATES
    rounds = masking["settings"]["rounds"]
    for entry in headline.values():
        assert len(entry["calls_per_sample"]) == rounds <= len(entry["samples_ms"])
        assert entry["median_ms"] > 0 and entry["iqr_ms"] >= 0
    assert summary["sam_vs_mae_floor"] == pytest.approx(
        headline["maskkit_sam"]["median_ms"] / headline["mae_floor"]["median_ms"]
    )
    assert masking["compile_fullgraph"]["maskkit_sam"]["passed"] is True
    assert masking["cuda_graph"]["maskkit_sam"]["passed"] is None

    pretrain = results["pretrain"]
    timings = pretrain["timings"]
    assert pretrain["config"]["model"] == "maskkit.mae.MaskedAutoencoder(cls_loss_weight=0.1)"
    assert summary["pretrain_masking_share"] == pytest.approx(
        timings["masking"]["median_ms"] / timings["pretrain_step"]["median_ms"]
    )

    finetune = results["finetune"]
    config, flops = finetune["config"], finetune["flops"]
    assert config["visible_tokens"] == 49
    width, depth = config["model_overrides"]["embed_dim"], config["model_overrides"]["depth"]
    for kind, tokens in (("full", 197), ("sam", 50)):
        expected = _linear_conv_macs(width, depth, tokens, config["num_classes"])
        assert flops[kind]["linear_conv_gmacs"] == pytest.approx(expected / 1e9, rel=1e-9)
        # Q Kᵀ and P V in every block, counted whatever the torch version (CPU SDPA kernel).
        attention = depth * 2 * tokens**2 * width
        assert flops[kind]["attention_gmacs"] == pytest.approx(attention / 1e9, rel=1e-6)
        assert flops[kind]["gmacs"] == pytest.approx(flops[kind]["gflops"] / 2)
    assert summary["finetune_flops_ratio"] == pytest.approx(
        flops["sam"]["gflops"] / flops["full"]["gflops"]
    )
    assert finetune["paper"]["full_gflops"] == 16.86
