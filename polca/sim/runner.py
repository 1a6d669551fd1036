"""Run scenarios: calibrate the load, build requests, run the baseline and each policy.

The **baseline** of a domain is the same requests on the same servers with no caps and no
brake: every impact and relative throughput is measured against it.

The **load** is calibrated so the un-oversubscribed row's metered peak reaches
``target_peak_pct`` of its budget (79% by default: production inference rows peak at about 79%
of provisioned power, per POLCA). Oversubscribed rows keep the per-server load, so their power
grows with the number of servers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from polca.control.plan import ControlPlan
from polca.sim.domain import TIER_TRAIN, DomainConfig
from polca.sim.engine import SimConfig, SimResult, simulate
from polca.sim.fluid_engine import FluidWorkload, simulate_fluid
from polca.sim.metrics import Criteria, Metrics, summarize
from polca.sim.policies import PolicyConfig, derive_top_trigger, make_policy, plan_with_top_trigger
from polca.sim.trace import Trace
from polca.sim.workload import Requests, build_requests

_CALIBRATION_RUNS = 12
_CALIBRATION_TOLERANCE_PCT = 0.25

__all__ = [
    "ENGINES",
    "LevelResult",
    "PolicyRun",
    "Progress",
    "Scenario",
    "calibrate_load",
    "run_engines",
    "run_level",
]

# The request-level engine (polca.sim.engine) and the fluid one (polca.sim.fluid_engine).
ENGINES = ("request", "fluid")

Progress = Callable[[str, float], None]


def _no_progress(_label: str, _fraction: float) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Scenario:
    trace: Trace
    domain: DomainConfig  # its oversubscription is ignored; levels set it
    duration_s: float = 3600.0
    dt_s: float = 0.1
    seed: int = 0
    load_scale: float | None = None  # trace-rate multiple for the base row; None: calibrate
    target_peak_pct: float = 79.0
    meter_window_s: float = 1.0
    brake_hold_s: float = 10.0
    criteria: Criteria = field(default_factory=Criteria)
    engine: str = "request"  # ENGINES

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; valid engines: {', '.join(ENGINES)}")

    def sim_config(
        self, domain: DomainConfig, policy: PolicyConfig, *, brake: bool = True
    ) -> SimConfig:
        return SimConfig(
            domain=domain,
            policy=policy,
            duration_s=self.duration_s,
            dt_s=self.dt_s,
            meter_window_s=self.meter_window_s,
            brake_enabled=brake,
            brake_hold_s=self.brake_hold_s,
        )


@dataclass(frozen=True, slots=True)
class PolicyRun:
    result: SimResult
    metrics: Metrics


@dataclass(frozen=True, slots=True)
class LevelResult:
    domain: DomainConfig
    load_scale: float
    baseline: SimResult
    runs: dict[str, PolicyRun]


def requests_for(scenario: Scenario, domain: DomainConfig, load_scale: float) -> Requests:
    inference = sum(1 for t in domain.tiers if t != TIER_TRAIN)
    if inference == 0:  # a training-only row serves no requests
        return Requests(
            arrival_s=np.empty(0),
            context_tokens=np.empty(0, dtype=np.int64),
            generated_tokens=np.empty(0, dtype=np.int64),
            server=np.empty(0, dtype=np.int64),
        )
    rate = load_scale * inference / _base_inference(domain)
    # One stream per row size, reproducible from the seed.
    rng = np.random.default_rng([scenario.seed, domain.servers])
    return build_requests(
        scenario.trace,
        rate_factor=rate,
        inference_servers=inference,
        duration_s=scenario.duration_s,
        rng=rng,
    )


def fluid_workload_for(
    scenario: Scenario, domain: DomainConfig, load_scale: float
) -> FluidWorkload:
    """What the fluid engine serves for the requests :func:`requests_for` would build: the
    same rate over the inference servers, drawn from the same seed."""
    inference = sum(1 for t in domain.tiers if t != TIER_TRAIN)
    # A training-only row draws nothing; the rate is then never used.
    rate = load_scale * max(inference, 1) / _base_inference(domain)
    return FluidWorkload(scenario.trace, rate, seed=(scenario.seed, domain.servers))


def run_engine(
    scenario: Scenario,
    domain: DomainConfig,
    config: SimConfig,
    load_scale: float,
    *,
    plan: ControlPlan | None = None,
    progress: Callable[[float], None] | None = None,
) -> SimResult:
    """One run of ``config`` with the scenario's engine on its workload."""
    if scenario.engine == "fluid":
        workload = fluid_workload_for(scenario, domain, load_scale)
        return simulate_fluid(config, workload, plan=plan, progress=progress)
    requests = requests_for(scenario, domain, load_scale)
    return simulate(config, requests, plan=plan, progress=progress)


def _base_inference(domain: DomainConfig) -> int:
    base = replace(domain, oversubscription=0.0)
    return max(1, sum(1 for t in base.tiers if t != TIER_TRAIN))


def baseline_run(
    scenario: Scenario, domain: DomainConfig, load_scale: float, progress: Progress = _no_progress
) -> SimResult:
    config = scenario.sim_config(domain, make_policy("none"), brake=False)
    return run_engine(
        scenario,
        domain,
        config,
        load_scale,
        progress=lambda f: progress(f"baseline, {domain.servers} servers", f),
    )


def calibrate_load(scenario: Scenario, progress: Progress = _no_progress) -> float:
    """Load scale at which the base row's uncapped metered peak is ``target_peak_pct``.

    Peak power rises monotonically (and nearly linearly) with load, so a safeguarded regula falsi
    converges in a handful of runs; it stops within 0.25 points of the target.
    """
    if scenario.load_scale is not None:
        return scenario.load_scale
    domain = replace(scenario.domain, oversubscription=0.0)

    def peak(scale: float) -> float:
        result = baseline_run(scenario, domain, scale, progress)
        return (
            100.0 * float(result.metered_power_w.max()) / domain.budget_w - scenario.target_peak_pct
        )

    below: tuple[float, float] | None = None  # (scale, error) closest from below
    above: tuple[float, float] | None = None
    closest = (0.0, float("inf"))  # (scale, |error|)
    scale = 4.0
    for _ in range(_CALIBRATION_RUNS):
        error = peak(scale)
        if abs(error) < _CALIBRATION_TOLERANCE_PCT:
            return scale
        if abs(error) < closest[1]:
            closest = (scale, abs(error))
        if error < 0 and (below is None or scale > below[0]):
            below = (scale, error)
        if error > 0 and (above is None or scale < above[0]):
            above = (scale, error)
        if below is not None and above is not None:
            # Regula falsi, kept away from the ends so it cannot stall on one side.
            width = above[0] - below[0]
            guess = below[0] - below[1] * width / (above[1] - below[1])
            scale = min(max(guess, below[0] + 0.1 * width), above[0] - 0.1 * width)
        elif below is not None:
            scale = below[0] * 2.0
        else:
            assert above is not None
            scale = above[0] / 2.0
    # Out of runs (the peak of a small row is noisy in the load): the closest one seen.
    return closest[0]


def run_level(
    scenario: Scenario,
    oversubscription: float,
    policies: Sequence[PolicyConfig],
    *,
    load_scale: float,
    baseline: SimResult | None = None,
    progress: Progress = _no_progress,
) -> LevelResult:
    """Baseline plus every policy at one oversubscription level."""
    domain = replace(scenario.domain, oversubscription=oversubscription)
    if baseline is None:
        baseline = baseline_run(scenario, domain, load_scale, progress)
    runs = {
        p.name: run_policy(
            scenario, domain, p, load_scale=load_scale, baseline=baseline, progress=progress
        )
        for p in policies
    }
    return LevelResult(domain=domain, load_scale=load_scale, baseline=baseline, runs=runs)


def run_policy(
    scenario: Scenario,
    domain: DomainConfig,
    policy: PolicyConfig,
    *,
    load_scale: float,
    baseline: SimResult,
    progress: Progress = _no_progress,
) -> PolicyRun:
    config = scenario.sim_config(domain, policy)
    plan = policy.plan
    top: float | None = None
    if plan is not None and policy.derive_triggers:
        top = derive_top_trigger(
            baseline.metered_power_w.astype(np.float64),
            domain.budget_w,
            reaction_s=policy.reaction_s,
            dt_s=scenario.dt_s,
            margin_pct=policy.trigger_margin_pct,
            max_pct=policy.max_top_trigger_pct,
        )
        plan = plan_with_top_trigger(plan, top)
    if plan is None and baseline.brake_events == 0 and baseline.time_above_budget_s == 0:
        # No controller and never above the budget: the brake never fires, so the run *is* the
        # baseline (same requests, same servers). Saves a run in searches.
        result = replace(baseline, config=config)
    else:
        result = run_engine(
            scenario,
            domain,
            config,
            load_scale,
            plan=plan,
            progress=lambda f: progress(f"{policy.name}, {domain.servers} servers", f),
        )
    metrics = summarize(result, baseline, criteria=scenario.criteria, top_trigger_pct=top)
    return PolicyRun(result=result, metrics=metrics)


def run_engines(
    scenario: Scenario, policies: Sequence[PolicyConfig], *, load_scale: float
) -> dict[str, dict[str, Metrics]]:
    """Each policy on the scenario's domain (its oversubscription as given) with every engine,
    each against its own uncapped baseline: ``[policy name][engine]``."""
    domain = scenario.domain
    out: dict[str, dict[str, Metrics]] = {p.name: {} for p in policies}
    for engine in ENGINES:
        engine_scenario = replace(scenario, engine=engine, load_scale=load_scale)
        baseline = baseline_run(engine_scenario, domain, load_scale)
        for policy in policies:
            run = run_policy(
                engine_scenario, domain, policy, load_scale=load_scale, baseline=baseline
            )
            out[policy.name][engine] = run.metrics
    return out
