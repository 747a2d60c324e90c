"""Per-epoch metrics as JSON lines, safe to resume."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .checkpoint import atomic_open

__all__ = ["JsonLinesLog", "write_json"]


def _plain(value: Any) -> Any:
    # JSON has no NaN / Infinity; write them as strings rather than invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class JsonLinesLog:
    """Append one JSON object per epoch to ``path`` (e.g. ``log.jsonl``).

    On resume the lines of epochs at or after ``start_epoch`` are dropped first: they came
    from an interrupted run whose checkpoint predates them, and will be written again.

    Args:
        path: the log file.
        start_epoch: first epoch this run trains; earlier lines are kept.
    """

    def __init__(self, path: str | os.PathLike[str], *, start_epoch: int = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if start_epoch > 0 and self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip() and json.loads(line).get("epoch", -1) < start_epoch:
                    kept.append(line)
        with atomic_open(self.path, "w") as file:
            file.write("".join(f"{line}\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line and flush it to disk."""
        with self.path.open("a") as file:
            file.write(json.dumps(_plain(record)) + "\n")
            file.flush()
            os.fsync(file.fileno())


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_open(path, "w") as file:
        file.write(json.dumps(_plain(data), indent=2) + "\n")
