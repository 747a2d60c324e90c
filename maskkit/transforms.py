"""Crops that carry their weight maps along, and the datasets that apply them.

MSMAE augments with RandomResizedCrop (scale (0.2, 1.0), bicubic) and a horizontal flip,
and masks each view from the whole image's map. :class:`PairedRandomResizedCrop` returns
the box and flip it applied, so :func:`maskkit.align_weights` can move the map the same
way; :class:`WeightedCropDataset` does both per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from .align import _positive_pair, align_weights
from .bank import MaskWeightBank

__all__ = ["CropParams", "IndexedDataset", "PairedRandomResizedCrop", "WeightedCropDataset"]


class CropParams(NamedTuple):
    """A sampled crop: the box in pixels of the input image, and whether it was flipped."""

    top: int
    left: int
    height: int
    width: int
    hflip: bool

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(top, left, height, width)``, the order of ``RandomResizedCrop.get_params``."""
        return self.top, self.left, self.height, self.width


class PairedRandomResizedCrop:
    """RandomResizedCrop + horizontal flip that also returns what it did.

    The box follows torchvision's ``RandomResizedCrop.get_params`` rule (10 tries at a
    random area and log-uniform aspect ratio, then a central crop clamped to ``ratio``),
    then the flip is drawn as ``RandomHorizontalFlip`` does, all from ``generator``. With
    ``generator=None`` the draws come from torch's global RNG in the same order as
    ``Compose([RandomResizedCrop(...), RandomHorizontalFlip(...)])``, so both give the same
    images for the same seed. Defaults are MSMAE's (scale (0.2, 1.0), bicubic, flip 0.5).

    Args:
        size: Output ``(height, width)``, or an int for a square.
        scale: Range of the crop's area as a share of the image's area.
        ratio: Range of the crop's aspect ratio (width / height), sampled log-uniformly.
        hflip_prob: Probability of a horizontal flip.
        interpolation: torchvision ``InterpolationMode`` used to resize the crop.
        antialias: Antialias when downsizing (tensor images; PIL always does).

    Raises:
        ValueError: a non-positive size, an empty or reversed range, or a probability
            outside [0, 1].
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        *,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip_prob: float = 0.5,
        interpolation: InterpolationMode = InterpolationMode.BICUBIC,
        antialias: bool = True,
    ) -> None:
        pair = _positive_pair("size", (size, size) if isinstance(size, int) else size)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < scale[0] <= scale[1] <= 1, got {scale!r}")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1] < math.inf:
            raise ValueError(f"ratio must satisfy 0 < ratio[0] <= ratio[1], got {ratio!r}")
        if not 0 <= hflip_prob <= 1:
            raise ValueError(f"hflip_prob must lie in [0, 1], got {hflip_prob!r}")
        if not isinstance(interpolation, InterpolationMode):
            raise TypeError(
                f"interpolation must be a torchvision InterpolationMode, got {interpolation!r}"
            )
        self.size = pair
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip_prob = float(hflip_prob)
        self.interpolation = interpolation
        self.antialias = antialias

    def sample(
        self, image_size: tuple[int, int], *, generator: torch.Generator | None = None
    ) -> CropParams:
        """Draw a box inside an image of size ``(H, W)`` and a flip."""
        height, width = image_size
        if height < 1 or width < 1:
            raise ValueError(f"image_size must be positive (H, W), got {image_size!r}")
        top, left, crop_height, crop_width = self._sample_box(height, width, generator)
        hflip = bool(torch.rand(1, generator=generator) < self.hflip_prob)
        return CropParams(top, left, crop_height, crop_width, hflip)

    def apply(self, image: Any, params: CropParams) -> Any:
        """Crop ``image`` (PIL or (..., C, H, W) tensor) to ``params``, resize, maybe flip."""
        image = TF.resized_crop(
            image,
            *params.box,
            list(self.size),
            interpolation=self.interpolation,
            antialias=self.antialias,
        )
        return TF.hflip(image) if params.hflip else image

    def __call__(
        self, image: Any, *, generator: torch.Generator | None = None
    ) -> tuple[Any, CropParams]:
        """Sample and apply a crop; returns ``(cropped image, params)``."""
        _, height, width = TF.get_dimensions(image)
        params = self.sample((height, width), generator=generator)
        return self.apply(image, params), params

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"hflip_prob={self.hflip_prob}, interpolation={self.interpolation.value})"
        )

    def _sample_box(
        self, height: int, width: int, generator: torch.Generator | None
    ) -> tuple[int, int, int, int]:
        # The same draws, in the same order and precision, as RandomResizedCrop.get_params.
        area = height * width
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(*self.scale, generator=generator).item()
            log_aspect = torch.empty(1).uniform_(
                float(log_ratio[0]), float(log_ratio[1]), generator=generator
            )
            aspect = torch.exp(log_aspect).item()
            crop_width = round(math.sqrt(target_area * aspect))
            crop_height = round(math.sqrt(target_area / aspect))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = int(torch.randint(0, height - crop_height + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - crop_width + 1, (1,), generator=generator))
                return top, left, crop_height, crop_width
        # No try fitted: the central crop with the aspect ratio clamped to `ratio`.
        image_ratio = width / height
        crop_height, crop_width = height, width
        if image_ratio < self.ratio[0]:
            crop_height = round(width / self.ratio[0])
        elif image_ratio > self.ratio[1]:
            crop_width = round(height * self.ratio[1])
        return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


class WeightedCropDataset(Dataset):
    """Wrap a dataset of ``(image, target)`` to yield ``(image, target, weights, index)``.

    Each sample is cropped and flipped by ``transform`` and its map in ``bank`` is aligned
    to that crop and flip on ``out_grid`` (:func:`maskkit.align_weights`), so ``weights``
    (gh, gw) float32 covers exactly what the crop shows.

    Determinism: every sample draws from its own generator seeded by ``(seed, epoch,
    index)``, so a sample's crop depends neither on the order of access nor on the
    DataLoader worker that loads it. Call :meth:`set_epoch` before iterating each epoch's
    loader to change the crops per epoch. The epoch and the bank's maps live in shared
    memory, so DataLoader workers, persistent ones included, see ``set_epoch`` and a
    refresh done in the main process (do both before starting the epoch's iteration).
    ``post_transform`` runs after the crop (e.g. ToTensor + Normalize); randomness in it
    comes from the global RNG, not from ``seed``.

    Args:
        dataset: Map-style dataset whose items are ``(image, target)``; images PIL or tensors.
        bank: Maps over the whole images, one per index of ``dataset``.
        transform: The paired crop.
        seed: Base seed of the crops, an int >= 0.
        post_transform: Optional callable applied to the cropped image.
        out_grid: ``(gh, gw)`` of the returned weights; defaults to ``bank.grid``.

    Raises:
        ValueError: ``dataset`` and ``bank`` differ in length, or a negative seed.
    """

    def __init__(
        self,
        dataset: Dataset,
        bank: MaskWeightBank,
        transform: PairedRandomResizedCrop,
        *,
        seed: int = 0,
        post_transform: Callable[[Any], Any] | None = None,
        out_grid: tuple[int, int] | None = None,
    ) -> None:
        if len(dataset) != len(bank):  # type: ignore[arg-type]
            raise ValueError(
                f"the dataset has {len(dataset)} samples but the bank {len(bank)}; "  # type: ignore[arg-type]
                "build the bank with num_samples=len(dataset)"
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.dataset = dataset
        self.bank = bank
        self.transform = transform
        self.seed = seed
        self.post_transform = post_transform
        self.out_grid = bank.grid if out_grid is None else out_grid
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch the crops are drawn for."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops of ``epoch`` from now on (visible to running workers)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.bank)

    def __getitem__(self, index: int) -> tuple[Any, Any, torch.Tensor, int]:
        image, target = self.dataset[index]
        _, height, width = TF.get_dimensions(image)
        image, params = self.transform(image, generator=self.generator(index))
        weights = align_weights(
            self.bank[index], params.box, (height, width), self.out_grid, hflip=params.hflip
        )
        if self.post_transform is not None:
            image = self.post_transform(image)
        return image, target, weights, index

    def generator(self, index: int) -> torch.Generator:
        """The generator of sample ``index`` in the current epoch."""
        # SeedSequence mixes the three ints, so nearby (seed, epoch, index) give unrelated
        # streams, unlike a sum or a product of them.
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(
            1, dtype=np.uint64
        )
        return torch.Generator().manual_seed(int(state[0]))


class IndexedDataset(Dataset):
    """Append each item's index: ``(image, target)`` becomes ``(image, target, index)``.

    Feeds :meth:`MaskWeightBank.refresh`, whose batches end with the dataset indices.
    A non-tuple item ``x`` becomes ``(x, index)``.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        item = self.dataset[index]
        parts: Sequence[Any] = item if isinstance(item, tuple) else (item,)
        return (*parts, index)
