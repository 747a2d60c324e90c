"""Per-sample mask-weight bank: one attention map per training image, refreshed on schedule.

MSMAE (following AMT) computes each training image's cls-attention map on the whole,
un-augmented image every K epochs, keeps it per sample, and masks the augmented views
from it (aligned with :func:`maskkit.align_weights`). The released MSMAE code
(Talented-Q/MSMAE, ``update_mask``) returns all-ones weights from its refresh, the gather
being commented out; here the refreshed maps reach the bank on every rank.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._checks import check_int, check_pair
from .attention import eval_mode
from .files import atomic_write
from .functional import validate_weights

__all__ = ["MapExtractor", "MaskWeightBank"]

_STORAGE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Rows per all_gather round in a distributed refresh: bounds the temporary memory of the
# gather (world_size * rows maps) instead of materialising every rank's shard at once.
_GATHER_ROWS = 1 << 15
# A file-backed bank starts with this header: a magic line, the layout as JSON, zero padding.
_FILE_MAGIC = b"maskkit.MaskWeightBank\n"
_FILE_HEADER_BYTES = 256


class MapExtractor(Protocol):
    """What :meth:`MaskWeightBank.refresh` needs: ``maps = extractor(images)`` and ``.model``.

    :class:`maskkit.AttentionExtractor` is one.
    """

    model: nn.Module

    def __call__(self, images: Tensor) -> Tensor: ...


class MaskWeightBank(nn.Module):
    """Per-sample weight maps on a fixed grid, indexed by dataset index.

    Every map starts as ones (uniform weights) until :meth:`refresh` or :meth:`update`
    writes it. The maps sit in the buffer ``weights`` of shape (N, gh, gw) on the CPU, so
    ``state_dict()`` / ``load_state_dict()`` put them in checkpoints. Keep the bank out of
    the model: as a submodule, DDP would broadcast it and ``model.to(device)`` would move it.
    The training step reads ``bank[indices]`` for its batch and aligns the maps with each
    view's crop on the device (:func:`maskkit.align_weights`), so DataLoader workers never
    touch the bank.

    Memory: ``gh * gw * itemsize`` bytes per sample, 392 B for a 14 x 14 grid in float16,
    so about 0.5 GB for ImageNet-1k's 1.28M images (1 GB in float32).

    With ``path=`` the maps live in a memory-mapped file: a 256-byte header (the layout:
    N, grid, dtype) and then the raw (N, gh, gw) array in ``dtype``
    (``numpy.memmap(path, offset=256, ...)`` reads it). An existing file with the same
    layout is reopened with its contents (checked: size and values), a missing one is
    created filled with ones. Writes are in place. When several ranks of one node share a
    path, create the bank on one rank first and barrier before the others open it. Indexing,
    ``update``, ``refresh``, ``state_dict``, ``load_state_dict``, copying and pickling check
    the file's size first (a file truncated while mapped would kill the process with
    SIGBUS); reading ``bank.weights`` directly skips that check.

    Args:
        num_samples: N, the dataset length; maps are indexed by dataset index in [0, N).
        grid: ``(gh, gw)`` cells per map, e.g. the model's patch grid.
        dtype: Storage dtype: float16 (default), bfloat16, float32 or float64.
        path: Optional file to back the bank with a shared memory map.

    Raises:
        ValueError: bad sizes or dtype, or an existing ``path`` with another layout.
    """

    weights: Tensor

    def __init__(
        self,
        num_samples: int,
        grid: tuple[int, int] = (14, 14),
        *,
        dtype: torch.dtype = torch.float16,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        check_int("num_samples", num_samples, minimum=1)
        if dtype not in _STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {_STORAGE_DTYPES}, got {dtype}")
        self.num_samples = num_samples
        self.grid = check_pair("grid", grid)
        self.dtype = dtype
        self.path = None if path is None else Path(path)
        if self.path is None:
            weights = torch.ones(num_samples, *self.grid, dtype=dtype)
        else:
            weights = self._open_file(self.path, create=True)
        self.register_buffer("weights", weights)

    @property
    def bytes_per_sample(self) -> int:
        """Storage bytes per map: ``gh * gw * itemsize``."""
        return self.grid[0] * self.grid[1] * self.dtype.itemsize

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, indices: int | Tensor | Sequence[int]) -> Tensor:
        """Maps of the given samples as a float32 copy.

        Args:
            indices: A dataset index, or (k,) indices of any integer dtype.

        Returns:
            (gh, gw) for an int, (k, gh, gw) for (k,) indices.
        """
        index = self._check_indices(indices, allow_scalar=True)
        self._check_file()
        return self.weights[index].to(torch.float32, copy=True)

    def update(self, indices: Tensor | Sequence[int], maps: Tensor) -> None:
        """Overwrite the maps of some samples.

        Args:
            indices: (k,) distinct dataset indices, any integer dtype.
            maps: (k, gh, gw) finite, non-negative maps, any floating dtype and device.

        Raises:
            ValueError: an index out of [0, N) or repeated, maps of the wrong shape, NaN, Inf
                or negative values, or values that overflow the storage dtype.
        """
        index = self._check_indices(indices)
        if index.unique().numel() != index.numel():
            raise ValueError("indices must be distinct; pass each sample's map once")
        self._write(index, self._check_maps(maps, index.numel()))

    def refresh(
        self,
        extractor: MapExtractor | Callable[[Tensor], Tensor],
        loader: Iterable[Sequence[Any]],
        *,
        progress: bool = True,
    ) -> int:
        """Recompute the maps of every sample the loader yields.

        The loader must give un-augmented images: each whole image resized to the model's
        input size (e.g. ``Resize((224, 224))``, no crop, no flip), since the maps are later
        aligned as maps over the whole image. Its batches are tuples or lists whose first
        item is the images (B, C, H, W) and whose last item is their dataset indices (B,);
        :class:`maskkit.IndexedDataset` adds the index to any dataset.

        The extractor's model runs in eval mode under ``torch.no_grad()``; every module's
        train/eval flag is restored afterwards, also on error. Images are moved to the
        device of the model's first parameter. Nothing is written until every map has been
        computed and checked, so a failed refresh leaves the bank as it was.

        Under ``torch.distributed`` (initialised, world size > 1) each rank runs its own
        loader, which should hold a shard of the dataset (``DistributedSampler``, ``shuffle``
        off is fine), then the shards are all-gathered in rounds of at most 32768 rows per
        rank, so the bank ends identical on every rank. Repeated indices (the sampler's
        padding) are written once. With NCCL the exchange goes through the current CUDA
        device. Every rank must call ``refresh``.

        Args:
            extractor: Callable ``images -> (B, gh, gw)`` maps with a ``model`` attribute,
                e.g. :class:`maskkit.AttentionExtractor`.
            loader: Iterable of batches ``(images, ..., indices)``.
            progress: Show a tqdm bar (on rank 0 only; needs the optional ``tqdm``).

        Returns:
            The number of distinct samples refreshed (over all ranks). A warning names how
            many samples kept their previous maps when it is fewer than N.

        Raises:
            ValueError: a batch without indices, maps of the wrong shape or with NaN, Inf or
                negative values, or indices out of range, on any rank.
        """
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        show = progress and (not distributed or dist.get_rank() == 0)
        failure: ValueError | None = None
        try:
            indices, maps = self._extract(extractor, loader, show=show)
        except ValueError as exc:
            if not distributed:
                raise
            failure = exc
            indices = torch.empty(0, dtype=torch.int64)
            maps = torch.empty(0, *self.grid, dtype=self.dtype)
        if distributed:
            # A rank that fails alone would leave the others waiting in all_gather.
            _raise_if_any_failed(failure)
            pieces: Iterable[tuple[Tensor, Tensor]] = _all_gather_rows(indices, maps)
        else:
            pieces = [(indices, maps)]
        seen = torch.zeros(self.num_samples, dtype=torch.bool)
        for piece_indices, piece_maps in pieces:
            self._write(piece_indices, piece_maps)
            seen[piece_indices] = True
        refreshed = int(seen.sum())
        if refreshed < self.num_samples:
            warnings.warn(
                f"refresh covered {refreshed} of {self.num_samples} samples; the other "
                f"{self.num_samples - refreshed} keep their previous maps (does the loader "
                "drop the last batch or hold a subset?)",
                stacklevel=2,
            )
        return refreshed

    def extra_repr(self) -> str:
        where = f", path={str(self.path)!r}" if self.path is not None else ""
        return f"num_samples={self.num_samples}, grid={self.grid}, dtype={self.dtype}{where}"

    def _extract(
        self,
        extractor: MapExtractor | Callable[[Tensor], Tensor],
        loader: Iterable[Sequence[Any]],
        *,
        show: bool,
    ) -> tuple[Tensor, Tensor]:
        model: nn.Module | None = getattr(extractor, "model", None)
        if not isinstance(model, nn.Module):
            raise TypeError("extractor must have a `model` attribute holding an nn.Module")
        device = next(model.parameters(), torch.empty(0)).device
        all_indices: list[Tensor] = []
        all_maps: list[Tensor] = []
        with eval_mode(model), torch.no_grad():
            for batch in _progress(loader, show=show):
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ValueError(
                        "loader batches must be tuples (images, ..., indices) with the "
                        "dataset indices last; wrap the dataset in maskkit.IndexedDataset"
                    )
                images, indices = batch[0], self._check_indices(batch[-1])
                if images.is_floating_point() and not bool(torch.isfinite(images).all()):
                    raise ValueError(
                        f"images of dataset indices {indices[:8].tolist()} (first of the "
                        "batch) hold NaN or Inf pixels, which make their attention maps NaN; "
                        "fix or drop those images"
                    )
                maps = extractor(images.to(device, non_blocking=True))
                all_maps.append(self._check_maps(maps, indices.numel()))
                all_indices.append(indices)
        if not all_indices:
            return torch.empty(0, dtype=torch.int64), torch.empty(0, *self.grid, dtype=self.dtype)
        return torch.cat(all_indices), torch.cat(all_maps)

    def _write(self, indices: Tensor, maps: Tensor) -> None:
        """Write checked maps in place; a repeated index takes its first map."""
        self._check_file()
        unique, inverse = torch.unique(indices, return_inverse=True)
        if unique.numel() != indices.numel():
            positions = torch.arange(indices.numel())
            first = torch.full_like(unique, indices.numel()).scatter_reduce_(
                0, inverse, positions, reduce="amin"
            )
            indices, maps = unique, maps[first]
        self.weights[indices] = maps

    def _check_indices(
        self, indices: int | Tensor | Sequence[int], *, allow_scalar: bool = False
    ) -> Tensor:
        """``indices`` as a CPU int64 tensor of dataset indices in [0, N).

        Raises:
            TypeError: not an int, a sequence of ints or an integer tensor (a bool, a
                slice, a string, ...).
            ValueError: another shape, or an index outside [0, N).
        """
        accepted = (
            "an int, a sequence of ints or a (k,) integer tensor"
            if allow_scalar
            else "a sequence of ints or a (k,) integer tensor"
        )
        if isinstance(indices, bool):
            raise TypeError(f"indices must be {accepted}, got a bool")
        try:
            index = torch.as_tensor(indices)
        except (TypeError, ValueError, RuntimeError):
            # A slice is refused rather than converted: its bounds would be clamped to
            # [0, N) silently, where a dataset index out of range is an error.
            raise TypeError(
                f"indices must be {accepted}, got {type(indices).__name__} {indices!r}; "
                "for a range of samples pass torch.arange(start, stop)"
            ) from None
        if index.numel() == 0 and not isinstance(indices, Tensor):
            index = index.to(torch.int64)  # `[]` would otherwise be a float tensor
        if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
            raise TypeError(f"indices must have an integer dtype, got {index.dtype}")
        if not (index.dim() == 1 or (allow_scalar and index.dim() == 0)):
            raise ValueError(
                f"indices must be a (k,) tensor of dataset indices, got shape {tuple(index.shape)}"
            )
        index = index.to("cpu", torch.int64)
        out_of_range = (index < 0) | (index >= self.num_samples)
        if bool(out_of_range.any()):
            bad = int(index[out_of_range][0])
            raise ValueError(
                f"index {bad} is out of range for a bank of {self.num_samples} samples; "
                "indices are dataset indices in [0, num_samples)"
            )
        return index

    def _check_maps(self, maps: Tensor, count: int) -> Tensor:
        """Maps as (count, gh, gw) in the storage dtype on the CPU, or ``ValueError``."""
        if not isinstance(maps, Tensor):
            raise TypeError(f"maps must be a torch.Tensor, got {type(maps).__name__}")
        if not maps.is_floating_point():
            raise TypeError(f"maps must have a floating dtype, got {maps.dtype}")
        if maps.is_meta:
            raise ValueError("maps on the meta device hold no values to store; pass real maps")
        expected = (count, *self.grid)
        if tuple(maps.shape) != expected:
            raise ValueError(
                f"maps of shape {tuple(maps.shape)} do not match {count} indices on the "
                f"bank's grid {self.grid}; expected {expected}"
            )
        maps = maps.detach().to("cpu")
        validate_weights(maps)
        stored = maps.to(self.dtype)
        if not bool(torch.isfinite(stored).all()):
            raise ValueError(
                f"maps exceed the range of {self.dtype} (largest value {float(maps.max())}); "
                "normalise them (e.g. min-max to [0, 1]) or use dtype=torch.float32"
            )
        return stored

    def _open_file(self, path: Path, *, create: bool) -> Tensor:
        """Map ``path``; a missing file is created (when allowed) filled with ones."""
        shape = (self.num_samples, *self.grid)
        header = self._file_header()
        if path.exists():
            with path.open("rb") as file:
                found = file.read(_FILE_HEADER_BYTES)
            if found != header:
                raise ValueError(
                    f"{path} holds {_describe_header(found)}, not a bank of "
                    f"{self.num_samples} samples on grid {self.grid} in {self.dtype}; pass "
                    "the num_samples, grid and dtype it was created with, or another path"
                )
            self._check_file(path)
            weights = _map_file(path, self._file_bytes, self.dtype, shape)
            try:
                validate_weights(weights)
            except ValueError as error:
                raise ValueError(f"{path} is corrupt: {error}") from None
            return weights
        if not create:
            raise FileNotFoundError(f"the bank's file {path} no longer exists")
        # Filled under a temporary name, then renamed: the path never holds a half-filled
        # bank that a later run would reopen as valid. The mapping follows the renamed inode.
        with atomic_write(path) as file:
            file.write(header)
            file.truncate(self._file_bytes)
            file.flush()
            weights = _map_file(Path(file.name), self._file_bytes, self.dtype, shape)
            weights.fill_(1)
        return weights

    @property
    def _file_bytes(self) -> int:
        return _FILE_HEADER_BYTES + math.prod((self.num_samples, *self.grid)) * self.dtype.itemsize

    def _check_file(self, path: Path | None = None) -> None:
        """Raise ``ValueError`` if the bank's file is shorter than its layout needs.

        Reading a mapped page past the end of a truncated file kills the process with
        SIGBUS; one ``stat`` per access turns that into an error that says what happened.
        """
        path = path or self.path
        if path is None:
            return
        size = path.stat().st_size
        if size != self._file_bytes:
            raise ValueError(
                f"{path} is {size} bytes but its layout ({self.num_samples} samples on grid "
                f"{self.grid} in {self.dtype}) needs {self._file_bytes}: the file was "
                "truncated or overwritten; restore it or start a new bank at another path"
            )

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        self._check_file()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def __getstate__(self) -> dict[str, Any]:
        # copy.deepcopy and pickle read every mapped page.
        self._check_file()
        return super().__getstate__()

    def _file_header(self) -> bytes:
        """What the file's first bytes must be: a magic line, then the shape and dtype."""
        layout = {
            "num_samples": self.num_samples,
            "grid": list(self.grid),
            "dtype": str(self.dtype),
        }
        return (_FILE_MAGIC + json.dumps(layout).encode() + b"\n").ljust(_FILE_HEADER_BYTES, b"\0")

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        self._check_file()
        key = prefix + "weights"
        if key in state_dict:
            incoming = state_dict[key]
            expected = tuple(self.weights.shape)
            if not isinstance(incoming, Tensor) or tuple(incoming.shape) != expected:
                got = tuple(incoming.shape) if isinstance(incoming, Tensor) else type(incoming)
                raise ValueError(
                    f"state_dict['{key}'] has shape {got} but this bank holds {expected} "
                    f"(num_samples={self.num_samples}, grid={self.grid}); build the bank "
                    "with the num_samples and grid of the checkpoint"
                )
            try:
                checked = self._check_maps(incoming, self.num_samples)
            except (TypeError, ValueError) as err:
                raise type(err)(f"state_dict['{key}']: {err}") from None
            state_dict = {**state_dict, key: checked}
        # Copy in place, never assign: a file-backed bank must keep writing to its file.
        local_metadata = {**local_metadata, "assign_to_params_buffers": False}
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def _map_file(path: Path, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    raw = torch.from_file(str(path), shared=True, size=nbytes, dtype=torch.uint8)
    return raw[_FILE_HEADER_BYTES:].view(dtype).view(shape)


def _describe_header(found: bytes) -> str:
    if not found.startswith(_FILE_MAGIC):
        return "no maskkit bank header"
    layout = found[len(_FILE_MAGIC) :].split(b"\n", 1)[0].decode(errors="replace")
    return f"a bank with layout {layout}"


def _raise_if_any_failed(failure: ValueError | None) -> None:
    device = _comm_device()
    failed = torch.tensor([failure is not None], dtype=torch.int32, device=device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if failure is not None:
        raise failure
    if bool(failed):
        raise ValueError("the refresh failed on another rank; see that rank's error")


def _all_gather_rows(indices: Tensor, maps: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield every rank's ``(indices, maps)`` in rank order, in padded rounds of rows."""
    device = _comm_device()
    world_size = dist.get_world_size()
    count = torch.tensor([indices.numel()], dtype=torch.int64, device=device)
    counts = [torch.empty_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    for start in range(0, max(sizes), _GATHER_ROWS):
        rows = min(_GATHER_ROWS, max(sizes) - start)
        # Shards differ in length (the last batch, an uneven split): pad to a common size.
        sent_indices = torch.zeros(rows, dtype=torch.int64, device=device)
        sent_maps = torch.zeros(rows, *maps.shape[1:], dtype=maps.dtype, device=device)
        own = indices[start : start + rows]
        sent_indices[: own.numel()] = own.to(device)
        sent_maps[: own.numel()] = maps[start : start + rows].to(device)
        got_indices = [torch.empty_like(sent_indices) for _ in range(world_size)]
        got_maps = [torch.empty_like(sent_maps) for _ in range(world_size)]
        dist.all_gather(got_indices, sent_indices)
        dist.all_gather(got_maps, sent_maps)
        for rank in range(world_size):
            valid = min(max(sizes[rank] - start, 0), rows)
            yield got_indices[rank][:valid].cpu(), got_maps[rank][:valid].cpu()


def _comm_device() -> torch.device:
    # NCCL moves CUDA tensors only; gloo and MPI take CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _progress(loader: Iterable[Any], *, show: bool) -> Iterable[Any]:
    """``loader`` behind a tqdm bar when asked for and tqdm is installed (it is optional)."""
    if not show:
        return loader
    try:
        from tqdm import tqdm
    except ImportError:
        return loader
    return tqdm(loader, desc="mask weights")
