"""Telemetry sources against real HTTP servers on loopback, and the fallback between them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from polca_operator.domain_power import DomainNode, NodeSample
from polca_operator.telemetry import (
    PowerQuery,
    PowerReader,
    PrometheusSource,
    SourceName,
    TelemetryError,
    parse_vector,
)

NOW_S = 1_750_000_000.0
Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start aiohttp apps on loopback ports; returns each one's base URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def vector(label: str, values: dict[str, float]) -> dict[str, object]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {label: k}, "value": [NOW_S, str(v)]} for k, v in values.items()],
        },
    }


# --- parsing --------------------------------------------------------------------------------


def test_parse_vector_keys_by_label_and_drops_nan() -> None:
    payload = vector("node", {"a": 1.5, "b": float("nan")})
    assert parse_vector(payload, "node") == {"a": 1.5}


@pytest.mark.parametrize(
    "payload",
    [
        {"status": "error", "error": "bad query"},
        {"status": "success", "data": {"resultType": "matrix", "result": []}},
        {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}},
        "not json",
    ],
)
def test_parse_vector_rejects_bad_answers(payload: object) -> None:
    with pytest.raises(TelemetryError):
        parse_vector(payload, "node")


def test_prometheus_expressions_ask_for_sample_times() -> None:
    gpu = PowerQuery(nodes=(), staleness_s=10)
    fresh = "time() - timestamp(polca_gpu_power_watts) <= 10"
    assert PrometheusSource.expressions(gpu) == (
        f"sum by (node) (max by (node, gpu) (polca_gpu_power_watts and ({fresh})))",
        f"min by (node) (timestamp(polca_gpu_power_watts) and ({fresh}))",
    )
    pdu = PowerQuery(nodes=(), promql='pdu_watts{rack="r1"}', node_label="host", staleness_s=2.5)
    inner = '(pdu_watts{rack="r1"})'
    fresh = f"time() - timestamp({inner}) <= 2.5"
    assert PrometheusSource.expressions(pdu) == (
        f"sum by (host) ({inner} and ({fresh}))",
        f"min by (host) (timestamp({inner}) and ({fresh}))",
    )


def test_prometheus_expressions_bound_the_selectors_of_a_function_or_aggregation() -> None:
    """timestamp() of label_replace(...) is the query's time: the lookback is bounded instead."""
    bmc = PowerQuery(
        nodes=(),
        promql='label_replace(bmc_watts, "node", "$1", "instance", "(.*)")',
        staleness_s=15,
    )
    power = (
        'sum by (node) (label_replace(last_over_time(bmc_watts[15000ms]), "node", "$1", '
        '"instance", "(.*)"))'
    )
    assert PrometheusSource.expressions(bmc) == (power, f"timestamp({power})")


def test_prometheus_expressions_refuse_a_query_that_does_not_tokenise() -> None:
    with pytest.raises(TelemetryError, match=r"spec.nodePower.query: unclosed '\('"):
        PrometheusSource.expressions(PowerQuery(nodes=(), promql="sum(x", staleness_s=5))


# --- sources over HTTP ----------------------------------------------------------------------


def prometheus_app(
    power: dict[str, float], times: dict[str, float], queries: list[str] | None = None
) -> web.Application:
    """A stand-in for Prometheus' query endpoint; records the expressions into `queries`."""
    seen = queries if queries is not None else []

    async def query(request: web.Request) -> web.Response:
        expr = (await request.post())["query"]
        assert isinstance(expr, str)
        seen.append(expr)
        answer = vector("node", times if expr.startswith("min by") else power)
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/api/v1/query", query)
    return app


