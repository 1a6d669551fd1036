"""Telemetry: per-node power from Prometheus or straight from the node daemons, with fallback.

Two sources implement :class:`TelemetrySource`:

- :class:`PrometheusSource` asks the Prometheus HTTP API (production). GPU power is the
  daemons' ``polca_gpu_power_watts`` summed by ``node``; with ``nodePower.source: promql`` it is
  the policy's own query summed by its node label. A second query, ``timestamp(...)``, gives each
  node's *sample* time, so a Prometheus that lost its targets cannot pass old data off as new;
  a query that is more than a bare selector has its selectors bounded to the staleness limit.
- :class:`~polca_operator.power_streams.StreamSource` (``direct``, the default) holds each
  daemon's power stream, the line per sample it writes beside the metrics endpoint it publishes
  in its NodePowerState; it is also the fallback of ``prometheus``.

:class:`PowerReader` asks the policy's source first and the other one for the nodes still
missing, then combines the fresh samples (:mod:`polca_operator.domain_power`). When neither
gives a fresh sample the reading has no power, and the controller goes to the failsafe stage.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp

from polca.tooling.promql_lookback import PromQLSyntaxError, bound_lookback, is_plain_selector
from polca_operator.domain_power import DomainNode, DomainPower, NodeSample, combine

__all__ = [
    "GPU_POWER_METRIC",
    "PowerQuery",
    "PowerReader",
    "PrometheusSource",
    "TelemetryError",
    "TelemetryReading",
    "TelemetrySource",
    "parse_vector",
]

GPU_POWER_METRIC = "polca_gpu_power_watts"
NODE_LABEL = "node"
GPU_LABEL = "gpu"  # the GPU index, unique within a node
DEFAULT_TIMEOUT_S = 2.0

SourceName = Literal["prometheus", "direct"]


class TelemetryError(Exception):
    """A source could not answer (unreachable, timed out, bad answer)."""


@dataclass(frozen=True, slots=True)
class PowerQuery:
    """What one control cycle asks for: the domain's nodes and how their power is counted."""

    nodes: tuple[DomainNode, ...]
    source: SourceName = "direct"
    prometheus_url: str | None = None
    direct_fallback: bool = True
    overhead_w: float = 0.0
    staleness_s: float = 10.0
    promql: str | None = None
    node_label: str = NODE_LABEL
    metrics_urls: Mapping[str, str] = field(default_factory=dict)

    @property
    def node_names(self) -> frozenset[str]:
        return frozenset(n.name for n in self.nodes)


class TelemetrySource(Protocol):
    """Per-node power samples for some nodes of a query's domain."""

    name: SourceName

    async def node_samples(
        self, query: PowerQuery, nodes: Collection[str]
    ) -> dict[str, NodeSample]:
        """Samples for (at least) `nodes`; missing nodes are left out, not zeroed.

        Raises TelemetryError when the source as a whole cannot answer.
        """
        ...


# --- parsing, pure -------------------------------------------------------------------------


def parse_vector(payload: Any, label: str) -> dict[str, float]:
    """Values of a Prometheus instant-vector answer, keyed by `label`; NaNs are dropped."""
    if not isinstance(payload, dict) or payload.get("status") != "success":
        error = payload.get("error") if isinstance(payload, dict) else None
        raise TelemetryError(f"Prometheus answered with an error: {error or payload!r:.200}")
    data = payload.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise TelemetryError(f"expected an instant vector, got {data!r:.200}")
    out: dict[str, float] = {}
    for series in data.get("result") or ():
        try:
            key = series["metric"].get(label)
            value = float(series["value"][1])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise TelemetryError(f"malformed series {series!r:.200}") from exc
        if key is not None and not math.isnan(value):
            out[str(key)] = value
    return out


# --- sources ---------------------------------------------------------------------------------


