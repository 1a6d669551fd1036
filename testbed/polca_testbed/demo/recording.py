"""What the demo observes, once per sample: domain power, the stage, throttled GPUs, events.

Pure data and parsing; `probe.py` fetches, `summary.py` and `view.py` read.

Power is what the node daemons report (`polca_gpu_power_watts` summed over the domain), so the
recording is independent of the operator's own reading; the stage is the PowerPolicy's status.
A GPU counts as throttled when its clock ceiling is below the GPU's maximum SM clock or its
power limit below the default limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from polca_testbed.demo.policy import StageLine

__all__ = [
    "DemoEvent",
    "GpuState",
    "Recording",
    "Sample",
    "build_sample",
    "event_from_api",
    "parse_daemon_metrics",
    "recording_from_json",
    "recording_to_json",
]

_INFO = "polca_gpu_info"  # the one per-GPU series that names the pod and tier
_POWER = "polca_gpu_power_watts"
_CEILING = "polca_gpu_clock_ceiling_mhz"
_LIMIT = "polca_gpu_power_limit_watts"


@dataclass(frozen=True, slots=True)
class GpuState:
    """One GPU as its node daemon reports it."""

    gpu: int
    tier: str  # the tier the daemon resolved for the GPU's pod ("" when none)
    power_w: float | None
    clock_ceiling_mhz: float | None  # None: not reported (unknown)
    power_limit_w: float | None

    def throttled(self, max_clock_mhz: float, default_limit_w: float) -> bool:
        clocked = self.clock_ceiling_mhz is not None and self.clock_ceiling_mhz < max_clock_mhz
        capped = self.power_limit_w is not None and self.power_limit_w < default_limit_w - 0.5
        return clocked or capped


def parse_daemon_metrics(text: str) -> tuple[GpuState, ...]:
    """Per-GPU state from one daemon's /metrics exposition, by GPU index."""
    found: dict[int, dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (_INFO, _POWER, _CEILING, _LIMIT):
            continue
        for sample in family.samples:
            entry = found.setdefault(int(sample.labels["gpu"]), {})
            if family.name == _INFO:
                entry["tier"] = sample.labels.get("tier", "")
            else:
                entry[family.name] = float(sample.value)
    return tuple(
        GpuState(
            gpu=gpu,
            tier=str(entry.get("tier", "")),
            power_w=entry.get(_POWER),
            clock_ceiling_mhz=entry.get(_CEILING),
            power_limit_w=entry.get(_LIMIT),
        )
        for gpu, entry in sorted(found.items())
    )


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float  # wall seconds since the replay started
    power_w: float | None  # domain GPU power from the daemons; None when one did not answer
    uncapped_w: float  # what the same load would draw with no limits (the no-policy line)
    stage_index: int | None  # from PowerPolicy.status; None before the operator's first write
    stage: str | None
    operator_power_w: float | None  # the power the operator decided on (status.powerWatts)
    throttled: Mapping[str, int]  # workload (high, low, train) → throttled GPUs
    lowest_ceiling_mhz: Mapping[str, float]  # workload → lowest clock ceiling reported
    tier_throttled: Mapping[str, int]  # tier as the daemons resolved it → throttled GPUs


@dataclass(frozen=True, slots=True)
class DemoEvent:
    """A Kubernetes event, as the view lists it."""

    time: str  # ISO 8601 as the API gives it
    type: str
    reason: str
    object: str  # Kind/name
    message: str
    count: int = 1


def event_from_api(event: Mapping[str, Any]) -> DemoEvent:
    """A DemoEvent from a core/v1 Event object."""
    involved = event.get("involvedObject") or {}
    time = (
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("firstTimestamp")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )
    return DemoEvent(
        time=str(time),
        type=str(event.get("type", "")),
        reason=str(event.get("reason", "")),
        object=f"{involved.get('kind', '?')}/{involved.get('name', '?')}",
        message=" ".join(str(event.get("message", "")).split()),
        count=int(event.get("count") or 1),
    )


@dataclass
class Recording:
    """Everything one run observed, with what it needs to be read."""

    budget_w: float
    stages: tuple[StageLine, ...]
    workloads: Mapping[str, str]  # node → workload (high, low, train)
    gpus_per_node: int
    interval_s: float
    samples: list[Sample] = field(default_factory=list)
    events: list[DemoEvent] = field(default_factory=list)

    def gpus_by_workload(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for workload in self.workloads.values():
            counts[workload] = counts.get(workload, 0) + self.gpus_per_node
        return counts

    def percent(self, power_w: float) -> float:
        return 100.0 * power_w / self.budget_w

    def stage_name(self, index: int) -> str:
        return self.stages[index].name if 0 <= index < len(self.stages) else f"#{index}"

    def set_events(self, events: Sequence[DemoEvent]) -> None:
        """Keep the demo's events, oldest first."""
        self.events = sorted(events, key=lambda e: e.time)


def build_sample(
    t_s: float,
    *,
    readings: Mapping[str, tuple[GpuState, ...] | None],
    workloads: Mapping[str, str],
    policy_status: Mapping[str, Any] | None,
    uncapped_w: float,
    max_clock_mhz: float,
    default_limit_w: float,
) -> Sample:
    """One sample from the daemons' readings (None: no answer) and the policy's status."""
    power_w: float | None = 0.0
    throttled: dict[str, int] = dict.fromkeys(sorted(set(workloads.values())), 0)
    lowest: dict[str, float] = {}
    by_tier: dict[str, int] = {}
    for node, workload in workloads.items():
        gpus = readings.get(node)
        if gpus is None:
            power_w = None
            continue
        for gpu in gpus:
            if power_w is not None:
                power_w = power_w + gpu.power_w if gpu.power_w is not None else None
            if gpu.throttled(max_clock_mhz, default_limit_w):
                throttled[workload] += 1
                by_tier[gpu.tier] = by_tier.get(gpu.tier, 0) + 1
            if gpu.clock_ceiling_mhz is not None:
                lowest[workload] = min(
                    lowest.get(workload, gpu.clock_ceiling_mhz), gpu.clock_ceiling_mhz
                )
    status = policy_status or {}
    index = status.get("stageIndex")
    operator_power = status.get("powerWatts")
    return Sample(
        t_s=t_s,
        power_w=power_w,
        uncapped_w=uncapped_w,
        stage_index=int(index) if index is not None else None,
        stage=str(status["stage"]) if status.get("stage") is not None else None,
        operator_power_w=float(operator_power) if operator_power is not None else None,
        throttled=throttled,
        lowest_ceiling_mhz=lowest,
        tier_throttled=by_tier,
    )


def recording_to_json(recording: Recording) -> dict[str, Any]:
    """The recording as JSON-ready data (recording.json next to the summary)."""
    return {
        "budget_w": recording.budget_w,
        "interval_s": recording.interval_s,
        "stages": [dataclasses.asdict(line) for line in recording.stages],
        "workloads": dict(recording.workloads),
        "gpus_per_node": recording.gpus_per_node,
        "samples": [dataclasses.asdict(sample) for sample in recording.samples],
        "events": [dataclasses.asdict(event) for event in recording.events],
    }


def recording_from_json(data: Mapping[str, Any]) -> Recording:
    """The inverse of `recording_to_json`."""
    return Recording(
        budget_w=float(data["budget_w"]),
        stages=tuple(StageLine(**line) for line in data["stages"]),
        workloads=dict(data["workloads"]),
        gpus_per_node=int(data["gpus_per_node"]),
        interval_s=float(data["interval_s"]),
        samples=[Sample(**sample) for sample in data["samples"]],
        events=[DemoEvent(**event) for event in data["events"]],
    )
