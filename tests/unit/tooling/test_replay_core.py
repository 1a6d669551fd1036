"""The replay's pure parts: history, gaps, the controller loop, throttling estimate, capacity,
and the Prometheus client's chunking (against a small local HTTP server)."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import numpy as np
import pytest

from polca.api.convert import plan_from_spec
from polca.api.powerpolicy import PowerPolicySpec
from polca.control.plan import POLCA_PLAN
from polca.power.profiles import get_profile
from polca.tooling.capacity import Criteria, search
from polca.tooling.history import History, HistoryError, Series, expressions, history_from_series
from polca.tooling.promhttp import MAX_POINTS, PrometheusError, query_range, steps_between
from polca.tooling.replay import ShedModel, replay, with_independent_servers
from polca.tooling.replay_cli import parse_duration_s, parse_time_s

BUDGET_W = 10_000.0
STEP_S = 15.0


def flat_history(power_pct: list[float], nodes: int = 2, *, gpus: int = 8) -> History:
    """`nodes` nodes sharing each step's power (percent of BUDGET_W); tier low on all GPUs."""
    total = np.array(power_pct) / 100 * BUDGET_W
    per_node = np.repeat((total / nodes)[:, None], nodes, axis=1)
    steps = len(power_pct)
    return History(
        start_s=1000.0,
        step_s=STEP_S,
        nodes=tuple(f"n{i}" for i in range(nodes)),
        node_power_w=per_node,
        overhead_w=0.0,
        tier_power_w={"low": total},
        tier_gpus={"low": np.full(steps, float(nodes * gpus))},
    )


def spec(**extra: Any) -> PowerPolicySpec:
    return PowerPolicySpec.model_validate({"allNodes": True, "budgetWatts": BUDGET_W, **extra})


def test_expressions_count_each_gpu_once_and_only_fresh_samples() -> None:
    exprs = expressions(spec(), STEP_S, 'node=~"row-a-.*"')
    assert exprs.node_power == (
        'sum by (node) (max by (node, gpu) (last_over_time(polca_gpu_power_watts{node=~"row-a-.*"}'
        "[15s])))"
    )
    assert exprs.tier_gpus.startswith("count by (tier) (max by (node, gpu, tier)")
    # A policy staleness above the step widens the window to it.
    assert "[30s]" in expressions(spec(telemetry={"stalenessSeconds": 30}), STEP_S).node_power


def test_promql_source_and_counters() -> None:
    prom = {"source": "prometheus", "prometheusURL": "http://p:9090"}
    ok = spec(telemetry=prom, nodePower={"source": "promql", "query": "rate(e_total[1m])",
                                         "nodeLabel": "instance"})  # fmt: skip
    exprs = expressions(ok, STEP_S)
    assert exprs.node_label == "instance"
    assert exprs.node_power == "sum by (instance) (rate(e_total[1m]))"  # its own range stands
    relabelled = spec(telemetry=prom, nodePower={"source": "promql", "query": (
        'label_replace(bmc_watts, "node", "$1", "instance", "(.*)")')})  # fmt: skip
    # timestamp() of label_replace is each step's own time: the window bounds the selector.
    assert expressions(relabelled, STEP_S).node_power == (
        'sum by (node) (label_replace(last_over_time(bmc_watts[15000ms]), "node", "$1", '
        '"instance", "(.*)"))'
    )
    raw = spec(telemetry=prom, nodePower={"source": "promql", "query": "e_joules_total"})
    with pytest.raises(HistoryError, match="counter reset"):
        expressions(raw, STEP_S)


def test_history_gaps_are_nan_never_zero() -> None:
    values = np.array([100.0, np.nan, np.nan, 100.0])
    history = history_from_series(
        start_s=0.0, step_s=STEP_S, steps=4,
        node_series=[Series({"node": "a"}, values), Series({"node": "b"}, np.full(4, 50.0))],
        node_label="node", tier_power=[], tier_gpus=[], overhead_w=10.0,
    )  # fmt: skip
    power = history.domain_power_w
    assert power[0] == 170.0
    assert np.isnan(power[1:3]).all()
    (gap,) = history.gaps()
    assert (gap.start_s, gap.end_s, gap.nodes) == (15.0, 30.0, ("a",))


