"""Draw the pictures of the MIM strategies page: one PNG per strategy, three images each.

    python docs/snippets/make_strategy_figures.py   # rewrites docs/assets/strategies/*.png

Each PNG has one row per image: the image | its split (masked patches tinted blue-grey,
thrown ones darkened) | the weights that drove it, when the strategy has any. Images are
maskkit.demo.SyntheticLesions at 112 px with 8 px patches (a 14 x 14 grid), drawn at twice
the size. AttMask's
attention and HPM's predicted losses are stand-ins computed from the images (see
``stand_in_attention`` and ``stand_in_losses``): in training they come from the teacher's
cls attention (maskkit.AttentionExtractor) and from HPM's loss-prediction head
(examples/hpm_step.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from maskkit.attmask import AttMaskMasker
from maskkit.blockwise import BlockMasker, UnitMasker
from maskkit.demo import SyntheticLesions
from maskkit.hardpatch import HardPatchMasker
from maskkit.noise import NoisePatternMasker, color_noise
from maskkit.viz import save_mask_grid

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "strategies"
PATCH = 8
SIZE = 112
SCALE = 2  # panels drawn at 224 px
GRID = (14, 14)
NUM_IMAGES = 3


def stand_in_attention(lesion_masks: torch.Tensor) -> torch.Tensor:
    """(B, H, W) lesion masks → (B, gh, gw): a smooth random background in [0, 0.3] plus
    each patch's (blurred) lesion share, as an attentive teacher's cls attention peaks on
    the lesion and varies smoothly elsewhere."""
    share = F.avg_pool2d(lesion_masks[:, None].float(), PATCH)
    peak = F.avg_pool2d(share, 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    generator = torch.Generator().manual_seed(1)
    smooth = color_noise(len(lesion_masks), GRID, color="red", generator=generator)
    low = smooth.amin(dim=(1, 2), keepdim=True)
    span = smooth.amax(dim=(1, 2), keepdim=True) - low
    return 0.3 * (smooth - low) / span + peak / peak.amax(dim=(1, 2), keepdim=True)


def stand_in_losses(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) → (B, gh, gw): each patch's pixel variance, a proxy for how hard it is
    to reconstruct from its neighbours."""
    grey = images.mean(dim=1, keepdim=True)
    mean = F.avg_pool2d(grey, PATCH)
    return (F.avg_pool2d(grey.square(), PATCH) - mean.square())[:, 0]


def make_figures(folder: Path = ASSETS) -> dict[str, Path]:
    """Write every strategy's picture into ``folder``; return the paths by strategy."""
    data = SyntheticLesions(12, image_size=SIZE, num_classes=3, seed=0)
    samples = [data.render(i) for i in range(len(data))]
    samples = [s for s in samples if s.target > 0][:NUM_IMAGES]
    images = torch.stack([s.image for s in samples])
    lesions = torch.stack([s.lesion_mask for s in samples])
    batch, num_patches = len(images), GRID[0] * GRID[1]
    attention = stand_in_attention(lesions)
    losses = stand_in_losses(images)
    noise_generator = torch.Generator().manual_seed(5)
    green = color_noise(batch, GRID, color="green", generator=noise_generator)
    drawn = {
        "block": (BlockMasker(0.4), None),
        "unit": (UnitMasker(0.6, unit=2), None),
        "unit-13x13": None,  # drawn below: SimMIM units on a grid not divisible by 2
        "attmask-high": (AttMaskMasker(0.45, mode="high", masking_prob=1.0), attention),
        "attmask-hints": (AttMaskMasker(0.45, mode="hints", masking_prob=1.0), attention),
        "attmask-low": (AttMaskMasker(0.45, mode="low", masking_prob=1.0), attention),
        "hpm": (HardPatchMasker(0.75, alpha=0.5), losses),
        "noise-green": (NoisePatternMasker(0.75, color="green"), green),
    }
    paths: dict[str, Path] = {}
    for seed, (name, entry) in enumerate(drawn.items()):
        generator = torch.Generator().manual_seed(seed)
        if name == "unit-13x13":
            small = F.interpolate(images, size=(13 * PATCH, 13 * PATCH), mode="area")
            split = UnitMasker(0.6, unit=2, grid=(13, 13))(batch, 169, generator=generator)
            paths[name] = save_mask_grid(
                folder / f"{name}.png", small, split, patch_size=PATCH, scale=SCALE
            )
            continue
        masker, weights = entry
        if name == "noise-green":
            # The masker draws its own noise; this picture shows the split of that noise.
            split = masker(batch, num_patches, generator=torch.Generator().manual_seed(5))
        else:
            split = masker(batch, num_patches, weights, generator=generator)
        paths[name] = save_mask_grid(
            folder / f"{name}.png", images, split, patch_size=PATCH, weights=weights, scale=SCALE
        )
    noise_rows = []
    for color in ("red", "green", "blue", "purple"):
        masker = NoisePatternMasker(0.75, color=color)
        noise_rows.append(masker(1, num_patches, generator=torch.Generator().manual_seed(6)))
    labels = torch.cat([split.labels for split in noise_rows])
    paths["noise-colors"] = save_mask_grid(
        folder / "noise-colors.png",
        images[:1].expand(4, -1, -1, -1),
        labels,
        patch_size=PATCH,
        scale=SCALE,
    )
    return paths


if __name__ == "__main__":
    for name, path in make_figures().items():
        print(f"{name}: wrote {path}")
