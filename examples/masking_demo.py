"""Smallest maskkit demo: random, AMT-style and SAM splits of one batch, printed as grids.

python examples/masking_demo.py
"""

from __future__ import annotations

import torch

from maskkit import AMTMasker, RandomMasker, SAMMasker

SYMBOLS = {0: ".", 1: "M", -1: "x"}  # visible, masked, thrown


def show(name: str, labels: torch.Tensor, grid: tuple[int, int]) -> None:
    print(f"{name}  (. visible, M masked, x thrown)")
    for row in labels.view(*grid).tolist():
        print("  " + " ".join(SYMBOLS[value] for value in row))


def main() -> None:
    grid = (8, 8)
    generator = torch.Generator().manual_seed(0)
    # A "lesion": high weights on a 3x3 block, low elsewhere.
    weights = torch.full((1, *grid), 0.05)
    weights[0, 2:5, 4:7] = 1.0
    show("random 0.75", RandomMasker(0.75)(1, 64, generator=generator).labels, grid)
    show("AMT 0.45/0.40", AMTMasker()(1, 64, weights, generator=generator).labels, grid)
    show("SAM 0.45/0.30", SAMMasker()(1, 64, weights, generator=generator).labels, grid)


if __name__ == "__main__":
    main()
