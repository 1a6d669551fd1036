"""Prometheus metrics on /metrics, /healthz for the liveness probe, /readyz for readiness, and
the node's power, one line per sample, on /power/stream (`polca_node.power_feed`).

Metric names are a contract (the Helm chart's alerts and the operator's `prometheus` telemetry
use them); they follow Prometheus' naming rules: base units in the name, `_total` for counters.

Per GPU, labelled node and gpu (the NVML index) only, so a pod coming or going creates no series:
  polca_gpu_info                         1; who the GPU is and who uses it: labels uuid, model,
                                         pod, namespace, tier (empty when none). Join on
                                         (node, gpu) where a query needs them
  polca_gpu_power_watts                  board power; label source: "instant" (the last 100 ms,
                                         NVML_FI_DEV_POWER_INSTANT) where the driver offers it,
                                         else "average" (nvmlDeviceGetPowerUsage, the last ~1 s);
                                         and label tier, as on polca_gpu_info: the replay and
                                         recorded histories read power by tier, and a tier is
                                         one of a policy's few names, not a pod's
  polca_gpu_energy_joules_total          energy since the driver loaded (counter; read once
                                         per status heartbeat, as each read costs ~4 ms)
  polca_gpu_sm_clock_mhz                 SM clock now
  polca_gpu_clock_ceiling_mhz            the SM clock ceiling in force: the locked ceiling, or
                                         the GPU's maximum SM clock when none is set; absent
                                         while unknown (after a restart, before the first write)
  polca_gpu_power_limit_watts            power management limit
  polca_gpu_enforced_power_limit_watts   the limit the GPU obeys (ours or a lower one)
  polca_gpu_throttle_reason              1 for each clock-event reason in effect (label reason)
Per node, labelled node:
  polca_gpu_actions_total                writes that changed a GPU (labels gpu, knob, dry_run:
                                         "true" counts what a dry-run policy would have written)
  polca_gpu_write_failures_total         rejected writes (labels gpu, knob, reason)
  polca_guard_activations_total          the local guard starting to throttle (label policy)
  polca_nvml_call_seconds                NVML call latency (histogram, label function); only
                                         with --nvml-latency-metrics: ~20 functions × 14 series
                                         would be most of a node's series
  polca_node_heartbeat_timestamp_seconds Unix time of the last completed GPU sample
  polca_throttled_gpus                   GPUs limited below their defaults, by tier (label tier:
                                         one series per tier present on the node, 0 included;
                                         "(none)" for GPUs no policy decides about)
  polca_unreadable_policies              stored PowerPolicies that may select the node and that
                                         the daemon cannot read (it holds the GPUs' limits)
  polca_unconfirmed_gpus                 GPUs whose pod the kubelet (PodResources) and the pod
                                         watch disagree about (only tightened meanwhile)

Per-GPU series are produced from the latest snapshot on each scrape, so a GPU whose pod or tier
changes does not leave a stale series behind.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from polca.options import DEFAULT_DAEMON_METRICS_PORT
from polca.power_stream import STREAM_PATH, PowerSource
from polca_node.actuator import Knob
from polca_node.gpu.backend import CLOCK_EVENT_REASONS, GpuInfo, GpuReading
from polca_node.power_feed import PowerFeed

__all__ = [
    "GPU_INFO_LABELS",
    "GPU_LABELS",
    "NO_TIER",
    "GpuSample",
    "MetricsServer",
    "NodeMetrics",
    "NodeSnapshot",
]

logger = logging.getLogger(__name__)

GPU_LABELS = ("node", "gpu")
GPU_INFO_LABELS = (*GPU_LABELS, "uuid", "model", "pod", "namespace", "tier")
# The tier label of GPUs no policy decides about. Not a DNS label, so no policy's tier can
# take the name (GPUs without a pod are the policy's reserved tier "idle").
NO_TIER = "(none)"
# NVML calls take microseconds to milliseconds; a slow or hung GPU takes seconds.
NVML_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5)


@dataclass(frozen=True)
class GpuSample:
    """One GPU as the last sample saw it, with who uses it and what limits it."""

    info: GpuInfo
    reading: GpuReading | None  # None when the read failed
    pod_namespace: str = ""
    pod_name: str = ""
    tier: str = ""
    clock_ceiling_mhz: int | None = None
    clock_ceiling_known: bool = False
    throttled: bool = False  # limited below its defaults (a clock ceiling or a power cap)


@dataclass(frozen=True)
class NodeSnapshot:
    gpus: tuple[GpuSample, ...] = ()
    heartbeat_s: float | None = None  # Unix time of the sample

    def power(self) -> tuple[float, PowerSource] | None:
        """The node's GPU power as /metrics sums it, and the slower of its readings' sources;
        None when no GPU was read."""
        readings = [gpu.reading for gpu in self.gpus if gpu.reading is not None]
        if not readings:
            return None
        instant = all(r.power_source == "instant" for r in readings)
        return sum(r.fresh_power_w for r in readings), "instant" if instant else "average"

    @property
    def throttled_gpus(self) -> int:
        return sum(1 for gpu in self.gpus if gpu.throttled)

    def throttled_by_tier(self) -> dict[str, int]:
        """Throttled GPUs per tier, with a 0 for every tier present on the node.

        The zeros keep a tier's series alive while none of its GPUs is throttled, so a panel
        or alert sees 0 rather than no data.
        """
        counts: dict[str, int] = {}
        for gpu in self.gpus:
            tier = gpu.tier or NO_TIER
            counts[tier] = counts.get(tier, 0) + int(gpu.throttled)
        return counts


class _SnapshotCollector(Collector):
    def __init__(self, node: str) -> None:
        self._node = node
        self.snapshot = NodeSnapshot()

    def collect(self) -> Iterable[Metric]:
        snapshot = self.snapshot  # one consistent snapshot per scrape
        yield from self._gpu_families(snapshot.gpus)
        heartbeat = GaugeMetricFamily(
            "polca_node_heartbeat_timestamp_seconds",
            "Unix time of the daemon's last completed GPU sample.",
            labels=["node"],
        )
        if snapshot.heartbeat_s is not None:
            heartbeat.add_metric([self._node], snapshot.heartbeat_s)
        yield heartbeat
        throttled = GaugeMetricFamily(
            "polca_throttled_gpus",
            "GPUs limited below their defaults, by tier.",
            labels=["node", "tier"],
        )
        for tier, count in sorted(snapshot.throttled_by_tier().items()):
            throttled.add_metric([self._node, tier], count)
        yield throttled

    def _gpu_families(self, samples: tuple[GpuSample, ...]) -> Iterator[Metric]:
        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=[*GPU_LABELS, *extra])

        info = gauge(
            "polca_gpu_info",
            "1 per GPU: its UUID, model, and the pod and tier using it (empty when none).",
            GPU_INFO_LABELS[len(GPU_LABELS) :],
        )
        power = gauge(
            "polca_gpu_power_watts",
            "GPU board power in watts: the instant field where offered (source=instant), "
            "else the ~1 s average of nvmlDeviceGetPowerUsage (source=average).",
            ("tier", "source"),
        )
        energy = CounterMetricFamily(
            "polca_gpu_energy_joules",
            "GPU energy in joules since the driver loaded.",
            labels=list(GPU_LABELS),
        )
        clock = gauge("polca_gpu_sm_clock_mhz", "GPU SM clock in MHz.")
        ceiling = gauge(
            "polca_gpu_clock_ceiling_mhz",
            "SM clock ceiling in force in MHz (the maximum SM clock when none is set).",
        )
        limit = gauge("polca_gpu_power_limit_watts", "GPU power management limit in watts.")
        enforced = gauge(
            "polca_gpu_enforced_power_limit_watts", "Power limit the GPU enforces, in watts."
        )
        reasons = gauge(
            "polca_gpu_throttle_reason",
            "1 when the clock-event (throttle) reason is in effect.",
            ("reason",),
        )
        for sample in samples:
            labels = [self._node, str(sample.info.index)]
            info.add_metric(
                [*labels, sample.info.uuid, sample.info.name, sample.pod_name,
                 sample.pod_namespace, sample.tier],
                1.0,
            )  # fmt: skip
            if sample.clock_ceiling_known:
                value = sample.clock_ceiling_mhz or sample.info.max_sm_clock_mhz
                ceiling.add_metric(labels, value)
            reading = sample.reading
            if reading is None:
                continue
            power.add_metric([*labels, sample.tier, reading.power_source], reading.fresh_power_w)
            if reading.energy_j is not None:
                energy.add_metric(labels, reading.energy_j)
            clock.add_metric(labels, reading.sm_clock_mhz)
            limit.add_metric(labels, reading.settings.power_limit_w)
            enforced.add_metric(labels, reading.settings.enforced_limit_w)
            active = set(reading.clock_event_reasons)
            for reason in CLOCK_EVENT_REASONS.values():
                reasons.add_metric([*labels, reason], 1.0 if reason in active else 0.0)
        yield from (info, power, energy, clock, ceiling, limit, enforced, reasons)


class NodeMetrics:
    """The daemon's metrics. Implements the actuator's observer and the backend's call hook."""

    def __init__(
        self,
        node: str,
        registry: CollectorRegistry | None = None,
        *,
        nvml_latency: bool = False,
    ) -> None:
        self.node = node
        self.registry = registry if registry is not None else CollectorRegistry()
        self._snapshot = _SnapshotCollector(node)
        self.registry.register(self._snapshot)
        self.actions = Counter(
            "polca_gpu_actions",
            "Writes that changed a GPU setting (dry_run=true: writes a dry-run policy wanted).",
            ["node", "gpu", "knob", "dry_run"],
            registry=self.registry,
        )
        self.write_failures = Counter(
            "polca_gpu_write_failures",
            "GPU writes the GPU or driver rejected.",
            ["node", "gpu", "knob", "reason"],
            registry=self.registry,
        )
        self.guard_activations = Counter(
            "polca_guard_activations",
            "Times the local guard started throttling this node.",
            ["node", "policy"],
            registry=self.registry,
        )
        self.checkpoint_errors = Counter(
            "polca_node_checkpoint_errors",
            "Node-local checkpoints ignored (reason: Corrupt, UnknownVersion, OtherNode, "
            "Unreadable) or not written (WriteFailed).",
            ["node", "reason"],
            registry=self.registry,
        )
        # Opt-in: 14 series per NVML function, ~300 in all, would be most of a node's series.
        self.nvml_calls = (
            Histogram(
                "polca_nvml_call_seconds",
                "NVML call latency in seconds.",
                ["node", "function"],
                buckets=NVML_BUCKETS_S,
                registry=self.registry,
            )
            if nvml_latency
            else None
        )
        self.unreadable_policies = Gauge(
            "polca_unreadable_policies",
            "Stored PowerPolicies that may select this node and cannot be read: the node holds "
            "its GPUs' limits (never restores) while there are any.",
            ["node"],
            registry=self.registry,
        )
        self.unreadable_policies.labels(node)
        self.unconfirmed_gpus = Gauge(
            "polca_unconfirmed_gpus",
            "GPUs whose pod the kubelet (PodResources) and the pod watch disagree about: their "
            "limits are held (only tightened) until the two agree.",
            ["node"],
            registry=self.registry,
        )
        self.unconfirmed_gpus.labels(node)
        self.task_restarts = Counter(
            "polca_node_task_restarts",
            "Restarts of the daemon's long-running tasks after a failure (by task).",
            ["node", "task"],
            registry=self.registry,
        )
        self._nvml_children: dict[str, Any] = {}
        self.power_feed = PowerFeed()

    def update(self, snapshot: NodeSnapshot) -> None:
        """A completed sample: the next scrape serves it, and the power streams get it now."""
        self._snapshot.snapshot = snapshot
        power = snapshot.power()
        if power is not None:
            self.power_feed.publish(*power)

    @property
    def snapshot(self) -> NodeSnapshot:
        return self._snapshot.snapshot

    # -- ActuationObserver -------------------------------------------------------------------

    def on_write(self, index: int, knob: Knob) -> None:
        self.actions.labels(self.node, str(index), knob, "false").inc()

    def on_failure(self, index: int, knob: Knob, reason: str) -> None:
        self.write_failures.labels(self.node, str(index), knob, reason).inc()

    # -- the others --------------------------------------------------------------------------

    def on_dry_run_write(self, index: int, knob: Knob) -> None:
        self.actions.labels(self.node, str(index), knob, "true").inc()

    def on_task_restart(self, task: str) -> None:
        self.task_restarts.labels(self.node, task).inc()

    def on_checkpoint_error(self, reason: str) -> None:
        self.checkpoint_errors.labels(self.node, reason).inc()

    def set_unreadable_policies(self, count: int) -> None:
        self.unreadable_policies.labels(self.node).set(count)

    def set_unconfirmed_gpus(self, count: int) -> None:
        self.unconfirmed_gpus.labels(self.node).set(count)

    def on_guard_activation(self, policy: str) -> None:
        self.guard_activations.labels(self.node, policy).inc()

    @property
    def nvml_call_hook(self) -> Callable[[str, float, bool], None] | None:
        """The backend's per-call hook; None when latency metrics are off (no cost per call)."""
        return self.on_nvml_call if self.nvml_calls is not None else None

    def on_nvml_call(self, function: str, seconds: float, failed: bool) -> None:  # noqa: ARG002
        if self.nvml_calls is None:
            return
        # Called on every NVML call (hundreds a second): cache the labelled child.
        child = self._nvml_children.get(function)
        if child is None:
            child = self._nvml_children[function] = self.nvml_calls.labels(self.node, function)
        child.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        logger.debug("http: %s", format % args)


