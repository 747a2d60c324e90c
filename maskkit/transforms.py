"""Crops that report what they did, and datasets that return the crop with each view.

MSMAE augments with RandomResizedCrop (scale (0.2, 1.0), bicubic) and a horizontal flip,
and masks each view from the whole image's map. :class:`PairedRandomResizedCrop` returns
the box and flip it applied; :class:`CropDataset` returns them with every view, so the
training step can move the batch's maps the same way on the device
(:func:`maskkit.align_weights`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from ._checks import check_index, check_int, check_pair, check_range, check_ratio
from .align import CropParams

__all__ = ["CropDataset", "CropParams", "IndexedDataset", "PairedRandomResizedCrop"]


@contextlib.contextmanager
def _drawing_from(generator: torch.Generator | None) -> Iterator[None]:
    """Make torch's global CPU RNG draw ``generator``'s stream inside the block.

    torchvision's transforms draw from the global RNG; copying the generator's state in
    and the advanced state back out gives exactly the draws the generator would have made,
    and leaves the global RNG untouched. ``None`` draws from the global RNG itself.
    """
    if generator is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.set_state(generator.get_state())
        yield
        generator.set_state(torch.default_generator.get_state())


class PairedRandomResizedCrop:
    """RandomResizedCrop + horizontal flip that also returns what it did.

    The box is torchvision's own ``RandomResizedCrop.get_params`` and the flip is drawn as
    ``RandomHorizontalFlip`` does, both from ``generator``. With ``generator=None`` the
    draws come from torch's global RNG in the order of
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
        TypeError: ``scale`` or ``ratio`` not a pair of numbers, ``hflip_prob`` not a
            number, or ``interpolation`` not an ``InterpolationMode``.
        ValueError: a non-positive size, an empty, reversed or non-positive range, a scale
            above 1, or a probability outside [0, 1].
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
        pair = check_pair("size", (size, size) if isinstance(size, int) else size)
        self.scale = check_range("scale", scale, upper=1.0)
        self.ratio = check_range("ratio", ratio)
        self.hflip_prob = check_ratio("hflip_prob", hflip_prob)
        if not isinstance(interpolation, InterpolationMode):
            raise TypeError(
                f"interpolation must be a torchvision InterpolationMode, got {interpolation!r}"
            )
        self.size = pair
        self.interpolation = interpolation
        self.antialias = antialias

    def sample(
        self, image_size: tuple[int, int], *, generator: torch.Generator | None = None
    ) -> CropParams:
        """Draw a box inside an image of size ``(H, W)`` and a flip.

        Raises:
            TypeError: ``generator`` is neither a ``torch.Generator`` nor ``None``.
            ValueError: ``image_size`` is not two positive ints, or ``generator`` is not
                on the CPU.
        """
        height, width = check_pair("image_size", image_size)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__} "
                f"{generator!r}; seed one with torch.Generator().manual_seed(seed)"
            )
        # torchvision draws from the global CPU RNG, which only a CPU generator's state fits.
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(
                f"generator must be a CPU torch.Generator, got one on {generator.device}; "
                "create it with torch.Generator() (no device)"
            )
        # get_params reads only the size of its image argument: a view of one element.
        stand_in = torch.empty(1, 1, 1).expand(1, height, width)
        with _drawing_from(generator):
            top, left, crop_height, crop_width = RandomResizedCrop.get_params(
                stand_in, list(self.scale), list(self.ratio)
            )
            hflip = bool(torch.rand(1) < self.hflip_prob)
        return CropParams(top, left, crop_height, crop_width, hflip, height, width)

    def apply(self, image: Any, params: CropParams) -> Any:
        """Crop ``image`` (PIL or (..., C, H, W) tensor) to ``params``, resize, maybe flip.

        Raises:
            TypeError: ``params`` is not a :class:`CropParams`.
            ValueError: ``params`` were drawn for an image of another size.
        """
        if not isinstance(params, CropParams):
            raise TypeError(
                f"params must be a CropParams from sample(), got {type(params).__name__}"
            )
        _, height, width = TF.get_dimensions(image)
        drawn_for = (int(params.image_height), int(params.image_width))
        # A box drawn for a larger image would be padded with zeros, not fail.
        if drawn_for != (height, width):
            raise ValueError(
                f"params were drawn for an image of size (H, W) = {drawn_for}, but the image "
                f"is {(height, width)}; draw them with sample({(height, width)}) or pass the "
                "image they were drawn for"
            )
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


class CropDataset(Dataset):
    """Wrap a dataset of ``(image, target)`` to yield ``(view, target, crop, index)``.

    Each image is cropped and flipped by ``transform``; ``crop`` is the
    :class:`CropParams` it applied (box, flip and the source image's size), which the
    DataLoader collates into (B,) tensors, and ``index`` the dataset index, with which the
    training step reads the batch's maps from a :class:`maskkit.MaskWeightBank` and aligns
    them on the device::

        for views, targets, crops, indices in loader:
            weights = align_weights(bank[indices].to(device), crops, out_grid=grid)

    Determinism: every sample draws from its own generator seeded by ``(seed, epoch,
    index)``, so a sample's crop depends neither on the order of access nor on the
    DataLoader worker that loads it, and a resumed run redraws the same crops. Call
    :meth:`set_epoch` before creating each epoch's iterator: workers copy the dataset when
    they start, so with ``persistent_workers=True`` they would keep the epoch they started
    with (the recipes start workers anew each epoch). ``post_transform`` runs after the
    crop (e.g. ToTensor + Normalize); randomness in it comes from the global RNG, not from
    ``seed``.

    Args:
        dataset: map-style dataset whose items are ``(image, target)``; images PIL or tensors.
        transform: the paired crop.
        seed: base seed of the crops, an int >= 0.
        post_transform: optional callable applied to the cropped image.

    Raises:
        ValueError: a negative seed.
    """

    def __init__(
        self,
        dataset: Dataset,
        transform: PairedRandomResizedCrop,
        *,
        seed: int = 0,
        post_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = check_int("seed", seed, minimum=0)
        self.post_transform = post_transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops of ``epoch`` in iterators created from now on."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, CropParams, int]:
        """``(view, target, crop, index)`` of sample ``index``, negative counting from the end.

        Raises:
            TypeError: ``index`` is not an int.
            IndexError: ``index`` is outside [-len, len).
        """
        # The returned index reads the bank (which takes dataset indices in [0, N)) and
        # seeds the crop, so [-1] must give the sample of [len - 1], its index included.
        index = check_index(index, len(self))
        image, target = self.dataset[index]
        view, crop = self.transform(image, generator=self.generator(index))
        if self.post_transform is not None:
            view = self.post_transform(view)
        return view, target, crop, index

    def generator(self, index: int) -> torch.Generator:
        """The generator of sample ``index`` in the current epoch (negative: from the end).

        Raises:
            TypeError: ``index`` is not an int.
            IndexError: ``index`` is outside [-len, len).
        """
        index = check_index(index, len(self))
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
