"""The fluid engine: a power domain's serving as per-server queues of work, not requests.

The request engine (:mod:`polca.sim.engine`) follows every request; at hall scale (1,000
servers, a week: 1.2 G requests) that alone costs 10-13x the 60 s target. This engine keeps,
per inference server, a prefill queue of work and a decode batch (requests, tokens to go), all
expectations, stepped with NumPy over servers (:mod:`polca.sim.fluid_queues`); arrivals are
per-step counts and sums per server drawn from the same workload (:mod:`polca.sim.
fluid_arrivals`). Power, the sensor's transients, the meter, the brake, the controller and the
guard are the request engine's own code (:class:`polca.sim.domain_loop.DomainLoop`), so a
policy sees the same physics. Latencies come from a sample of requests read against the
queues (:mod:`polca.sim.fluid_latency`). docs/simulator.md §6 gives its error against the
request engine and its speed.

A step, per inference server (the request engine's order):

1. the step's arrivals join the prefill queue (work) and its pending requests;
2. prefill first: ``min(queued / speed, dt)`` seconds; the requests it completes (in
   proportion to the work) get their first token and join the decode batch next step;
3. the rest of the step decodes the batch it started with: each member gets
   ``(dt - prefill) / iteration`` iterations, an iteration taking ``(tbt_base +
   tbt_per_request × batch) / decode speed``;
4. power: prefill, decode (the share of time the batch holds a request) and idle at the
   phase powers of the server's settings, the start transient as in the request engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from polca.control.plan import ControlPlan
from polca.power.sensor import TRANSIENT_S
from polca.sim.domain_loop import DomainLoop
from polca.sim.fluid_arrivals import DECODERS, REQUESTS, TOKENS, ArrivalBlock, FluidArrivals
from polca.sim.fluid_latency import finish_s, first_token_s
from polca.sim.fluid_queues import busy_share, complete_pending, decode_step, serve_prefill
from polca.sim.run_config import INFERENCE_TIERS, SimConfig, SimResult
from polca.sim.trace import Trace

__all__ = ["BLOCK_STEPS", "DEFAULT_LATENCY_SAMPLES", "FluidWorkload", "simulate_fluid"]

FloatArray = npt.NDArray[np.float64]

BLOCK_STEPS = 256  # steps of arrivals drawn at once
DEFAULT_LATENCY_SAMPLES = 400_000  # requests sampled for latencies per run (all if fewer)

# What is recorded per step and tier: the decode batch, the iterations a request in it gets,
# the mean prefill time before them, the tokens generated and the first tokens.
_BATCH, _ITERS, _PREFILL, _TOKENS, _FIRST = range(5)
_COLUMNS = 5


@dataclass(frozen=True, slots=True)
class FluidWorkload:
    """What the fluid engine serves: ``rate_factor`` × the trace's request rate over the
    domain's inference servers (as :func:`polca.sim.workload.build_requests`), drawn from
    ``seed``; ``latency_samples`` requests are sampled for the latency figures."""

    trace: Trace
    rate_factor: float
    seed: int | Sequence[int] = 0
    latency_samples: int = DEFAULT_LATENCY_SAMPLES

    def __post_init__(self) -> None:
        if not self.rate_factor > 0 or not np.isfinite(self.rate_factor):
            raise ValueError("rate_factor must be a finite number above 0")
        if self.latency_samples < 1:
            raise ValueError("latency_samples must be at least 1")


def simulate_fluid(
    config: SimConfig,
    workload: FluidWorkload,
    *,
    plan: ControlPlan | None = None,
    progress: Callable[[float], None] | None = None,
) -> SimResult:
    """Run one simulation with the fluid engine; ``plan`` overrides ``config.policy.plan``."""
    chosen = plan if plan is not None else config.policy.plan
    return _FluidRun(config, workload, chosen).run(progress)


@dataclass(slots=True)
class _Recorded:
    """What a block's latency samples met at their arrival: the queue ahead and the speed."""

    block: ArrivalBlock
    bounds: npt.NDArray[np.int64]  # samples of step start + r: bounds[r] .. bounds[r + 1]
    per_tier: FloatArray  # [step, tier, REQUESTS / DECODERS / TOKENS / work]: arrivals
    queue_work_s: FloatArray
    speed: FloatArray