async def test_prometheus_source_pairs_power_with_sample_time(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    queries: list[str] = []
    app = prometheus_app(
        {"a": 3000.0, "b": 2000.0, "other": 1.0}, {"a": NOW_S - 1, "b": NOW_S}, queries
    )
    url = await serve(app)
    query = PowerQuery(nodes=(DomainNode("a"), DomainNode("b")), source="prometheus",
                       prometheus_url=url + "/")  # fmt: skip
    samples = await PrometheusSource(session).node_samples(query, {"a", "b"})
    assert samples == {"a": NodeSample(3000.0, NOW_S - 1), "b": NodeSample(2000.0, NOW_S)}
    assert len(queries) == 2


async def test_prometheus_source_leaves_out_nodes_without_sample_time(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    url = await serve(prometheus_app({"a": 1.0, "b": 2.0}, {"a": NOW_S}))
    query = PowerQuery(nodes=(DomainNode("a"), DomainNode("b")), prometheus_url=url)
    assert set(await PrometheusSource(session).node_samples(query, {"a", "b"})) == {"a"}


async def test_prometheus_source_times_out(serve: Serve, session: aiohttp.ClientSession) -> None:
    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/api/v1/query", slow)
    url = await serve(app)
    source = PrometheusSource(session, timeout_s=0.2)
    with pytest.raises(TelemetryError, match="Timeout"):
        await source.node_samples(PowerQuery(nodes=(), prometheus_url=url), ())


async def test_prometheus_source_unreachable(session: aiohttp.ClientSession) -> None:
    query = PowerQuery(nodes=(), prometheus_url="http://127.0.0.1:9")
    with pytest.raises(TelemetryError):
        await PrometheusSource(session, timeout_s=1).node_samples(query, ())


# --- fallback -------------------------------------------------------------------------------


@dataclass
class FakeSource:
    name: SourceName
    samples: dict[str, NodeSample] = field(default_factory=dict)
    error: str | None = None
    asked: list[set[str]] = field(default_factory=list)

    async def node_samples(
        self, query: PowerQuery, nodes: Collection[str]
    ) -> dict[str, NodeSample]:
        self.asked.append(set(nodes))
        if self.error:
            raise TelemetryError(self.error)
        return {n: s for n, s in self.samples.items() if n in nodes}


def two_nodes(source: SourceName = "prometheus", **kwargs: object) -> PowerQuery:
    return PowerQuery(
        nodes=(DomainNode("a"), DomainNode("b")),
        source=source,
        prometheus_url="http://prometheus:9090",
        staleness_s=5,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_primary_answers_and_fallback_is_not_asked() -> None:
    prom = FakeSource("prometheus", {"a": NodeSample(10, NOW_S), "b": NodeSample(20, NOW_S)})
    direct = FakeSource("direct")
    reading = await PowerReader(prom, direct, wall_clock=lambda: NOW_S).read(two_nodes())
    assert reading.power is not None
    assert reading.power.power_w == 30
    assert reading.sources == ("prometheus",)
    assert direct.asked == []


async def test_failed_prometheus_falls_back_to_direct() -> None:
    prom = FakeSource("prometheus", error="connection refused")
    direct = FakeSource("direct", {"a": NodeSample(10, NOW_S), "b": NodeSample(20, NOW_S)})
    reading = await PowerReader(prom, direct, wall_clock=lambda: NOW_S).read(two_nodes())
    assert reading.power is not None
    assert reading.power.power_w == 30
    assert reading.sources == ("direct",)
    assert reading.errors == (("prometheus", "connection refused"),)


async def test_fallback_is_asked_only_for_the_missing_nodes() -> None:
    prom = FakeSource("prometheus", {"a": NodeSample(10, NOW_S), "b": NodeSample(20, NOW_S - 60)})
    direct = FakeSource("direct", {"b": NodeSample(25, NOW_S)})
    reading = await PowerReader(prom, direct, wall_clock=lambda: NOW_S).read(two_nodes())
    assert direct.asked == [{"b"}]
    assert reading.power is not None
    assert reading.power.power_w == 35
    assert reading.sources == ("prometheus", "direct")


async def test_direct_policy_falls_back_to_prometheus() -> None:
    prom = FakeSource("prometheus", {"a": NodeSample(1, NOW_S), "b": NodeSample(2, NOW_S)})
    direct = FakeSource("direct", error="none of 2 metrics endpoints answered with power")
    reading = await PowerReader(prom, direct, wall_clock=lambda: NOW_S).read(two_nodes("direct"))
    assert reading.power is not None
    assert reading.sources == ("prometheus",)


async def test_fallback_disabled_and_both_stale_give_no_power() -> None:
    prom = FakeSource("prometheus", error="connection refused")
    direct = FakeSource("direct", {"a": NodeSample(10, NOW_S)})
    reader = PowerReader(prom, direct, wall_clock=lambda: NOW_S)
    no_fallback = await reader.read(two_nodes(direct_fallback=False))
    assert no_fallback.power is None
    assert direct.asked == []

    stale = FakeSource("direct", {"a": NodeSample(10, NOW_S - 60)})
    both_stale = await PowerReader(prom, stale, wall_clock=lambda: NOW_S).read(two_nodes())
    assert both_stale.power is None
    assert both_stale.age_s(NOW_S) is None


async def test_real_prometheus_payload_round_trip_through_json(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    # The exact JSON shape Prometheus 2.x returns, values as strings.
    body = json.dumps(vector("node", {"a": 12.25}))

    async def query(_: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/v1/query", query)
    url = await serve(app)
    samples = await PrometheusSource(session).node_samples(
        PowerQuery(nodes=(DomainNode("a"),), prometheus_url=url), {"a"}
    )
    assert samples["a"].power_w == 12.25
