"""The discrete-time simulation of one power domain under one policy.

Every step (``dt_s``, 100 ms by default), vectorised over servers:

1. arriving requests join their server's prefill queue (FIFO, measured in full-speed seconds);
2. due actuations (stage actions, delayed by the policy's actuation delay) are applied;
3. each inference server prefills first (vLLM-style: prompts pre-empt decoding), then spends
   the rest of the step decoding its active batch; a decode iteration takes
   ``(tbt_base + tbt_per_request × batch) / decode_speed``; a training server alternates
   compute (at training speed, the slowest server's, as the job is synchronous) and
   clock-independent communication;
4. server power = GPUs × time-weighted phase power (:mod:`polca.power.model`) + overhead; the
   idle rest of a step draws idle-with-context power (a serving process holds a context). A
   phase the board's limiter holds down (compute-bound prefill or training above the limit)
   draws its unlimited demand, at most 1.39× the limit, in the step where it starts: the limiter
   lags one 100 ms refresh (:mod:`polca.power.sensor`, measured on the H200). In steps longer
   than that transient (1 s steps, for hall-scale runs) only its first ``TRANSIENT_S`` does, at
   most once per server and step (a prefill starts unless it ran to the end of the last step);
5. the metered domain power is the mean over ``meter_window_s`` (1 s: what NVML's
   ``GetPowerUsage`` reports, measured, and what PDU meters average over); above the budget it
   triggers the hardware brake (every GPU near halt for ``brake_hold_s``), counted as a brake
   event. Transients reach the meter only through that average (docs/simulator.md explains why
   a breaker does not see them either);
6. the controller (:func:`polca.control.controller.decide`) runs every control interval on the
   latest telemetry sample; the local guard (:func:`polca.control.guard.decide_guard`) runs
   on each node every guard interval on the node's power in the last step, as the daemon's
   guard reads the GPUs' instant power field (the last 100 ms). With 1 s steps both the meter
   and the guard see each step's mean, and intervals round to whole steps.

Per-step work is O(servers + queued and decoding requests) (:mod:`polca.sim.request_set`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from polca.control.controller import ControllerState, decide
from polca.control.guard import GuardConfig, GuardState, decide_guard, default_guard_steps
from polca.control.plan import ControlPlan, ResolvedAction, TierAction
from polca.power.model import (
    Phase,
    capped_clock_mhz,
    ceiling_clock_mhz,
    phase_power_w,
    phase_speed,
)
from polca.power.sensor import AVERAGE_WINDOW_S, OVERSHOOT_RATIO, TRANSIENT_S
from polca.sim.domain import TIER_HIGH, TIER_LOW, TIER_TRAIN, DomainConfig, gpu_limits
from polca.sim.policies import PolicyConfig
from polca.sim.request_set import RequestSet
from polca.sim.workload import Requests

__all__ = ["BRAKE_CLOCK_PCT", "MAX_STEPS", "SimConfig", "SimResult", "check_steps", "simulate"]

FloatArray = npt.NDArray[np.float64]

# POLCA's brake: ~288 MHz on a 1410 MHz A100, i.e. about a fifth of the max clock.
BRAKE_CLOCK_PCT = 100.0 * 288 / 1410
# Plan tier of each server tier: training is throttled like low-priority inference.
PLAN_TIER = MappingProxyType({TIER_HIGH: "high", TIER_LOW: "low", TIER_TRAIN: "low"})
INFERENCE_TIERS = (TIER_HIGH, TIER_LOW)


# The most time steps one run may take: its per-step records (power, stage, ...) are arrays of
# this length, ~10 bytes a step. 10 M steps is 11.6 simulated days at 100 ms.
MAX_STEPS = 10_000_000


def check_steps(duration_s: float, dt_s: float) -> None:
    """Refuse a run whose per-step arrays would not fit in memory (or never end)."""
    steps = duration_s / dt_s
    if not steps <= MAX_STEPS:  # also refuses inf and nan
        raise ValueError(
            f"{duration_s:g} s in steps of {dt_s:g} s is {steps:.3g} steps, more than the "
            f"simulator's limit of {MAX_STEPS:,}: shorten --duration or raise --dt"
        )


@dataclass(frozen=True, slots=True)
class SimConfig:
    domain: DomainConfig
    policy: PolicyConfig
    duration_s: float = 3600.0
    dt_s: float = 0.1
    meter_window_s: float = AVERAGE_WINDOW_S
    brake_enabled: bool = True
    brake_hold_s: float = 10.0
    drain_s: float = 120.0  # keep simulating (no arrivals) so in-flight requests finish

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.dt_s <= 0:
            raise ValueError("duration_s and dt_s must be positive")
        check_steps(self.duration_s + self.drain_s, self.dt_s)
        if self.meter_window_s < self.dt_s:
            raise ValueError("meter_window_s must be at least one step")
        if self.brake_hold_s < 0 or self.drain_s < 0:
            raise ValueError("brake_hold_s and drain_s must not be negative")

    @property
    def horizon_steps(self) -> int:
        return round(self.duration_s / self.dt_s)


@dataclass(frozen=True, slots=True)
class SimResult:
    config: SimConfig
    plan: ControlPlan | None  # the plan actually run (derived triggers applied)
    raw_power_w: npt.NDArray[np.float32]
    metered_power_w: npt.NDArray[np.float32]
    stage: npt.NDArray[np.int8]
    brake_events: int
    time_above_budget_s: float
    energy_j: float
    request_tier: npt.NDArray[np.int8]  # index into INFERENCE_TIERS
    arrival_s: FloatArray
    first_token_s: FloatArray  # nan: never got its first token
    finish_s: FloatArray  # nan: never finished
    tbt_samples: Mapping[str, tuple[FloatArray, FloatArray]]  # tier → (tbt_s, token weights)
    tokens_in_horizon: Mapping[str, float]  # generated tokens per tier within duration_s
    train_iterations: float  # completed within duration_s
    stage_changes: int
    guard_actions: int = 0

    @property
    def budget_w(self) -> float:
        return self.config.domain.budget_w


def simulate(
    config: SimConfig,
    requests: Requests,
    *,
    plan: ControlPlan | None = None,
    progress: Callable[[float], None] | None = None,
) -> SimResult:
    """Run one simulation; ``plan`` overrides ``config.policy.plan`` (e.g. derived triggers)."""
    return _Run(config, requests, plan if plan is not None else config.policy.plan).run(progress)


class _Run:
    """State of one run; methods are the stages of a step."""

    def __init__(self, config: SimConfig, requests: Requests, plan: ControlPlan | None) -> None:
        self.cfg = config
        self.plan = plan
        dom = config.domain
        self.prof = dom.profile
        self.svc = dom.service_model
        self.gpus = dom.gpus_per_server
        self.overhead_w = dom.server_overhead_w
        self.budget_w = dom.budget_w
        self.dt = config.dt_s
        self.limits = gpu_limits(self.prof)

        tiers = dom.tiers
        self.n = len(tiers)
        self.inf = np.array([i for i, t in enumerate(tiers) if t != TIER_TRAIN], dtype=np.int64)
        self.train = np.array([i for i, t in enumerate(tiers) if t == TIER_TRAIN], dtype=np.int64)
        self.s = self.inf.size
        self.plan_tiers = tuple(PLAN_TIER[t] for t in tiers)
        inf_tiers = [tiers[i] for i in self.inf]
        self.inf_tier_code = np.array([INFERENCE_TIERS.index(t) for t in inf_tiers], dtype=np.int8)

        self._init_requests(requests)
        self._init_settings()
        self._init_control(plan)
        self._init_recording()

    def _init_requests(self, requests: Requests) -> None:
        config = self.cfg
        if len(requests) and int(requests.server.max()) >= self.s:
            raise ValueError("requests name more inference servers than the domain has")
        self.req = requests
        self.work_s = self.svc.prefill_s(requests.context_tokens)
        self.thr = _fifo_thresholds(requests.server, self.work_s)
        r = len(requests)
        self.first = np.full(r, np.nan)
        self.finish = np.full(r, np.nan)
        self.n_steps = round((config.duration_s + config.drain_s) / self.dt)
        self.horizon = config.horizon_steps
        # Requests arriving in step k: bounds[k]..bounds[k + 1]; none during the drain.
        edges = np.minimum(np.arange(self.n_steps + 1) * self.dt, config.duration_s)
        self.bounds = np.searchsorted(requests.arrival_s, edges, side="left")

        # Per inference server queues.
        self.enq = np.zeros(self.s)
        self.done = np.zeros(self.s)
        self.iter_count = np.zeros(self.s)
        self.n_act = np.zeros(self.s, dtype=np.int64)
        # Waiting for their prefill (threshold: the server's cumulative prefill work) and
        # decoding (threshold: the server's iteration count at their last token).
        self.pending = RequestSet()
        self.active = RequestSet()

    def _init_settings(self) -> None:
        # Training job (one synchronous job over all training servers).
        self.train_in_compute = True
        self.train_left = self.svc.train_compute_s
        self.train_iterations = 0.0

        # Settings: stage (actuated), guard, brake; effective = tightest.
        self.max_clock = float(self.prof.max_sm_clock_mhz)
        self.max_limit = float(self.prof.max_limit_w)
        self.stage_ceil = np.full(self.n, self.max_clock)
        self.stage_lim = np.full(self.n, self.max_limit)
        self.guard_ceil = np.full(self.n, self.max_clock)
        self.guard_lim = np.full(self.n, self.max_limit)
        brake = TierAction(clock_ceiling_pct=BRAKE_CLOCK_PCT).resolve(self.limits)
        self.brake_clock = float(brake.clock_ceiling_mhz or self.max_clock)
        self.brake_active = False
        self.brake_until = 0.0
        self.brake_events = 0
        self.above_steps = 0
        self.dirty = True
        # Speeds at the default settings (service times are measured there).
        default_lim = float(self.prof.default_limit_w)
        self.base_speed_p, self.base_speed_t = (
            float(
                phase_speed(
                    phase,
                    capped_clock_mhz(self.prof, phase, default_lim, self.max_clock)
                    / self.max_clock,
                )
            )
            for phase in (Phase.PREFILL, Phase.TRAIN)
        )
        # Start transients (module docstring, step 4). Steps no longer than the transient: a
        # phase starts in a step if it did not run in the last one, and draws its start power
        # for its whole time in the step. Longer steps (1 s): only TRANSIENT_S of it does, and
        # a phase starts unless it ran to the end of the last step.
        self.fine = self.dt <= TRANSIENT_S
        self.prefilling = np.zeros(self.inf.size, dtype=bool)  # …in the last step / at its end
        self.train_computing = False  # the training job computed in the last step
        self.train_burst_left = TRANSIENT_S  # of the current compute phase's transient

    def _init_control(self, plan: ControlPlan | None) -> None:
        config = self.cfg
        self.ctrl_state = ControllerState()
        self.ctrl_stage = 0
        self.stage_changes = 0
        self.pending_actuations: list[tuple[float, int, int]] = []  # (time, seq, stage)
        self.seq = 0
        pol = config.policy
        self.ctrl_steps = max(1, round(pol.control_interval_s / self.dt))
        self.stage_settings = self._stage_settings(plan) if plan is not None else []

        # Guard.
        self.guard_cfg: GuardConfig | None = None
        self.guard_actions = 0
        if pol.guard is not None and plan is not None:
            g = pol.guard
            self.guard_cfg = GuardConfig(
                budget_w=g.budget_share * self.budget_w / self.n,
                steps=default_guard_steps(
                    plan.tiers, throttle_pct=g.throttle_pct, last_pct=g.last_pct
                ),
                release_pct=g.release_pct,
                hold_s=g.hold_s,
            )
            self.guard_steps = max(1, round(g.interval_s / self.dt))
        self.guard_states = [GuardState() for _ in range(self.n)]
        self.guard_level = np.zeros(self.n, dtype=np.int64)  # each state's level, as an array
        self.node_w = np.zeros(self.n)  # each node's power in the last step

    def _init_recording(self) -> None:
        config = self.cfg
        self.raw = np.zeros(self.n_steps, dtype=np.float32)
        self.metered = np.zeros(self.n_steps, dtype=np.float32)
        self.stage_rec = np.zeros(self.n_steps, dtype=np.int8)
        self.tbt = np.zeros((self.n_steps, self.s), dtype=np.float32)
        self.tok = np.zeros((self.n_steps, self.s), dtype=np.float32)
        self.meter_w = max(1, round(config.meter_window_s / self.dt))
        self.ring = np.zeros(self.meter_w)
        self.ring_sum = 0.0

    # -- settings -------------------------------------------------------------------------

    def _stage_settings(self, plan: ControlPlan) -> list[tuple[FloatArray, FloatArray]]:
        out = []
        for stage in range(len(plan.stages)):
            actions = plan.actions_for(stage)
            resolved = {t: a.resolve(self.limits) for t, a in actions.items()}
            out.append(
                self._settings_arrays([resolved.get(t, ResolvedAction()) for t in self.plan_tiers])
            )
        return out

    def _settings_arrays(self, actions: list[ResolvedAction]) -> tuple[FloatArray, FloatArray]:
        ceil = np.array([a.clock_ceiling_mhz or self.max_clock for a in actions], dtype=np.float64)
        lim = np.array([a.power_limit_w or self.max_limit for a in actions], dtype=np.float64)
        return ceil, lim

    def _refresh(self) -> None:
        ceil = np.minimum(self.stage_ceil, self.guard_ceil)
        if self.brake_active:
            ceil = np.minimum(ceil, self.brake_clock)
        lim = np.minimum(self.stage_lim, self.guard_lim)
        clock = ceiling_clock_mhz(self.prof, ceil)
        cp = capped_clock_mhz(self.prof, Phase.PREFILL, lim, clock)
        cd = capped_clock_mhz(self.prof, Phase.DECODE, lim, clock)
        ct = capped_clock_mhz(self.prof, Phase.TRAIN, lim, clock)
        # Service times are at the default settings, where the limiter already holds GEMM work
        # below the max clock: speeds are relative to that.
        self.sp_p = (phase_speed(Phase.PREFILL, cp / self.max_clock) / self.base_speed_p)[self.inf]
        self.sp_d = phase_speed(Phase.DECODE, cd / self.max_clock)
        self.sp_t = phase_speed(Phase.TRAIN, ct / self.max_clock) / self.base_speed_t
        pw_p = phase_power_w(self.prof, Phase.PREFILL, cp)
        self.pw_p = pw_p[self.inf]
        self.pw_d = phase_power_w(self.prof, Phase.DECODE, cd)
        self.pw_t = phase_power_w(self.prof, Phase.TRAIN, ct)
        self.pw_p_start = self._burst_start_w(Phase.PREFILL, clock, lim, pw_p)[self.inf]
        self.pw_t_start = self._burst_start_w(Phase.TRAIN, clock, lim, self.pw_t)
        self.sp_d_inf = self.sp_d[self.inf]
        self.pw_d_inf = self.pw_d[self.inf]
        self.dirty = False

    def _burst_start_w(
        self, phase: Phase, clock: FloatArray, lim: FloatArray, settled: FloatArray
    ) -> FloatArray:
        """Power in the step a phase starts: where the limiter holds it below the ceiling's
        clock, the board first draws its demand there, up to the measured overshoot bound."""
        demand = np.minimum(phase_power_w(self.prof, phase, clock), OVERSHOOT_RATIO * lim)
        return np.asarray(np.maximum(settled, demand), dtype=np.float64)

    def _burst_w(
        self,
        settled: FloatArray,
        start: FloatArray,
        phase_s: FloatArray | float,
        burst_s: FloatArray | float,
    ) -> FloatArray:
        """Mean power of a phase over its ``phase_s`` in this step, ``burst_s`` of which is the
        start transient (steps longer than TRANSIENT_S: 1 s steps)."""
        share = np.asarray(burst_s, dtype=np.float64) / np.maximum(phase_s, 1e-12)
        return np.asarray(settled + share * (start - settled), dtype=np.float64)

    # -- the loop -------------------------------------------------------------------------

    def run(self, progress: Callable[[float], None] | None) -> SimResult:
        report_every = max(1, self.n_steps // 100)
        train_in_horizon = None
        for k in range(self.n_steps):
            if k == self.horizon:
                train_in_horizon = self.train_iterations
            t = k * self.dt
            self._actuate(t)
            if self.dirty:
                self._refresh()
            self._arrivals(k)
            power_w = self._serve(k, t)
            self._meter(k, t, power_w)
            if self.plan is not None and k % self.ctrl_steps == 0:
                self._control(k, t)
            if self.guard_cfg is not None and (k + 1) % self.guard_steps == 0:
                self._guard(t + self.dt)
            self.stage_rec[k] = self.ctrl_stage
            if progress is not None and k % report_every == 0:
                progress(k / self.n_steps)
        if progress is not None:
            progress(1.0)
        if train_in_horizon is not None:
            self.train_iterations = train_in_horizon
        return self._result()

    def _arrivals(self, k: int) -> None:
        lo, hi = int(self.bounds[k]), int(self.bounds[k + 1])
        if hi <= lo:
            return
        srv = self.req.server[lo:hi]
        self.enq += np.bincount(srv, weights=self.work_s[lo:hi], minlength=self.s)
        self.pending.add(np.arange(lo, hi), self.thr[lo:hi], srv)

    def _serve(self, k: int, t: float) -> float:
        dt = self.dt
        # Prefill first.
        queued = self.enq - self.done
        tp = np.minimum(np.maximum(queued / self.sp_p, 0.0), dt)
        done_before = self.done
        self.done = self.done + tp * self.sp_p
        # Decode the batch that was active at the start of the step.
        n = self.n_act
        td = np.where(n > 0, dt - tp, 0.0)
        it_s = (self.svc.tbt_base_s + self.svc.tbt_per_request_s * n) / self.sp_d_inf
        iters = td / it_s
        before = self.iter_count
        self.iter_count = before + iters
        # Requests finishing mid-step do not use the rest of the step's iterations.
        tokens = iters * n - self._finish_decodes(t, tp, before, it_s)
        self.tbt[k] = np.where(iters > 0, dt / np.maximum(iters, 1e-12), 0.0)
        self.tok[k] = tokens
        self._finish_prefills(t, done_before)

        pf = tp / dt
        df = td / dt
        idle = 1.0 - pf - df
        prefilling = pf > 0
        starting = prefilling & ~self.prefilling
        if self.fine:
            pw_p = np.where(starting, self.pw_p_start, self.pw_p)
            self.prefilling = prefilling
        else:  # prefill comes first in a step: at most one start per step
            burst_w = self._burst_w(self.pw_p, self.pw_p_start, tp, np.minimum(tp, TRANSIENT_S))
            pw_p = np.where(starting, burst_w, self.pw_p)
            self.prefilling = tp >= dt
        gpu_w = pf * pw_p + df * self.pw_d_inf + idle * self.prof.idle_context_w
        inference_w = self.gpus * gpu_w + self.overhead_w
        if self.train.size:
            node_w = np.empty(self.n)
            node_w[self.inf] = inference_w
            node_w[self.train] = self._train_step()
        else:  # every server serves: no scatter needed
            node_w = inference_w
        self.node_w = node_w
        return float(node_w.sum())

    def _finish_decodes(
        self, t: float, tp: FloatArray, before: FloatArray, it_s: FloatArray
    ) -> FloatArray:
        """Retire finished requests; returns each server's unused iterations of the step."""
        unused = np.zeros(self.s)
        if not self.active.size:
            return unused
        pos = self.active.reached(self.iter_count)
        if not pos.size:
            return unused
        srv, act_fin = self.active.server[pos], self.active.threshold[pos]
        unused += np.bincount(srv, weights=self.iter_count[srv] - act_fin, minlength=self.s)
        self.finish[self.active.index[pos]] = t + tp[srv] + (act_fin - before[srv]) * it_s[srv]
        self.n_act -= np.bincount(srv, minlength=self.s)
        self.active.retire(pos)
        return unused

    def _finish_prefills(self, t: float, done_before: FloatArray) -> None:
        if not self.pending.size:
            return
        pos = self.pending.reached(self.done, 1e-9)
        if not pos.size:
            return
        idx, srv = self.pending.index[pos], self.pending.server[pos]
        speed = self.sp_p[srv]
        at = t + (self.pending.threshold[pos] - done_before[srv]) / speed
        self.pending.retire(pos)
        self.first[idx] = np.maximum(at, self.req.arrival_s[idx] + self.work_s[idx] / speed)
        need = self.req.generated_tokens[idx] - 1.0  # the first token comes with the prefill
        one_token = need <= 0
        self.finish[idx[one_token]] = self.first[idx[one_token]]
        more = ~one_token
        joining = srv[more]
        self.active.add(idx[more], self.iter_count[joining] + need[more], joining)
        self.n_act += np.bincount(joining, minlength=self.s)

    def _train_step(self) -> FloatArray:
        """Advance the synchronous training job by one step; power of each training server."""
        speed = float(self.sp_t[self.train].min())
        left_dt = self.dt
        compute_s = burst_s = 0.0
        while left_dt > 1e-12:
            if self.train_in_compute:
                needed = self.train_left / speed
                used = min(needed, left_dt)
                self.train_left -= used * speed
                compute_s += used
                in_burst = min(used, self.train_burst_left)
                burst_s += in_burst
                self.train_burst_left -= in_burst
                if used >= needed - 1e-12:
                    self.train_in_compute = False
                    self.train_left = self.svc.train_comm_s
            else:
                used = min(self.train_left, left_dt)
                self.train_left -= used
                if self.train_left <= 1e-12:
                    self.train_in_compute = True
                    self.train_left = self.svc.train_compute_s
                    self.train_burst_left = TRANSIENT_S
                    self.train_iterations += 1
            left_dt -= used
        cf = compute_s / self.dt
        starting = cf > 0 and not self.train_computing
        self.train_computing = cf > 0
        pw_t = self.pw_t[self.train]
        if self.fine and starting:
            pw_t = self.pw_t_start[self.train]
        elif not self.fine and burst_s > 0:
            pw_t = self._burst_w(pw_t, self.pw_t_start[self.train], compute_s, burst_s)
        # Communication keeps the GPUs' memory and links busy: modelled at decode power.
        gpu_w = cf * pw_t + (1.0 - cf) * self.pw_d[self.train]
        out: FloatArray = self.gpus * gpu_w + self.overhead_w
        return out

    def _meter(self, k: int, t: float, power_w: float) -> None:
        self.raw[k] = power_w
        slot = k % self.meter_w
        self.ring_sum += power_w - self.ring[slot]
        self.ring[slot] = power_w
        metered = self.ring_sum / min(k + 1, self.meter_w)
        self.metered[k] = metered
        over = metered > self.budget_w
        if over and k < self.horizon:
            self.above_steps += 1
        if not self.cfg.brake_enabled:
            return
        if over:
            if not self.brake_active and k < self.horizon:
                self.brake_events += 1
                self.brake_active = True
                self.dirty = True
            self.brake_until = t + self.dt + self.cfg.brake_hold_s
        elif self.brake_active and t + self.dt >= self.brake_until:
            self.brake_active = False
            self.dirty = True

    def _control(self, k: int, t: float) -> None:
        assert self.plan is not None
        pol = self.cfg.policy
        periods = math.floor((t - pol.telemetry_latency_s) / pol.telemetry_period_s + 1e-9)
        sample_t = periods * pol.telemetry_period_s
        if sample_t < 0:
            # The operator was running before the simulated window: it waits for the first
            # sample instead of starting in its failsafe stage.
            return
        step = min(k, round(sample_t / self.dt))
        d = decide(
            self.plan,
            self.ctrl_state,
            now_s=t,
            domain_power_w=float(self.metered[step]),
            budget_w=self.budget_w,
            sample_age_s=t - sample_t,
        )
        self.ctrl_state = d.state
        if d.changed:
            self.ctrl_stage = d.stage
            self.stage_changes += 1
            self.seq += 1
            heapq.heappush(self.pending_actuations, (t + pol.actuation_delay_s, self.seq, d.stage))

    def _actuate(self, t: float) -> None:
        while self.pending_actuations and self.pending_actuations[0][0] <= t + 1e-9:
            _, _, stage = heapq.heappop(self.pending_actuations)
            self.stage_ceil, self.stage_lim = self.stage_settings[stage]
            self.dirty = True

    def _guard(self, t: float) -> None:
        assert self.guard_cfg is not None
        # The daemon's guard reads the instant power field: the last 100 ms, i.e. one step.
        node_w = self.node_w
        for i in np.flatnonzero((node_w > self.guard_cfg.budget_w) | (self.guard_level > 0)):
            d = decide_guard(
                self.guard_cfg,
                self.guard_states[i],
                now_s=t,
                node_power_w=float(node_w[i]),
                gpu_tiers=(self.plan_tiers[i],),
            )
            self.guard_states[i] = d.state
            self.guard_level[i] = d.state.level
            if d.changed:
                self.guard_actions += 1
                resolved = d.actions[0].resolve(self.limits)
                self.guard_ceil[i] = resolved.clock_ceiling_mhz or self.max_clock
                self.guard_lim[i] = resolved.power_limit_w or self.max_limit
                self.dirty = True

    # -- results --------------------------------------------------------------------------

    def _result(self) -> SimResult:
        h = self.horizon
        tbt_samples: dict[str, tuple[FloatArray, FloatArray]] = {}
        tokens: dict[str, float] = {}
        req_tier = self.inf_tier_code[self.req.server] if len(self.req) else np.empty(0, np.int8)
        first_in_horizon = self.first < self.cfg.duration_s
        for code, tier in enumerate(INFERENCE_TIERS):
            cols = self.inf_tier_code == code
            values = self.tbt[:, cols].ravel().astype(np.float64)
            weights = self.tok[:, cols].ravel().astype(np.float64)
            keep = weights > 0
            tbt_samples[tier] = (values[keep], weights[keep])
            decoded = float(self.tok[:h, cols].sum())
            tokens[tier] = decoded + float(np.count_nonzero(first_in_horizon & (req_tier == code)))
        return SimResult(
            config=self.cfg,
            plan=self.plan,
            raw_power_w=self.raw[:h],
            metered_power_w=self.metered[:h],
            stage=self.stage_rec[:h],
            brake_events=self.brake_events,
            time_above_budget_s=self.above_steps * self.dt,
            energy_j=float(self.raw[:h].astype(np.float64).sum() * self.dt),
            request_tier=req_tier,
            arrival_s=self.req.arrival_s,
            first_token_s=self.first,
            finish_s=self.finish,
            tbt_samples=MappingProxyType(tbt_samples),
            tokens_in_horizon=MappingProxyType(tokens),
            train_iterations=self.train_iterations,
            stage_changes=self.stage_changes,
            guard_actions=self.guard_actions,
        )


def _fifo_thresholds(server: npt.NDArray[np.int64], work_s: FloatArray) -> FloatArray:
    """Each request's server's cumulative prefill work up to and including it (FIFO order):
    the request has its first token once the server has done that much prefill work."""
    order = np.argsort(server, kind="stable")
    s_sorted, w_sorted = server[order], work_s[order]
    csum = np.cumsum(w_sorted)
    starts = np.concatenate([[True], s_sorted[1:] != s_sorted[:-1]])
    group_base = np.maximum.accumulate(np.where(starts, csum - w_sorted, 0.0))
    thr = np.empty_like(work_s)
    thr[order] = csum - group_base
    return thr
