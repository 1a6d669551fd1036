"""The Kopf handlers: indexes, start-up and clean-up, the control daemon, the restore finalizer.

Everything is registered on a given registry, so `main` and the tests decide where it goes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from polca.api.powerpolicy import GROUP, VERSION
from polca.options import DEFAULT_DAEMON_METRICS_PORT
from polca_operator.indexes import (
    NODE_ADDRESSES_INDEX,
    NODE_LABELS_INDEX,
    NODE_REPORTS_INDEX,
    IndexView,
    Trackers,
    heartbeat_seconds,
    register_indexes,
)
from polca_operator.kube import PLURAL, CoreEvents, KubeStatusSink, PolicyEvents, api_client
from polca_operator.loop import ControlLoop, LoopDeps, run_loop
from polca_operator.metrics import Health, MetricsServer, OperatorMetrics
from polca_operator.power_streams import StreamSource
from polca_operator.restore import DEFAULT_RESTORE_WAIT_S, restore_verdict
from polca_operator.telemetry import DEFAULT_TIMEOUT_S, PowerReader, PrometheusSource

__all__ = ["CONTROL_DAEMON_ID", "RESTORE_HANDLER_ID", "OperatorConfig", "register"]

log = logging.getLogger(__name__)

CONTROL_DAEMON_ID = "control-loop"
RESTORE_HANDLER_ID = "restore-defaults"
RESTORE_POLL_S = 1.0


@dataclass(frozen=True)
class OperatorConfig:
    """Operator-wide settings (from the command line and environment)."""

    metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped from outside the pod
    metrics_port: int = 9401
    prometheus_url: str | None = None
    telemetry_timeout_s: float = DEFAULT_TIMEOUT_S
    restore_wait_s: float = DEFAULT_RESTORE_WAIT_S
    status_refresh_s: float = 15.0
    # Ports a daemon's published metrics endpoint may use; None: any (test rigs only).
    daemon_ports: frozenset[int] | None = frozenset({DEFAULT_DAEMON_METRICS_PORT})


class _Runtime:
    """What start-up creates and the handlers share; empty until start-up ran."""

    deps: LoopDeps | None = None
    events: CoreEvents | None = None
    session: aiohttp.ClientSession | None = None
    streams_session: aiohttp.ClientSession | None = None
    streams: StreamSource | None = None
    server: MetricsServer | None = None

    async def start(self, config: OperatorConfig, metrics: OperatorMetrics, health: Health) -> None:
        self.session = aiohttp.ClientSession()
        timeout_s = config.telemetry_timeout_s
        # One long-lived connection per daemon: no pool limit (aiohttp's default is 100), or
        # the 101st node's stream would wait for a slot forever.
        self.streams_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.streams = StreamSource(self.streams_session, connect_timeout_s=timeout_s)
        reader = PowerReader(PrometheusSource(self.session, timeout_s=timeout_s), self.streams)
        self.server = MetricsServer(
            metrics, health, host=config.metrics_host, port=config.metrics_port
        )
        await self.server.start()
        client = api_client()
        self.events = CoreEvents(client)
        self.deps = LoopDeps(
            reader=reader,
            status_sink=KubeStatusSink(client),
            metrics=metrics,
            health=health,
            default_prometheus_url=config.prometheus_url,
            status_refresh_s=config.status_refresh_s,
            daemon_ports=config.daemon_ports,
            streams=self.streams,
        )
        log.info("metrics and /healthz on %s:%d", config.metrics_host, config.metrics_port)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self.streams is not None:
            await self.streams.close()
        for session in (self.streams_session, self.session):
            if session is not None:
                await session.close()

    def require(self) -> LoopDeps:
        if self.deps is None:
            raise kopf.TemporaryError("the operator is still starting", delay=1)
        return self.deps

    def require_events(self) -> CoreEvents:
        if self.events is None:
            raise kopf.TemporaryError("the operator is still starting", delay=1)
        return self.events


def _view(kwargs: dict[str, Any], trackers: Trackers) -> IndexView:
    return IndexView(
        kwargs[NODE_LABELS_INDEX],
        kwargs[NODE_REPORTS_INDEX],
        trackers,
        kwargs[NODE_ADDRESSES_INDEX],
    )


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> OperatorMetrics:
    """Register every handler; returns the metrics (served once the operator starts)."""
    trackers = register_indexes(registry)
    metrics = OperatorMetrics()
    health = Health()
    shared = _Runtime()

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A plain registry has no default login: use the kubernetes client's (in-cluster
        # service account, else $KUBECONFIG), as Kopf's default registry would.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def _start(**_: Any) -> None:
        await shared.start(config, metrics, health)

    @kopf.on.cleanup(registry=registry)
    async def _stop(**_: Any) -> None:
        await shared.stop()

    @kopf.daemon(
        GROUP,
        VERSION,
        PLURAL,
        id=CONTROL_DAEMON_ID,
        registry=registry,
        cancellation_timeout=10.0,
    )
    async def _control(
        name: str, body: kopf.Body, stopped: kopf.DaemonStopped, **kwargs: Any
    ) -> None:
        events = PolicyEvents(shared.require_events(), body)
        loop = ControlLoop(name, shared.require(), events, status=body.get("status"))
        log.info("PowerPolicy %s: control loop starts at stage %s", name,
                 (body.get("status") or {}).get("stage", "none yet"))  # fmt: skip
        await run_loop(loop, body, _view(kwargs, trackers), stopped)

    @kopf.on.event(GROUP, VERSION, "nodepowerstates", registry=registry)
    def _node_heartbeat(
        type: str | None,  # noqa: A002 - Kopf's keyword
        name: str,
        status: Mapping[str, Any],
        **_: Any,
    ) -> None:
        # on.event, not on.delete: the operator must not put finalizers on the daemons' objects.
        if type == "DELETED":
            metrics.forget_node(name)
        else:
            metrics.node_report(name, heartbeat_seconds(status))

    @kopf.on.delete(GROUP, VERSION, PLURAL, id=RESTORE_HANDLER_ID, registry=registry)
    async def _restore(name: str, body: kopf.Body, **kwargs: Any) -> None:
        # Poll the live index in the handler rather than retrying it: retries would post an
        # event each, and the index updates in place while we wait.
        view = _view(kwargs, trackers)
        started_s = time.monotonic()
        announced = False
        while True:
            waited_s = time.monotonic() - started_s
            verdict = restore_verdict(name, view, waited_s=waited_s, wait_s=config.restore_wait_s)
            if verdict.outcome != "wait":
                break
            if not announced:
                log.info("PowerPolicy %s: %s", name, verdict.message)
                announced = True
            await asyncio.sleep(RESTORE_POLL_S)
        restored = verdict.outcome == "restored"
        shared.require_events().post(
            body,
            "Normal" if restored else "Warning",
            "DefaultsRestored" if restored else "RestoreIncomplete",
            verdict.message,
        )
        log.info("PowerPolicy %s: %s", name, verdict.message)
        metrics.forget(name)
        health.forget(name)

    return metrics
