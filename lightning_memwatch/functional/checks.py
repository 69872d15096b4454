"""Argument checks shared by the functions, metrics and callbacks of the package."""

from __future__ import annotations

from typing import Any


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` if it is an ``int`` (not a ``bool``) ``>= minimum``, else a ``ValueError`` that
    names the argument: "a positive integer" (minimum 1), "a non-negative integer" (0) or "an
    integer >= minimum".

    Example::

        >>> check_int("steps", 3, minimum=0)
        3
        >>> check_int("k", 1, minimum=2)
        Traceback (most recent call last):
        ...
        ValueError: Expected `k` to be an integer >= 2 but got 1
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = {1: "a positive integer", 0: "a non-negative integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        raise ValueError(f"Expected `{name}` to be {kind} but got {value!r}")
    return value