class PrometheusSource:
    """Instant queries against the Prometheus HTTP API (POST, so long queries fit)."""

    name: SourceName = "prometheus"

    def __init__(self, session: aiohttp.ClientSession, *, timeout_s: float = DEFAULT_TIMEOUT_S):
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    @staticmethod
    def expressions(query: PowerQuery) -> tuple[str, str]:
        """The power and sample-time expressions for the query's way of counting power.

        Only series sampled within the staleness limit count. After a Prometheus restart,
        or a relabelled series, the old series stay visible for the lookback window (5 min);
        counted, they would add their old power twice and make the node look stale.

        ``timestamp()`` gives a sample's own time only for a bare selector; of a function or an
        aggregation (``label_replace``, ``sum by``) it gives the query's time, so such a query
        could never look stale. Its selectors are bounded to the staleness limit instead
        (:func:`~polca.tooling.promql_lookback.bound_lookback`): a node whose samples stopped
        drops out of the answer. Its sample time is then the query's, at most that old.

        Raises TelemetryError for a query that cannot be tokenised.
        """
        if query.promql is None:
            inner, label = GPU_POWER_METRIC, NODE_LABEL
        else:
            label = query.node_label
            try:
                plain = is_plain_selector(query.promql)
                if not plain:
                    bounded = (
                        f"sum by ({label}) ({bound_lookback(query.promql, query.staleness_s)})"
                    )
                    return bounded, f"timestamp({bounded})"
            except PromQLSyntaxError as exc:
                raise TelemetryError(f"spec.nodePower.query: {exc}") from exc
            inner = f"({query.promql})"
        fresh = f"time() - timestamp({inner}) <= {query.staleness_s:g}"
        per_series = f"{inner} and ({fresh})"
        if query.promql is None:
            # One value per GPU: the same daemon scraped by two jobs (a ServiceMonitor and a
            # PodMonitor, say) gives each GPU two series, which a plain sum counts twice.
            per_series = f"max by ({NODE_LABEL}, {GPU_LABEL}) ({per_series})"
        return (
            f"sum by ({label}) ({per_series})",
            f"min by ({label}) (timestamp({inner}) and ({fresh}))",
        )

    async def node_samples(
        self, query: PowerQuery, nodes: Collection[str]
    ) -> dict[str, NodeSample]:
        if not query.prometheus_url:
            raise TelemetryError("no Prometheus URL (spec.telemetry.prometheusURL)")
        label = query.node_label if query.promql is not None else NODE_LABEL
        power_expr, time_expr = self.expressions(query)
        power, times = await asyncio.gather(
            self._query(query.prometheus_url, power_expr, label),
            self._query(query.prometheus_url, time_expr, label),
        )
        wanted = set(nodes)
        # A node without a sample time is left out: its age is unknown.
        return {
            node: NodeSample(power_w=power_w, time_s=times[node])
            for node, power_w in power.items()
            if node in wanted and node in times
        }

    async def _query(self, base_url: str, expr: str, label: str) -> dict[str, float]:
        url = base_url.rstrip("/") + "/api/v1/query"
        try:
            async with self._session.post(
                url, data={"query": expr}, timeout=self._timeout
            ) as response:
                payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TelemetryError(f"{url}: {type(exc).__name__}: {exc}") from exc
        return parse_vector(payload, label)


# --- reading domain power with fallback ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class TelemetryReading:
    """The domain power of one cycle (None: no fresh power) and where it came from."""

    power: DomainPower | None
    sources: tuple[SourceName, ...] = ()
    errors: tuple[tuple[SourceName, str], ...] = ()
    samples: Mapping[str, NodeSample] = field(default_factory=dict)  # the fresh ones used

    def age_s(self, now_s: float) -> float | None:
        return None if self.power is None else self.power.age_s(now_s)


class PowerReader:
    """Asks the policy's source, then the other source for the nodes still missing."""

    def __init__(
        self,
        prometheus: TelemetrySource | None,
        direct: TelemetrySource | None,
        *,
        wall_clock: Callable[[], float] = time.time,
    ):
        self._prometheus = prometheus
        self._direct = direct
        self._wall_clock = wall_clock

    def sources_for(self, query: PowerQuery) -> list[TelemetrySource]:
        """The sources to ask, in order: the policy's own, then the fallback if allowed."""
        prometheus = self._prometheus if query.prometheus_url else None
        if query.source == "prometheus":
            fallback = self._direct if query.direct_fallback else None
            ordered = [self._prometheus, fallback]
        else:
            ordered = [self._direct, prometheus]
        return [s for s in ordered if s is not None]

    async def read(
        self, query: PowerQuery, *, last_known: Mapping[str, NodeSample] | None = None
    ) -> TelemetryReading:
        """Fresh per-node power from the sources, combined; `last_known` sizes silent nodes."""
        staleness_s = query.staleness_s
        names = query.node_names
        expected = {n.name for n in query.nodes if n.reporting}
        samples: dict[str, NodeSample] = {}
        used: list[SourceName] = []
        errors: list[tuple[SourceName, str]] = []
        for source in self.sources_for(query):
            wanted = names if not samples else expected - samples.keys()
            if samples and not wanted:
                break
            try:
                got = await source.node_samples(query, wanted)
            except TelemetryError as exc:
                errors.append((source.name, str(exc)))
                continue
            oldest_s = self._wall_clock() - staleness_s
            before = len(samples)
            for node, sample in got.items():
                if sample.time_s >= oldest_s and sample.power_w >= 0 and node not in samples:
                    samples[node] = sample
            if len(samples) > before:
                used.append(source.name)
        power = combine(
            query.nodes,
            samples,
            overhead_w=query.overhead_w,
            now_s=self._wall_clock(),
            staleness_s=staleness_s,
            last_known=last_known,
        )
        return TelemetryReading(power, tuple(used), tuple(errors), samples)
