"""Metrics: the contract names, labels and types, and the /metrics and /healthz endpoints."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import disable_created_metrics, enable_created_metrics
from prometheus_client.parser import text_string_to_metric_families

from polca.power.model import PhaseDemand
from polca_node.exporter import (
    GPU_INFO_LABELS,
    GPU_LABELS,
    NO_TIER,
    GpuSample,
    MetricsServer,
    NodeMetrics,
    NodeSnapshot,
)
from polca_node.gpu.backend import CLOCK_EVENT_REASONS
from polca_node.gpu.fake_nvml import FakeNvml, ManualClock
from polca_node.gpu.load import ConstantLoad
from polca_node.gpu.nvml_backend import NvmlBackend

# docs/install.md, "Metric contract": the series of one 8-GPU node, latency histogram off.
SERIES_BOUND_8_GPUS = 180
CONTRACT = {
    "polca_gpu_info": "gauge",
    "polca_gpu_power_watts": "gauge",
    "polca_gpu_energy_joules": "counter",
    "polca_gpu_sm_clock_mhz": "gauge",
    "polca_gpu_clock_ceiling_mhz": "gauge",
    "polca_gpu_power_limit_watts": "gauge",
    "polca_gpu_enforced_power_limit_watts": "gauge",
    "polca_gpu_throttle_reason": "gauge",
    "polca_gpu_actions": "counter",
    "polca_gpu_write_failures": "counter",
    "polca_guard_activations": "counter",
    "polca_nvml_call_seconds": "histogram",
    "polca_node_heartbeat_timestamp_seconds": "gauge",
    "polca_throttled_gpus": "gauge",
    "polca_unreadable_policies": "gauge",
    "polca_unconfirmed_gpus": "gauge",
}


@pytest.fixture
def metrics(h100_fake: FakeNvml, h100_backend: NvmlBackend, fake_clock: ManualClock) -> NodeMetrics:
    h100_fake.load = ConstantLoad(PhaseDemand(decode_frac=0.9))
    return with_samples(NodeMetrics("node-a"), h100_backend, fake_clock)


def with_samples(
    metrics: NodeMetrics, h100_backend: NvmlBackend, fake_clock: ManualClock
) -> NodeMetrics:
    fake_clock.advance(1.1)  # GPUs report power averaged over the last second
    gpus = h100_backend.inventory().gpus
    samples = (
        GpuSample(gpus[0], h100_backend.read(0), "ml", "train-0", "low", 1110, True, True),
        GpuSample(gpus[1], h100_backend.read(1), clock_ceiling_known=True),
        GpuSample(gpus[2], h100_backend.read(2)),  # ceiling unknown after a restart
        GpuSample(gpus[3], None),  # the read failed
    )
    metrics.update(NodeSnapshot(samples, heartbeat_s=1_700_000_000.0))
    return metrics


def samples(metrics: NodeMetrics, name: str) -> list[tuple[dict[str, str], float]]:
    text = metrics.exposition().decode()
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def test_every_contract_metric_is_exposed_with_its_type(
    h100_fake: FakeNvml, h100_backend: NvmlBackend, fake_clock: ManualClock
) -> None:
    metrics = with_samples(NodeMetrics("node-a", nvml_latency=True), h100_backend, fake_clock)
    metrics.on_write(0, "clockCeiling")
    metrics.on_failure(1, "powerLimit", "NoPermission")
    metrics.on_guard_activation("row-a")
    metrics.on_nvml_call("nvmlDeviceGetPowerUsage", 0.0004, False)
    found = {f.name: f.type for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert {name: found.get(name) for name in CONTRACT} == CONTRACT


def test_per_gpu_labels(metrics: NodeMetrics) -> None:
    power = samples(metrics, "polca_gpu_power_watts")
    assert len(power) == 3  # the GPU whose read failed has no sample
    labels, value = power[0]
    assert labels == {"node": "node-a", "gpu": "0", "tier": "low", "source": "instant"}
    assert 75 < value <= 700
    for name in ("polca_gpu_sm_clock_mhz", "polca_gpu_power_limit_watts"):
        assert {tuple(sorted(labels)) for labels, _ in samples(metrics, name)} == {
            tuple(sorted(GPU_LABELS))
        }
    energy = samples(metrics, "polca_gpu_energy_joules_total")
    assert len(energy) == 3


def test_pod_identity_is_on_one_info_series_per_gpu(metrics: NodeMetrics) -> None:
    info = samples(metrics, "polca_gpu_info")
    assert len(info) == 4  # every GPU, the one whose read failed too
    labels, value = info[0]
    assert value == 1.0
    assert tuple(sorted(labels)) == tuple(sorted(GPU_INFO_LABELS))
    assert (labels["gpu"], labels["pod"], labels["namespace"], labels["tier"]) == (
        "0", "train-0", "ml", "low"
    )  # fmt: skip
    assert labels["uuid"].startswith("GPU-")
    assert labels["model"] == "NVIDIA H100 80GB HBM3"


def test_a_new_pod_on_a_gpu_changes_only_its_info_series(
    h100_fake: FakeNvml, fake_clock: ManualClock
) -> None:
    """Pods come and go all day: they must not create series beyond polca_gpu_info."""
    backend = NvmlBackend(h100_fake)
    backend.open()
    gpus = backend.inventory().gpus
    metrics = NodeMetrics("node-a")
    fake_clock.advance(1.1)

    def series(pod: str) -> tuple[set[str], set[str]]:
        snapshot = NodeSnapshot(
            tuple(
                GpuSample(g, backend.read(g.index), "ml", f"{pod}-{g.index}", "low") for g in gpus
            )
        )
        metrics.update(snapshot)
        text = metrics.exposition().decode()
        lines = {line for line in text.splitlines() if not line.startswith("#")}
        keys = {line.rsplit(" ", 1)[0] for line in lines}
        info = {k for k in keys if k.startswith("polca_gpu_info{")}
        return info, keys - info

    info_before, others_before = series("train")
    info_after, others_after = series("serve")
    assert others_after == others_before
    assert info_after.isdisjoint(info_before)
    assert len(info_after) == len(gpus)
    backend.close()


@pytest.fixture
def no_created_series() -> Iterator[None]:
    """As the daemon runs: without the `_created` twin of every counter."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    yield
    enable_created_metrics()  # type: ignore[no-untyped-call]


