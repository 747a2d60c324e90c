"""Argument validators shared by the whole package: one place for ints, ratios and choices.

Each raises with a message that names the argument, what it got and what it needs, so bad
input fails where it is given (at construction), not at first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["check_choice", "check_int", "check_pair", "check_ratio", "is_int"]


def is_int(value: object) -> bool:
    """True for Python ints (and int subclasses) other than bools."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) and at least ``minimum``.

    Raises:
        TypeError: not an int.
        ValueError: below ``minimum``.
    """
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:  # type: ignore[operator]
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)  # type: ignore[arg-type]


def check_ratio(name: str, value: object, *, closed: bool = True) -> float:
    """Return ``value`` as a float if it is a real number in [0, 1] ([0, 1) unless ``closed``).

    Raises:
        TypeError: not a real number.
        ValueError: NaN or outside the interval.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__} {value!r}")
    value = float(value)
    upper_ok = value <= 1.0 if closed else value < 1.0
    # `not value >= 0` also catches NaN, without math.isnan, which torch.compile cannot trace
    # when a ratio becomes a symbolic float.
    if not value >= 0.0 or not upper_ok:
        interval = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_pair(name: str, value: object) -> tuple[int, int]:
    """``value`` as ``(rows, columns)`` of positive ints, e.g. a patch grid.

    Raises:
        ValueError: not two positive ints.
    """
    pair = tuple(value) if isinstance(value, Sequence) else (value,)
    if len(pair) != 2 or not all(is_int(v) and v > 0 for v in pair):
        raise ValueError(f"{name} must be two positive ints (rows, columns), got {value!r}")
    return int(pair[0]), int(pair[1])
