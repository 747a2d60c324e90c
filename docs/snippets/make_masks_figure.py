"""Draw the home page's picture: random masking vs SAM on synthetic lesions.

    python docs/snippets/make_masks_figure.py   # rewrites docs/assets/masks.png

Columns: the image (lesion boxed in green) | MAE's random masking, 0.75 | SAM, mask 0.45 and
throw 0.30 | SAM's weights. Masked patches are tinted blue-grey, thrown ones darkened.
SAM's weights here are an idealised attention map built from the ground-truth lesion mask
(a small floor plus each patch's lesion share); in training they come from the cls
attention of a supervised encoder (maskkit.AttentionExtractor).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maskkit import RandomMasker, SAMMasker
from maskkit.demo import SyntheticLesions, lesion_hit_rate, pixel_mask_to_patches
from maskkit.patches import patch_grid
from maskkit.viz import save_mask_grid

ASSET = Path(__file__).resolve().parents[1] / "assets" / "masks.png"
PATCH = 16
PAD = 2


def lesion_weights(lesion_masks: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, H, W) bool lesion masks -> (B, gh, gw) weights: 0.05 + the patch's lesion share."""
    share = torch.nn.functional.avg_pool2d(lesion_masks[:, None].float(), patch_size)[:, 0]
    return 0.05 + share


def make_figure(path: Path = ASSET, *, num_images: int = 3) -> dict[str, float]:
    """Write the picture to ``path``; return lesion hit rates of random masking and SAM."""
    data = SyntheticLesions(24, image_size=224, num_classes=3, seed=0)
    samples = [data.render(i) for i in range(len(data))]
    samples = [sample for sample in samples if sample.target > 0]  # images with a lesion
    images = torch.stack([sample.image for sample in samples])
    lesion_masks = torch.stack([sample.lesion_mask for sample in samples])
    lesion_patches = pixel_mask_to_patches(lesion_masks, PATCH)
    gh, gw = patch_grid((224, 224), PATCH)
    weights = lesion_weights(lesion_masks, PATCH)

    generator = torch.Generator().manual_seed(0)
    random_split = RandomMasker(0.75)(len(images), gh * gw, generator=generator)
    sam_split = SAMMasker(0.45, 0.30)(len(images), gh * gw, weights, generator=generator)

    with tempfile.TemporaryDirectory() as tmp:
        shown = slice(0, num_images)
        left = save_mask_grid(
            Path(tmp) / "random.png",
            images[shown],
            random_split.labels[shown],
            patch_size=PATCH,
            lesion_masks=lesion_masks[shown],
            pad=PAD,
        )
        right = save_mask_grid(
            Path(tmp) / "sam.png",
            images[shown],
            sam_split.labels[shown],
            patch_size=PATCH,
            weights=weights[shown],
            pad=PAD,
        )
        random_canvas = np.asarray(Image.open(left).convert("RGB"))
        # The SAM grid repeats the image column: drop it and keep the split and the weights.
        # Its legend would repeat the left one's, cut: keep the left legend only.
        sam_canvas = np.array(Image.open(right).convert("RGB"))[:, PAD + 224 :]
        sam_canvas[num_images * (224 + PAD) + PAD :] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([random_canvas, sam_canvas], axis=1)).save(path)

    return {
        "random_masked": lesion_hit_rate(random_split, lesion_patches),
        "random_visible": lesion_hit_rate(random_split, lesion_patches, group="visible"),
        "sam_masked": lesion_hit_rate(sam_split, lesion_patches),
        "sam_visible": lesion_hit_rate(sam_split, lesion_patches, group="visible"),
    }


if __name__ == "__main__":
    rates = make_figure()
    print(f"wrote {ASSET}")
    for name, rate in rates.items():
        print(f"lesion patches {name.replace('_', ' ')}: {rate:.1%}")
