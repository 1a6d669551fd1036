"""Arrivals for the fluid engine: per step and server, counts and sums, no request objects.

The request engine's workload (:func:`polca.sim.workload.build_requests`) copies each trace
request ``rate_factor`` times on average, each copy uniformly jittered within ``JITTER_S`` after
it, draws each copy's (context, generated) pair from the whole trace and deals the requests
round-robin to the inference servers in arrival order. This module draws the same process in
aggregate:

* **Rate.** The expected number of requests in step ``[a, b)`` is ``rate_factor / J`` times the
  time the trace's jitter windows ``[a_i, a_i + J)`` overlap it, in closed form from the
  trace's cumulative counts and sums (:func:`expected_arrivals`). The count in a step is
  Poisson with that mean (a sum of many rare independent copies).
* **Servers.** A step's ``N`` requests continue the round-robin where the last step's left off:
  every server gets ``N // s``, and the ``N % s`` servers after the pointer one more.
* **Sums.** A server's ``c`` requests in a step bring the sum of ``c`` independent draws from the
  trace's rows: prefill work (full-speed seconds), decode tokens (generated - 1; the first
  token comes with the prefill) and decoders (requests with more than one token). The sums
  are looked up in a table of ``TABLE_DRAWS`` sums per ``c`` (built once per run, exact in
  distribution up to that sampling); above ``TABLE_MAX_COUNT`` a normal approximation (the
  central limit theorem) stands in.
* **Latency samples.** A share of the requests (``sample_fraction``) is also drawn as
  individual samples, in cells chosen in proportion to the counts, each with its own trace row
  and its offset in the step: :mod:`polca.sim.fluid_latency` turns them into latencies.

Pure NumPy; deterministic for a given generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from polca.sim.domain import ServiceModel
from polca.sim.trace import Trace
from polca.sim.workload import JITTER_S, repeat_to_cover

__all__ = [
    "TABLE_DRAWS",
    "TABLE_MAX_COUNT",
    "ArrivalBlock",
    "FluidArrivals",
    "SumTable",
    "expected_arrivals",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

TABLE_MAX_COUNT = 48  # requests per server and step looked up; more: normal approximation
TABLE_DRAWS = 1024  # sums drawn per count


def expected_arrivals(
    trace: Trace, *, rate_factor: float, duration_s: float, dt_s: float, steps: int
) -> FloatArray:
    """Expected requests per step of ``dt_s`` (``steps`` of them; none from ``duration_s`` on).

    With ``G(t) = sum_i max(t - a_i, 0)`` over the (repeated) trace arrivals, the jitter windows
    cover ``G(t) - G(t - J)`` of ``[0, t)``, so a step's mean is ``rate_factor / J`` times that
    difference between its edges.
    """
    base = repeat_to_cover(trace.arrival_s, duration_s)
    csum = np.concatenate([[0.0], np.cumsum(base)])
    edges = np.minimum(np.arange(steps + 1, dtype=np.float64) * dt_s, duration_s)

    def g(t: FloatArray) -> FloatArray:
        before = np.searchsorted(base, t, side="left")
        return np.asarray(before * t - csum[before], dtype=np.float64)

    covered = g(edges) - g(edges - JITTER_S)
    return np.maximum(np.diff(covered), 0.0) * rate_factor / JITTER_S


@dataclass(frozen=True, slots=True)
class SumTable:
    """Sums of ``c`` trace rows, ``TABLE_DRAWS`` per ``c``: rows ``c``, flattened."""

    work_s: FloatArray  # prefill work, full-speed seconds
    tokens: FloatArray  # decode tokens (generated - 1)
    decoders: FloatArray  # requests with more than one token
    mean: FloatArray  # per request: work, tokens, decoders
    sd: FloatArray

    @classmethod
    def build(cls, trace: Trace, service: ServiceModel, rng: np.random.Generator) -> SumTable:
        work = service.prefill_s(trace.context_tokens)
        tokens = trace.generated_tokens.astype(np.float64) - 1.0
        decoders = (trace.generated_tokens > 1).astype(np.float64)
        shape = (TABLE_MAX_COUNT + 1, TABLE_DRAWS)
        out = [np.zeros(shape), np.zeros(shape), np.zeros(shape)]
        for c in range(1, TABLE_MAX_COUNT + 1):
            rows = rng.integers(0, len(trace), size=(TABLE_DRAWS, c))
            for table, per_row in zip(out, (work, tokens, decoders), strict=True):
                table[c] = per_row[rows].sum(axis=1)
        stacked = np.stack([work, tokens, decoders])
        return cls(
            work_s=out[0].ravel(),
            tokens=out[1].ravel(),
            decoders=out[2].ravel(),
            mean=stacked.mean(axis=1),
            sd=stacked.std(axis=1),
        )


@dataclass(frozen=True, slots=True)
class ArrivalBlock:
    """Arrivals of steps ``start .. start + steps - 1``: [step, server] arrays, and the
    latency samples drawn among them, sorted by step."""

    start: int
    count: FloatArray
    work_s: FloatArray
    tokens: FloatArray
    decoders: FloatArray
    sample_step: IntArray  # absolute step
    sample_server: IntArray
    sample_offset: FloatArray  # arrival within the step, share of the step
    sample_cell_work_s: FloatArray  # the work of all the cell's arrivals
    sample_cell_count: FloatArray
    sample_work_s: FloatArray  # the sample's own prefill work
    sample_tokens: FloatArray  # the sample's own decode tokens (generated - 1)

    @property
    def steps(self) -> int:
        return int(self.count.shape[0])

    def samples_at(self, step: int) -> slice:
        lo, hi = np.searchsorted(self.sample_step, [step, step + 1])
        return slice(int(lo), int(hi))


class FluidArrivals:
    """Draws :class:`ArrivalBlock` s in order; the round-robin pointer carries between them."""

    def __init__(
        self,
        trace: Trace,
        service: ServiceModel,
        *,
        rate_factor: float,
        servers: int,
        duration_s: float,
        dt_s: float,
        steps: int,
        rng: np.random.Generator,
        max_samples: int,
    ) -> None:
        if servers < 1 or rate_factor <= 0:
            raise ValueError("servers and rate_factor must be positive")
        self.trace = trace
        self.service = service
        self.servers = servers
        self.rng = rng
        self.mean = expected_arrivals(
            trace, rate_factor=rate_factor, duration_s=duration_s, dt_s=dt_s, steps=steps
        )
        total = float(self.mean.sum())
        self.sample_fraction = min(1.0, max_samples / total) if total > 0 else 0.0
        self.table = SumTable.build(trace, service, rng)
        self.pointer = 0  # the next request's server
        self._work = service.prefill_s(trace.context_tokens)
        self._ramp = np.arange(2 * servers) % servers  # (i - p) mod s = ramp[i + s - p]

    def block(self, start: int, steps: int) -> ArrivalBlock:
        """The next ``steps`` steps' arrivals (call with consecutive blocks)."""
        s = self.servers
        n_req = self.rng.poisson(self.mean[start : start + steps])
        steps = n_req.size
        before = np.concatenate([[0], np.cumsum(n_req)[:-1]])
        pointers = (self.pointer + before) % s
        self.pointer = int((self.pointer + n_req.sum()) % s)
        count = np.zeros((steps, s))
        if steps:
            rotated = np.stack([self._ramp[s - p : 2 * s - p] for p in pointers])
            extra = rotated < (n_req % s)[:, None]
            count = np.asarray((n_req // s)[:, None] + extra, dtype=np.float64)
        work, tokens, decoders = self._sums(count)
        return ArrivalBlock(
            start, count, work, tokens, decoders, *self._samples(start, count, work)
        )

    def _sums(self, count: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        table = self.table
        c = count.astype(np.int64)
        flat = np.minimum(c, TABLE_MAX_COUNT) * TABLE_DRAWS + self.rng.integers(
            0, TABLE_DRAWS, size=c.shape
        )
        sums = [table.work_s[flat], table.tokens[flat], table.decoders[flat]]
        many = np.flatnonzero(c.ravel() > TABLE_MAX_COUNT)
        if many.size:  # beyond the table: the central limit theorem
            n = c.ravel()[many].astype(np.float64)
            for q, out in enumerate(sums):
                z = self.rng.standard_normal(many.size)
                value = n * table.mean[q] + np.sqrt(n) * table.sd[q] * z
                out.ravel()[many] = np.maximum(value, 0.0)
        return sums[0], sums[1], sums[2]

    def _samples(
        self, start: int, count: FloatArray, work: FloatArray
    ) -> tuple[IntArray, IntArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
        cum = np.cumsum(count.ravel())
        total = float(cum[-1]) if cum.size else 0.0
        m = int(self.rng.binomial(int(total), self.sample_fraction)) if total > 0 else 0
        cells = np.searchsorted(cum, np.sort(self.rng.random(m)) * total, side="right")
        step, server = np.divmod(cells, self.servers)
        rows = self.rng.integers(0, len(self.trace), size=m)
        flat_count, flat_work = count.ravel(), work.ravel()
        return (
            step + start,
            server,
            self.rng.random(m),
            flat_work[cells],
            flat_count[cells],
            self._work[rows],
            self.trace.generated_tokens[rows].astype(np.float64) - 1.0,
        )
