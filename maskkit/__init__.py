"""maskkit: masking strategies for masked image modeling (MAE, AMT, MSMAE's SAM)."""

from .functional import priority_keys, sample_split, split_counts
from .maskers import AMTMasker, RandomMasker, SAMMasker
from .patches import patch_grid, patchify, unpatchify
from .split import MaskSplit, gather_tokens
from .vit import forward_features_visible, keep_patch_tokens

__version__ = "0.1.0"

__all__ = [
    "AMTMasker",
    "MaskSplit",
    "RandomMasker",
    "SAMMasker",
    "forward_features_visible",
    "gather_tokens",
    "keep_patch_tokens",
    "patch_grid",
    "patchify",
    "priority_keys",
    "sample_split",
    "split_counts",
    "unpatchify",
]
