"""Policies the simulator compares: ``none``, ``polca`` (the paper), ``polca-k8s`` (ours) and
``physics`` (ours, designed from the measured-GPU power model).

All three run the hardware brake (every GPU near halt while the metered domain power is above
the budget). ``polca`` and ``polca-k8s`` run :func:`polca.control.controller.decide`, the code
the operator runs; they differ in their plans, delays, thresholds and the local guard:

* ``polca``: POLCA's table, :data:`polca.control.plan.POLCA_PLAN` (80/89/89% triggers, A100
  clocks as percentages of each GPU's max, resolved per GPU profile),
  out-of-band actuation of ``actuation_delay_s`` = 40 s (the paper's BMC path takes up to
  40 s; we take the worst case), settle time equal to that delay, so stage 3 only follows once
  stage 2 has taken effect.
* ``polca-k8s``: :data:`K8S_PLAN` (finer and deeper low-tier steps, power caps first, POLCA's
  stage 3 last); in-band reaction = telemetry period + telemetry latency + control interval +
  actuation (0.2 s: the status write, the daemons' watch and the NVML call), by default the
  operator's default path, the daemons' power streams (:data:`STREAM_TIMING`, 0.8 s), or the
  chain through Prometheus (:data:`PROMETHEUS_TIMING`, 2.3 s); settle time = that reaction.
  Its triggers are derived from the reaction time (:func:`derive_top_trigger`): the highest
  throttling stages fire when power is within the largest rise seen over one reaction time
  (plus a margin) of the budget. A per-node local guard (:mod:`polca.control.guard`)
  runs every 0.5 s.
* ``physics``: ``polca-k8s``'s in-band timing and guard with :data:`PHYSICS_PLAN`, whose
  stages pick each tier's knob by what the model says it sheds (see there), triggers close to
  the budget as written (not derived from a trace), and the controller's prediction over the
  sensor's averaging window (``ControlPlan.predict_s``) in place of trigger derivation; a short
  hold, since in-band actuation undoes a stage within seconds. ``examples/physics.yaml`` is
  the same plan as a PowerPolicy (a test checks they agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from polca.control.plan import (
    POLCA_PLAN,
    ControlPlan,
    Stage,
    TierAction,
    a100_clock_percent,
    shift_triggers,
)
from polca.power.sensor import AVERAGE_WINDOW_S

__all__ = [
    "DEFAULT_POLICIES",
    "IN_BAND_TIMINGS",
    "K8S_PLAN",
    "NAMED_PLANS",
    "PHYSICS_PLAN",
    "POLCA_TABLE",
    "POLICY_NAMES",
    "PROMETHEUS_TIMING",
    "STREAM_TIMING",
    "ControlTiming",
    "GuardSettings",
    "PolicyConfig",
    "derive_top_trigger",
    "make_policy",
]

DEFAULT_POLICIES = ("none", "polca", "polca-k8s")  # what `polca simulate` runs unless told
POLICY_NAMES = (*DEFAULT_POLICIES, "physics")
_MIN_TOP_TRIGGER_PCT = 50.0  # below this a workload is too spiky for the policy to matter


def _low(action: TierAction) -> dict[str, TierAction]:
    return {"idle": action, "low": action}


_BRAKE = POLCA_PLAN.stages[-1].action_for("high")  # POLCA's brake, as a share of max clock
_DEEP_LOW = TierAction(clock_ceiling_pct=45.0)

# polca-k8s's default plan: shed power from the low tier in finer and deeper steps before the
# high tier is touched, which fast in-band actuation makes affordable (each step is undone
# within seconds once power falls). Power caps first: they clip exactly the prefill peaks and
# leave decoding alone. The last throttling stage is POLCA's stage 3 (1305 of 1410 MHz on the
# high tier). Triggers are POLCA's before derivation shifts them to the reaction time.
K8S_PLAN = ControlPlan(
    stages=(
        Stage("normal", 0.0, 0.0),
        Stage("low-cap-60", 80.0, 75.0, _low(TierAction(power_limit_pct=60.0))),
        Stage(
            "low-79",
            85.0,
            80.0,
            _low(TierAction(clock_ceiling_pct=a100_clock_percent(1110), power_limit_pct=60.0)),
        ),
        Stage("low-60", 89.0, 84.0, _low(TierAction(clock_ceiling_pct=60.0))),
        Stage("low-45", 89.0, 84.0, _low(_DEEP_LOW)),
        Stage(
            "high-93",
            89.0,
            84.0,
            {**_low(_DEEP_LOW), "high": TierAction(clock_ceiling_pct=a100_clock_percent(1305))},
        ),
        Stage("brake", 100.0, 89.0, {"idle": _BRAKE, "low": _BRAKE, "high": _BRAKE}),
    ),
    tiers=("idle", "low", "high"),
    failsafe_stage=3,
    settle_s=5.0,
    hold_s=30.0,
    staleness_s=10.0,
)


@dataclass(frozen=True, slots=True)
class ControlTiming:
    """How a controller sees power and acts; for the in-band policies the one source of their
    reaction time (their settle time, trigger derivation and ``physics``'s plan)."""

    telemetry_period_s: float
    telemetry_latency_s: float
    control_interval_s: float
    actuation_s: float

    @property
    def reaction_s(self) -> float:
        """Worst-case time from a power change to GPUs carrying the reaction."""
        return (
            self.telemetry_period_s
            + self.telemetry_latency_s
            + self.control_interval_s
            + self.actuation_s
        )


# The operator's default: the daemons stream 0.5 s power samples and the operator runs a cycle
# at each trigger crossing. The stream delivers within milliseconds, below one 100 ms step, so
# no latency: the 0.1 s control interval stands for the delivery and the cycle itself (a
# latency of 0.02 s would make a sample miss the tick it arrives at and cost a whole step).
# Reaction 0.8 s against bench-operator's measured 0.66-0.73 s p95 (README, "Benchmarks").
STREAM_TIMING = ControlTiming(
    telemetry_period_s=0.5, telemetry_latency_s=0.0, control_interval_s=0.1, actuation_s=0.2
)
# The chain through Prometheus (telemetry.source: prometheus): 1 s scrape, 0.1 s query, 1 s
# control interval; 2.3 s against the measured 2.39 s p95.
PROMETHEUS_TIMING = ControlTiming(
    telemetry_period_s=1.0, telemetry_latency_s=0.1, control_interval_s=1.0, actuation_s=0.2
)
IN_BAND_TIMINGS: Mapping[str, ControlTiming] = MappingProxyType(
    {"stream": STREAM_TIMING, "prometheus": PROMETHEUS_TIMING}
)

# ``physics``'s plan, from the model of polca/power/model.py (docs/simulator.md §3 has the
# numbers). A power limit sheds only compute-bound work (prefill, GEMM) and leaves memory-bound
# decode, drawing less than the limit, at full clock: 65% of the default limit stays above
# decode on every profile (A100 250 of 400 W is the highest share). A clock ceiling sheds
# decode power at a small loss of decode speed (at 70% of the max clock ~26% less decode power
# for ~4% less speed on the H100) and sheds nothing from prefill the limiter already holds
# lower. So: the low tier's power limit first (its prefill bursts are what push the 1 s meter
# over the budget), then the low tier's clock (decode, the steady load), then the high tier's
# power limit (its prefill only: its decode, most of its end-to-end latency, keeps full speed),
# then a deeper low-tier clock, then the brake. Triggers sit just below the budget, where only
# a real excursion reaches them, and the controller escalates on the power predicted one
# averaging window (1 s) ahead: the 1 s average lags the instant power by up to a window, and
# its last rise projected over that window estimates where the instant power already is. The
# window is longer than the default reaction (STREAM_TIMING, 0.8 s), so the prediction also
# covers the time the reaction takes to land.
_PHYS_LOW_CAP = TierAction(power_limit_pct=65.0)
_PHYS_LOW_CLOCK = TierAction(clock_ceiling_pct=70.0)
_PHYS_HIGH_CAP = TierAction(power_limit_pct=85.0)
PHYSICS_PLAN = ControlPlan(
    stages=(
        Stage("normal", 0.0, 0.0),
        Stage("low-cap", 97.0, 93.0, _low(_PHYS_LOW_CAP)),
        Stage("low-clock", 98.0, 94.0, _low(_PHYS_LOW_CLOCK)),
        Stage("high-cap", 99.0, 95.0, {**_low(_PHYS_LOW_CLOCK), "high": _PHYS_HIGH_CAP}),
        Stage("low-deep", 99.0, 95.0, {**_low(_DEEP_LOW), "high": _PHYS_HIGH_CAP}),
        Stage("brake", 100.0, 89.0, {"idle": _BRAKE, "low": _BRAKE, "high": _BRAKE}),
    ),
    tiers=("idle", "low", "high"),
    failsafe_stage=3,
    settle_s=round(STREAM_TIMING.reaction_s, 6),
    hold_s=5.0,
    staleness_s=10.0,
    predict_s=AVERAGE_WINDOW_S,
)

POLCA_TABLE = POLCA_PLAN  # one source of truth with the operator's default policy
NAMED_PLANS: Mapping[str, ControlPlan] = MappingProxyType(
    {"polca-table": POLCA_TABLE, "k8s": K8S_PLAN, "physics": PHYSICS_PLAN}
)


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """The local guard of each node: budget relative to the node's share of the domain budget."""

    budget_share: float = 1.5  # guard budget = share × domain budget / servers
    interval_s: float = 0.5
    release_pct: float = 90.0
    hold_s: float = 5.0
    throttle_pct: float = 70.0  # clock ceiling of each tier's guard step, % of max clock
    last_pct: float = 30.0  # the local brake step


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    name: str
    plan: ControlPlan | None  # None: no controller, only the brake
    telemetry_period_s: float = 1.0
    telemetry_latency_s: float = 0.0
    control_interval_s: float = 1.0
    actuation_delay_s: float = 0.0
    guard: GuardSettings | None = None
    derive_triggers: bool = False
    trigger_margin_pct: float = 1.0
    max_top_trigger_pct: float = 97.0

    def __post_init__(self) -> None:
        for name in (
            "telemetry_period_s",
            "telemetry_latency_s",
            "control_interval_s",
            "actuation_delay_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.control_interval_s <= 0 or self.telemetry_period_s <= 0:
            raise ValueError("control_interval_s and telemetry_period_s must be positive")

    @property
    def timing(self) -> ControlTiming:
        return ControlTiming(
            self.telemetry_period_s,
            self.telemetry_latency_s,
            self.control_interval_s,
            self.actuation_delay_s,
        )

    @property
    def reaction_s(self) -> float:
        """Worst-case time from a power change to GPUs carrying the reaction."""
        return self.timing.reaction_s


def make_policy(
    name: str,
    *,
    polca_delay_s: float = 40.0,
    in_band: ControlTiming = STREAM_TIMING,
    k8s_actuation_s: float | None = None,
    telemetry_period_s: float | None = None,
    control_interval_s: float | None = None,
    plan: ControlPlan | None = None,
    guard: GuardSettings | None = None,
    use_guard: bool = True,
    derive_triggers: bool = True,
) -> PolicyConfig:
    """A named policy with its defaults; ``plan`` replaces its stage table (POLCA's for
    ``polca``, :data:`K8S_PLAN` for ``polca-k8s``, :data:`PHYSICS_PLAN` for ``physics``).

    ``polca`` samples and decides every 1 s (the paper's); the in-band policies run
    ``in_band``'s timing. ``telemetry_period_s``, ``control_interval_s`` and
    ``k8s_actuation_s`` (in-band only) override either when given."""
    if name == "none":
        return PolicyConfig(name="none", plan=None)
    if name == "polca":
        polca_plan = plan or POLCA_TABLE
        return PolicyConfig(
            name="polca",
            plan=replace(polca_plan, settle_s=polca_delay_s),
            telemetry_period_s=1.0 if telemetry_period_s is None else telemetry_period_s,
            control_interval_s=1.0 if control_interval_s is None else control_interval_s,
            actuation_delay_s=polca_delay_s,
        )
    if name in ("polca-k8s", "physics"):
        timing = replace(
            in_band,
            telemetry_period_s=_given(telemetry_period_s, in_band.telemetry_period_s),
            control_interval_s=_given(control_interval_s, in_band.control_interval_s),
            actuation_s=_given(k8s_actuation_s, in_band.actuation_s),
        )
        physics = name == "physics"
        chosen = plan or (PHYSICS_PLAN if physics else K8S_PLAN)
        return PolicyConfig(
            name=name,
            plan=replace(chosen, settle_s=timing.reaction_s),
            telemetry_period_s=timing.telemetry_period_s,
            telemetry_latency_s=timing.telemetry_latency_s,
            control_interval_s=timing.control_interval_s,
            actuation_delay_s=timing.actuation_s,
            guard=(guard or GuardSettings()) if use_guard else None,
            # physics's triggers are written from the model, not derived from a trace.
            derive_triggers=derive_triggers and not physics,
        )
    raise ValueError(f"unknown policy {name!r}; valid policies: {', '.join(POLICY_NAMES)}")


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


def derive_top_trigger(
    metered_w: npt.NDArray[np.float64],
    budget_w: float,
    *,
    reaction_s: float,
    dt_s: float,
    margin_pct: float,
    max_pct: float,
    warmup_s: float = 120.0,
) -> float:
    """Highest trigger (% of budget) that still leaves room for the largest rise of power seen
    within one reaction time: ``100 - max_rise(reaction) - margin``, capped at ``max_pct``."""
    window = max(1, round(reaction_s / dt_s))
    # The run starts with an empty row; its ramp-up is not a spike the policy must absorb.
    metered_w = metered_w[round(warmup_s / dt_s) :]
    if metered_w.size <= window:
        return max_pct
    lows = sliding_window_view(metered_w, window + 1).min(axis=1)
    rise_w = float(np.max(metered_w[window:] - lows))
    derived = 100.0 - 100.0 * rise_w / budget_w - margin_pct
    return min(max_pct, max(_MIN_TOP_TRIGGER_PCT, derived))


def plan_with_top_trigger(plan: ControlPlan, top_pct: float) -> ControlPlan:
    """``plan`` with its throttling stages shifted so the highest triggers at ``top_pct``."""
    return shift_triggers(plan, top_pct)