Check = Callable[[], tuple[bool, str]]
TEXT = "text/plain; charset=utf-8"


def _app(
    metrics: NodeMetrics, healthy: Check, ready: Check
) -> Callable[[Mapping[str, Any], Callable[..., Any]], Iterable[bytes]]:
    probes = {"/healthz": healthy, "/readyz": ready}

    def app(environ: Mapping[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        probe = probes.get(path)
        if probe is not None:
            ok, detail = probe()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", TEXT)])
            return [(detail + "\n").encode()]
        if path in ("/metrics", "/"):
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [metrics.exposition()]
        if path == STREAM_PATH:
            stream = metrics.power_feed.open()
            if stream is None:
                start_response("503 Service Unavailable", [("Content-Type", TEXT)])
                return [b"too many power streams open\n"]
            start_response("200 OK", [("Content-Type", TEXT), ("Cache-Control", "no-store")])
            return stream  # written line by line as the samples come
        start_response("404 Not Found", [("Content-Type", TEXT)])
        return [f"not found; try /metrics, {STREAM_PATH}, /healthz or /readyz\n".encode()]

    return app


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow scraper never stalls the liveness probe."""

    daemon_threads = True


class MetricsServer:
    """Serves /metrics, /power/stream, /healthz (liveness) and /readyz (readiness) from threads."""

    def __init__(
        self,
        metrics: NodeMetrics,
        healthy: Check,
        *,
        ready: Check | None = None,
        host: str = "0.0.0.0",  # noqa: S104 - Prometheus scrapes the pod from outside
        port: int = DEFAULT_DAEMON_METRICS_PORT,
    ) -> None:
        self._metrics = metrics
        self._server = make_server(
            host,
            port,
            _app(metrics, healthy, ready or healthy),
            server_class=_ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._metrics.power_feed.close()  # ends the streams, whose threads would outlive us
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
