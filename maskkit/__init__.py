"""maskkit: masking strategies for masked image modeling (MAE, AMT, MSMAE's SAM)."""

from .align import align_weights
from .attention import AttentionExtractor, CapturedAttention
from .bank import MapExtractor, MaskWeightBank
from .datasets import CsvImageDataset, ImageFolderDataset, SyntheticLesions
from .functional import priority_keys, sample_split, split_counts
from .maskers import AMTMasker, RandomMasker, SAMMasker
from .metrics import lesion_hit_counts, lesion_hit_rate, pixel_mask_to_patches
from .patches import patch_grid, patchify, unpatchify
from .schedule import MaskingSchedule
from .split import MaskSplit, gather_tokens
from .transforms import (
    CropParams,
    IndexedDataset,
    PairedRandomResizedCrop,
    WeightedCropDataset,
)
from .vit import forward_features_visible, keep_patch_tokens
from .viz import heatmap, save_mask_grid

__version__ = "0.1.0"

__all__ = [
    "AMTMasker",
    "AttentionExtractor",
    "CapturedAttention",
    "CropParams",
    "CsvImageDataset",
    "ImageFolderDataset",
    "IndexedDataset",
    "MapExtractor",
    "MaskSplit",
    "MaskWeightBank",
    "MaskingSchedule",
    "PairedRandomResizedCrop",
    "RandomMasker",
    "SAMMasker",
    "SyntheticLesions",
    "WeightedCropDataset",
    "align_weights",
    "forward_features_visible",
    "gather_tokens",
    "heatmap",
    "keep_patch_tokens",
    "lesion_hit_counts",
    "lesion_hit_rate",
    "patch_grid",
    "patchify",
    "pixel_mask_to_patches",
    "priority_keys",
    "sample_split",
    "save_mask_grid",
    "split_counts",
    "unpatchify",
]
