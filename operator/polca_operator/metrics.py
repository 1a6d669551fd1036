"""The operator's own metrics and its `/healthz`, served on one port (default 9401).

Per policy (label `policy`): domain power, budget, utilisation, stage, failsafe, stage
thresholds, telemetry age and errors, decisions and control-loop duration. `/healthz` answers
200 while every running control loop has completed a cycle recently; a standby replica (no
loops) is healthy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["Health", "MetricsServer", "OperatorMetrics"]

Change = Literal["none", "up", "down"]
CHANGES: tuple[Change, ...] = ("none", "up", "down")
SOURCES = ("prometheus", "direct")
# A loop is unhealthy when it misses this many intervals, and never sooner than the floor.
MISSED_INTERVALS = 10
HEALTH_FLOOR_S = 30.0
LOOP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class OperatorMetrics:
    """The metric families, registered in `registry` (a fresh one per operator and test)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.power_w = Gauge(
            "polca_domain_power_watts", "Domain power the controller saw, W", ["policy"], registry=r
        )
        self.budget_w = Gauge(
            "polca_domain_budget_watts", "The domain's budget (budgetWatts), W", ["policy"],
            registry=r,
        )  # fmt: skip
        self.utilization = Gauge(
            "polca_domain_utilization_ratio", "Domain power / budget", ["policy"], registry=r
        )
        self.stage = Gauge(
            "polca_domain_stage", "Index of the current stage (0: normal)", ["policy"], registry=r
        )
        self.failsafe = Gauge(
            "polca_domain_failsafe", "1 while telemetry is stale and the failsafe applies",
            ["policy"], registry=r,
        )  # fmt: skip
        self.threshold_w = Gauge(
            "polca_domain_stage_threshold_watts", "Trigger of each stage, W",
            ["policy", "stage"], registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            "polca_decisions_total", "Controller decisions by stage change",
            ["policy", "change"], registry=r,
        )  # fmt: skip
        self.telemetry_age_s = Gauge(
            "polca_telemetry_age_seconds", "Age of the oldest power sample used, s",
            ["policy"], registry=r,
        )  # fmt: skip
        self.telemetry_errors = Counter(
            "polca_telemetry_errors_total", "Failed telemetry reads by source",
            ["policy", "source"], registry=r,
        )  # fmt: skip
        self.loop_s = Histogram(
            "polca_control_loop_seconds", "Duration of one control cycle, s", ["policy"],
            buckets=LOOP_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.status_writes = Counter(
            "polca_status_writes_total", "PowerPolicy status writes", ["policy"], registry=r
        )
        self.early_cycles = Counter(
            "polca_early_cycles_total",
            "Control cycles run before the interval ended: a streamed sample reached the next "
            "stage's trigger",
            ["policy"], registry=r,
        )  # fmt: skip
        # From the NodePowerStates, which outlive a vanished daemon: its own heartbeat series
        # disappears with its scrape target, this one stays and keeps the alert firing.
        self.node_heartbeat_s = Gauge(
            "polca_node_report_heartbeat_timestamp_seconds",
            "Heartbeat a node's daemon last wrote to its NodePowerState, Unix time",
            ["node"], registry=r,
        )  # fmt: skip
        self._stages: dict[str, list[str]] = {}

    def set_plan(
        self, policy: str, budget_w: float, thresholds_w: Iterable[tuple[str, float]]
    ) -> None:
        """Budget and stage triggers, replaced whenever the spec changes."""
        self.budget_w.labels(policy).set(budget_w)
        for stage in self._stages.pop(policy, []):
            self.threshold_w.remove(policy, stage)
        stages = []
        for stage, watts in thresholds_w:
            self.threshold_w.labels(policy, stage).set(watts)
            stages.append(stage)
        self._stages[policy] = stages

    def observe_cycle(
        self,
        policy: str,
        *,
        stage: int,
        change: Change,
        power_w: float | None,
        budget_w: float,
        age_s: float | None,
        stale: bool,
        duration_s: float,
    ) -> None:
        self.stage.labels(policy).set(stage)
        self.failsafe.labels(policy).set(1 if stale else 0)
        self.decisions.labels(policy, change).inc()
        self.loop_s.labels(policy).observe(duration_s)
        nan = float("nan")
        self.power_w.labels(policy).set(nan if power_w is None else power_w)
        self.utilization.labels(policy).set(nan if power_w is None else power_w / budget_w)
        self.telemetry_age_s.labels(policy).set(nan if age_s is None else age_s)

    def telemetry_error(self, policy: str, source: str) -> None:
        self.telemetry_errors.labels(policy, source).inc()

    def early_cycle(self, policy: str) -> None:
        self.early_cycles.labels(policy).inc()

    def status_written(self, policy: str) -> None:
        self.status_writes.labels(policy).inc()

    def node_report(self, node: str, heartbeat_s: float | None) -> None:
        """A NodePowerState was listed or changed (None: it has no heartbeat yet)."""
        if heartbeat_s is not None:
            self.node_heartbeat_s.labels(node).set(heartbeat_s)

    def forget_node(self, node: str) -> None:
        _remove(self.node_heartbeat_s, node)

    def forget(self, policy: str) -> None:
        """Drop a deleted policy's series, so dashboards do not show it frozen."""
        for gauge in (
            self.power_w, self.budget_w, self.utilization, self.stage, self.failsafe,
            self.telemetry_age_s, self.loop_s, self.status_writes, self.early_cycles,
        ):  # fmt: skip
            _remove(gauge, policy)
        for stage in self._stages.pop(policy, []):
            self.threshold_w.remove(policy, stage)
        for change in CHANGES:
            _remove(self.decisions, policy, change)
        for source in SOURCES:
            _remove(self.telemetry_errors, policy, source)


def _remove(metric: Gauge | Counter | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never observed
        metric.remove(*labels)


@dataclass
class Health:
    """Heartbeats of the running control loops."""

    monotonic: Callable[[], float] = time.monotonic
    _loops: dict[str, tuple[float, float]] = field(default_factory=dict)

    def beat(self, policy: str, interval_s: float) -> None:
        self._loops[policy] = (self.monotonic(), interval_s)

    def forget(self, policy: str) -> None:
        self._loops.pop(policy, None)

    def loops(self) -> list[str]:
        """Policies whose control loop runs in this replica."""
        return sorted(self._loops)

    def problems(self) -> list[str]:
        now = self.monotonic()
        return [
            f"{policy}: no control cycle for {now - last:.0f} s"
            for policy, (last, interval) in sorted(self._loops.items())
            if now - last > max(HEALTH_FLOOR_S, MISSED_INTERVALS * interval)
        ]


class MetricsServer:
    """`/metrics`, `/healthz` and `/readyz` on aiohttp, in the operator's event loop."""

    def __init__(self, metrics: OperatorMetrics, health: Health, *, host: str, port: int):
        self._metrics = metrics
        self._health = health
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_health)
        app.router.add_get("/readyz", self._serve_ready)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve_metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _serve_health(self, _: web.Request) -> web.Response:
        problems = self._health.problems()
        if problems:
            return web.Response(status=503, text="unhealthy: " + "; ".join(problems) + "\n")
        return web.Response(text="ok\n")

    async def _serve_ready(self, _: web.Request) -> web.Response:
        """Ready once start-up ran (this server starts last in it) and every control loop this
        replica runs is fresh. An active replica and a standby (paused by peering, no loops)
        are both ready: either may serve, and Kopf's peering decides which one acts."""
        problems = self._health.problems()
        if problems:
            return web.Response(status=503, text="not ready: " + "; ".join(problems) + "\n")
        role = "active" if self._health.loops() else "standby or no policies"
        return web.Response(text=f"ready ({role})\n")
