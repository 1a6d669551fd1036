"""The operator's Prometheus source against a real Prometheus (Debian's package) on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from polca.api.powerpolicy import PowerPolicy
from polca.control.plan import POLCA_PLAN
from polca_operator.domain_power import DomainNode
from polca_operator.fakes import (
    DOMAIN_LABEL,
    RecordingEvents,
    RecordingSink,
    StaticView,
    policy_body,
)
from polca_operator.indexes import NodeReport
from polca_operator.loop import ControlLoop, CycleOutcome, LoopDeps
from polca_operator.metrics import Health, OperatorMetrics
from polca_operator.telemetry import PowerQuery, PowerReader, PrometheusSource, TelemetryError
from polca_testbed.processes import free_port
from polca_testbed.prometheus import Prometheus, start_prometheus

STALENESS_S = 3.0


class Daemons:
    """A stand-in for two node daemons' GPU power gauges, served on one loopback port."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.power = Gauge(
            "polca_gpu_power_watts", "GPU power", ["node", "gpu", "tier"], registry=self.registry
        )
        self.port = free_port()
        self.server, self.thread = start_http_server(
            self.port, addr="127.0.0.1", registry=self.registry
        )

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    served = Daemons()
    served.power.labels("n1", "0", "idle").set(300)
    served.power.labels("n1", "1", "idle").set(200)
    served.power.labels("n2", "0", "high").set(100)
    yield served
    served.stop()


@pytest.fixture
def prometheus(daemons: Daemons, tmp_path: Path) -> Iterator[Prometheus]:
    prom = start_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{daemons.port}"])
    prom.wait_for("polca_gpu_power_watts", count=3)
    yield prom
    prom.stop()


@pytest.fixture
async def source() -> AsyncIterator[PrometheusSource]:
    async with aiohttp.ClientSession() as session:
        yield PrometheusSource(session, timeout_s=2)


def query(prom: Prometheus) -> PowerQuery:
    return PowerQuery(
        nodes=(DomainNode("n1"), DomainNode("n2")),
        source="prometheus",
        prometheus_url=prom.url,
        staleness_s=STALENESS_S,
    )


async def test_power_by_node_with_recent_sample_times(
    prometheus: Prometheus, source: PrometheusSource
) -> None:
    samples = await source.node_samples(query(prometheus), {"n1", "n2"})
    assert {n: s.power_w for n, s in samples.items()} == {"n1": 500.0, "n2": 100.0}
    for sample in samples.values():
        assert 0 <= time.time() - sample.time_s <= STALENESS_S


async def test_two_scrape_jobs_on_the_same_daemons_count_each_gpu_once(
    daemons: Daemons, source: PrometheusSource, tmp_path: Path
) -> None:
    """A ServiceMonitor and a PodMonitor both on: every GPU's series arrives twice."""
    prom = start_prometheus(tmp_path / "two-jobs", [f"127.0.0.1:{daemons.port}"], jobs=2)
    try:
        prom.wait_for("polca_gpu_power_watts", count=6)
        assert len(prom.query("polca_gpu_power_watts")) == 6, "each GPU twice"
        samples = await source.node_samples(query(prom), {"n1", "n2"})
        assert {n: s.power_w for n, s in samples.items()} == {"n1": 500.0, "n2": 100.0}
    finally:
        prom.stop()


async def test_series_left_over_from_before_a_restart_are_not_counted(
    daemons: Daemons, prometheus: Prometheus, source: PrometheusSource, tmp_path: Path
) -> None:
    prometheus.stop()
    # While Prometheus is down, a GPU changes tier: its old series never gets a staleness
    # marker and stays visible for the 5-minute lookback after the restart.
    daemons.power.remove("n1", "1", "idle")
    daemons.power.labels("n1", "1", "low").set(250)
    time.sleep(STALENESS_S + 0.5)  # Prometheus' last samples are now too old to count
    restarted = start_prometheus(
        prometheus.state_dir, [f"127.0.0.1:{daemons.port}"], port=prometheus.port
    )
    try:
        assert restarted.query('polca_gpu_power_watts{tier="idle",gpu="1"}'), "old series visible"
        deadline = time.monotonic() + 30
        samples = {}
        while time.monotonic() < deadline and "n1" not in samples:
            samples = await source.node_samples(query(restarted), {"n1", "n2"})
            await asyncio.sleep(0.5)
        assert samples["n1"].power_w == 550.0  # 300 + 250, not + the old 200
    finally:
        restarted.stop()


