"""Pure clamping rules: turn a requested ceiling or limit into one the GPU accepts."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["clamp_clock_mhz", "clamp_limit_w", "lowest_lock_clock_mhz"]


def clamp_clock_mhz(request_mhz: int, supported_mhz: Sequence[int], max_sm_clock_mhz: int) -> int:
    """The highest supported clock at or below `request_mhz`.

    A request below every supported clock gets the lowest one (the GPU cannot go slower). With
    no clock table, the request is only capped at the maximum SM clock.
    """
    if request_mhz <= 0:
        raise ValueError(f"a clock ceiling must be positive, got {request_mhz} MHz")
    if not supported_mhz:
        return min(request_mhz, max_sm_clock_mhz)
    at_or_below = [clock for clock in supported_mhz if clock <= request_mhz]
    return max(at_or_below) if at_or_below else min(supported_mhz)


def lowest_lock_clock_mhz(supported_mhz: Sequence[int], ceiling_mhz: int) -> int:
    """The lower end of the locked range: the lowest supported clock, so an idle GPU can still
    slow down; the ceiling itself when no table is known (min must not exceed max)."""
    return min(*supported_mhz, ceiling_mhz) if supported_mhz else ceiling_mhz


def clamp_limit_w(request_w: float, min_limit_w: float, max_limit_w: float) -> float:
    """`request_w` moved into [min_limit_w, max_limit_w]."""
    if not math.isfinite(request_w):
        raise ValueError(f"a power limit must be a finite number, got {request_w}")
    return min(max(request_w, min_limit_w), max_limit_w)
