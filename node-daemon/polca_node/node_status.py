"""The node's NodePowerState status, pure: what the daemon knows in, the status out.

- `build_status` turns the decision, what the GPUs have and the last samples into a
  `NodePowerStateStatus` (the models of `polca.api.nodepowerstate`; `to_wire()` is the dict);
- `StatusSchedule` says when to write: at once when something meaningful changed (everything
  but the power readings and the heartbeat time, `status_fingerprint`), otherwise every
  `heartbeat_s` (30 s), so the object is never written more often than it changes or the
  heartbeat asks;
- `previous_record` reads back what a previous run recorded (the applied policies and clock
  ceilings, so a restart never forgets that the node was managed), and `applied_policies` says
  what to record now.

Writing it, reading it and posting Events about it is `polca_node.status_writer`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from polca.api.conditions import Condition
from polca.api.nodepowerstate import (
    AppliedPolicy,
    GpuStatus,
    GpuWriteError,
    GuardState,
    NodePowerStateStatus,
    PodRef,
)
from polca_node.actuator import GpuApplied
from polca_node.gpu.backend import GpuInfo, GpuReading
from polca_node.guard_loop import GuardOutcome
from polca_node.policies import Mode, NodeDecision

__all__ = [
    "HEARTBEAT_S",
    "MAX_MESSAGE",
    "PreviousRecord",
    "StatusInputs",
    "StatusSchedule",
    "applied_policies",
    "build_status",
    "previous_record",
    "status_fingerprint",
]

logger = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
MAX_MESSAGE = 1024

# Condition types on a NodePowerState.
READY = "Ready"
GPU_WRITE_FAILED = "GpuWriteFailed"
DRY_RUN = "DryRun"
DEFAULTS_RESTORED = "DefaultsRestored"
GPU_READ_FAILED = "GpuReadFailed"
POLICY_UNREADABLE = "PolicyUnreadable"
GPU_OWNERS_UNKNOWN = "GpuOwnersUnknown"

# Fields that change with every sample: refreshed by the heartbeat, never a reason to write.
_VOLATILE = ("heartbeatTime", "powerWatts", "nodePowerWatts")


@dataclass(frozen=True)
class PreviousRecord:
    """What the daemon's NodePowerState said before this process started."""

    policies: tuple[AppliedPolicy, ...] = ()
    ceilings_mhz: Mapping[int, int | None] = field(default_factory=dict)
    conditions: tuple[Condition, ...] = ()
    uid: str = ""

    @property
    def managed(self) -> bool:
        return any(not p.dry_run for p in self.policies)


def previous_record(obj: Mapping[str, Any] | None) -> PreviousRecord:
    """Read a NodePowerState leniently: a part that does not parse is skipped, not fatal."""
    if obj is None:
        return PreviousRecord()
    status = obj.get("status") or {}
    policies: list[AppliedPolicy] = []
    for entry in status.get("policies") or ():
        try:
            policies.append(AppliedPolicy.from_stored(entry))
        except ValidationError:
            logger.warning("ignoring an unreadable policies entry in our NodePowerState")
    ceilings: dict[int, int | None] = {}
    for gpu in status.get("gpus") or ():
        if isinstance(gpu, dict) and isinstance(gpu.get("index"), int):
            ceiling = gpu.get("clockCeilingMHz")
            ceilings[gpu["index"]] = ceiling if isinstance(ceiling, int) else None
    conditions: list[Condition] = []
    for entry in status.get("conditions") or ():
        try:
            conditions.append(Condition.from_stored(entry))
        except ValidationError:
            continue
    uid = str((obj.get("metadata") or {}).get("uid", ""))
    return PreviousRecord(tuple(policies), ceilings, tuple(conditions), uid)


def applied_policies(
    decision: NodeDecision, record: Sequence[AppliedPolicy], *, restore_complete: bool
) -> tuple[AppliedPolicy, ...]:
    """The policies to record as applied: the memory that survives a restart.

    While nothing is known (HOLD) or a restore has not completed, the previous record stays:
    forgetting it early would mean never restoring the defaults after a restart.
    """
    if decision.mode is Mode.HOLD:
        return tuple(record)
    if decision.mode is Mode.RESTORE:
        return () if restore_complete else tuple(record)
    known = tuple(
        AppliedPolicy(
            name=o.name, stage=o.stage, observed_generation=o.generation, dry_run=o.dry_run
        )
        for o in decision.policies
        if o.stage is not None
    )
    if decision.mode is Mode.TIGHTEN and not any(not p.dry_run for p in known):
        # Only undecided enforcing policies: still managed as far as the record goes.
        return tuple(record)
    return known