class _FluidRun(DomainLoop):
    def __init__(self, config: SimConfig, workload: FluidWorkload, plan: ControlPlan | None):
        super().__init__(config, plan)
        s = self.s
        self.source: FluidArrivals | None = None
        if s:
            self.source = FluidArrivals(
                workload.trace,
                self.svc,
                rate_factor=workload.rate_factor,
                servers=s,
                duration_s=config.duration_s,
                dt_s=self.dt,
                steps=self.n_steps,
                rng=np.random.default_rng(workload.seed),
                max_samples=workload.latency_samples,
            )
        self.recorded: list[_Recorded] = []
        self.queue_w = np.zeros(s)  # prefill work queued per server, full-speed seconds
        self.may_start = np.ones(s, dtype=bool)  # where a prefill this step starts (transient)
        # …which it does after a step without prefill (short steps) or not prefilling to
        # its end (1 s steps: polca.sim.engine's docstring, step 4).
        self._start_below_s = 1e-300 if self.fine else self.dt
        self.arrived_work = np.zeros(s)
        tiers = len(INFERENCE_TIERS)
        self.tier_matrix = np.stack(
            [(self.inf_tier_code == c).astype(np.float64) for c in range(tiers)]
        )
        self.per_server_t = 1.0 / np.maximum(self.tier_matrix.sum(axis=1), 1.0)
        # Per tier: requests waiting for their prefill [REQUESTS, DECODERS, TOKENS, work], the
        # step's arrivals of the same, and the decode batch (requests, tokens to go).
        self.pending = np.zeros((tiers, 4))
        self.arrived = np.zeros((tiers, 4))
        self.batch_t = np.zeros(tiers)
        self.left_t = np.zeros(tiers)
        self.rows = np.zeros((2, s))  # this step's prefill seconds and work done per server
        self.series = np.zeros((self.n_steps, tiers, _COLUMNS))
        self.arrivals_per_tier = np.zeros(tiers)

    def _refresh(self) -> None:
        super()._refresh()
        dt, gpus, idle = self.dt, self.gpus, self.prof.idle_context_w
        self.per_prefill_s = 1.0 / self.sp_p  # seconds per second of full-speed work
        # A tier's decode iteration at its servers' mean time per iteration.
        per_iteration = (self.tier_matrix @ (1.0 / self.sp_d_inf)) * self.per_server_t
        self.it_base_s = self.svc.tbt_base_s * per_iteration
        self.it_per_request_s = self.svc.tbt_per_request_s * per_iteration
        # Server power = base + per prefill second + per decode second + start transient.
        self.base_w = gpus * idle + self.overhead_w
        self.prefill_w_per_s = gpus * (self.pw_p - idle) / dt
        self.decode_w_per_s = gpus * (self.pw_d_inf - idle) / dt
        self.burst_w_per_s = gpus * (self.pw_p_start - self.pw_p) / dt

    def _arrivals(self, k: int) -> None:
        if self.source is None:
            return
        rec = self.recorded[-1] if self.recorded else None
        if rec is None or k >= rec.block.start + rec.block.steps:
            rec = self._next_block(k)
        block, r = rec.block, k - rec.block.start
        self.arrived_work = block.work_s[r]
        self.arrived = rec.per_tier[r]
        lo, hi = int(rec.bounds[r]), int(rec.bounds[r + 1])
        if hi > lo:  # the queue ahead of the samples arriving now, and their server's speed
            servers = block.sample_server[lo:hi]
            rec.queue_work_s[lo:hi] = self.queue_w[servers]
            rec.speed[lo:hi] = self.sp_p[servers]

    def _next_block(self, k: int) -> _Recorded:
        assert self.source is not None
        block = self.source.block(k, min(BLOCK_STEPS, self.n_steps - k))
        m = block.sample_step.size
        bounds = np.searchsorted(block.sample_step, np.arange(k, k + block.steps + 1))
        columns = (*block.requests, block.work_s)  # [step, server] each
        per_tier = np.stack([c @ self.tier_matrix.T for c in columns], axis=2)
        self.arrivals_per_tier += per_tier[:, :, REQUESTS].sum(axis=0)
        rec = _Recorded(block, bounds, per_tier, np.empty(m), np.empty(m))
        self.recorded.append(rec)
        return rec

    def _serve(self, k: int, t: float) -> float:  # noqa: ARG002 (the step's start: unused)
        dt = self.dt
        rows = self.rows
        busy, rows[1], self.queue_w = serve_prefill(
            self.queue_w + self.arrived_work, self.sp_p, self.per_prefill_s, dt
        )
        rows[0] = busy
        prefill_s, work_done = (self.tier_matrix @ rows.T).T  # per tier
        pending = self.pending + self.arrived
        done = complete_pending(pending, work_done)  # first tokens; decoders join the batch
        self.pending = pending - done

        # Decode the batch each tier started the step with, after the prefill.
        batch, left = self.batch_t, self.left_t
        per_server = batch * self.per_server_t
        prefill_mean_s = prefill_s * self.per_server_t
        iterations = (dt - prefill_mean_s) / (
            self.it_base_s + self.it_per_request_s * np.maximum(per_server, 1.0)
        )
        kept = decode_step(batch, left, iterations)
        self.batch_t = batch * kept + done[:, DECODERS]
        self.left_t = left * kept + done[:, TOKENS]

        # A prefill's start transient lasts TRANSIENT_S (all of a step up to that long), and
        # only a prefill that did not run on from the last step starts.
        burst_s = busy if self.fine else np.minimum(busy, TRANSIENT_S)
        decoding = busy_share(per_server) @ self.tier_matrix
        inference_w = (
            self.base_w
            + self.prefill_w_per_s * busy
            + self.decode_w_per_s * (decoding * (dt - busy))
            + self.burst_w_per_s * (burst_s * self.may_start)
        )
        self.may_start = busy < self._start_below_s

        record = self.series[k]
        record[:, _BATCH] = batch
        record[:, _ITERS] = iterations
        record[:, _PREFILL] = prefill_mean_s
        record[:, _TOKENS] = left - left * kept
        record[:, _FIRST] = done[:, REQUESTS]
        return self._domain_w(inference_w)

    # -- results --------------------------------------------------------------------------

    def _result(self) -> SimResult:
        h, dt = self.horizon, self.dt
        series = self.series
        tbt_samples: dict[str, tuple[FloatArray, FloatArray]] = {}
        tokens_in_horizon: dict[str, float] = {}
        tier_requests: dict[str, int] = {}
        progress: dict[int, FloatArray] = {}
        prefill: dict[int, FloatArray] = {}
        for code, tier in enumerate(INFERENCE_TIERS):
            tier_series = series[:, code, :]
            progress[code] = tier_series[:, _ITERS]
            prefill[code] = tier_series[:, _PREFILL]
            tokens = tier_series[:, _TOKENS]
            keep = tokens > 0
            # The time between tokens of a request in a batch, weighted by tokens.
            tbt_samples[tier] = (dt / progress[code][keep], tokens[keep])
            tokens_in_horizon[tier] = float(tokens[:h].sum() + tier_series[:h, _FIRST].sum())
            tier_requests[tier] = round(float(self.arrivals_per_tier[code]))
        arrival, first, finish, tier_code = self._sampled_latencies(progress, prefill)
        return SimResult(
            config=self.cfg,
            plan=self.plan,
            raw_power_w=self.raw[:h],
            metered_power_w=self.metered[:h],
            stage=self.stage_rec[:h],
            brake_events=self.brake_events,
            time_above_budget_s=self.above_steps * dt,
            energy_j=float(self.raw[:h].astype(np.float64).sum() * dt),
            request_tier=tier_code,
            arrival_s=arrival,
            first_token_s=first,
            finish_s=finish,
            tbt_samples=MappingProxyType(tbt_samples),
            tokens_in_horizon=MappingProxyType(tokens_in_horizon),
            train_iterations=self.train_iterations,
            stage_changes=self.stage_changes,
            guard_actions=self.guard_actions,
            tier_requests=MappingProxyType(tier_requests),
        )

    def _sampled_latencies(
        self, progress: dict[int, FloatArray], prefill: dict[int, FloatArray]
    ) -> tuple[FloatArray, FloatArray, FloatArray, npt.NDArray[np.int8]]:
        """Arrival, first-token and finish times of the latency samples, and their tiers."""
        dt = self.dt
        recs = self.recorded

        def cat(get: Callable[[_Recorded], FloatArray]) -> FloatArray:
            return np.concatenate([get(r) for r in recs]) if recs else np.empty(0)

        step = cat(lambda r: r.block.sample_step.astype(np.float64))
        server = cat(lambda r: r.block.sample_server.astype(np.float64)).astype(np.int64)
        offset = cat(lambda r: r.block.sample_offset)
        first = first_token_s(
            step_start_s=step * dt,
            offset_s=offset,
            queue_work_s=cat(lambda r: r.queue_work_s),
            cell_work_s=cat(lambda r: r.block.sample_cell_work_s),
            cell_count=cat(lambda r: r.block.sample_cell_count),
            own_work_s=cat(lambda r: r.block.sample_work_s),
            speed=cat(lambda r: r.speed),
            dt_s=dt,
        )
        tokens = cat(lambda r: r.block.sample_tokens)
        tier_code = self.inf_tier_code[server] if server.size else np.empty(0, np.int8)
        end_s = self.n_steps * dt
        finish = np.full(first.size, np.nan)
        for code in range(len(INFERENCE_TIERS)):
            mine = tier_code == code
            finish[mine] = finish_s(
                first[mine], tokens[mine], progress=progress[code], prefill_s=prefill[code], dt_s=dt
            )
        first = np.where(first < end_s, first, np.nan)
        return (step + offset) * dt, first, finish, tier_code
