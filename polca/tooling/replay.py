"""Replay a recorded power history through the controller the operator runs. Pure.

Each step of the history (``step_s``, 15 s by default) the controller
(:func:`polca.control.controller.decide`) gets the domain power of that step, as the operator's
loop would; in a gap (a node without a fresh sample) it gets the last known power with its
age, so it goes to the failsafe stage once the age passes ``stalenessSeconds`` — a gap is never
zero power.

**Throttling feeds back** (a closed loop), estimated: the stage decided at one step is in force
from the next (the operator acts within seconds; a step is the finest the history shows), and
it lowers each limited tier's GPU power by the GPU power model (:mod:`polca.power.model`): a
clock ceiling keeps the share of active power (above idle) that decoding keeps at that clock —
decoding sheds the least per MHz, so the estimate is conservative — and a power limit caps
each GPU at it, applied to the tier's mean GPU (it cannot clip peaks of single GPUs, also
conservative). ``shed=False`` replays open loop: the history as recorded.

**Brake-level moments** use the 1 s meter: each sample of ``polca_gpu_power_watts`` is NVML's
~1 s moving average of board power (measured on an H200, see DESIGN.md), and a brake-level
moment is a step whose domain power (after the estimated throttling) exceeds the budget, where
a PDU breaker or the hardware brake of the simulator acts. A step of S seconds shows one of
every S meter readings: a shorter excursion between samples is not seen, so the margin to the
budget is reported with every answer.

**An oversubscribed row** of N + k servers is the history scaled by (N + k) / N, GPU counts too:
every added server behaves like the row's average server at every instant. Peaks of real added
servers partly cancel, so this overstates peaks (conservative); a row whose new servers run
different work than its old ones is outside what its own history can tell. The other end of
the uncertainty, :func:`with_independent_servers`, adds recorded nodes shifted in time instead:
added servers as busy as the old ones on average but not in step with them (optimistic).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from polca.control.controller import ControllerState, decide
from polca.control.plan import ControlPlan
from polca.power.model import Phase, ceiling_clock_mhz, phase_power_w
from polca.power.profiles import GpuProfile
from polca.sim.domain import gpu_limits
from polca.tooling.history import History

__all__ = ["ReplayResult", "ShedModel", "TierUse", "replay", "with_independent_servers"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ShedModel:
    """Per stage and tier: (share of active GPU power kept, per-GPU cap in W or inf)."""

    idle_w: float
    kept: Mapping[int, Mapping[str, tuple[float, float]]]

    @classmethod
    def for_plan(cls, plan: ControlPlan, profile: GpuProfile) -> ShedModel:
        limits = gpu_limits(profile)
        full_w = float(phase_power_w(profile, Phase.DECODE, profile.max_sm_clock_mhz))
        kept: dict[int, dict[str, tuple[float, float]]] = {}
        for index, stage in enumerate(plan.stages):
            per_tier: dict[str, tuple[float, float]] = {}
            for tier, action in stage.actions.items():
                resolved = action.resolve(limits)
                share = 1.0
                if resolved.clock_ceiling_mhz is not None:
                    clock = float(ceiling_clock_mhz(profile, resolved.clock_ceiling_mhz))
                    at_clock = float(phase_power_w(profile, Phase.DECODE, clock))
                    share = (at_clock - profile.idle_w) / (full_w - profile.idle_w)
                cap = resolved.power_limit_w if resolved.power_limit_w is not None else math.inf
                per_tier[tier] = (min(1.0, max(0.0, share)), cap)
            kept[index] = per_tier
        return cls(idle_w=profile.idle_w, kept=kept)

    def shed_w(self, stage: int, tier: str, power_w: float, gpus: float) -> float:
        """Watts a tier's `gpus` GPUs drawing `power_w` in all would shed in `stage`."""
        action = self.kept.get(stage, {}).get(tier)
        if action is None or gpus <= 0:
            return 0.0
        share, cap_w = action
        mean_w = power_w / gpus
        active_w = max(0.0, mean_w - self.idle_w)
        throttled_w = min(self.idle_w + active_w * share, cap_w, mean_w)
        return (mean_w - throttled_w) * gpus


@dataclass(frozen=True, slots=True)
class TierUse:
    gpu_hours: float
    throttled_gpu_hours: float

    @property
    def throttled_share(self) -> float:
        return self.throttled_gpu_hours / self.gpu_hours if self.gpu_hours > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "gpu_hours": self.gpu_hours,
            "throttled_gpu_hours": self.throttled_gpu_hours,
            "throttled_share": self.throttled_share,
        }


