"""The simulation engine: conservation, latency accounting, brake, actuation delays, policies."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from polca.control.plan import POLCA_PLAN
from polca.power.model import Phase, phase_power_w
from polca.power.profiles import get_profile
from polca.power.sensor import OVERSHOOT_RATIO
from polca.sim.domain import DomainConfig, Mix
from polca.sim.engine import SimConfig, SimResult, simulate
from polca.sim.policies import PROMETHEUS_TIMING, GuardSettings, PolicyConfig, make_policy
from polca.sim.workload import Requests

H100 = get_profile("H100-SXM")
NONE = make_policy("none")


def requests(
    arrivals: list[float], context: int = 1400, generated: int = 50, servers: int = 1
) -> Requests:
    n = len(arrivals)
    return Requests(
        arrival_s=np.asarray(arrivals, dtype=np.float64),
        context_tokens=np.full(n, context, dtype=np.int64),
        generated_tokens=np.full(n, generated, dtype=np.int64),
        server=np.arange(n, dtype=np.int64) % servers,
    )


def config(
    servers: int = 1,
    *,
    policy: PolicyConfig = NONE,
    duration_s: float = 20.0,
    brake: bool = True,
    mix: Mix | None = None,
    oversubscription: float = 0.0,
) -> SimConfig:
    domain = DomainConfig(
        H100, base_servers=servers, oversubscription=oversubscription, mix=mix or Mix(1, 0, 0)
    )
    return SimConfig(domain, policy, duration_s=duration_s, brake_enabled=brake, drain_s=30.0)


def idle_server_w() -> float:
    return 8 * H100.idle_context_w + 1500.0  # serving GPUs hold a CUDA context


class TestConservation:
    def test_empty_domain_draws_idle_power(self) -> None:
        result = simulate(config(servers=3), requests([]))
        assert result.raw_power_w == pytest.approx(np.full(200, 3 * idle_server_w()))
        assert result.energy_j == pytest.approx(3 * idle_server_w() * 20.0, rel=1e-6)

    def test_energy_is_power_integrated(self) -> None:
        result = simulate(config(servers=2), requests([0.0, 1.0, 2.0], servers=2))
        assert result.energy_j == pytest.approx(float(result.raw_power_w.sum()) * 0.1, rel=1e-6)

    def test_every_request_finishes_and_tokens_add_up(self) -> None:
        reqs = requests([0.05 * i for i in range(40)], generated=30, servers=2)
        result = simulate(config(servers=2), reqs)
        assert not np.isnan(result.finish_s).any()
        assert np.all(result.first_token_s >= result.arrival_s)
        assert np.all(result.finish_s >= result.first_token_s)
        total = sum(result.tokens_in_horizon.values())
        assert total == pytest.approx(40 * 30, rel=1e-6)

    def test_power_within_physical_bounds(self) -> None:
        reqs = requests([0.01 * i for i in range(300)], servers=2)
        result = simulate(config(servers=2), reqs)
        peak_w = 2 * (8 * H100.prefill_w + 1500.0)
        assert result.raw_power_w.max() <= peak_w + 1e-3
        assert result.raw_power_w.min() >= 2 * idle_server_w() - 1e-3


class TestLatency:
    def test_single_request_ttft_and_decode_time(self) -> None:
        result = simulate(config(), requests([0.0], context=1400, generated=50))
        svc = config().domain.service_model
        prefill_s = svc.prefill_overhead_s + 1400 / svc.prefill_tokens_per_s
        assert result.first_token_s[0] == pytest.approx(prefill_s, abs=1e-9)
        iteration_s = svc.tbt_base_s + svc.tbt_per_request_s
        # Decoding starts with the step after the prefill.
        decode_start = 0.2 if prefill_s > 0.1 else 0.1
        assert result.finish_s[0] == pytest.approx(decode_start + 49 * iteration_s, abs=1e-6)

    def test_queueing_is_fifo(self) -> None:
        result = simulate(config(), requests([0.0, 0.0, 0.0], context=7000))
        firsts = result.first_token_s
        assert firsts[0] < firsts[1] < firsts[2]
        work = config().domain.service_model.prefill_s(np.array([7000]))[0]
        assert np.diff(firsts) == pytest.approx([work, work], abs=1e-9)

    def test_larger_batch_slows_tokens(self) -> None:
        one = simulate(config(), requests([0.0], generated=200))
        many = simulate(config(), requests([0.0] * 30, context=10, generated=200))
        tbt_one = one.tbt_samples["high"][0]
        tbt_many = many.tbt_samples["high"][0]
        assert np.median(tbt_many) > np.median(tbt_one)


class TestCaps:
    def test_clock_ceiling_slows_prefill_and_lowers_power(self) -> None:
        plan = POLCA_PLAN
        # Trigger stage 1 at once: a tiny budget share makes any load exceed 80%.
        policy = PolicyConfig(name="polca", plan=replace(plan, settle_s=1000.0))
        reqs = requests([0.0], context=14000, generated=2)
        capped = simulate(config(policy=policy, brake=False, mix=Mix(0, 1, 0)), reqs)
        free = simulate(config(brake=False, mix=Mix(0, 1, 0)), reqs)
        assert capped.stage.max() >= 1
        assert capped.first_token_s[0] > free.first_token_s[0]

    def test_actuation_delay_postpones_the_power_drop(self) -> None:
        plan = replace(POLCA_PLAN, settle_s=1000.0)
        reqs = requests([0.1 * i for i in range(400)], context=3000, generated=5, servers=2)

        def run(delay_s: float) -> SimResult:
            policy = PolicyConfig(name="polca", plan=plan, actuation_delay_s=delay_s)
            return simulate(config(servers=2, policy=policy, brake=False, mix=Mix(0, 1, 0)), reqs)

        fast, slow = run(0.0), run(10.0)
        # Same decisions, but the slow one keeps drawing full power for ten more seconds.
        assert np.array_equal(fast.stage, slow.stage)
        assert slow.energy_j > fast.energy_j
        first = int(np.argmax(fast.stage > 0))
        window = slice(first + 20, first + 90)
        assert slow.raw_power_w[window].mean() > fast.raw_power_w[window].mean()


class TestBrake:
    def test_brake_fires_when_over_budget_and_lowers_power(self) -> None:
        # Two servers under a one-server budget, both prefilling flat out.
        reqs = requests([0.0] * 40, context=14000, generated=2, servers=2)
        cfg = config(servers=1, oversubscription=1.0, duration_s=20.0)
        result = simulate(cfg, reqs)
        assert result.brake_events >= 1
        assert result.time_above_budget_s > 0
        braked = simulate(replace(cfg, brake_enabled=False), reqs)
        assert result.raw_power_w.min() < braked.raw_power_w.min()

    def test_no_brake_under_budget(self) -> None:
        result = simulate(config(servers=4), requests([0.5 * i for i in range(20)], servers=4))
        assert result.brake_events == 0
        assert result.time_above_budget_s == 0


class TestTraining:
    def test_synchronous_iterations_swing_power(self) -> None:
        # No brake: a row provisioned at TDP with training at the limit goes over its budget
        # with each iteration's start transient.
        cfg = config(servers=2, mix=Mix(0, 0, 1), duration_s=10.0, brake=False)
        result = simulate(cfg, requests([]))
        svc = config().domain.service_model
        assert result.train_iterations == pytest.approx(
            10.0 / (svc.train_compute_s + svc.train_comm_s), abs=1
        )
        # The limiter holds GEMM work at the limit; the step each iteration's compute starts in
        # overshoots to 1.39x the limit (the limiter lags one refresh).
        compute_w = 2 * (8 * H100.default_limit_w + 1500)
        burst_w = 2 * (8 * OVERSHOOT_RATIO * H100.default_limit_w + 1500)
        comm_w = 2 * (8 * float(phase_power_w(H100, Phase.DECODE, 1980.0)) + 1500)
        assert result.raw_power_w.max() == pytest.approx(burst_w)
        assert np.count_nonzero(np.isclose(result.raw_power_w, compute_w)) > 50
        assert result.raw_power_w.min() == pytest.approx(comm_w)


class TestOneSecondSteps:
    """Steps longer than the 100 ms transient: it counts for TRANSIENT_S, not the whole step."""

    def test_training_transients_cost_the_same_energy_as_at_100_ms(self) -> None:
        # Iterations (1.2 s compute + 0.3 s all-reduce) start on 100 ms boundaries, so at 100 ms
        # each start step is one whole transient; at 1 s most starts fall inside a step.
        cfg = config(servers=2, mix=Mix(0, 0, 1), duration_s=12.0, brake=False)
        fine = simulate(cfg, requests([]))
        coarse = simulate(replace(cfg, dt_s=1.0), requests([]))
        assert coarse.train_iterations == fine.train_iterations
        assert coarse.energy_j == pytest.approx(fine.energy_j, rel=1e-6)  # float32 records
        # …and the transient is there: without it the row would draw less.
        settled_w = 2 * (8 * H100.default_limit_w + 1500)
        assert coarse.raw_power_w.max() > settled_w

    def test_prefill_transient_lasts_100_ms_of_a_1_s_step(self) -> None:
        # A prefill above the limit (prefill_w raised over the H100's 700 W): one request whose
        # prefill takes 0.45 s, from t = 0.
        profile = replace(H100, prefill_w=1000.0)
        domain = DomainConfig(profile, base_servers=1, mix=Mix(1, 0, 0))
        cfg = SimConfig(domain, NONE, duration_s=3.0, brake_enabled=False, drain_s=0.0)
        context = round((0.45 - 0.015) * 14000)
        reqs = requests([0.0], context=context, generated=1)
        fine = simulate(cfg, reqs)
        coarse = simulate(replace(cfg, dt_s=1.0), reqs)
        idle_w = 8 * H100.idle_context_w + 1500.0
        # Same prefill energy: the 1 s step holds 0.45 s of prefill and 0.55 s idle, the first
        # five 100 ms steps the same prefill and 0.05 s idle.
        fine_j = float(fine.raw_power_w[:5].astype(np.float64).sum()) * 0.1 + 0.5 * idle_w
        assert float(coarse.raw_power_w[0]) == pytest.approx(fine_j, rel=1e-6)
        assert float(fine.raw_power_w[0]) > float(fine.raw_power_w[1])  # the transient


def test_deterministic() -> None:
    reqs = requests([0.03 * i for i in range(500)], servers=3)
    cfg = config(servers=3, policy=make_policy("polca-k8s"), oversubscription=0.0)
    a, b = simulate(cfg, reqs), simulate(cfg, reqs)
    assert np.array_equal(a.raw_power_w, b.raw_power_w)
    assert np.array_equal(a.finish_s, b.finish_s, equal_nan=True)


def test_requests_must_fit_the_domain() -> None:
    with pytest.raises(ValueError, match="inference servers"):
        simulate(config(servers=1), requests([0.0, 0.0], servers=2))


class TestControlLoop:
    def test_controller_waits_for_its_first_sample_instead_of_failsafe(self) -> None:
        result = simulate(config(servers=2, policy=make_policy("polca-k8s")), requests([]))
        assert set(result.stage.tolist()) == {0}
        assert result.stage_changes == 0

    def test_local_guard_throttles_a_node_over_its_budget(self) -> None:
        # A guard budget at half a node's share: any prefill burst trips it. The controller
        # reads power through Prometheus (2.3 s): on the stream (0.8 s) it caps the burst first.
        slow = PROMETHEUS_TIMING
        policy = make_policy("polca-k8s", in_band=slow, guard=GuardSettings(budget_share=0.5))
        reqs = requests([0.0] * 20, context=14000, generated=2, servers=2)
        cfg = config(servers=2, policy=policy, brake=False, mix=Mix(0, 1, 0))
        guarded = simulate(cfg, reqs)
        unguarded = make_policy("polca-k8s", in_band=slow, use_guard=False)
        free = simulate(replace(cfg, policy=unguarded), reqs)
        assert guarded.guard_actions > 0
        assert free.guard_actions == 0
        assert guarded.raw_power_w[:30].mean() < free.raw_power_w[:30].mean()
