"""MaskWeightBank.refresh under torch.distributed: two gloo processes on the CPU."""

from __future__ import annotations

import io
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import maskkit.bank
from maskkit import IndexedDataset, MaskWeightBank

GRID = (3, 4)
NUM_SAMPLES = 7  # odd, so DistributedSampler pads one rank's shard with a repeated index
WORLD_SIZE = 2
TIMEOUT_S = 120


class _Extractor:
    """Map = first channel average-pooled onto GRID, plus 1; NaN everywhere if poisoned."""

    def __init__(self, *, poisoned: bool = False) -> None:
        self.model = nn.Linear(1, 1)
        self.poisoned = poisoned

    def __call__(self, images: Tensor) -> Tensor:
        maps = _expected_maps(images)
        return maps * float("nan") if self.poisoned else maps


def _expected_maps(images: Tensor) -> Tensor:
    return nn.functional.adaptive_avg_pool2d(images[:, 0], GRID) + 1


def _images() -> Tensor:
    # Multiples of 1/8 pooled over 4 x 4 pixels: maps exact in float16.
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 8, (NUM_SAMPLES, 1, 12, 16), generator=generator) / 8


def _batches(images: Tensor, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
    return [
        (images[indices[i : i + 2]], torch.tensor(indices[i : i + 2]))
        for i in range(0, len(indices), 2)
    ]


def _run_rank(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=TIMEOUT_S // 2),
    )
    try:
        images = _images()
        results: dict[str, object] = {}

        # A DistributedSampler shard per rank; rank 0 draws the tqdm bar, rank 1 does not.
        dataset = IndexedDataset(TensorDataset(images, torch.zeros(NUM_SAMPLES)))
        sampler = DistributedSampler(dataset, shuffle=True, seed=0)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler)
        bank = MaskWeightBank(NUM_SAMPLES, GRID)
        stderr, sys.stderr = sys.stderr, io.StringIO()
        try:
            results["count"] = bank.refresh(_Extractor(), loader)
            results["bar"] = "mask weights" in sys.stderr.getvalue()
        finally:
            sys.stderr = stderr
        results["sampler"] = bank.weights.clone()
        results["shard"] = list(sampler)

        # Shards of 5 and 2 samples, gathered 2 rows per round, into one shared file that
        # rank 0 creates before rank 1 maps it.
        maskkit.bank._GATHER_ROWS = 2
        path = Path(out_dir) / "bank.f16"
        if rank == 0:
            MaskWeightBank(NUM_SAMPLES, GRID, path=path)
        dist.barrier()
        shared = MaskWeightBank(NUM_SAMPLES, GRID, path=path)
        mine = [4, 0, 6, 2, 5] if rank == 0 else [1, 3]
        shared.refresh(_Extractor(), _batches(images, mine), progress=False)
        results["uneven"] = shared.weights.clone()

        # Bad maps on rank 1 only: both ranks raise, neither writes, nobody hangs.
        try:
            bank.refresh(_Extractor(poisoned=rank == 1), _batches(images, mine), progress=False)
        except ValueError as exc:
            results["error"] = str(exc)
        results["after_error"] = bank.weights.clone()
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ranks")


@pytest.fixture(scope="module")
def ranks(out_dir: Path) -> list[dict]:
    # A fresh forkserver imports maskkit once and forks both ranks from it: as safe as spawn
    # (no state inherited from the test process), without importing torch twice.
    mp.get_context("forkserver").set_forkserver_preload([__name__])
    context = mp.start_processes(
        _run_rank,
        args=(_free_port(), str(out_dir)),
        nprocs=WORLD_SIZE,
        join=False,
        start_method="forkserver",
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD_SIZE} gloo ranks did not finish within {TIMEOUT_S} s")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


def test_sharded_refresh_ends_identical_on_every_rank(ranks: list[dict]) -> None:
    expected = _expected_maps(_images()).half()
    shards = [set(result["shard"]) for result in ranks]
    assert shards[0] != shards[1] and shards[0] | shards[1] == set(range(NUM_SAMPLES))
    for result in ranks:
        assert result["count"] == NUM_SAMPLES
        assert torch.equal(result["sampler"], expected)


def test_uneven_shards_in_several_rounds_fill_the_shared_file(
    ranks: list[dict], out_dir: Path
) -> None:
    expected = _expected_maps(_images()).half()
    for result in ranks:
        assert torch.equal(result["uneven"], expected)
    reopened = MaskWeightBank(NUM_SAMPLES, GRID, path=out_dir / "bank.f16")
    assert torch.equal(reopened.weights, expected)


def test_progress_bar_on_rank_zero_only(ranks: list[dict]) -> None:
    assert [result["bar"] for result in ranks] == [True, False]


def test_a_failure_on_one_rank_raises_on_all_and_writes_nothing(ranks: list[dict]) -> None:
    assert "another rank" in ranks[0]["error"]
    assert "NaN" in ranks[1]["error"]
    for result in ranks:
        assert torch.equal(result["after_error"], result["sampler"])