@dataclass(frozen=True, slots=True)
class ReplayResult:
    plan: ControlPlan
    budget_w: float
    scale: float
    step_s: float
    times_s: FloatArray
    power_w: FloatArray  # after the estimated throttling; NaN in gaps
    stage: npt.NDArray[np.int16]
    gap_steps: int
    tiers: Mapping[str, TierUse] = field(default_factory=dict)

    @property
    def over_budget(self) -> npt.NDArray[np.bool_]:
        return np.asarray(np.nan_to_num(self.power_w, nan=0.0) > self.budget_w)

    @property
    def brake_moments(self) -> int:
        """Steps whose 1 s-meter domain power exceeds the budget."""
        return int(self.over_budget.sum())

    @property
    def brake_episodes(self) -> int:
        """Runs of consecutive brake-level steps (each would be one brake event)."""
        over = self.over_budget.astype(np.int8)
        return int(np.count_nonzero(np.diff(np.concatenate([[0], over])) == 1))

    @property
    def peak_pct(self) -> float:
        if np.all(np.isnan(self.power_w)):
            return math.nan
        return 100.0 * float(np.nanmax(self.power_w)) / self.budget_w

    def stage_seconds(self) -> dict[str, float]:
        counts = np.bincount(self.stage, minlength=len(self.plan.stages))
        return {
            s.name: float(c) * self.step_s for s, c in zip(self.plan.stages, counts, strict=True)
        }

    @property
    def stage_changes(self) -> int:
        return int(np.count_nonzero(np.diff(self.stage)))

    def summary(self) -> dict[str, object]:
        return {
            "scale": self.scale,
            "steps": int(self.stage.size),
            "gap_steps": self.gap_steps,
            "peak_pct": self.peak_pct,
            "margin_pct": 100.0 - self.peak_pct,
            "brake_moments": self.brake_moments,
            "brake_episodes": self.brake_episodes,
            "stage_changes": self.stage_changes,
            "stage_seconds": self.stage_seconds(),
            "tiers": {name: use.as_dict() for name, use in self.tiers.items()},
        }


def replay(
    plan: ControlPlan,
    budget_w: float,
    history: History,
    *,
    scale: float = 1.0,
    shed: ShedModel | None = None,
) -> ReplayResult:
    """Replay `history` (scaled by `scale`) through the controller; see the module docstring."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    raw_w = history.domain_power_w * scale
    times_s = history.times_s
    steps = history.steps
    tiers = {
        t: (history.tier_power_w[t] * scale, history.tier_gpus[t] * scale)
        for t in history.tier_power_w
        if t in history.tier_gpus
    }
    power_w = np.full(steps, np.nan)
    stage = np.zeros(steps, dtype=np.int16)
    throttled_gpu_s = dict.fromkeys(tiers, 0.0)
    state = ControllerState()
    in_force = 0
    last_w: float | None = None
    last_s: float | None = None
    for i in range(steps):
        now_s = float(times_s[i])
        measured = float(raw_w[i])
        if not math.isnan(measured):
            for tier, (tier_w, gpus) in tiers.items():
                action = plan.stages[in_force].actions.get(tier)
                if action is None or action.is_noop:
                    continue
                throttled_gpu_s[tier] += float(gpus[i]) * history.step_s
                if shed is not None:
                    measured -= shed.shed_w(in_force, tier, float(tier_w[i]), float(gpus[i]))
            power_w[i] = measured
            last_w, last_s = measured, now_s
        age_s = None if last_s is None else now_s - last_s
        decision = decide(
            plan, state, now_s=now_s, domain_power_w=last_w, budget_w=budget_w, sample_age_s=age_s
        )
        state = decision.state
        stage[i] = in_force = decision.stage
    tier_use = {
        tier: TierUse(
            gpu_hours=float(np.nansum(gpus)) * history.step_s / 3600.0,
            throttled_gpu_hours=throttled_gpu_s[tier] / 3600.0,
        )
        for tier, (_w, gpus) in tiers.items()
    }
    return ReplayResult(
        plan=plan,
        budget_w=budget_w,
        scale=scale,
        step_s=history.step_s,
        times_s=times_s,
        power_w=power_w,
        stage=stage,
        gap_steps=int(history.gap_mask.sum()),
        tiers=tier_use,
    )


def with_independent_servers(
    history: History, extra: int, *, max_shift_s: float = 1800.0, seed: int = 0
) -> History:
    """`history` with `extra` more nodes, each a recorded node (chosen at random) shifted by a
    random 1 step … `max_shift_s`: as busy as the row's nodes, but not in step with them. Tier
    power and GPU counts scale by (N + extra) / N, as the tiers of the copies are not recorded
    per node."""
    if extra <= 0:
        return history
    rng = np.random.default_rng(seed)
    base = len(history.nodes)
    max_shift = max(1, round(max_shift_s / history.step_s))
    sources = rng.integers(0, base, size=extra)
    shifts = rng.integers(1, max_shift + 1, size=extra) * rng.choice([-1, 1], size=extra)
    added = [
        np.roll(history.node_power_w[:, s], int(k)) for s, k in zip(sources, shifts, strict=True)
    ]
    scale = (base + extra) / base
    return History(
        start_s=history.start_s,
        step_s=history.step_s,
        nodes=(*history.nodes, *(f"added-{i}" for i in range(extra))),
        node_power_w=np.column_stack([history.node_power_w, *added]),
        overhead_w=history.overhead_w,
        tier_power_w={t: w * scale for t, w in history.tier_power_w.items()},
        tier_gpus={t: g * scale for t, g in history.tier_gpus.items()},
    )
