"""What the demo records: the daemons' metrics (through the real exporter), samples, events."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest

from polca_node.exporter import GpuSample, NodeMetrics, NodeSnapshot
from polca_node.gpu.backend import GpuInfo, GpuReading, GpuSettings
from polca_testbed.demo.policy import StageLine
from polca_testbed.demo.recording import (
    DemoEvent,
    GpuState,
    Recording,
    Sample,
    build_sample,
    event_from_api,
    parse_daemon_metrics,
    recording_from_json,
    recording_to_json,
)

MAX_CLOCK, DEFAULT_LIMIT = 1410, 400.0


def gpu_sample(
    index: int, *, power_w: float, ceiling: int | None, limit_w: float = 400.0, tier: str = "high"
) -> GpuSample:
    info = GpuInfo(
        index=index,
        uuid=f"GPU-{index}",
        name="NVIDIA A100-SXM4-80GB",
        min_limit_w=100.0,
        max_limit_w=400.0,
        default_limit_w=DEFAULT_LIMIT,
        power_limit_w=limit_w,
        enforced_limit_w=limit_w,
        max_sm_clock_mhz=MAX_CLOCK,
        supported_clocks_mhz=(1410, 1275, 1110),
    )
    settings = GpuSettings(index, limit_w, limit_w, DEFAULT_LIMIT, ceiling, True)
    reading = GpuReading(index, power_w, 1.0, 1200, None, None, None, (), settings)
    return GpuSample(
        info=info,
        reading=reading,
        pod_namespace="polca-demo",
        pod_name="p",
        tier=tier,
        clock_ceiling_mhz=ceiling,
        clock_ceiling_known=True,
    )


def exposition(*samples: GpuSample) -> str:
    metrics = NodeMetrics("demo-01")
    metrics.update(NodeSnapshot(gpus=samples, heartbeat_s=1.0))
    return metrics.exposition().decode()


class TestDaemonMetrics:
    def test_reads_power_ceiling_limit_and_tier_per_gpu(self) -> None:
        text = exposition(
            gpu_sample(0, power_w=300.0, ceiling=None),
            gpu_sample(1, power_w=210.5, ceiling=1110, tier="low"),
        )
        gpus = parse_daemon_metrics(text)
        assert gpus == (
            GpuState(
                gpu=0, tier="high", power_w=300.0, clock_ceiling_mhz=MAX_CLOCK, power_limit_w=400.0
            ),
            GpuState(
                gpu=1, tier="low", power_w=210.5, clock_ceiling_mhz=1110.0, power_limit_w=400.0
            ),
        )

    def test_a_ceiling_or_a_lower_limit_is_throttling(self) -> None:
        free, clocked, capped = parse_daemon_metrics(
            exposition(
                gpu_sample(0, power_w=300.0, ceiling=None),
                gpu_sample(1, power_w=250.0, ceiling=1275),
                gpu_sample(2, power_w=250.0, ceiling=None, limit_w=300.0),
            )
        )
        assert not free.throttled(MAX_CLOCK, DEFAULT_LIMIT)
        assert clocked.throttled(MAX_CLOCK, DEFAULT_LIMIT)
        assert capped.throttled(MAX_CLOCK, DEFAULT_LIMIT)

    def test_unknown_ceiling_is_not_throttling(self) -> None:
        state = GpuState(gpu=0, tier="", power_w=1.0, clock_ceiling_mhz=None, power_limit_w=None)
        assert not state.throttled(MAX_CLOCK, DEFAULT_LIMIT)


class TestSample:
    WORKLOADS: ClassVar[dict[str, str]] = {"n1": "high", "n2": "low"}

    def readings(self) -> dict[str, tuple[GpuState, ...] | None]:
        def gpu(i: int, power: float, ceiling: float, tier: str) -> GpuState:
            return GpuState(i, tier, power, ceiling, DEFAULT_LIMIT)

        return {
            "n1": (gpu(0, 300.0, MAX_CLOCK, "high"), gpu(1, 310.0, MAX_CLOCK, "high")),
            "n2": (gpu(0, 200.0, 1110, "low"), gpu(1, 205.0, 1275, "low")),
        }

    def sample(
        self, readings: dict[str, tuple[GpuState, ...] | None], status: dict[str, Any] | None
    ) -> Sample:
        return build_sample(
            3.0,
            readings=readings,
            workloads=self.WORKLOADS,
            policy_status=status,
            uncapped_w=1234.0,
            max_clock_mhz=MAX_CLOCK,
            default_limit_w=DEFAULT_LIMIT,
        )

    def test_sums_power_and_counts_throttled_gpus_per_workload_and_tier(self) -> None:
        status = {"stage": "stage2", "stageIndex": 2, "powerWatts": 1000.0}
        sample = self.sample(self.readings(), status)
        assert sample.power_w == pytest.approx(1015.0)
        assert sample.uncapped_w == 1234.0
        assert dict(sample.throttled) == {"high": 0, "low": 2}
        assert dict(sample.tier_throttled) == {"low": 2}
        assert dict(sample.lowest_ceiling_mhz) == {"high": MAX_CLOCK, "low": 1110}
        assert (sample.stage, sample.stage_index, sample.operator_power_w) == ("stage2", 2, 1000.0)

    def test_a_silent_daemon_leaves_the_power_unknown(self) -> None:
        readings = self.readings()
        readings["n1"] = None
        sample = self.sample(readings, None)
        assert sample.power_w is None
        assert sample.throttled["low"] == 2  # what did answer still counts
        assert sample.stage is None
        assert sample.stage_index is None


def test_event_from_api_names_the_object_and_squashes_whitespace() -> None:
    event = event_from_api(
        {
            "type": "Warning",
            "reason": "StageEscalated",
            "message": "normal → brake:\n  power 101%",
            "involvedObject": {"kind": "PowerPolicy", "name": "demo"},
            "lastTimestamp": "2026-01-01T10:00:05Z",
            "count": 2,
        }
    )
    assert event == DemoEvent(
        "2026-01-01T10:00:05Z",
        "Warning",
        "StageEscalated",
        "PowerPolicy/demo",
        "normal → brake: power 101%",
        2,
    )
    assert event_from_api({"eventTime": "2026-01-01T10:00:06.000000Z"}).time.startswith("2026")


def test_recording_survives_json() -> None:
    recording = Recording(
        budget_w=1000.0,
        stages=(StageLine(0, "normal", None), StageLine(1, "stage1", 80.0)),
        workloads={"n1": "high", "n2": "train"},
        gpus_per_node=2,
        interval_s=1.0,
    )
    recording.samples.append(
        TestSample().sample(TestSample().readings(), {"stage": "stage1", "stageIndex": 1})
    )
    recording.set_events(
        [
            DemoEvent("2026-01-01T10:00:09Z", "Normal", "B", "X/y", "later"),
            DemoEvent("2026-01-01T10:00:01Z", "Normal", "A", "X/y", "first"),
        ]
    )
    assert [e.reason for e in recording.events] == ["A", "B"]  # oldest first
    data = json.loads(json.dumps(recording_to_json(recording)))
    assert recording_from_json(data) == recording
    assert recording.gpus_by_workload() == {"high": 2, "train": 2}
    assert recording.stage_name(1) == "stage1"
    assert recording.stage_name(7) == "#7"
