"""The fluid engine: a power domain's serving as queues of work, not requests.

The request engine (:mod:`polca.sim.engine`) follows every request; at hall scale (1,000
servers, a week: 1.2 G requests) that alone costs 10-13x the 60 s target. This engine keeps
expectations (:mod:`polca.sim.fluid_queues`): a prefill queue of work per inference server,
stepped with NumPy over servers, and per tier the requests waiting for their prefill and the
decode batch (requests, tokens to go). Arrivals are per-step counts and sums per server drawn
from the same workload (:mod:`polca.sim.fluid_arrivals`). Power, the sensor's transients, the
meter, the brake, the controller and the guard are the request engine's own code
(:class:`polca.sim.domain_loop.DomainLoop`), so a policy sees the same physics. Latencies come
from a sample of requests read against the queues (:mod:`polca.sim.fluid_latency`).
docs/simulator.md §6 gives its error against the request engine and its speed.

A step (the request engine's order):

1. each server's arrivals join its prefill queue (work), and its tier's pending requests;
2. prefill first: ``min(queued / speed, dt)`` seconds per server; the tier's pending requests
   complete in proportion to the work done, get their first token and join the batch;
3. the rest of the step decodes the batch the tier started with: each member gets
   ``(dt - prefill) / iteration`` iterations, an iteration taking ``(tbt_base +
   tbt_per_request × batch per server) / decode speed``;
4. power per server: prefill, decode (when its batch holds a request) and idle at the phase
   powers of its settings, the start transient as in the request engine.

Steps run in blocks at constant settings (``BLOCK_STEPS``): the servers' queues and power for
the whole block at once, then the tiers, meter, controller and guard step by step; a block
ends where a setting changes (:meth:`_FluidRun.run`).
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
from polca.sim.fluid_arrivals import REQUESTS, ArrivalBlock, FluidArrivals
from polca.sim.fluid_latency import finish_s, first_token_s
from polca.sim.fluid_queues import TierBatch, TierStep, prefill_block
from polca.sim.run_config import INFERENCE_TIERS, SimConfig, SimResult
from polca.sim.trace import Trace

__all__ = [
    "ARRIVAL_CHUNK_STEPS",
    "BLOCK_STEPS",
    "DEFAULT_LATENCY_SAMPLES",
    "FluidWorkload",
    "simulate_fluid",
]

FloatArray = npt.NDArray[np.float64]

BLOCK_STEPS = 32  # steps run at once at constant settings, at most (arrays stay in cache)
ARRIVAL_CHUNK_STEPS = 64  # steps of arrivals drawn at once
DEFAULT_LATENCY_SAMPLES = 400_000  # requests sampled for latencies per run (all if fewer)

# What is recorded per step and tier (TierStep's fields, in order): the iterations a request
# in a batch gets, the mean prefill time before them, tokens generated, first tokens.
_ITERS, _PREFILL, _TOKENS, _FIRST = range(4)
_COLUMNS = 4


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
    block_steps: int = BLOCK_STEPS,
) -> SimResult:
    """Run one simulation with the fluid engine; ``plan`` overrides ``config.policy.plan``;
    ``block_steps`` bounds the steps run at once (1: step by step, the same result slower)."""
    chosen = plan if plan is not None else config.policy.plan
    return _FluidRun(config, workload, chosen, block_steps).run(progress)


@dataclass(slots=True)
class _Recorded:
    """A chunk of arrivals, and what its latency samples met at their arrival: the queue
    ahead and the speed. Once run, only its samples are kept (``drop_cells``): a week's cells
    would take 19 GB."""

    block: ArrivalBlock
    end: int  # the step after its last
    bounds: npt.NDArray[np.int64]  # samples of step start + r: bounds[r] .. bounds[r + 1]
    per_tier: FloatArray  # [step, tier, REQUESTS / DECODERS / TOKENS / work]: arrivals
    queue_work_s: FloatArray
    speed: FloatArray

    def drop_cells(self) -> None:
        self.block = self.block.samples_only()
        self.per_tier = np.empty((0, 0, 0))


@dataclass(frozen=True, slots=True)
class _BlockServers:
    """A block's per-server prefill at constant settings, and its sums per step."""

    queues: FloatArray  # [step + 1, server]: before each step, and after the last
    busy_s: FloatArray  # [step, server]: prefill seconds
    burst_s: FloatArray  # [step, server]: seconds of start transient
    fixed_sum_w: FloatArray  # [step]: the inference servers' power but decode's
    decode_sum_w: FloatArray  # [step, tier]: their decode power if always decoding
    tier_prefill_s: FloatArray  # [step, tier]
    tier_done_s: FloatArray  # [step, tier]: prefill work done
    # [step, tier]: prefill seconds weighted by the servers' arrivals of the step before (the
    # servers whose batches the last step's joins went to), and those arrivals.
    tier_joined_prefill_s: FloatArray
    tier_joined: FloatArray


