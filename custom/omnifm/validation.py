"""Argument checks shared by the whole package, with one error wording per kind of error.

Every check raises ``ValueError`` naming the argument and showing the bad value (its ``repr``):

- :func:`check_int`: ``"<name> must be an int >= <minimum>, got <value>"`` (``"must be an int"``
  when there is no minimum). Python ints and numpy integers pass; ``bool`` never does.
- :func:`check_range`: ``"<name> must be in (<low>, <high>], got <value>"`` for an interval
  (brackets show which ends are included) or ``"<name> must be >= <low>, got <value>"`` for a
  single bound.

:func:`is_int` and :func:`is_real` are the matching predicates for callers that need to test
many values (e.g. every entry of a shape) before raising their own message.

Examples::

    >>> check_int("num_heads", 4)
    4
    >>> check_int("num_heads", 0)
    Traceback (most recent call last):
    ...
    ValueError: num_heads must be an int >= 1, got 0
    >>> check_range("dropout", 0.1, 0, 1, high_open=True)
    0.1
"""

from __future__ import annotations

from numbers import Real
from typing import Any, TypeGuard, TypeVar

import numpy as np

__all__ = ["MAX_COUNT", "check_int", "check_range", "is_int", "is_real"]

#: Largest per-round count a site may report (training samples, retrievals of one prototype):
#: a billion slices in one round is not plausible, and sums of such counts over sites and rounds
#: stay exact in float64 and far from int64 overflow.
MAX_COUNT = 10**9

_T = TypeVar("_T")


def is_int(value: object) -> TypeGuard[int | np.integer]:
    """``True`` for Python ints and numpy integers, ``False`` for ``bool`` and everything else."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """``True`` for real numbers (``numbers.Real``, numpy included) other than ``bool``.

    NaN and infinities count as real numbers; bound checks reject them where needed.
    """
    return isinstance(value, Real) and not isinstance(value, bool)


def check_int(name: str, value: object, minimum: int | None = 1) -> int:
    """Return ``value`` as a Python ``int`` if it is an integer ``>= minimum``.

    Args:
        name: argument name used in the error message.
        value: the value to check; Python ints and numpy integers pass, ``bool`` does not.
        minimum: smallest accepted value, or ``None`` for no lower bound.

    Raises:
        ValueError: ``"<name> must be an int >= <minimum>, got <value!r>"``.
    """
    if is_int(value) and (minimum is None or value >= minimum):
        return int(value)
    bound = "" if minimum is None else f" >= {minimum}"
    raise ValueError(f"{name} must be an int{bound}, got {value!r}")


def _describe(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return "a real number"


def check_range(
    name: str,
    value: _T,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    require_real: bool = True,
) -> _T:
    """Return ``value`` unchanged if it lies within the given bounds.

    NaN always fails a bound. The bounds are compared in order (``low`` first), so a value
    that cannot be compared with a number at all raises the comparison's ``TypeError``
    unless ``require_real`` rejected it first.

    Args:
        name: argument name used in the error message.
        value: the value to check.
        low: lower bound, or ``None`` for none.
        high: upper bound, or ``None`` for none.
        low_open: exclude ``low`` itself (``value > low`` instead of ``value >= low``).
        high_open: exclude ``high`` itself (``value < high`` instead of ``value <= high``).
        require_real: also reject ``bool`` and anything that is not a ``numbers.Real``
            (:func:`is_real`) with the same ``ValueError``. ``False`` only compares, so e.g.
            0-d tensors pass.

    Raises:
        ValueError: ``"<name> must be in [<low>, <high>), got <value!r>"`` (brackets per
            ``low_open``/``high_open``), or ``"<name> must be >= <low>, got <value!r>"`` etc.
            for a single bound.
    """
    number: Any = value
    ok = not require_real or is_real(number)
    if ok and low is not None:
        ok = number > low if low_open else number >= low
    if ok and high is not None:
        ok = number < high if high_open else number <= high
    if not ok:
        raise ValueError(f"{name} must be {_describe(low, high, low_open, high_open)}, got {value!r}")
    return value