@pytest.mark.usefixtures("no_created_series")
@pytest.mark.parametrize(("latency", "bound"), [(False, SERIES_BOUND_8_GPUS), (True, 500)])
def test_series_per_8_gpu_node_are_bounded(
    fake_clock: ManualClock, latency: bool, bound: int
) -> None:
    """docs/install.md states these figures: keep them true (issue 13 counted 498 before)."""
    fake = FakeNvml("H100-SXM:8", clock=fake_clock.now, sleep=fake_clock.sleep, seed="n8")
    metrics = NodeMetrics("node-8", nvml_latency=latency)
    backend = NvmlBackend(fake, on_call=metrics.nvml_call_hook)
    backend.open()
    fake_clock.advance(1.1)
    gpus = backend.inventory().gpus
    tiers = ("high", "low", "idle", "")
    metrics.update(NodeSnapshot(tuple(
        GpuSample(g, backend.read(g.index), "ml", f"p{g.index}", tiers[g.index % 4], 1110, True,
                  throttled=True)
        for g in gpus
    ), heartbeat_s=1.0))  # fmt: skip
    # The worst case of the labelled counters: every knob of every GPU written, for real and
    # in a dry run, and a guard activation.
    for gpu in gpus:
        for knob in ("clockCeiling", "powerLimit"):
            metrics.on_write(gpu.index, knob)
            metrics.on_dry_run_write(gpu.index, knob)
    metrics.on_guard_activation("row-a")
    backend.close()
    families = list(text_string_to_metric_families(metrics.exposition().decode()))
    total = sum(len(f.samples) for f in families)
    per_gpu = sum(len(f.samples) for f in families if f.name.startswith("polca_gpu_")
                  and f.name not in ("polca_gpu_actions", "polca_gpu_write_failures"))  # fmt: skip
    assert per_gpu == 8 * (len(CLOCK_EVENT_REASONS) + 7)  # info, power, energy, 4 gauges
    assert total <= bound
    assert any(f.name == "polca_nvml_call_seconds" for f in families) is latency


def test_throttled_gpus_one_series_per_tier_present(h100_backend: NvmlBackend) -> None:
    """The dashboard's "Throttled GPUs per tier" sums by tier; the node's total is unchanged."""
    gpus = h100_backend.inventory().gpus
    tiers = ("low", "high", "idle", "")  # "": no policy decides about the GPU
    throttled = (True, False, False, True)
    snapshot = NodeSnapshot(
        tuple(
            GpuSample(gpu, None, tier=tier, throttled=flag)
            for gpu, tier, flag in zip(gpus, tiers, throttled, strict=True)
        )
    )
    metrics = NodeMetrics("node-a")
    metrics.update(snapshot)
    by_tier = {labels["tier"]: value for labels, value in samples(metrics, "polca_throttled_gpus")}
    assert by_tier == {"low": 1.0, "high": 0.0, "idle": 0.0, NO_TIER: 1.0}
    assert snapshot.throttled_gpus == sum(by_tier.values()) == 2


