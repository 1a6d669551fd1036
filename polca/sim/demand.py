"""Phase demand from a request trace: what each server of a domain is doing, bin by bin.

Each server is one 8-GPU machine (all its GPUs in the same phase) running one workload:

* ``high`` / ``low`` inference: the trace's requests, bound round-robin to the inference servers
  by :func:`polca.sim.workload.build_requests`, served with the server's
  :data:`~polca.sim.domain.SERVICE_MODELS` times. Per time bin a server prefills its queued
  prompts first (FIFO work, carried over to the next bin when it does not fit) and decodes in
  the rest of the time while any request is in its decode batch. A request decodes for
  ``generated tokens × time between tokens`` at the server's mean batch (Little's law). The
  model is open-loop: a throttled GPU draws less power, but its requests take no longer.
* ``train``: one synchronous training job alternating compute (near-TDP power, like prefill)
  and communication (decode-level power), the service model's iteration. Its iterations run in
  wall-clock time, not sped up, so the job's power swings stay visible at the daemons' sampling.

Time: the servers' activity may ramp up over the first seconds (a row whose traffic grows,
rather than a step from idle); the trace is replayed ``speedup`` times faster; one bin
(``update_s`` of wall time) covers ``update_s × speedup`` seconds of the trace, averaged. The
request rate is calibrated so each server's uncapped power peaks at ``target_peak_pct`` of its
provisioned GPU power (79%: production inference rows peak there, per POLCA).

Pure: numpy and the power model only. The demo (``polca_testbed.demo``) writes these demands
into the fake GPUs' load files; ``polca_node.gpu.load.TraceLoad`` replays one server's row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from polca.power.model import Phase, PhaseDemand, capped_clock_mhz, phase_power_w
from polca.power.profiles import GpuProfile
from polca.sim.domain import TIER_TRAIN, ServiceModel
from polca.sim.trace import Trace
from polca.sim.workload import Requests, build_requests

__all__ = [
    "DemandTimeline",
    "TrainCycle",
    "build_timeline",
    "gpu_power_w",
    "inference_fractions",
    "mean_batch",
]

FloatArray = npt.NDArray[np.float64]

_CALIBRATION_STEPS = 40
_CALIBRATION_TOLERANCE_PCT = 0.2


@dataclass(frozen=True, slots=True)
class TrainCycle:
    """A synchronous training iteration: compute, then clock-independent communication."""

    compute_s: float
    comm_s: float

    def __post_init__(self) -> None:
        if self.compute_s <= 0 or self.comm_s < 0:
            raise ValueError("compute_s must be positive and comm_s not negative")

    @property
    def period_s(self) -> float:
        return self.compute_s + self.comm_s

    @property
    def mean_compute_frac(self) -> float:
        return self.compute_s / self.period_s

    def _compute_until(self, t_s: float) -> float:
        whole, into = divmod(t_s, self.period_s)
        return whole * self.compute_s + min(into, self.compute_s)

    def compute_frac(self, start_s: float, end_s: float) -> float:
        """Share of [start_s, end_s) spent computing (iterations start at t = 0)."""
        if end_s <= start_s:
            raise ValueError("need end_s > start_s")
        share = (self._compute_until(end_s) - self._compute_until(start_s)) / (end_s - start_s)
        return min(max(share, 0.0), 1.0)  # rounding must not leave [0, 1]


@dataclass(frozen=True, slots=True)
class DemandTimeline:
    """Phase demand of every node per wall-clock bin; training from its cycle."""

    kinds: tuple[str, ...]  # workload of each node: high, low or train
    bin_s: float  # wall seconds per bin
    prefill_frac: FloatArray  # [inference node, bin]
    decode_frac: FloatArray  # [inference node, bin]
    train: TrainCycle
    rate_factor: float  # trace-rate multiple the calibration chose
    ramp_s: float = 0.0  # the servers' activity rises linearly over the first ramp_s seconds…
    ramp_from: float = 1.0  # …from this share of the trace's demand

    @property
    def bins(self) -> int:
        return int(self.prefill_frac.shape[1])

    @property
    def duration_s(self) -> float:
        return self.bins * self.bin_s

    def activity(self, wall_s: float) -> float:
        """Share of the trace's demand the servers run at `wall_s` (below 1 during the ramp)."""
        if self.ramp_s <= 0 or wall_s >= self.ramp_s:
            return 1.0
        return self.ramp_from + (1.0 - self.ramp_from) * max(wall_s, 0.0) / self.ramp_s

    def at(self, wall_s: float) -> tuple[PhaseDemand, ...]:
        """Demand of each node during the bin that holds `wall_s` (the last bin after the end)."""
        b = min(max(int(wall_s // self.bin_s), 0), self.bins - 1)
        start = b * self.bin_s
        train = self.train.compute_frac(start, start + self.bin_s)
        scale = self.activity(wall_s)
        out: list[PhaseDemand] = []
        row = 0
        for kind in self.kinds:
            if kind == TIER_TRAIN:
                demand = PhaseDemand(train_frac=train, decode_frac=1.0 - train)
            else:
                prefill = float(self.prefill_frac[row, b])
                decode = min(float(self.decode_frac[row, b]), 1.0 - prefill)
                demand = PhaseDemand(prefill_frac=prefill, decode_frac=decode)
                row += 1
            out.append(_scaled(demand, scale))
        return tuple(out)


def _scaled(demand: PhaseDemand, share: float) -> PhaseDemand:
    if share >= 1.0:
        return demand
    return PhaseDemand(
        prefill_frac=demand.prefill_frac * share,
        decode_frac=demand.decode_frac * share,
        train_frac=demand.train_frac * share,
    )


def gpu_power_w(
    profile: GpuProfile, prefill: FloatArray, decode: FloatArray, train: FloatArray | float = 0.0
) -> FloatArray:
    """Mean power of one GPU at its default settings for the given phase shares; the rest is
    idle with a CUDA context (serving and training processes hold one)."""

    def at_default(phase: Phase) -> float:
        # No ceiling, the default limit: the board's limiter holds GEMM work at the limit.
        top = float(profile.max_sm_clock_mhz)
        clock = capped_clock_mhz(profile, phase, profile.default_limit_w, top)
        return float(phase_power_w(profile, phase, clock))

    idle = 1.0 - prefill - decode - np.asarray(train)
    return np.asarray(
        prefill * at_default(Phase.PREFILL)
        + decode * at_default(Phase.DECODE)
        + np.asarray(train) * at_default(Phase.TRAIN)
        + idle * profile.idle_context_w,
        dtype=np.float64,
    )


def mean_batch(rate_per_s: float, mean_tokens: float, service: ServiceModel) -> float:
    """Mean decode batch by Little's law: B = λ·G·(base + per_request·B), solved for B.

    A server whose decode cannot keep up (λ·G·per_request ≥ 1) gets a large finite batch; the
    timeline only needs its decode share, which is then 1 anyway.
    """
    load = rate_per_s * mean_tokens
    denominator = max(1.0 - load * service.tbt_per_request_s, 0.05)
    return load * service.tbt_base_s / denominator


def _prefill_busy_s(work_s: FloatArray, bin_s: float) -> FloatArray:
    """Prefill seconds per bin from the work arriving per bin, FIFO, carried over (Lindley)."""
    busy = np.empty_like(work_s)
    carry = np.zeros(work_s.shape[0])
    for b in range(work_s.shape[1]):
        queued = carry + work_s[:, b]
        busy[:, b] = np.minimum(queued, bin_s)
        carry = queued - busy[:, b]
    return busy


def _covered_s(starts: FloatArray, ends: FloatArray, edges: FloatArray) -> FloatArray:
    """Time within each [edges[i], edges[i+1]) covered by at least one [start, end) interval."""
    if starts.size == 0:
        return np.zeros(edges.size - 1)
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    reach = np.maximum.accumulate(e)
    # A merged block starts where an interval begins after everything before it has ended.
    new = np.r_[True, s[1:] > reach[:-1]]
    block_start = s[new]
    block_end = np.r_[reach[:-1][new[1:]], reach[-1]]
    lengths = block_end - block_start
    before = np.r_[0.0, np.cumsum(lengths)[:-1]]
    # Cumulative covered time is piecewise linear with corners at the block ends, so np.interp
    # over those corners is exact.
    xs = np.column_stack([block_start, block_end]).ravel()
    ys = np.column_stack([before, before + lengths]).ravel()
    cumulative = np.interp(edges, xs, ys, left=0.0, right=float(ys[-1]))
    return np.diff(cumulative)


def inference_fractions(
    requests: Requests, service: ServiceModel, *, servers: int, bin_s: float, bins: int
) -> tuple[FloatArray, FloatArray]:
    """Prefill and decode shares of each inference server per bin of `bin_s` trace seconds."""
    if servers < 1 or bin_s <= 0 or bins < 1:
        raise ValueError("servers, bin_s and bins must be positive")
    edges: FloatArray = np.arange(bins + 1, dtype=np.float64) * bin_s
    span_s = bins * bin_s
    prefill_s = service.prefill_s(requests.context_tokens)
    index = np.minimum((requests.arrival_s // bin_s).astype(np.int64), bins - 1)
    work = np.zeros((servers, bins))
    np.add.at(work, (requests.server, index), prefill_s)
    prefill = _prefill_busy_s(work, bin_s) / bin_s

    decode = np.zeros((servers, bins))
    for server in range(servers):
        mine = requests.server == server
        tokens = requests.generated_tokens[mine].astype(np.float64)
        if tokens.size == 0:
            continue
        batch = mean_batch(tokens.size / span_s, float(tokens.mean()), service)
        tbt_s = service.tbt_base_s + service.tbt_per_request_s * batch
        start = requests.arrival_s[mine] + prefill_s[mine]
        decode[server] = _covered_s(start, start + (tokens - 1.0) * tbt_s, edges) / bin_s
    return prefill, np.minimum(decode, 1.0 - prefill)


def _domain_peak_pct(
    kinds: Sequence[str],
    profile: GpuProfile,
    prefill: FloatArray,
    decode: FloatArray,
    train: TrainCycle,
) -> float:
    """Peak over bins of the mean node power, in percent of a node's provisioned GPU power."""
    inference_w = gpu_power_w(profile, prefill, decode).sum(axis=0)
    train_nodes = sum(1 for kind in kinds if kind == TIER_TRAIN)
    compute = train.mean_compute_frac
    train_w = train_nodes * float(
        gpu_power_w(profile, np.asarray(0.0), np.asarray(1.0 - compute), compute)
    )
    per_node_w = (inference_w + train_w) / len(kinds)
    return 100.0 * float(per_node_w.max()) / profile.max_limit_w


def build_timeline(
    trace: Trace,
    *,
    kinds: Sequence[str],
    profile: GpuProfile,
    service: ServiceModel,
    speedup: float,
    duration_s: float,
    update_s: float = 1.0,
    target_peak_pct: float = 79.0,
    warmup_s: float = 60.0,
    ramp_s: float = 0.0,
    ramp_from: float = 0.5,
    seed: int = 0,
) -> DemandTimeline:
    """Each node's demand over `duration_s` wall seconds, calibrated to `target_peak_pct`.

    The first `warmup_s` seconds of the trace only fill the decode batches (the replay starts
    with busy servers, not empty ones). Over the first `ramp_s` wall seconds the servers'
    activity rises from `ramp_from` to all of the trace's demand, so a policy meets the load
    the way a row does when traffic grows, not as a step from idle. The calibration scales the
    trace's request rate (a bisection over `build_requests` with the same seed each time)
    until the domain's busiest bin reaches the target.
    """
    if speedup <= 0 or duration_s <= 0 or update_s <= 0:
        raise ValueError("speedup, duration_s and update_s must be positive")
    if ramp_s < 0 or not 0.0 <= ramp_from <= 1.0:
        raise ValueError("ramp_s must not be negative and ramp_from must be within [0, 1]")
    inference = sum(1 for kind in kinds if kind != TIER_TRAIN)
    if inference < 1:
        raise ValueError("the timeline needs at least one inference node")
    train = TrainCycle(service.train_compute_s, service.train_comm_s)
    bins = max(1, math.ceil(duration_s / update_s))
    bin_trace_s = update_s * speedup
    warm = math.ceil(warmup_s / bin_trace_s)

    def shape(rate_factor: float) -> tuple[FloatArray, FloatArray]:
        requests = build_requests(
            trace,
            rate_factor=rate_factor,
            inference_servers=inference,
            duration_s=(warm + bins) * bin_trace_s,
            rng=np.random.default_rng(seed),
        )
        prefill, decode = inference_fractions(
            requests, service, servers=inference, bin_s=bin_trace_s, bins=warm + bins
        )
        return prefill[:, warm:], decode[:, warm:]

    def error(rate_factor: float) -> tuple[float, FloatArray, FloatArray]:
        prefill, decode = shape(rate_factor)
        peak = _domain_peak_pct(kinds, profile, prefill, decode, train)
        return peak - target_peak_pct, prefill, decode

    # Bisection; the peak is only roughly monotone in the rate (each rate draws its own
    # requests), so keep the closest result seen.
    low, high = 0.0, 1.0
    err, prefill, decode = error(high)
    while err < 0 and high < 1e4:
        low, high = high, high * 2.0
        err, prefill, decode = error(high)
    if err < 0:
        raise ValueError(f"no request rate reaches {target_peak_pct}% peak power")
    best = (abs(err), high, prefill, decode)
    for _ in range(_CALIBRATION_STEPS):
        if best[0] <= _CALIBRATION_TOLERANCE_PCT:
            break
        rate = (low + high) / 2.0
        err, prefill, decode = error(rate)
        best = min(best, (abs(err), rate, prefill, decode), key=lambda entry: entry[0])
        if err > 0:
            high = rate
        else:
            low = rate
    _, rate, prefill, decode = best
    return DemandTimeline(
        kinds=tuple(kinds),
        bin_s=update_s,
        prefill_frac=prefill,
        decode_frac=decode,
        train=train,
        rate_factor=rate,
        ramp_s=ramp_s,
        ramp_from=ramp_from,
    )
