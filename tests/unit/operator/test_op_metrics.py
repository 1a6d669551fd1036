"""Operator metrics and /healthz over real HTTP."""

from __future__ import annotations

import aiohttp

from polca_operator.fakes import FakeClock
from polca_operator.metrics import Health, MetricsServer, OperatorMetrics
from polca_testbed.processes import free_port


async def test_metrics_and_healthz_are_served() -> None:
    clock = FakeClock()
    metrics, health = OperatorMetrics(), Health(monotonic=clock.monotonic)
    metrics.set_plan("row-a", 10_000, [("stage1", 8_000.0)])
    metrics.observe_cycle(
        "row-a", stage=1, change="up", power_w=8_500, budget_w=10_000, age_s=1.5, stale=False,
        duration_s=0.003,
    )  # fmt: skip
    health.beat("row-a", 1.0)
    port = free_port()
    server = MetricsServer(metrics, health, host="127.0.0.1", port=port)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
            assert 'polca_domain_power_watts{policy="row-a"} 8500.0' in text
            assert 'polca_domain_utilization_ratio{policy="row-a"} 0.85' in text
            assert (
                'polca_domain_stage_threshold_watts{policy="row-a",stage="stage1"} 8000.0' in text
            )
            assert 'polca_decisions_total{change="up",policy="row-a"} 1.0' in text
            assert 'polca_telemetry_age_seconds{policy="row-a"} 1.5' in text
            assert "polca_control_loop_seconds_bucket" in text
            async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 200
            clock.advance(31)
            async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 503
                assert "row-a: no control cycle for 31 s" in await r.text()
    finally:
        await server.stop()


def test_health_allows_slow_intervals_and_standbys() -> None:
    clock = FakeClock()
    health = Health(monotonic=clock.monotonic)
    assert health.problems() == []  # a standby runs no loops
    health.beat("slow", 10.0)
    clock.advance(90)
    assert health.problems() == []  # within 10 intervals
    clock.advance(20)
    assert health.problems() == ["slow: no control cycle for 110 s"]
    health.forget("slow")
    assert health.problems() == []


def test_forget_drops_every_series_of_the_policy() -> None:
    metrics = OperatorMetrics()
    metrics.set_plan("gone", 1_000, [("stage1", 800.0)])
    metrics.observe_cycle(
        "gone", stage=0, change="none", power_w=None, budget_w=1_000, age_s=None, stale=True,
        duration_s=0.001,
    )  # fmt: skip
    metrics.telemetry_error("gone", "prometheus")
    metrics.forget("gone")
    remaining = [
        s for family in metrics.registry.collect() for s in family.samples
        if s.labels.get("policy") == "gone"
    ]  # fmt: skip
    assert remaining == []