def test_history_needs_data_and_watts() -> None:
    kwargs: dict[str, Any] = {"start_s": 0.0, "step_s": 1.0, "steps": 2, "node_label": "node",
                              "tier_power": [], "tier_gpus": [], "overhead_w": 0.0}  # fmt: skip
    with pytest.raises(HistoryError, match="returned nothing"):
        history_from_series(node_series=[], **kwargs)
    with pytest.raises(HistoryError, match="negative"):
        history_from_series(node_series=[Series({"node": "a"}, np.array([1.0, -1.0]))], **kwargs)
    only_b = history_from_series(
        node_series=[Series({"node": "a"}, np.ones(2)), Series({"node": "b"}, np.ones(2))],
        node_pattern="b", **kwargs,
    )  # fmt: skip
    assert only_b.nodes == ("b",)


def test_open_loop_stages_and_brake_moments() -> None:
    result = replay(POLCA_PLAN, BUDGET_W, flat_history([70, 82, 82, 101, 101, 70]))
    assert result.stage.tolist() == [0, 1, 1, 4, 4, 4]  # the brake stage is entered at once
    assert result.brake_moments == 2
    assert result.brake_episodes == 1
    assert result.peak_pct == pytest.approx(101)
    # stage1 in force from the step after it was decided: 4 steps of 16 low GPUs.
    assert result.tiers["low"].throttled_gpu_hours == pytest.approx(4 * 16 * STEP_S / 3600)


def test_a_gap_moves_to_failsafe_after_staleness() -> None:
    pct = [70.0] * 3 + [float("nan")] * 4 + [70.0]
    history = flat_history(pct)
    result = replay(POLCA_PLAN, BUDGET_W, history)
    assert result.gap_steps == 4
    # Steps 3.. have an ever older last sample: 15 s > staleness (10 s) → failsafe (stage2).
    assert result.stage.tolist()[:5] == [0, 0, 0, POLCA_PLAN.failsafe_stage, 2]
    assert np.isnan(result.power_w[3:7]).all()


def test_scaling_and_the_throttling_estimate() -> None:
    history = flat_history([85.0] * 20)
    open_loop = replay(POLCA_PLAN, BUDGET_W, history, scale=1.2)
    assert open_loop.peak_pct == pytest.approx(102)
    assert open_loop.brake_moments == 20
    shed = ShedModel.for_plan(POLCA_PLAN, get_profile("H100-SXM"))
    closed = replay(POLCA_PLAN, BUDGET_W, history, scale=1.2, shed=shed)
    # The first step is over budget either way (nothing is in force yet); then throttling acts.
    assert closed.brake_moments < open_loop.brake_moments
    assert np.mean(closed.power_w) < np.mean(open_loop.power_w)
    # Every tier throttled at the brake stage's clock sheds more than at stage 1's.
    assert shed.shed_w(4, "low", 8 * 600.0, 8) > shed.shed_w(1, "low", 8 * 600.0, 8) > 0
    assert shed.shed_w(0, "low", 8 * 600.0, 8) == 0.0


def test_power_limits_cap_the_mean_gpu() -> None:
    plan = plan_from_spec(spec(failsafeStage="cap", stages=[
        {"name": "normal"},
        {"name": "cap", "triggerPercent": 80, "releasePercent": 75,
         "actions": {"low": {"powerLimitWatts": 400}}},
    ]))  # fmt: skip
    shed = ShedModel.for_plan(plan, get_profile("H100-SXM"))
    assert shed.shed_w(1, "low", 8 * 600.0, 8) == pytest.approx(8 * 200.0)
    assert shed.shed_w(1, "low", 8 * 300.0, 8) == 0.0


