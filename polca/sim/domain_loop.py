"""The step loop every engine shares: settings, training, meter and brake, controller, guard.

An engine (:mod:`polca.sim.engine`, request by request; :mod:`polca.sim.fluid_engine`, queues
of work per server) subclasses :class:`DomainLoop` and says how its inference servers take
arrivals and serve for one step (``_arrivals``, ``_serve``) and what it returns (``_result``).
Everything else, in the order of a step, is here and runs the same for both:

1. due actuations (stage actions, delayed by the policy's actuation delay) are applied, and the
   per-server speeds and phase powers refreshed from the tightest of stage, guard and brake
   (:mod:`polca.power.model`: clock ceilings, the board's limiter, start transients);
2. the engine's arrivals and serving; a training server alternates compute and communication
   (``_train_step``);
3. the meter (a mean over ``meter_window_s``) and the brake;
4. the controller (:func:`polca.control.controller.decide`) every control interval on the
   latest telemetry sample, and the per-node guard (:func:`polca.control.guard.decide_guard`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping

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
from polca.power.sensor import OVERSHOOT_RATIO, TRANSIENT_S
from polca.sim.domain import TIER_TRAIN, gpu_limits
from polca.sim.run_config import (
    BRAKE_CLOCK_PCT,
    INFERENCE_TIERS,
    PLAN_TIER,
    SimConfig,
    SimResult,
)

__all__ = ["DomainLoop"]

FloatArray = npt.NDArray[np.float64]


class DomainLoop:
    """State of one run but its inference servers' serving; methods are the stages of a step."""

    def __init__(self, config: SimConfig, plan: ControlPlan | None) -> None:
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

        self._init_settings()
        self._init_control(plan)
        self.n_steps = round((config.duration_s + config.drain_s) / self.dt)
        self.horizon = config.horizon_steps
        self._init_meter()

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
        # Start transients (polca.sim.engine's docstring, step 4). Steps no longer than the
        # transient: a phase starts in a step if it did not run in the last one, and draws its
        # start power for its whole time in the step. Longer steps (1 s): only TRANSIENT_S of
        # it does, and a phase starts unless it ran to the end of the last step.
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
        # Below this utilisation a controller at rest stays so (_at_rest); None: never skip.
        self._rest_below_pct: float | None = None
        if plan is not None and plan.predict_s == 0 and len(plan.stages) > 1:
            self._rest_below_pct = min(stage.trigger_pct for stage in plan.stages[1:])

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
        self.guarded_nodes = 0  # nodes whose guard level is above 0
        self.node_w = np.zeros(self.n)  # each node's power in the last step

    def _init_meter(self) -> None:
        self.raw = np.zeros(self.n_steps, dtype=np.float32)
        self.metered = np.zeros(self.n_steps, dtype=np.float32)
        self.stage_rec = np.zeros(self.n_steps, dtype=np.int8)
        self.meter_w = max(1, round(self.cfg.meter_window_s / self.dt))
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

    # -- what an engine provides ----------------------------------------------------------

    def _arrivals(self, k: int) -> None:
        """Requests arriving in step ``k`` join their servers' queues."""
        raise NotImplementedError

    def _serve(self, k: int, t: float) -> float:
        """Serve step ``k`` (starting at ``t``); returns the domain's power, setting
        ``node_w``."""
        raise NotImplementedError

    def _result(self) -> SimResult:
        raise NotImplementedError

    # -- the parts every engine shares ----------------------------------------------------

    def _domain_result(
        self,
        *,
        request_tier: npt.NDArray[np.int8],
        arrival_s: FloatArray,
        first_token_s: FloatArray,
        finish_s: FloatArray,
        tbt_samples: Mapping[str, tuple[FloatArray, FloatArray]],
        tokens_in_horizon: Mapping[str, float],
        tier_requests: Mapping[str, int] | None = None,
    ) -> SimResult:
        """The run's result: the domain's records and the engine's latencies and tokens."""
        h = self.horizon
        return SimResult(
            config=self.cfg,
            plan=self.plan,
            raw_power_w=self.raw[:h],
            metered_power_w=self.metered[:h],
            stage=self.stage_rec[:h],
            brake_events=self.brake_events,
            time_above_budget_s=self.above_steps * self.dt,
            energy_j=float(self.raw[:h].astype(np.float64).sum() * self.dt),
            request_tier=request_tier,
            arrival_s=arrival_s,
            first_token_s=first_token_s,
            finish_s=finish_s,
            tbt_samples=tbt_samples,
            tokens_in_horizon=tokens_in_horizon,
            train_iterations=self.train_iterations,
            stage_changes=self.stage_changes,
            guard_actions=self.guard_actions,
            tier_requests=tier_requests,
        )

    def _domain_w(self, inference_w: FloatArray) -> float:
        """The domain's power this step, given its inference servers'; advances training."""
        if self.train.size:
            node_w = np.empty(self.n)
            node_w[self.inf] = inference_w
            node_w[self.train] = self._train_step()
        else:  # every server serves: no scatter needed
            node_w = inference_w
        self.node_w = node_w
        return float(node_w.sum())

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
        power_w = float(self.metered[step])
        if self._at_rest(power_w, t - sample_t):
            return
        d = decide(
            self.plan,
            self.ctrl_state,
            now_s=t,
            domain_power_w=power_w,
            budget_w=self.budget_w,
            sample_age_s=t - sample_t,
        )
        self.ctrl_state = d.state
        if d.changed:
            self.ctrl_stage = d.stage
            self.stage_changes += 1
            self.seq += 1
            heapq.heappush(self.pending_actuations, (t + pol.actuation_delay_s, self.seq, d.stage))

    def _at_rest(self, power_w: float, sample_age_s: float) -> bool:
        """Whether ``decide`` would return the state it is given, unchanged, at stage 0: no
        forecast to track, no hold timer running, a fresh sample below the first trigger
        (triggers never decrease, so below every other). Then the call is skipped: it is most
        calls of a long run, and the result is the same."""
        plan, state = self.plan, self.ctrl_state
        assert plan is not None
        return (
            self._rest_below_pct is not None
            and state.stage == 0
            and state.below_release_since_s is None
            and power_w >= 0.0
            and 100.0 * power_w / self.budget_w < self._rest_below_pct  # as decide() computes it
            and sample_age_s <= plan.staleness_s
        )

    def _actuate(self, t: float) -> None:
        while self.pending_actuations and self.pending_actuations[0][0] <= t + 1e-9:
            _, _, stage = heapq.heappop(self.pending_actuations)
            self.stage_ceil, self.stage_lim = self.stage_settings[stage]
            self.dirty = True

    def _guard(self, t: float) -> None:
        assert self.guard_cfg is not None
        # The daemon's guard reads the instant power field: the last 100 ms, i.e. one step.
        node_w = self.node_w
        if not self.guarded_nodes and float(node_w.max()) <= self.guard_cfg.budget_w:
            return  # no node to look at: the common case, kept cheap for hall-scale runs
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
        self.guarded_nodes = int(np.count_nonzero(self.guard_level))

    # -- results --------------------------------------------------------------------------
