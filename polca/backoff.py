"""Retry delays: capped exponential backoff with full jitter. Pure.

The daemon's API calls and watches, and the operator's power streams, retry with it.

delay = uniform(0, min(cap_s, base_s · 2^attempt))  — AWS's "full jitter"
(https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).

Why these numbers (issue 12, finding 3): the cap bounds how late a daemon notices that the API
server is back. With a 30 s cap a stage change made right after an outage reached the GPUs 9 s
later (30 s possible); with `CAP_S` = 1 s a watcher tries again at most 1 s after the server
answers, so a change reaches the GPUs within about 1 s plus one list. Full jitter (not ±10 %)
spreads a DaemonSet's reconnections evenly over the whole window, so thousands of daemons that
lost the server at the same instant do not come back in step. The price is about two attempts a
second per watch during an outage, each a refused connection or a 5xx: cheap for the server.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

__all__ = ["BASE_S", "CAP_S", "Backoff"]

BASE_S = 0.1
CAP_S = 1.0
# 2^30 × any sane base is far past any cap: stop counting there (no float overflow).
_MAX_EXPONENT = 30


@dataclass
class Backoff:
    """Successive retry delays; `reset()` after a success. Not thread-safe: one per loop."""

    base_s: float = BASE_S
    cap_s: float = CAP_S
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s")

    def ceiling_s(self) -> float:
        """The largest delay the next attempt may get."""
        return min(self.cap_s, math.ldexp(self.base_s, min(self.attempt, _MAX_EXPONENT)))

    def next_s(self) -> float:
        """The delay before the next attempt (and count this one)."""
        delay_s = self.rng.uniform(0.0, self.ceiling_s())
        self.attempt += 1
        return delay_s

    def reset(self) -> None:
        self.attempt = 0