class _FluidRun(DomainLoop):
    def __init__(
        self,
        config: SimConfig,
        workload: FluidWorkload,
        plan: ControlPlan | None,
        block_steps: int,
    ) -> None:
        super().__init__(config, plan)
        if block_steps < 1:
            raise ValueError("block_steps must be at least 1")
        self.block_steps = block_steps
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
        self.chunks: list[_Recorded] = []
        self.queue_w = np.zeros(s)  # prefill work queued per server, full-speed seconds
        self.may_start = np.ones(s, dtype=bool)  # where a prefill this step starts (transient)
        self.last_arrivals = np.zeros(s)  # each server's arrivals in the last step
        # …which it does after a step without prefill (short steps) or not prefilling to
        # its end (1 s steps: polca.sim.engine's docstring, step 4).
        self._start_below_s = 1e-300 if self.fine else self.dt
        tiers = len(INFERENCE_TIERS)
        self.tier_matrix = np.stack(
            [(self.inf_tier_code == c).astype(np.float64) for c in range(tiers)]
        )
        self.tiers = [TierBatch(int(n)) for n in self.tier_matrix.sum(axis=1)]
        self.series = np.zeros((self.n_steps, tiers, _COLUMNS))
        self.arrivals_per_tier = np.zeros(tiers)
        self.train_in_horizon: float | None = None

    def _refresh(self) -> None:
        super()._refresh()
        dt, gpus, idle = self.dt, self.gpus, self.prof.idle_context_w
        self.per_prefill_s = 1.0 / self.sp_p  # seconds per second of full-speed work
        # A tier's decode iteration at its servers' mean time per iteration.
        servers = np.maximum(self.tier_matrix.sum(axis=1), 1.0)
        per_iteration = (self.tier_matrix @ (1.0 / self.sp_d_inf)) / servers
        self.it_base_s = (self.svc.tbt_base_s * per_iteration).tolist()
        self.it_per_request_s = (self.svc.tbt_per_request_s * per_iteration).tolist()
        # Server power = base + per prefill second + per decode second + start transient.
        self.base_w = gpus * idle + self.overhead_w
        self.prefill_w_per_s = gpus * (self.pw_p - idle) / dt
        self.decode_w_per_s = gpus * (self.pw_d_inf - idle) / dt
        self.burst_w_per_s = gpus * (self.pw_p_start - self.pw_p) / dt
        # busy_s @ this: [prefill power, -decode power per tier, prefill seconds per tier].
        decode_by_tier = self.tier_matrix * self.decode_w_per_s
        self.busy_weights = np.column_stack(
            [self.prefill_w_per_s, -decode_by_tier.T, self.tier_matrix.T]
        )
        self.decode_full_w = dt * decode_by_tier.sum(axis=1)  # per tier, never prefilling
        # A node's most power under these settings (prefill, transient, decode at their
        # worst mix): where it is below the guard budget, the guard cannot act.
        burst_s = dt if self.fine else min(TRANSIENT_S, dt)
        worst = np.maximum(
            self.decode_w_per_s * dt,
            self.prefill_w_per_s * dt + self.burst_w_per_s * burst_s,
        )
        if not self.fine:
            worst = np.maximum(
                worst,
                (self.prefill_w_per_s + self.burst_w_per_s) * burst_s
                + self.decode_w_per_s * (dt - burst_s),
            )
        self.node_bound_w = self.base_w + float(worst.max(initial=0.0))

    # -- the loop: blocks of steps at constant settings ---------------------------------

    def run(self, progress: Callable[[float], None] | None) -> SimResult:
        """Steps in blocks: the servers' prefill over a block is computed at once for the
        settings at its start (:func:`prefill_block`); the tiers' batches, the meter, the
        controller and the guard then go step by step, and a block ends early where the
        settings change (an actuation falls due, the brake or the guard acts), to be taken
        up again from there with the new settings. The result does not depend on the block
        length (a test checks it)."""
        report_every = max(1, self.n_steps // 100)
        k = 0
        while k < self.n_steps:
            self._actuate(k * self.dt)
            if self.dirty:
                self._refresh()
            rec = self._chunk_at(k)
            steps = min(self.block_steps, rec.end - k)
            done = self._run_block(rec, k, steps)
            if progress is not None and (k + done) // report_every > k // report_every:
                progress((k + done) / self.n_steps)
            k += done
        if progress is not None:
            progress(1.0)
        if self.train_in_horizon is not None:
            self.train_iterations = self.train_in_horizon
        return self._result()

    def _chunk_at(self, k: int) -> _Recorded:
        """The chunk of arrivals that holds step ``k`` (drawing the next one when due)."""
        rec = self.chunks[-1] if self.chunks else None
        if rec is not None and k < rec.end:
            return rec
        if rec is not None:
            rec.drop_cells()
        steps = min(ARRIVAL_CHUNK_STEPS, self.n_steps - k)
        if self.source is not None:
            block = self.source.block(k, steps)
        else:  # no inference server: nothing arrives
            block = ArrivalBlock.empty(k, steps)
        m = block.sample_step.size
        bounds = np.searchsorted(block.sample_step, np.arange(k, k + block.steps + 1))
        columns = (*block.requests, block.work_s)  # [step, server] each
        per_tier = np.stack([c @ self.tier_matrix.T for c in columns], axis=2)
        self.arrivals_per_tier += per_tier[:, :, REQUESTS].sum(axis=0)
        rec = _Recorded(block, k + block.steps, bounds, per_tier, np.empty(m), np.empty(m))
        self.chunks.append(rec)
        return rec

    def _run_block(self, rec: _Recorded, k: int, steps: int) -> int:
        """Run up to ``steps`` steps from ``k`` at the current settings; returns how many ran
        (fewer where the settings changed)."""
        dt = self.dt
        b = self._block_servers(rec, k, steps)
        fixed_sum = b.fixed_sum_w.tolist()
        decode_sum = b.decode_sum_w.tolist()
        r0 = k - rec.block.start
        # Each step's inputs of each tier's TierBatch.step, as lists (the hot loop).
        inputs = np.concatenate(
            [
                rec.per_tier[r0 : r0 + steps],
                np.stack(
                    [b.tier_prefill_s, b.tier_joined_prefill_s, b.tier_joined, b.tier_done_s],
                    axis=2,
                ),
            ],
            axis=2,
        ).tolist()
        iteration = list(zip(self.it_base_s, self.it_per_request_s, strict=True))
        guard = self.guard_cfg is not None and (
            self.guarded_nodes or self.train.size > 0 or self.node_bound_w > self.guard_cfg.budget_w
        )
        records: list[list[TierStep]] = []
        ran = steps
        for j in range(steps):
            kk = k + j
            t = kk * dt
            if j and self.pending_actuations and self.pending_actuations[0][0] <= t + 1e-9:
                ran = j  # an actuation falls due: the settings change from this step
                break
            if kk == self.horizon:
                self.train_in_horizon = self.train_iterations
            step_records = []
            power_w = fixed_sum[j]
            for c, tier in enumerate(self.tiers):
                record = tier.step(inputs[j][c], dt, *iteration[c])
                power_w += record.decoding * decode_sum[j][c]
                step_records.append(record)
            records.append(step_records)
            train_w = self._train_step() if self.train.size else None
            if train_w is not None:
                power_w += float(train_w.sum())
            self._meter(kk, t, power_w)
            if self.plan is not None and kk % self.ctrl_steps == 0:
                self._control(kk, t)
            if guard and (kk + 1) % self.guard_steps == 0:
                self._guard_step(b, j, t, step_records, train_w)
            self.stage_rec[kk] = self.ctrl_stage
            if self.dirty:  # the brake or the guard changed a setting: from the next step
                ran = j + 1
                break
        self._commit(rec, k, ran, b, records)
        return ran

    def _block_servers(self, rec: _Recorded, k: int, steps: int) -> _BlockServers:
        """The servers' prefill over a block at the current settings, summed per step."""
        dt, r0 = self.dt, k - rec.block.start
        queues, done_w = prefill_block(
            self.queue_w, rec.block.work_s[r0 : r0 + steps], self.sp_p, dt
        )
        busy = np.minimum(done_w * self.per_prefill_s, dt)
        may_start = np.empty(busy.shape, dtype=bool)
        may_start[0] = self.may_start
        np.less(busy[:-1], self._start_below_s, out=may_start[1:])
        burst = (busy if self.fine else np.minimum(busy, TRANSIENT_S)) * may_start
        arrived = rec.block.requests[REQUESTS]
        before = np.empty(busy.shape)  # each server's arrivals in the step before
        before[0] = self.last_arrivals
        before[1:] = arrived[r0 : r0 + steps - 1]
        tiers = self.tier_matrix.shape[0]
        sums = busy @ self.busy_weights
        return _BlockServers(
            queues=queues,
            busy_s=busy,
            burst_s=burst,
            fixed_sum_w=sums[:, 0] + burst @ self.burst_w_per_s + self.s * self.base_w,
            decode_sum_w=sums[:, 1 : 1 + tiers] + self.decode_full_w,
            tier_prefill_s=sums[:, 1 + tiers :],
            tier_done_s=done_w @ self.tier_matrix.T,
            tier_joined_prefill_s=(before * busy) @ self.tier_matrix.T,
            tier_joined=before @ self.tier_matrix.T,
        )

    def _guard_step(
        self,
        b: _BlockServers,
        j: int,
        t: float,
        step_records: list[TierStep],
        train_w: FloatArray | None,
    ) -> None:
        """The guard after step ``j`` of a block. Node power is only built where a node may be
        over its guard budget (``node_bound_w``) or is guarded already."""
        assert self.guard_cfg is not None
        if not self.guarded_nodes:
            bound_w = self.node_bound_w
            if train_w is not None:
                bound_w = max(bound_w, float(train_w.max()))
            if bound_w <= self.guard_cfg.budget_w:
                return
        decoding = np.array([r.decoding for r in step_records]) @ self.tier_matrix
        busy = b.busy_s[j]
        inference_w = (
            self.base_w
            + self.prefill_w_per_s * busy
            + self.burst_w_per_s * b.burst_s[j]
            + self.decode_w_per_s * decoding * (self.dt - busy)
        )
        self._set_node_w(inference_w, train_w)
        self._guard(t + self.dt)

    def _set_node_w(self, inference_w: FloatArray, train_w: FloatArray | None) -> None:
        if train_w is None:
            self.node_w = inference_w
            return
        node_w = np.empty(self.n)
        node_w[self.inf] = inference_w
        node_w[self.train] = train_w
        self.node_w = node_w

    def _commit(
        self,
        rec: _Recorded,
        k: int,
        ran: int,
        b: _BlockServers,
        records: list[list[TierStep]],
    ) -> None:
        """Keep the state after ``ran`` steps of a block, and what its samples met."""
        queues = b.queues
        self.queue_w = queues[ran].copy()
        self.may_start = b.busy_s[ran - 1] < self._start_below_s
        r0 = k - rec.block.start
        self.last_arrivals = rec.block.requests[REQUESTS][r0 + ran - 1]
        self.series[k : k + ran] = np.asarray(records[:ran])[:, :, :_COLUMNS]
        r0 = k - rec.block.start
        lo, hi = int(rec.bounds[r0]), int(rec.bounds[r0 + ran])
        if hi > lo:  # the queue ahead of the samples arriving then, and their server's speed
            servers = rec.block.sample_server[lo:hi]
            rec.queue_work_s[lo:hi] = queues[rec.block.sample_step[lo:hi] - k, servers]
            rec.speed[lo:hi] = self.sp_p[servers]

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
        return self._domain_result(
            request_tier=tier_code,
            arrival_s=arrival,
            first_token_s=first,
            finish_s=finish,
            tbt_samples=MappingProxyType(tbt_samples),
            tokens_in_horizon=MappingProxyType(tokens_in_horizon),
            tier_requests=MappingProxyType(tier_requests),
        )

    def _sampled_latencies(
        self, progress: dict[int, FloatArray], prefill: dict[int, FloatArray]
    ) -> tuple[FloatArray, FloatArray, FloatArray, npt.NDArray[np.int8]]:
        """Arrival, first-token and finish times of the latency samples, and their tiers."""
        dt = self.dt
        recs = self.chunks

        def cat(get: Callable[[_Recorded], FloatArray]) -> FloatArray:
            return np.concatenate([get(r) for r in recs]) if recs else np.empty(0)

        step = cat(lambda r: r.block.sample_step.astype(np.float64))
        server = cat(lambda r: r.block.sample_server.astype(np.float64)).astype(np.int64)
        offset = cat(lambda r: r.block.sample_offset)
        first, served = first_token_s(
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
                first[mine],
                served[mine],
                tokens[mine],
                progress=progress[code],
                prefill_s=prefill[code],
                dt_s=dt,
            )
        first = np.where(first < end_s, first, np.nan)
        return (step + offset) * dt, first, finish, tier_code
