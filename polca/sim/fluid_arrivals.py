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

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from polca.sim.domain import ServiceModel
from polca.sim.trace import Trace
from polca.sim.workload import JITTER_S, repeat_to_cover

__all__ = [
    "DECODERS",
    "REQUESTS",
    "TABLE_DRAWS",
    "TABLE_MAX_COUNT",
    "TOKENS",
    "ArrivalBlock",
    "FluidArrivals",
    "SumTable",
    "expected_arrivals",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Int32Array = npt.NDArray[np.int32]  # per cell: small counts

TABLE_MAX_COUNT = 48  # requests per server and step looked up; more: normal approximation
TABLE_DRAWS = 1024  # sums drawn per count (a power of two: _sums draws indices by masking)


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


# Rows of ArrivalBlock.requests and columns of SumTable.sums (after the work).
REQUESTS, DECODERS, TOKENS = range(3)


@dataclass(frozen=True, slots=True)
class SumTable:
    """Sums of ``c`` trace rows, ``TABLE_DRAWS`` per ``c`` (``c * TABLE_DRAWS + j``), of:
    prefill work (full-speed seconds), decoders (requests with more than one token), decode
    tokens (generated - 1): ``sums[column, index]``."""

    sums: FloatArray
    mean: FloatArray  # per request, per column
    sd: FloatArray
    all_decode: bool  # every row generates more than one token: decoders = requests

    @classmethod
    def build(cls, trace: Trace, service: ServiceModel, rng: np.random.Generator) -> SumTable:
        per_row = np.stack(
            [
                service.prefill_s(trace.context_tokens),
                (trace.generated_tokens > 1).astype(np.float64),
                trace.generated_tokens.astype(np.float64) - 1.0,
            ],
            axis=1,
        )
        sums = np.zeros((TABLE_MAX_COUNT + 1, TABLE_DRAWS, 3))
        for c in range(1, TABLE_MAX_COUNT + 1):
            rows = rng.integers(0, len(trace), size=(TABLE_DRAWS, c))
            sums[c] = per_row[rows].sum(axis=1)
        return cls(
            sums=np.ascontiguousarray(sums.reshape(-1, 3).T),
            mean=per_row.mean(axis=0),
            sd=per_row.std(axis=0),
            all_decode=bool(np.all(trace.generated_tokens > 1)),
        )


@dataclass(frozen=True, slots=True)
class ArrivalBlock:
    """Arrivals of steps ``start .. start + steps - 1`` and the latency samples drawn among
    them, sorted by step."""

    start: int
    work_s: FloatArray  # [step, server]: prefill work, full-speed seconds
    requests: FloatArray  # [REQUESTS / DECODERS / TOKENS, step, server]
    sample_step: IntArray  # absolute step
    sample_server: IntArray
    sample_offset: FloatArray  # arrival within the step, share of the step
    sample_cell_work_s: FloatArray  # the work of all the cell's arrivals
    sample_cell_count: FloatArray
    sample_work_s: FloatArray  # the sample's own prefill work
    sample_tokens: FloatArray  # the sample's own decode tokens (generated - 1)

    @property
    def steps(self) -> int:
        return int(self.work_s.shape[0])

    def samples_only(self) -> ArrivalBlock:
        """This block without its per-cell arrays (its samples only)."""
        return replace(self, work_s=np.empty((0, 0)), requests=np.empty((3, 0, 0)))

    @classmethod
    def empty(cls, start: int, steps: int) -> ArrivalBlock:
        """A block of a domain without inference servers."""
        no_int, no_float = np.empty(0, dtype=np.int64), np.empty(0)
        return cls(
            start,
            np.zeros((steps, 0)),
            np.zeros((3, steps, 0)),
            no_int,
            no_int,
            *(no_float,) * 5,
        )


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
        # (i - p) mod s = ramp[i + s - p]
        self._ramp = (np.arange(2 * servers) % servers).astype(np.int32)

    def block(self, start: int, steps: int) -> ArrivalBlock:
        """The next ``steps`` steps' arrivals (call with consecutive blocks)."""
        s = self.servers
        n_req = self.rng.poisson(self.mean[start : start + steps])
        steps = n_req.size
        before = np.concatenate([[0], np.cumsum(n_req)])  # the block's requests before a step
        pointers = (self.pointer + before[:-1]) % s  # the server of each step's first request
        self.pointer = int((self.pointer + before[-1]) % s)
        whole, rest = np.divmod(n_req, s)
        count = np.zeros((steps, s), dtype=np.int32)
        if steps:
            rotated = np.stack([self._ramp[s - p : 2 * s - p] for p in pointers])
            count = whole.astype(np.int32)[:, None] + (rotated < rest[:, None])
        work, requests = self._sums(count)
        samples = self._samples(
            start, total=int(before[-1]), before=before, pointers=pointers, count=count, work=work
        )
        return ArrivalBlock(start, work, requests, *samples)

    def _sums(self, count: Int32Array) -> tuple[FloatArray, FloatArray]:
        """Each cell's prefill work, and its [REQUESTS, DECODERS, TOKENS] as [row, step,
        server]: a table sum per cell (SumTable)."""
        table = self.table
        flat = np.minimum(count, TABLE_MAX_COUNT) * TABLE_DRAWS
        # A uniform index per cell from the generator's raw 64-bit words, four per word (the
        # table's length is a power of two): a quarter of the generator calls of integers().
        words = self.rng.bit_generator.random_raw(-(-count.size // 4))
        flat += (words.view(np.uint16)[: count.size] & (TABLE_DRAWS - 1)).reshape(count.shape)
        # mode='clip': the indices are in range by construction, and 'raise' buffers ``out``.
        work = np.take(table.sums[0], flat, mode="clip")
        requests = np.empty((3, *count.shape))
        requests[REQUESTS] = count
        if table.all_decode:  # every request decodes: no draw needed
            requests[DECODERS] = count
        else:
            np.take(table.sums[DECODERS], flat, out=requests[DECODERS], mode="clip")
        np.take(table.sums[TOKENS], flat, out=requests[TOKENS], mode="clip")
        many = np.flatnonzero(count.ravel() > TABLE_MAX_COUNT)
        if many.size:  # beyond the table: the central limit theorem
            n = count.ravel()[many].astype(np.float64)[:, None]
            z = self.rng.standard_normal((many.size, 3))
            value = np.maximum(n * table.mean + np.sqrt(n) * table.sd * z, 0.0)
            work.ravel()[many] = value[:, 0]
            for q in (DECODERS, TOKENS):
                requests[q].ravel()[many] = value[:, q]
        return work, requests

    def _samples(
        self,
        start: int,
        *,
        total: int,
        before: IntArray,
        pointers: IntArray,
        count: Int32Array,
        work: FloatArray,
    ) -> tuple[IntArray, IntArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
        """A share of the block's requests, drawn without replacement: their step, server
        (the round-robin deal), offset in the step, cell and own trace row."""
        m = int(self.rng.binomial(total, self.sample_fraction)) if total > 0 else 0
        index = np.sort(self.rng.choice(max(total, 1), size=m, replace=False, shuffle=False))
        step = np.searchsorted(before, index, side="right") - 1
        server = (pointers[step] + index - before[step]) % self.servers
        rows = self.rng.integers(0, len(self.trace), size=m)
        return (
            step + start,
            server,
            self.rng.random(m),
            work[step, server],
            count[step, server].astype(np.float64),
            self._work[rows],
            self.trace.generated_tokens[rows].astype(np.float64) - 1.0,
        )