async def test_stopped_prometheus_is_an_error_not_zero(
    prometheus: Prometheus, source: PrometheusSource
) -> None:
    prometheus.stop()
    with pytest.raises(TelemetryError):
        await source.node_samples(query(prometheus), {"n1", "n2"})


# --- staleness when samples stop without staleness markers ----------------------------------

# The daemons' own series (nodePower gpu), and whole-node queries over the same gauges: one
# that relabels (as examples/promql-node-power.yaml does), one that aggregates.
RELABELLED = 'label_replace(polca_gpu_power_watts, "host", "$1", "node", "(.*)")'
NODE_POWER = {
    "gpu-series": {"source": "gpu"},
    "label_replace": {"source": "promql", "query": RELABELLED, "nodeLabel": "host"},
    "aggregation": {"source": "promql", "query": "sum by (node) (polca_gpu_power_watts)"},
}


@dataclass
class Operator:
    """The operator's control loop for one policy, reading only Prometheus (no direct scrape)."""

    loop: ControlLoop
    sink: RecordingSink
    metrics: OperatorMetrics


def operator(session: aiohttp.ClientSession) -> Operator:
    sink, metrics = RecordingSink(), OperatorMetrics()
    deps = LoopDeps(
        reader=PowerReader(PrometheusSource(session, timeout_s=2), None),
        status_sink=sink,
        metrics=metrics,
        health=Health(),
    )
    return Operator(ControlLoop("row-a", deps, RecordingEvents()), sink, metrics)


async def cycle_until(
    loop: ControlLoop, body: dict[str, Any], view: StaticView, *, stale: bool
) -> CycleOutcome:
    """Cycles (one per 0.5 s, at most 30 s) until Prometheus answers and the domain's power is
    fresh, or stale (`stale`); a failed query (Prometheus restarting) is neither."""
    deadline = time.monotonic() + 30
    while True:
        outcome = await loop.cycle(body, view)
        reading = outcome.reading
        if reading is not None and not reading.errors and (reading.power is None) == stale:
            return outcome
        if time.monotonic() > deadline:
            return outcome
        await asyncio.sleep(0.5)


@pytest.mark.parametrize("counted_by", NODE_POWER)
async def test_samples_that_stop_without_staleness_markers_make_the_domain_stale(
    counted_by: str, daemons: Daemons, prometheus: Prometheus
) -> None:
    """Prometheus restarted without its targets: the old series stay visible for 5 minutes
    and get no staleness markers. timestamp() of label_replace(...) or sum(...) would be the
    query's time, so only a bounded lookback sees that the samples stopped."""
    body = policy_body(
        telemetry={
            "source": "prometheus",
            "prometheusURL": prometheus.url,
            "stalenessSeconds": STALENESS_S,
            "directFallback": False,
        },
        nodePower=NODE_POWER[counted_by],
    )
    view = StaticView(
        labels={n: {DOMAIN_LABEL: "row-a"} for n in ("n1", "n2")},
        node_reports={n: NodeReport(gpu_count=2) for n in ("n1", "n2")},
    )
    async with aiohttp.ClientSession() as session:
        op = operator(session)
        fresh = await cycle_until(op.loop, body, view, stale=False)
        assert fresh.reading is not None
        assert fresh.reading.power is not None
        assert fresh.reading.power.power_w == 600.0
        assert fresh.decision is not None
        assert fresh.decision.stage == 0

        prometheus.stop()
        restarted = start_prometheus(prometheus.state_dir, [], port=prometheus.port)
        try:
            # The old samples are still answered, and through label_replace look brand new.
            ages = restarted.query(f"time() - timestamp({RELABELLED})")
            assert len(ages) == 3, "old series visible"
            assert all(float(a["value"][1]) == 0 for a in ages)
            stale = await cycle_until(op.loop, body, view, stale=True)
            assert len(restarted.query("polca_gpu_power_watts")) == 3, "old series still visible"
        finally:
            restarted.stop()
    assert stale.reading is not None
    assert stale.reading.errors == (), "Prometheus answered"
    assert stale.reading.power is None
    assert stale.decision is not None
    assert stale.decision.stage == POLCA_PLAN.failsafe_stage
    conditions = {c["type"]: (c["status"], c["reason"]) for c in op.sink.last["conditions"]}
    assert conditions["TelemetryStale"] == ("True", "NoFreshPower")
    assert op.metrics.registry.get_sample_value("polca_domain_failsafe", {"policy": "row-a"}) == 1


