"""In-memory stand-ins for the operator's I/O: clock, API sinks, cluster view, telemetry.

Used by the unit tests and the benchmark (`benchmarks/bench_operator.py`), which drive
:class:`~polca_operator.loop.ControlLoop` without a cluster, like `kopf.testing` does for Kopf.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from polca_operator.domain_power import DomainPower, NodeSample
from polca_operator.endpoints import NodeAddresses
from polca_operator.indexes import NodeReport
from polca_operator.loop import ControlLoop, LoopDeps
from polca_operator.metrics import Health, OperatorMetrics
from polca_operator.status import EventType, StatusWriteError
from polca_operator.telemetry import PowerQuery, TelemetryReading

DOMAIN_LABEL = "polca.dev/power-domain"
EPOCH_S = 1_750_000_000.0
LOOPBACK = NodeAddresses(frozenset({"127.0.0.1"}))


@dataclass
class FakeClock:
    """Monotonic and wall time that move only when told to."""

    now_s: float = 0.0

    def monotonic(self) -> float:
        return self.now_s

    def wall(self) -> float:
        return EPOCH_S + self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@dataclass
class RecordingSink:
    """Records status patches; `fail` makes the next patches raise."""

    patches: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail: bool = False

    async def patch_status(self, name: str, status: Mapping[str, Any]) -> None:
        if self.fail:
            raise StatusWriteError("HTTP 503: unavailable")
        self.patches.append((name, dict(status)))

    @property
    def last(self) -> dict[str, Any]:
        return self.patches[-1][1]


@dataclass
class RecordingEvents:
    events: list[tuple[EventType, str, str]] = field(default_factory=list)

    def post(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]


@dataclass
class StaticView:
    """A ClusterView from plain dicts; bump `version` after changing them."""

    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    node_reports: dict[str, NodeReport] = field(default_factory=dict)
    version: int = 0
    # Every node at the loopback address unless a test says otherwise.
    node_addresses: dict[str, NodeAddresses] = field(default_factory=dict)

    def fingerprint(self) -> int:
        return self.version

    def node_labels(self) -> Iterable[tuple[str, Mapping[str, str]]]:
        return self.labels.items()

    def report(self, node: str) -> NodeReport | None:
        return self.node_reports.get(node)

    def reports(self) -> Iterable[tuple[str, NodeReport]]:
        return self.node_reports.items()

    def addresses(self, node: str) -> NodeAddresses:
        return self.node_addresses.get(node, LOOPBACK)


def domain_view(nodes: int, gpus_per_node: int = 8, domain: str = "row-a") -> StaticView:
    """`nodes` nodes in `domain`, each with a daemon reporting `gpus_per_node` GPUs."""
    names = [f"node-{i:05d}" for i in range(nodes)]
    return StaticView(
        labels={n: {DOMAIN_LABEL: domain, "kubernetes.io/hostname": n} for n in names},
        node_reports={
            n: NodeReport(
                metrics_url=f"http://127.0.0.1:1/{n}/metrics",
                gpu_count=gpus_per_node,
            )
            for n in names
        },
    )


@dataclass
class ScriptedReader:
    """Telemetry whose power and age the test sets; None power means no fresh sample."""

    clock: FakeClock
    power_w: float | None = None
    age_s: float = 0.5
    queries: list[PowerQuery] = field(default_factory=list)

    async def read(
        self,
        query: PowerQuery,
        *,
        last_known: Mapping[str, NodeSample] | None = None,  # noqa: ARG002 - scripted power
    ) -> TelemetryReading:
        self.queries.append(query)
        if self.power_w is None or self.age_s > query.staleness_s:
            return TelemetryReading(None, (), (("prometheus", "connection refused"),))
        power = DomainPower(self.power_w, self.clock.wall() - self.age_s, len(query.nodes), 0)
        return TelemetryReading(power, ("prometheus",))


def policy_body(
    *,
    budget_w: float = 100_000.0,
    generation: int = 1,
    status: Mapping[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A PowerPolicy as the apiserver serves it: POLCA's default table, domain row-a."""
    return {
        "apiVersion": "polca.dev/v1alpha1",
        "kind": "PowerPolicy",
        "metadata": {"name": "row-a", "generation": generation},
        "spec": {
            "nodeSelector": {"matchLabels": {DOMAIN_LABEL: "row-a"}},
            "budgetWatts": budget_w,
            **spec,
        },
        **({"status": dict(status)} if status is not None else {}),
    }


@dataclass
class Harness:
    """A ControlLoop wired to fakes."""

    clock: FakeClock
    reader: ScriptedReader
    sink: RecordingSink
    events: RecordingEvents
    metrics: OperatorMetrics
    health: Health
    deps: LoopDeps

    def loop(self, status: Mapping[str, Any] | None = None, name: str = "row-a") -> ControlLoop:
        return ControlLoop(name, self.deps, self.events, status=status)


def make_harness() -> Harness:
    clock = FakeClock()
    reader = ScriptedReader(clock)
    sink = RecordingSink()
    metrics = OperatorMetrics()
    health = Health(monotonic=clock.monotonic)
    deps = LoopDeps(
        reader=reader,
        status_sink=sink,
        metrics=metrics,
        health=health,
        monotonic=clock.monotonic,
        wall_clock=clock.wall,
    )
    return Harness(clock, reader, sink, RecordingEvents(), metrics, health, deps)
