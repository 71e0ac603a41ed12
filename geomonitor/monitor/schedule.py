"""When to measure: a step and/or epoch cadence.

A measurement is *due* after optimizer step ``s`` (``s`` = ``trainer.global_step``, the number
of optimizer steps taken so far, so the first call sees ``s = 1``) when ``n_steps`` divides
``s``, and at the end of epoch ``e`` (0-based, ``trainer.current_epoch``) when ``n_epochs``
divides ``e + 1`` -- i.e. after every ``n_epochs``-th completed epoch. Step 0 (no update yet)
is never due: the geometry of the initialisation is the same in every run and costs a
measurement before training has done anything.

Cost: O(1) per query; no state, so nothing to checkpoint.

Example:
    >>> sched = Every(n_steps=100, n_epochs=2)
    >>> [s for s in range(0, 301) if sched.due_step(s)]
    [100, 200, 300]
    >>> [e for e in range(5) if sched.due_epoch(e)]
    [1, 3]
"""
from __future__ import annotations

from typing import Any

from geomonitor._checks import positive_int

__all__ = ["Every"]


def _check_index(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


class Every:
    """A cadence in optimizer steps, epochs, or both (either one being due is enough).

    Args:
        n_steps: measure after every ``n_steps``-th optimizer step, or ``None``.
        n_epochs: measure at the end of every ``n_epochs``-th epoch, or ``None``.

    Raises:
        ValueError: a count that is not a positive int (``bool`` is rejected), or both ``None``.
    """

    def __init__(self, n_steps: int | None = None, n_epochs: int | None = None) -> None:
        self.n_steps = positive_int("n_steps", n_steps, allow_none=True)
        self.n_epochs = positive_int("n_epochs", n_epochs, allow_none=True)
        if self.n_steps is None and self.n_epochs is None:
            raise ValueError("Every needs n_steps or n_epochs (a positive int), got n_steps=None "
                             "and n_epochs=None")

    def due_step(self, step: int) -> bool:
        """True when ``n_steps`` is set, ``step > 0`` and ``n_steps`` divides ``step``."""
        _check_index("step", step)
        return self.n_steps is not None and step > 0 and step % self.n_steps == 0

    def due_epoch(self, epoch: int) -> bool:
        """True when ``n_epochs`` is set and divides ``epoch + 1`` (``epoch`` is 0-based)."""
        _check_index("epoch", epoch)
        return self.n_epochs is not None and (epoch + 1) % self.n_epochs == 0

    def __repr__(self) -> str:
        return f"Every(n_steps={self.n_steps!r}, n_epochs={self.n_epochs!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Every):
            return NotImplemented
        return (self.n_steps, self.n_epochs) == (other.n_steps, other.n_epochs)

    def __hash__(self) -> int:
        return hash((self.n_steps, self.n_epochs))