# --- nodePower.source promql with dcgm-exporter's series (GPU Operator clusters) ------------

DCGM_EXPOSITION = Path(__file__).parent / "data" / "dcgm-exporter.prom"
DCGM_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dcgm-node-power.yaml"
DCGM_METRIC = "DCGM_FI_DEV_POWER_USAGE"
DCGM_NODE_POWER_W = {"dcgm-n1": 612.25 + 71.5, "dcgm-n2": 688.0 + 702.5}


class _Exposition(BaseHTTPRequestHandler):
    body = DCGM_EXPOSITION.read_bytes()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass


@pytest.fixture
def dcgm_exporter() -> Iterator[int]:
    """A stand-in dcgm-exporter serving its exposition for two 2-GPU nodes."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Exposition)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def dcgm_query(prom: Prometheus, matcher: str = "") -> PowerQuery:
    """The PowerQuery the operator builds from examples/dcgm-node-power.yaml (`matcher`:
    label matchers added to its selector, as the example says to when two jobs scrape)."""
    spec = PowerPolicy.model_validate(yaml.safe_load(DCGM_EXAMPLE.read_text())).spec
    assert spec.node_power.source == "promql"
    assert spec.node_power.query == DCGM_METRIC  # a plain selector keeps sample times
    return PowerQuery(
        nodes=(DomainNode("dcgm-n1"), DomainNode("dcgm-n2")),
        source="prometheus",
        prometheus_url=prom.url,
        staleness_s=STALENESS_S,
        promql=f"{spec.node_power.query}{{{matcher}}}" if matcher else spec.node_power.query,
        node_label=spec.node_power.node_label,
    )


async def test_dcgm_power_usage_as_node_power(
    dcgm_exporter: int, source: PrometheusSource, tmp_path: Path
) -> None:
    """The documented query: DCGM's per-GPU watts summed per node (its clock and energy series
    ignored), each node's time the scrape's, so the staleness check sees a dead exporter."""
    prom = start_prometheus(
        tmp_path / "prometheus", [f"127.0.0.1:{dcgm_exporter}"], scrape_interval_s=2.0
    )
    try:
        prom.wait_for(DCGM_METRIC, count=4)
        query = dcgm_query(prom)

        async def ages_s() -> list[float]:
            samples = await source.node_samples(query, {"dcgm-n1", "dcgm-n2"})
            assert {n: s.power_w for n, s in samples.items()} == DCGM_NODE_POWER_W
            return [time.time() - s.time_s for s in samples.values()]

        # A query-time stamp would make every age ~0; the scrape's grows between scrapes.
        deadline = time.monotonic() + 30
        while max(await ages_s()) < 0.5 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert 0.5 <= max(await ages_s()) <= STALENESS_S
    finally:
        prom.stop()


async def test_dcgm_scraped_by_two_jobs_counts_each_gpu_once(
    dcgm_exporter: int, source: PrometheusSource, tmp_path: Path
) -> None:
    prom = start_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{dcgm_exporter}"], jobs=2)
    try:
        prom.wait_for(DCGM_METRIC, count=8)
        samples = await source.node_samples(dcgm_query(prom, 'job="polca"'), {"dcgm-n1", "dcgm-n2"})
        assert {n: s.power_w for n, s in samples.items()} == DCGM_NODE_POWER_W
    finally:
        prom.stop()


async def test_dcgm_exporter_gone_is_no_power_not_zero(
    dcgm_exporter: int, source: PrometheusSource, tmp_path: Path
) -> None:
    """A stopped dcgm-exporter leaves the domain without fresh power (the failsafe stage)."""
    prom = start_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{dcgm_exporter}"])
    try:
        prom.wait_for(DCGM_METRIC, count=4)
        query = dcgm_query(prom)
        prom.set_targets([])  # the exporter's series get staleness markers
        deadline = time.monotonic() + 30
        samples = await source.node_samples(query, {"dcgm-n1", "dcgm-n2"})
        while samples and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            samples = await source.node_samples(query, {"dcgm-n1", "dcgm-n2"})
        assert samples == {}
    finally:
        prom.stop()