def test_clock_ceiling_is_the_locked_one_or_the_maximum(metrics: NodeMetrics) -> None:
    by_gpu = {
        labels["gpu"]: value for labels, value in samples(metrics, "polca_gpu_clock_ceiling_mhz")
    }
    assert by_gpu == {"0": 1110, "1": 1980}  # GPUs 2 and 3: not known, so absent


def test_throttle_reasons_are_flags(metrics: NodeMetrics) -> None:
    flags = [
        (labels["reason"], v)
        for labels, v in samples(metrics, "polca_gpu_throttle_reason")
        if labels["gpu"] == "0"
    ]
    assert sorted(r for r, _ in flags) == sorted(CLOCK_EVENT_REASONS.values())
    assert {v for _, v in flags} <= {0.0, 1.0}


def test_node_gauges_and_counters(metrics: NodeMetrics) -> None:
    metrics.on_write(0, "clockCeiling")
    metrics.on_write(0, "clockCeiling")
    metrics.on_dry_run_write(2, "powerLimit")
    metrics.on_failure(1, "powerLimit", "NoPermission")
    metrics.on_guard_activation("row-a")
    for _ in range(3):
        metrics.on_nvml_call("nvmlDeviceGetPowerUsage", 0.0004, False)
    assert samples(metrics, "polca_throttled_gpus") == [
        ({"node": "node-a", "tier": NO_TIER}, 0.0),
        ({"node": "node-a", "tier": "low"}, 1.0),
    ]
    assert samples(metrics, "polca_unreadable_policies") == [({"node": "node-a"}, 0.0)]
    metrics.set_unreadable_policies(2)
    assert samples(metrics, "polca_unreadable_policies") == [({"node": "node-a"}, 2.0)]
    metrics.set_unconfirmed_gpus(3)
    assert samples(metrics, "polca_unconfirmed_gpus") == [({"node": "node-a"}, 3.0)]
    assert samples(metrics, "polca_node_heartbeat_timestamp_seconds")[0][1] == 1_700_000_000.0
    actions = {
        (labels["gpu"], labels["knob"], labels["dry_run"]): v
        for labels, v in samples(metrics, "polca_gpu_actions_total")
    }
    assert actions == {("0", "clockCeiling", "false"): 2.0, ("2", "powerLimit", "true"): 1.0}
    failures = samples(metrics, "polca_gpu_write_failures_total")
    assert failures == [
        ({"node": "node-a", "gpu": "1", "knob": "powerLimit", "reason": "NoPermission"}, 1.0)
    ]
    assert samples(metrics, "polca_guard_activations_total") == [
        ({"node": "node-a", "policy": "row-a"}, 1.0)
    ]
    assert metrics.nvml_call_hook is None  # off by default: the backend times nothing
    assert not samples(metrics, "polca_nvml_call_seconds_count")


def test_nvml_latency_histogram_when_asked_for() -> None:
    metrics = NodeMetrics("node-a", nvml_latency=True)
    assert metrics.nvml_call_hook is not None
    for _ in range(3):
        metrics.nvml_call_hook("nvmlDeviceGetPowerUsage", 0.0004, False)
    count = samples(metrics, "polca_nvml_call_seconds_count")
    assert count == [({"node": "node-a", "function": "nvmlDeviceGetPowerUsage"}, 3.0)]


@pytest.fixture
def server(metrics: NodeMetrics) -> Iterator[tuple[MetricsServer, list[bool]]]:
    health = [True]
    running = MetricsServer(
        metrics, lambda: (health[0], "detail"), host="127.0.0.1", port=0
    ).start()
    yield running, health
    running.stop()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_http_endpoints(server: tuple[MetricsServer, list[bool]]) -> None:
    running, health = server
    status, body = get(running.port, "/metrics")
    assert status == 200
    assert "polca_gpu_power_watts{" in body
    assert get(running.port, "/healthz") == (200, "detail\n")
    health[0] = False
    assert get(running.port, "/healthz")[0] == 503
    assert get(running.port, "/nothing")[0] == 404
