"""Argument checks shared across the package: a ``ValueError`` naming the argument, the value
and what is allowed."""
from __future__ import annotations

from typing import Any


def positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    """``value`` if it is an int >= 1 (``bool`` rejected), or ``None`` when allowed.

    Raises:
        ValueError: ``"<name> must be a positive int[ or None], got <value!r>"``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value
