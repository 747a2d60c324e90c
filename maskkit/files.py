"""Atomic file writes that respect the umask: readers never see half a file.

The bank's file, the figures and the recipes' checkpoints, logs and summaries are all
written through :func:`atomic_write`: a temporary file beside the target, flushed to disk,
then renamed over it in one step. A kill mid-write leaves the previous file whole and a
temporary named ``.<name>.<random>.tmp``, which :func:`remove_stale_temporaries` deletes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "remove_stale_temporaries"]

_TEMPORARY_SUFFIX = ".tmp"


def _temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TEMPORARY_SUFFIX}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path``; on success rename it over ``path``.

    The file is created with ``open`` (mode 0666 minus the umask, e.g. 0644 under umask
    022), unlike ``tempfile.mkstemp``'s private 0600, so collaborators can read results.
    On an exception the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the file to (re)write; its folder must exist.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).

    Yields:
        The open temporary file; its ``name`` is the temporary path.

    Raises:
        ValueError: another mode.
        FileNotFoundError: the folder does not exist.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    temporary = _temporary_path(path)
    encoding = "utf-8" if mode == "w" else None
    try:
        # "x": never follow or reuse an existing file under the temporary name.
        with open(temporary, mode.replace("w", "x"), encoding=encoding) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Delete temporaries that :func:`atomic_write` left behind after a kill.

    Call it when no other process writes into ``folder`` (e.g. at the start of a run).

    Args:
        folder: where to look (not recursive).
        name: only the temporaries of this file name; None for all of them.

    Returns:
        The removed paths.
    """
    pattern = f".{name or '*'}.*{_TEMPORARY_SUFFIX}"
    removed = []
    for candidate in Path(folder).glob(pattern):
        stem = candidate.name[: -len(_TEMPORARY_SUFFIX)]
        token = stem.rsplit(".", 1)[-1]
        if len(token) == 8 and all(c in "0123456789abcdef" for c in token) and candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed
