"""The step loop both engines share: skipping the controller at rest changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from polca.power.profiles import get_profile
from polca.sim.domain import DomainConfig
from polca.sim.domain_loop import DomainLoop
from polca.sim.engine import SimConfig, SimResult, simulate
from polca.sim.evalset import load_eval_trace, synthetic_members
from polca.sim.fluid_engine import FluidWorkload, simulate_fluid
from polca.sim.policies import make_policy, plan_with_top_trigger
from polca.sim.workload import build_requests

TRACE = load_eval_trace(next(m for m in synthetic_members() if m.name == "bursty"), 600.0, 2)


def run(engine: str, policy: str) -> SimResult:
    domain = DomainConfig(get_profile("H100-SXM"), base_servers=20, oversubscription=0.3)
    pol = make_policy(policy)
    assert pol.plan is not None
    plan = plan_with_top_trigger(pol.plan, 88.0) if pol.derive_triggers else pol.plan
    config = SimConfig(domain, pol, duration_s=600.0, dt_s=1.0)
    if engine == "fluid":
        return simulate_fluid(config, FluidWorkload(TRACE, 9.0, seed=4), plan=plan)
    requests = build_requests(
        TRACE, rate_factor=9.0, inference_servers=26, duration_s=600.0, rng=np.random.default_rng(4)
    )
    return simulate(config, requests, plan=plan)


@pytest.mark.parametrize("engine", ["request", "fluid"])
@pytest.mark.parametrize("policy", ["polca", "polca-k8s"])
def test_skipping_the_controller_at_rest_changes_nothing(
    engine: str, policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    at_rest = DomainLoop._at_rest
    skipped = []

    def counting(self: DomainLoop, power_w: float, sample_age_s: float) -> bool:
        skip = at_rest(self, power_w, sample_age_s)
        skipped.append(skip)
        return skip

    monkeypatch.setattr(DomainLoop, "_at_rest", counting)
    skipping = run(engine, policy)
    assert 0 < sum(skipped) < len(skipped)  # some calls skipped, not all
    monkeypatch.setattr(DomainLoop, "_at_rest", lambda *_args: False)
    calling = run(engine, policy)
    assert calling.stage_changes > 0  # the controller left rest and came back
    assert int(np.count_nonzero(calling.stage == 0)) > 0
    for name in ("raw_power_w", "metered_power_w", "stage"):
        assert np.array_equal(getattr(skipping, name), getattr(calling, name)), name
    assert skipping.stage_changes == calling.stage_changes
    assert skipping.brake_events == calling.brake_events
