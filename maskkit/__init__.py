"""maskkit: masking strategies for masked image modeling (MAE, AMT, MSMAE's SAM).

The top level is the masking core. Submodules hold the rest: :mod:`maskkit.functional`
(the sampling primitives), :mod:`maskkit.mae` (MAE building blocks that handle thrown
patches), :mod:`maskkit.integrations` (facebookresearch/mae, Hugging Face, lightly),
:mod:`maskkit.demo` (synthetic lesions, hit rate) and :mod:`maskkit.viz` (figures).
"""

from .align import CropParams, align_weights
from .attention import AttentionExtractor
from .attmask import AttMaskMasker
from .bank import MaskWeightBank
from .blockwise import BlockMasker, UnitMasker
from .functional import SplitCounts, sample_split, split_counts
from .hardpatch import HardPatchMasker, HardPatchSchedule
from .maskers import AMTMasker, RandomMasker, SAMMasker
from .noise import NoisePatternMasker, color_noise, noise_pattern_weights
from .schedule import MaskingSchedule
from .split import MaskSplit, gather_tokens
from .transforms import CropDataset, IndexedDataset, PairedRandomResizedCrop
from .vit import forward_features_visible

__version__ = "0.2.0"

__all__ = [
    "AMTMasker",
    "AttMaskMasker",
    "AttentionExtractor",
    "BlockMasker",
    "CropDataset",
    "CropParams",
    "HardPatchMasker",
    "HardPatchSchedule",
    "IndexedDataset",
    "MaskSplit",
    "MaskWeightBank",
    "MaskingSchedule",
    "NoisePatternMasker",
    "PairedRandomResizedCrop",
    "RandomMasker",
    "SAMMasker",
    "SplitCounts",
    "UnitMasker",
    "align_weights",
    "color_noise",
    "forward_features_visible",
    "gather_tokens",
    "noise_pattern_weights",
    "sample_split",
    "split_counts",
]
