"""The reference the neural-persistence stopping tests read: Rieck et al. 2019 ("Neural
Persistence", ICLR), Algorithm 2, written out verbatim (best starts at 0)."""
from __future__ import annotations


def algorithm2(values, g, delta_min=0.0):
    """The 0-based epoch at which Algorithm 2 stops on ``values`` with patience ``g`` and
    ``delta_min``, or None."""
    best, count = 0.0, 0
    for epoch, p in enumerate(values):
        if p > best + delta_min:
            best, count = p, 0
        else:
            count += 1
        if count >= g:
            return epoch
    return None
