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

from collections.abc import Callable
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from polca.control.plan import ControlPlan
from polca.power.sensor import TRANSIENT_S
from polca.sim.domain_loop import DomainLoop
from polca.sim.request_set import RequestSet
from polca.sim.run_config import (
    BRAKE_CLOCK_PCT,
    INFERENCE_TIERS,
    MAX_STEPS,
    PLAN_TIER,
    SimConfig,
    SimResult,
    check_steps,
)
from polca.sim.workload import Requests

__all__ = [
    "BRAKE_CLOCK_PCT",
    "INFERENCE_TIERS",
    "MAX_STEPS",
    "PLAN_TIER",
    "SimConfig",
    "SimResult",
    "check_steps",
    "simulate",
]

FloatArray = npt.NDArray[np.float64]


def simulate(
    config: SimConfig,
    requests: Requests,
    *,
    plan: ControlPlan | None = None,
    progress: Callable[[float], None] | None = None,
) -> SimResult:
    """Run one simulation; ``plan`` overrides ``config.policy.plan`` (e.g. derived triggers)."""
    return _Run(config, requests, plan if plan is not None else config.policy.plan).run(progress)


class _Run(DomainLoop):
    """A run that follows every request: its prefill in its server's FIFO queue, its place in
    a decode batch, its first-token and finish times."""

    def __init__(self, config: SimConfig, requests: Requests, plan: ControlPlan | None) -> None:
        super().__init__(config, plan)
        self._init_requests(requests)
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
        return self._domain_w(self.gpus * gpu_w + self.overhead_w)

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
        return self._domain_result(
            request_tier=req_tier,
            arrival_s=self.req.arrival_s,
            first_token_s=self.first,
            finish_s=self.finish,
            tbt_samples=MappingProxyType(tbt_samples),
            tokens_in_horizon=MappingProxyType(tokens),
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