def test_capacity_stops_at_the_first_unsafe_size() -> None:
    history = flat_history([70.0] * 30 + [78.0] * 2, nodes=4)
    result = search(POLCA_PLAN, BUDGET_W, history, criteria=Criteria(max_throttled_share={}),
                    shed=None, max_extra=4)  # fmt: skip
    # 78% x 5/4 = 97.5% is safe open loop; 78% x 6/4 = 117% is not.
    best = result.largest_safe
    assert best is not None
    assert best.servers == 5
    unsafe = result.first_unsafe
    assert unsafe is not None
    assert unsafe.servers == 6
    assert "brake-level moments" in unsafe.failures[0]
    assert len(result.levels) == 3


def test_times_and_durations() -> None:
    assert parse_duration_s("15s") == 15.0
    assert parse_duration_s("2h") == 7200.0
    assert parse_time_s("now-1d", now_s=100_000.0) == 13_600.0
    assert parse_time_s("2026-11-29T00:00:00Z") == 1_795_910_400.0
    assert parse_time_s("1795910400") == 1_795_910_400.0
    assert steps_between(0.0, 30.0, 15.0) == 3


class _Prometheus(BaseHTTPRequestHandler):
    requests: list[dict[str, str]] = []  # noqa: RUF012 - shared on purpose, one test at a time

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        self.requests.append(form)
        body: dict[str, Any]
        if form["query"] == "bad(":
            self.send_response(400)
            body = {"status": "error", "error": "parse error"}
        else:
            self.send_response(200)
            start, end, step = float(form["start"]), float(form["end"]), float(form["step"])
            times = np.arange(start, end + step / 2, step)
            values = [[t, "NaN" if t == 30 else str(t)] for t in times]
            body = {"status": "success", "data": {"resultType": "matrix",
                    "result": [{"metric": {"node": "a"}, "values": values}]}}  # fmt: skip
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *_args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[str]:
    httpd = HTTPServer(("127.0.0.1", 0), _Prometheus)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Prometheus.requests = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


def test_long_ranges_are_read_in_chunks(server: str) -> None:
    steps = MAX_POINTS * 2 + 5
    done: list[int] = []
    (series,) = query_range(server, "up", start_s=0.0, steps=steps, step_s=1.0,
                            progress=done.append)  # fmt: skip
    assert len(_Prometheus.requests) == 3
    assert done == [MAX_POINTS, 2 * MAX_POINTS, steps]
    assert series.labels == {"node": "a"}
    assert np.isnan(series.values[30])
    assert series.values[steps - 1] == steps - 1


def test_prometheus_errors_are_named(server: str) -> None:
    with pytest.raises(PrometheusError, match="HTTP 400: parse error"):
        query_range(server, "bad(", start_s=0.0, steps=2, step_s=1.0)
    with pytest.raises(PrometheusError, match="cannot reach Prometheus"):
        query_range("http://127.0.0.1:1", "up", start_s=0.0, steps=2, step_s=1.0)


def test_independent_servers_are_recorded_nodes_out_of_step() -> None:
    rng = np.random.default_rng(1)
    pct = list(60 + 20 * rng.random(400))
    history = flat_history(pct, nodes=4)
    # Make the nodes differ, so a shifted copy is not the same as its neighbour.
    history = History(
        history.start_s, history.step_s, history.nodes,
        history.node_power_w * rng.uniform(0.8, 1.2, size=history.node_power_w.shape),
        0.0, history.tier_power_w, history.tier_gpus,
    )  # fmt: skip
    grown = with_independent_servers(history, 2, max_shift_s=600.0, seed=3)
    assert grown.nodes[-2:] == ("added-0", "added-1")
    assert grown.node_power_w.shape == (400, 6)
    scaled = history.domain_power_w * 6 / 4
    assert grown.domain_power_w.mean() == pytest.approx(scaled.mean(), rel=0.05)
    assert grown.domain_power_w.max() < scaled.max()  # peaks out of step partly cancel
    assert grown.tier_gpus["low"][0] == pytest.approx(history.tier_gpus["low"][0] * 1.5)
    assert with_independent_servers(history, 0) is history
