"""The in-band policies' timing: the operator's default stream path unless told otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polca.cli import build_parser
from polca.power.profiles import get_profile
from polca.power.sensor import AVERAGE_WINDOW_S
from polca.sim.cli import policies_from_args
from polca.sim.domain import DomainConfig, Mix
from polca.sim.engine import SimConfig, simulate
from polca.sim.policies import (
    IN_BAND_TIMINGS,
    K8S_PLAN,
    PHYSICS_PLAN,
    PROMETHEUS_TIMING,
    STREAM_TIMING,
    ControlTiming,
    PolicyConfig,
    make_policy,
)
from polca.sim.workload import Requests
from polca.tooling.policyfile import apply_to_simulation

IN_BAND = ("polca-k8s", "physics")
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.mark.parametrize("name", IN_BAND)
def test_in_band_policies_run_the_stream_path_by_default(name: str) -> None:
    policy = make_policy(name)
    assert policy.timing == STREAM_TIMING
    assert (policy.telemetry_period_s, policy.telemetry_latency_s) == (0.5, 0.0)
    assert policy.control_interval_s == 0.1
    assert policy.reaction_s == pytest.approx(0.8)
    assert policy.plan is not None
    assert policy.plan.settle_s == pytest.approx(policy.reaction_s)


@pytest.mark.parametrize("name", IN_BAND)
def test_the_prometheus_chain_is_still_modelled(name: str) -> None:
    policy = make_policy(name, in_band=PROMETHEUS_TIMING)
    assert policy.timing == PROMETHEUS_TIMING
    assert policy.reaction_s == pytest.approx(2.3)
    assert policy.plan is not None
    assert policy.plan.settle_s == pytest.approx(2.3)


def test_polca_keeps_its_one_second_loop_and_out_of_band_delay() -> None:
    policy = make_policy("polca")
    assert (policy.telemetry_period_s, policy.control_interval_s) == (1.0, 1.0)
    assert policy.actuation_delay_s == 40.0
    assert policy.reaction_s == pytest.approx(42.0)


def test_physics_plan_settles_and_predicts_over_the_default_reaction() -> None:
    assert PHYSICS_PLAN.settle_s == pytest.approx(STREAM_TIMING.reaction_s)
    # The prediction (the sensor's averaging window) also covers the reaction's own delay.
    assert PHYSICS_PLAN.predict_s == AVERAGE_WINDOW_S
    assert PHYSICS_PLAN.predict_s >= STREAM_TIMING.reaction_s


def policies(*argv: str) -> dict[str, PolicyConfig]:
    args = build_parser().parse_args(["simulate", *argv])
    return {p.name: p for p in policies_from_args(args)}


def test_cli_defaults_and_the_prometheus_recipe() -> None:
    names = ("--policy", "polca", "--policy", "polca-k8s", "--policy", "physics")
    default = policies(*names)
    assert default["polca-k8s"].timing == STREAM_TIMING
    assert default["physics"].timing == STREAM_TIMING
    assert default["polca"] == make_policy("polca")
    chain = policies(*names, "--telemetry", "prometheus")
    assert chain["polca-k8s"].timing == PROMETHEUS_TIMING
    assert chain["polca"] == make_policy("polca")  # POLCA's loop is its own


def test_cli_timing_flags_override_the_path() -> None:
    got = policies("--policy", "polca-k8s", "--telemetry-period", "2", "--k8s-actuation", "0.5")
    assert got["polca-k8s"].timing == ControlTiming(2.0, 0.0, 0.1, 0.5)


def test_the_stream_path_escalates_sooner_after_a_crossing() -> None:
    """From the first step the meter is above the first trigger to the first stage: within one
    sample period + latency + control interval, and sooner on the stream than via Prometheus."""
    arrivals = 5.0 + 0.1 * np.arange(
        400, dtype=np.float64
    )  # idle for 5 s, then a steady prefill-heavy load
    reqs = Requests(
        arrival_s=arrivals,
        context_tokens=np.full(arrivals.size, 3000, dtype=np.int64),
        generated_tokens=np.full(arrivals.size, 5, dtype=np.int64),
        server=np.arange(arrivals.size, dtype=np.int64) % 2,
    )
    domain = DomainConfig(get_profile("H100-SXM"), base_servers=2, mix=Mix(0, 1, 0))
    lags_s = {}
    for timing in (STREAM_TIMING, PROMETHEUS_TIMING):
        policy = make_policy("polca-k8s", in_band=timing, derive_triggers=False, use_guard=False)
        cfg = SimConfig(domain, policy, duration_s=30.0, brake_enabled=False, drain_s=30.0)
        result = simulate(cfg, reqs)
        trigger_w = K8S_PLAN.stages[1].trigger_pct / 100 * result.budget_w
        crossing = int(np.argmax(result.metered_power_w >= trigger_w))
        assert crossing > 0  # the run starts below the trigger and crosses it
        assert result.stage.max() > 0
        lag_s = (int(np.argmax(result.stage > 0)) - crossing) * cfg.dt_s
        decision_s = timing.telemetry_period_s + timing.telemetry_latency_s
        assert 0 <= lag_s <= decision_s + timing.control_interval_s + 1e-9
        lags_s[timing] = lag_s
    assert lags_s[STREAM_TIMING] < lags_s[PROMETHEUS_TIMING]


@pytest.mark.parametrize(
    ("manifest", "given", "path"),
    [
        ("polca-default.yaml", None, "stream"),  # telemetry.source direct: the streams
        ("dcgm-node-power.yaml", None, "prometheus"),
        ("dcgm-node-power.yaml", "stream", "stream"),  # the flag wins
    ],
)
def test_a_manifest_runs_on_its_own_telemetry_path(
    manifest: str, given: str | None, path: str
) -> None:
    argv = ["simulate", "-f", str(EXAMPLES / manifest)]
    args = build_parser().parse_args([*argv, *(["--telemetry", given] if given else [])])
    assert apply_to_simulation(args) is not None
    assert args.telemetry == path
    assert policies_from_args(args)[-1].timing == IN_BAND_TIMINGS[path]
