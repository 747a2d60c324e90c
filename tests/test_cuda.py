"""CUDA behaviour: sync-free sampling, graph capture, async value checks. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from maskkit import AMTMasker, RandomMasker, SAMMasker

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def sync_errors():
    torch.cuda.set_sync_debug_mode("error")
    yield
    torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("masker", [SAMMasker(), AMTMasker(), SAMMasker(validate=False)])
def test_weighted_sampling_never_syncs(masker: SAMMasker, sync_errors: None) -> None:
    weights = torch.rand(256, 14, 14, device="cuda", dtype=torch.bfloat16)
    generator = torch.Generator(device="cuda").manual_seed(0)
    split = masker(256, 196, weights, generator=generator)
    x = torch.randn(256, 196, 64, device="cuda")
    split.gather_visible(x), split.loss_mask(), split.kept(), split.is_thrown()
    assert split.visible.device.type == "cuda"


def test_random_sampling_never_syncs(sync_errors: None) -> None:
    split = RandomMasker()(64, 196, device="cuda")
    assert split.visible.is_cuda


def test_cuda_matches_partition_and_is_reproducible() -> None:
    weights = torch.rand(32, 196, device="cuda")
    first = SAMMasker()(32, 196, weights, generator=torch.Generator("cuda").manual_seed(3))
    again = SAMMasker()(32, 196, weights, generator=torch.Generator("cuda").manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    every = torch.cat([first.visible, first.masked, first.thrown], 1).sort(1).values
    assert torch.equal(every, torch.arange(196, device="cuda").expand(32, 196))


def test_cuda_graph_capture_and_replay() -> None:
    masker = SAMMasker(validate=False)
    weights = torch.rand(64, 196, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        masker(64, 196, weights)  # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        split = masker(64, 196, weights)
    graph.replay()
    torch.cuda.synchronize()
    every = torch.cat([split.visible, split.masked, split.thrown], 1).sort(1).values
    assert torch.equal(every, torch.arange(196, device="cuda").expand(64, 196))


def test_bad_weights_trip_the_device_assert() -> None:
    weights = torch.rand(4, 16, device="cuda")
    weights[0, 0] = -1.0
    # The async assert surfaces at the next sync; a failed device assert poisons the context,
    # so run it in a subprocess.
    import subprocess
    import sys

    code = (
        "import torch; from maskkit import SAMMasker\n"
        "w = torch.rand(4, 16, device='cuda'); w[0, 0] = -1\n"
        "SAMMasker()(4, 16, w); torch.cuda.synchronize()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "non-negative" in (result.stderr + result.stdout)
