"""Turn a trace into the requests one simulated domain serves.

Scaling: the domain serves ``load_scale × servers / base_servers`` times the trace's request
rate, so every server carries the same load whatever the oversubscription. Each trace request is
replicated ``floor(k)`` or ``ceil(k)`` times (a Bernoulli draw for the fraction), each copy
jittered uniformly within ``jitter_s`` after the original: this keeps the trace's minute-scale
rate profile (which sets the row's peak) instead of compressing time. Copies draw their
(context, generated) token pair from the whole trace, so one long prompt does not hit every
server in the same second. Traces shorter than the run are repeated.

Load balancing: requests go round-robin to the inference servers in arrival order (the same
server sequence for every policy, so the runs compare like for like).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from polca.sim.trace import Trace

__all__ = ["JITTER_S", "MAX_REQUESTS", "Requests", "build_requests", "repeat_to_cover"]

JITTER_S = 60.0  # each copy of a trace request arrives uniformly within this after it

# The most requests one run may hold (~100 bytes each through the engine: about 1 GB). A larger
# run is a typo (`--load-scale 1e9` asked for 283 GiB), so it is refused before any allocation.
MAX_REQUESTS = 10_000_000


@dataclass(frozen=True, slots=True)
class Requests:
    """Requests of one run, sorted by arrival, each bound to an inference server index."""

    arrival_s: npt.NDArray[np.float64]
    context_tokens: npt.NDArray[np.int64]
    generated_tokens: npt.NDArray[np.int64]
    server: npt.NDArray[np.int64]  # index into the domain's inference servers

    def __len__(self) -> int:
        return int(self.arrival_s.size)


def build_requests(
    trace: Trace,
    *,
    rate_factor: float,
    inference_servers: int,
    duration_s: float,
    rng: np.random.Generator,
    jitter_s: float = JITTER_S,
) -> Requests:
    """Requests arriving within ``duration_s`` at ``rate_factor`` × the trace's rate."""
    if rate_factor <= 0 or inference_servers < 1 or duration_s <= 0:
        raise ValueError("rate_factor, inference_servers and duration_s must be positive")
    if len(trace) == 0:
        raise ValueError("empty trace")
    if not math.isfinite(rate_factor) or not math.isfinite(duration_s):
        raise ValueError("rate_factor and duration_s must be finite")
    base = repeat_to_cover(trace.arrival_s, duration_s)
    expected = base.size * rate_factor
    if expected > MAX_REQUESTS:
        raise ValueError(
            f"this run would hold about {expected:.3g} requests, more than the simulator's "
            f"limit of {MAX_REQUESTS:,}: lower --load-scale, --duration or --servers"
        )
    whole = math.floor(rate_factor)
    copies = np.full(base.size, whole, dtype=np.int64)
    copies += rng.random(base.size) < rate_factor - whole
    arrival = np.repeat(base, copies) + rng.random(int(copies.sum())) * jitter_s
    arrival = np.sort(arrival[arrival < duration_s], kind="stable")
    pick = rng.integers(0, len(trace), size=arrival.size)
    return Requests(
        arrival_s=arrival,
        context_tokens=trace.context_tokens[pick],
        generated_tokens=trace.generated_tokens[pick],
        server=np.arange(arrival.size, dtype=np.int64) % inference_servers,
    )


def repeat_to_cover(
    arrival_s: npt.NDArray[np.float64], duration_s: float
) -> npt.NDArray[np.float64]:
    """The trace's arrival times repeated back to back (period: its span plus a mean gap)
    until they cover ``duration_s``; those before it."""
    if arrival_s.size < 2:
        period = max(duration_s, 1.0)
    elif float(arrival_s[-1]) <= 0.0:
        # Requests that all arrive at one instant have no rate to repeat (and a period of 0).
        raise ValueError(
            f"the trace's {arrival_s.size} requests all share one timestamp: it has no request "
            "rate to replay"
        )
    else:
        period = float(arrival_s[-1]) + float(np.mean(np.diff(arrival_s)))
    repeats = max(1, math.ceil(duration_s / period))
    if repeats * arrival_s.size > MAX_REQUESTS:
        raise ValueError(
            f"replaying the trace for {duration_s:g} s takes {repeats * arrival_s.size:.3g} "
            f"requests, more than the simulator's limit of {MAX_REQUESTS:,}: lower --duration"
        )
    out = np.concatenate([arrival_s + r * period for r in range(repeats)])
    return out[out < duration_s]