@dataclass(frozen=True)
class StatusInputs:
    """Everything `build_status` reads."""

    gpus: Mapping[int, GpuInfo]
    decision: NodeDecision
    applied: Mapping[int, GpuApplied]
    readings: Mapping[int, GpuReading]
    policies: Sequence[AppliedPolicy]
    guards: Mapping[str, GuardOutcome]
    guard_since: datetime | None
    previous_conditions: Sequence[Condition]
    now: datetime
    metrics_endpoint: str | None = None
    restored: bool = False  # defaults were restored and the node is still out of every policy
    read_errors: Mapping[int, str] = field(default_factory=dict)


def _gpu_status(index: int, inputs: StatusInputs) -> GpuStatus:
    info = inputs.gpus[index]
    applied = inputs.applied.get(index, GpuApplied())
    decided = inputs.decision.gpus.get(index)
    reading = inputs.readings.get(index)
    error = applied.last_error
    pod = decided.pod if decided is not None else None
    return GpuStatus(
        index=index,
        uuid=info.uuid,
        model=info.name,
        max_clock_mhz=info.max_sm_clock_mhz,
        min_clock_mhz=min(info.supported_clocks_mhz) if info.supported_clocks_mhz else None,
        supported_clocks_mhz=list(info.supported_clocks_mhz) or None,
        default_power_limit_watts=info.default_limit_w,
        min_power_limit_watts=info.min_limit_w,
        max_power_limit_watts=info.max_limit_w,
        pod=PodRef(namespace=pod.namespace, name=pod.name) if pod is not None else None,
        tier=decided.tier if decided is not None else None,
        policy=decided.policy if decided is not None else None,
        stage=decided.stage if decided is not None else None,
        clock_ceiling_mhz=applied.clock_ceiling_mhz if applied.clock_known else None,
        power_limit_watts=applied.enforced_limit_w,
        power_watts=reading.fresh_power_w if reading is not None else None,
        last_error=None
        if error is None
        else GpuWriteError(knob=error.knob, message=error.message[:MAX_MESSAGE], time=error.time),
    )


def _guard_state(inputs: StatusInputs) -> GuardState | None:
    if not inputs.guards:
        return None
    power = [r.fresh_power_w for r in inputs.readings.values()]
    return GuardState(
        active=any(o.active for o in inputs.guards.values()),
        since=inputs.guard_since,
        node_power_watts=sum(power) if power else None,
        node_budget_watts=min(o.budget_w for o in inputs.guards.values()),
    )


def _describe(actions: Mapping[int, tuple[int | None, float | None]]) -> str:
    parts = []
    for index, (clock, power) in sorted(actions.items()):
        knobs = [f"{clock} MHz" if clock else "no ceiling", f"{power:g} W" if power else "no cap"]
        parts.append(f"GPU {index}: {', '.join(knobs)}")
    return "; ".join(parts)


