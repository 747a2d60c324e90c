"""Argument validators shared by the whole package: ints, ratios, ranges, indices, choices.

Each raises with a message that names the argument, what it got and what it needs, so bad
input fails where it is given (at construction), not at first use.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_choice",
    "check_index",
    "check_int",
    "check_pair",
    "check_positive",
    "check_range",
    "check_ratio",
    "check_real",
    "check_reals",
    "holds",
    "is_int",
    "is_real",
]


def holds(ok: Tensor, message: str) -> bool:
    """Whether the 0-d bool tensor ``ok`` of a value check is True, without a host sync.

    On CUDA and while compiling this queues an asynchronous device assert with ``message``
    (it fails at the next synchronisation point) and returns True; on the meta device
    (shape-only tracing, e.g. FLOP counting) there are no values to check, so True; on
    other devices it reads ``ok``. Callers raise their own, more specific error on False.
    """
    if torch.compiler.is_compiling() or ok.is_cuda:
        torch._assert_async(ok, f"maskkit: {message}")
        return True
    return ok.is_meta or bool(ok)


def is_int(value: object) -> bool:
    """True for Python ints (and int subclasses) other than bools."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """True for real numbers (Python or numpy ints and floats) other than bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


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


def check_index(index: object, length: int) -> int:
    """``index`` into a dataset of ``length`` samples as a position in [0, length).

    Negative indices count from the end, as for a list, so ``[-1]`` and ``[length - 1]``
    give the same sample.

    Raises:
        TypeError: not an integer (ints, numpy ints and integer 0-d tensors are).
        IndexError: outside [-length, length); ``IndexError`` ends iteration over the
            dataset as the sequence protocol expects.
    """
    try:
        position = operator.index(index)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"index must be an int, got {type(index).__name__} {index!r}") from None
    if not -length <= position < length:
        raise IndexError(
            f"index {position} is out of range for a dataset of {length} samples; "
            f"use -{length} <= index < {length}"
        )
    return position % length


def check_real(name: str, value: object, *, form: str = "a real number") -> float:
    """Return ``value`` as a float if it is a real number (not a bool), else ``TypeError``.

    ``form`` describes what is expected in the message, e.g. ``"a float in (0, 0.25]"``.
    """
    if not is_real(value):
        raise TypeError(f"{name} must be {form}, got {type(value).__name__} {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_positive(name: str, value: object, *, form: str) -> float:
    """Return ``value`` as a float if it is a finite real number > 0.

    ``form`` describes what is expected in the messages, e.g. ``"a finite ratio > 0"``.

    Raises:
        TypeError: not a real number.
        ValueError: NaN, infinite or not above 0.
    """
    number = check_real(name, value, form=form)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be {form}, got {value!r}")
    return number


def check_reals(name: str, value: object, length: int, *, form: str) -> tuple[float, ...]:
    """``value`` (a sequence, or a 1-d tensor or array) as ``length`` finite floats.

    ``form`` describes what is expected in the messages, e.g. ``"3 numbers, one per
    channel"``.

    Raises:
        TypeError: not a sequence of real numbers (a string is not one).
        ValueError: another length, or NaN or Inf.
    """
    items = value.tolist() if hasattr(value, "tolist") else value
    if (
        isinstance(items, (str, bytes))
        or not isinstance(items, Sequence)
        or not all(is_real(item) for item in items)
    ):
        raise TypeError(f"{name} must be {form}, got {type(value).__name__} {value!r}")
    if len(items) != length or not all(math.isfinite(item) for item in items):
        raise ValueError(f"{name} must be {form}, got {value!r}")
    return tuple(float(item) for item in items)


def check_range(name: str, value: object, *, upper: float = math.inf) -> tuple[float, float]:
    """``value`` as finite ``(lo, hi)`` with ``0 < lo <= hi <= upper``, e.g. a scale range.

    Raises:
        TypeError: not a pair of real numbers.
        ValueError: not two finite numbers, or empty, reversed, non-positive or above
            ``upper``.
    """
    form = "a pair (lo, hi) with 0 < lo <= hi" + (f" <= {upper:g}" if upper < math.inf else "")
    lo, hi = check_reals(name, value, 2, form=form + " (finite numbers)")
    if not 0 < lo <= hi <= upper:
        raise ValueError(f"{name} must be {form}, got {value!r}")
    return lo, hi