def _conditions(status: NodePowerStateStatus, inputs: StatusInputs) -> NodePowerStateStatus:
    decision, now = inputs.decision, inputs.now
    ready = decision.mode is not Mode.HOLD
    status = status.with_condition(
        READY, "True" if ready else "False", decision.mode.value, decision.reason[:MAX_MESSAGE],
        now=now,
    )  # fmt: skip
    failures = {
        i: a.last_error for i, a in sorted(inputs.applied.items()) if a.last_error is not None
    }
    if failures or status.condition(GPU_WRITE_FAILED) is not None:
        message = (
            "; ".join(f"GPU {i} {f.knob}: {f.reason}" for i, f in failures.items())
            or "every write succeeded"
        )
        status = status.with_condition(
            GPU_WRITE_FAILED, "True" if failures else "False",
            "WriteRejected" if failures else "WritesSucceeded", message[:MAX_MESSAGE], now=now,
        )  # fmt: skip
    dry = [o.name for o in decision.policies if o.dry_run]
    if dry or status.condition(DRY_RUN) is not None:
        would = {
            i: (g.report.clock_ceiling_mhz, g.report.power_limit_w)
            for i, g in decision.gpus.items()
            if g.report != g.enforce
        }
        message = (
            f"{', '.join(dry)} would set {_describe(would) or 'nothing more'}"
            if dry
            else "no dry-run policy selects this node"
        )
        status = status.with_condition(
            DRY_RUN, "True" if dry else "False", "DryRunPolicy" if dry else "NoDryRunPolicy",
            message[:MAX_MESSAGE], now=now,
        )  # fmt: skip
    errors = dict(sorted(inputs.read_errors.items()))
    if errors or status.condition(GPU_READ_FAILED) is not None:
        message = "; ".join(errors.values()) or "every GPU answers"
        status = status.with_condition(
            GPU_READ_FAILED, "True" if errors else "False",
            "GpuUnreadable" if errors else "GpusReadable", message[:MAX_MESSAGE], now=now,
        )  # fmt: skip
    unreadable = decision.unreadable
    if unreadable or status.condition(POLICY_UNREADABLE) is not None:
        message = (
            "; ".join(f"{u.name}: {u.error}" for u in unreadable)
            + ". Holding the last applied limits (never restoring) until it can be read"
            if unreadable
            else "every PowerPolicy that may select this node can be read"
        )
        status = status.with_condition(
            POLICY_UNREADABLE, "True" if unreadable else "False",
            "UnreadablePolicy" if unreadable else "PoliciesReadable", message[:MAX_MESSAGE],
            now=now,
        )  # fmt: skip
    conflict = decision.owner_conflict
    if conflict is not None or status.condition(GPU_OWNERS_UNKNOWN) is not None:
        status = status.with_condition(
            GPU_OWNERS_UNKNOWN, "True" if conflict is not None else "False",
            "SourcesDisagree" if conflict is not None else "SourcesAgree",
            conflict.describe()[:MAX_MESSAGE] if conflict is not None
            else "the kubelet and the pod watch agree on which pod holds each GPU",
            now=now,
        )  # fmt: skip
    if inputs.restored or status.condition(DEFAULTS_RESTORED) is not None:
        status = status.with_condition(
            DEFAULTS_RESTORED, "True" if inputs.restored else "False",
            "LeftEveryPolicy" if inputs.restored else "Managed",
            "clock ceilings reset and default power limits restored: no enforcing policy "
            "selects this node" if inputs.restored else "an enforcing policy selects this node",
            now=now,
        )  # fmt: skip
    return status


def build_status(inputs: StatusInputs) -> NodePowerStateStatus:
    """The NodePowerState status for what the daemon knows now."""
    gpus = [_gpu_status(index, inputs) for index in sorted(inputs.gpus)]
    readings = [r.fresh_power_w for r in inputs.readings.values()]
    status = NodePowerStateStatus(
        conditions=list(inputs.previous_conditions) or None,
        policies=list(inputs.policies),
        gpus=gpus,
        gpu_count=len(gpus),
        throttled_gpu_count=sum(1 for g in gpus if g.throttled),
        power_watts=sum(readings) if readings else None,
        guard=_guard_state(inputs),
        heartbeat_time=inputs.now,
        metrics_endpoint=inputs.metrics_endpoint,
    )
    return _conditions(status, inputs)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def status_fingerprint(status: NodePowerStateStatus) -> str:
    """The status without its per-sample fields: equal fingerprints need no write."""
    return json.dumps(_strip(status.to_wire()), sort_keys=True)


class StatusSchedule:
    """When to write: on a meaningful change, else once per heartbeat period."""

    def __init__(self, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.heartbeat_s = heartbeat_s
        self._written_s: float | None = None
        self._fingerprint: str | None = None

    def due(self, now_s: float, fingerprint: str) -> bool:
        if self._written_s is None or fingerprint != self._fingerprint:
            return True
        return now_s - self._written_s >= self.heartbeat_s

    def next_heartbeat_s(self) -> float | None:
        return None if self._written_s is None else self._written_s + self.heartbeat_s

    def written(self, now_s: float, fingerprint: str) -> None:
        self._written_s = now_s
        self._fingerprint = fingerprint
