"""PowerPolicy status: one write per decision, whatever the domain size, plus a slow refresh.

The node daemons learn the stage from `status.stage` through their watch, so the status is the
decision's only channel and its only persistent memory: a restarted or standby operator
continues from it. Writes happen when

- the decision changes: stage, stage index, observed generation or a condition;
- otherwise at most every `refresh_s` (15 s) to refresh the displayed figures (power,
  utilisation, node and GPU counts).

Every stage change also posts a Kubernetes event with the power figures that caused it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from polca.api.conditions import Condition, ConditionStatus, PolicyConditionType, set_condition
from polca.api.semantic import Problem
from polca_operator.validation import is_invalid

__all__ = [
    "DECISION_FIELDS",
    "FIGURE_FIELDS",
    "CycleReport",
    "EventSink",
    "EventType",
    "StatusSink",
    "StatusWriteError",
    "StatusWriter",
    "utc_now",
]

log = logging.getLogger(__name__)

DEFAULT_REFRESH_S = 15.0
DECISION_FIELDS = ("observedGeneration", "stage", "stageIndex", "stageSince", "conditions")
FIGURE_FIELDS = (
    "lastDecisionTime",
    "powerWatts",
    "powerTime",
    "utilizationPercent",
    "nodeCount",
    "gpuCount",
    "throttledGpuCount",
)
EventType = Literal["Normal", "Warning"]


class StatusWriteError(Exception):
    """The status patch failed; the writer retries on a later cycle."""


class StatusSink(Protocol):
    async def patch_status(self, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the policy's status subresource (None values delete fields)."""
        ...


class EventSink(Protocol):
    def post(self, type_: EventType, reason: str, message: str) -> None:
        """Post a Kubernetes event about the policy (fire and forget)."""
        ...


def utc_now() -> datetime:
    """Now, in UTC, to the second (as Kubernetes stores times)."""
    return datetime.now(UTC).replace(microsecond=0)


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CycleReport:
    """What one control cycle decided and observed, for the status and the event."""

    generation: int | None
    stage_index: int
    stage_name: str
    last_stage_index: int
    changed: bool
    previous_stage_index: int
    previous_stage_name: str
    reason: str
    stale: bool
    budget_w: float
    staleness_s: float
    failsafe_stage_name: str
    power_w: float | None = None
    power_time: datetime | None = None
    node_count: int = 0
    gpu_count: int = 0
    throttled_gpu_count: int = 0
    problems: tuple[Problem, ...] = ()
    enforcing_last_valid: bool = False

    @property
    def utilization_pct(self) -> float | None:
        return None if self.power_w is None else 100.0 * self.power_w / self.budget_w


def _conditions(previous: list[Condition], report: CycleReport, now: datetime) -> list[Condition]:
    """The four policy conditions; messages carry no live figures, so they stay stable."""
    gen = report.generation
    conditions = previous

    def put(type_: str, status: Literal["True", "False"], reason: str, message: str = "") -> None:
        nonlocal conditions
        conditions = set_condition(
            conditions, type_, status, reason, message, now=now, observed_generation=gen
        )

    if report.problems:
        first = report.problems[0]
        kept = "; enforcing the last valid spec" if report.enforcing_last_valid else ""
        put(PolicyConditionType.READY, "False", first.reason, first.message + kept)
    else:
        put(
            PolicyConditionType.READY, "True", "Enforcing", f"controlling {report.node_count} nodes"
        )
    invalid = [p for p in report.problems if is_invalid(p)]
    if invalid:
        put(PolicyConditionType.INVALID, "True", invalid[0].reason, invalid[0].message)
    else:
        put(PolicyConditionType.INVALID, "False", "Valid")
    if report.stale:
        put(
            PolicyConditionType.TELEMETRY_STALE,
            "True",
            "NoFreshPower",
            f"no domain power newer than {report.staleness_s:g} s: holding at least the "
            f"failsafe stage {report.failsafe_stage_name}",
        )
    else:
        put(PolicyConditionType.TELEMETRY_STALE, "False", "FreshPower")
    if report.stage_index > 0:
        put(
            PolicyConditionType.THROTTLING,
            "True",
            "StageActive",
            f"stage {report.stage_name} ({report.stage_index} of {report.last_stage_index})",
        )
    else:
        put(PolicyConditionType.THROTTLING, "False", "Normal")
    return conditions


def _parse_conditions(raw: Any) -> list[Condition]:
    out: list[Condition] = []
    for item in raw if isinstance(raw, list) else ():
        try:
            out.append(Condition.from_stored(item))
        except ValidationError:
            continue  # a condition we cannot read is rewritten, not fatal
    return out


def event_message(report: CycleReport) -> str:
    """`stage1 → stage2: <controller's reason>; domain power 45.1 kW of 50 kW (90.2%)`."""
    if report.power_w is None:
        figures = f"domain power unknown (budget {report.budget_w:g} W)"
    else:
        figures = (
            f"domain power {report.power_w:.0f} W of {report.budget_w:g} W "
            f"({report.utilization_pct:.1f}%)"
        )
    return f"{report.previous_stage_name} → {report.stage_name}: {report.reason}; {figures}"


class StatusWriter:
    """Turns cycle reports into as few status writes as the rules allow, and into events."""

    def __init__(
        self,
        name: str,
        sink: StatusSink,
        events: EventSink,
        *,
        initial: Mapping[str, Any] | None = None,
        refresh_s: float = DEFAULT_REFRESH_S,
        wall_clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self._name = name
        self._sink = sink
        self._events = events
        self._refresh_s = refresh_s
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        initial = initial or {}
        self._written: dict[str, Any] = {
            k: initial.get(k) for k in (*DECISION_FIELDS, *FIGURE_FIELDS)
        }
        self._last_write_s: float | None = None
        self._ready: bool | None = None
        self.writes = 0

    def desired(self, report: CycleReport, now: datetime) -> dict[str, Any]:
        """The owned status fields for this report (None deletes a field)."""
        stage_since = self._written.get("stageSince")
        if report.changed or self._written.get("stage") != report.stage_name or not stage_since:
            stage_since = _time(now)
        conditions = _conditions(_parse_conditions(self._written.get("conditions")), report, now)
        util = report.utilization_pct
        return {
            "observedGeneration": report.generation,
            "stage": report.stage_name,
            "stageIndex": report.stage_index,
            "stageSince": stage_since,
            "conditions": [c.to_wire() for c in conditions],
            "lastDecisionTime": _time(now),
            "powerWatts": None if report.power_w is None else round(report.power_w, 1),
            "powerTime": _time(report.power_time),
            "utilizationPercent": None if util is None else round(util, 2),
            "nodeCount": report.node_count,
            "gpuCount": report.gpu_count,
            "throttledGpuCount": report.throttled_gpu_count,
        }

    async def report(self, report: CycleReport) -> bool:
        """Post events for the report and write the status if due; True when written."""
        now = self._wall_clock()
        self._post_events(report)
        desired = self.desired(report, now)
        decision_changed = any(desired[k] != self._written.get(k) for k in DECISION_FIELDS)
        mono = self._monotonic()
        refresh_due = self._last_write_s is None or mono - self._last_write_s >= self._refresh_s
        figures_changed = any(
            desired[k] != self._written.get(k) for k in FIGURE_FIELDS if k != "lastDecisionTime"
        )
        if not decision_changed and not (refresh_due and figures_changed):
            return False
        return await self._write(desired)

    async def report_unusable(self, generation: int | None, problem: Problem) -> bool:
        """A spec that never parsed: set Ready=False and Invalid=True, leave the stage alone.

        The stage fields are not touched, so whatever the daemons enforce stays enforced.
        """
        now = self._wall_clock()
        conditions = _parse_conditions(self._written.get("conditions"))
        settings: tuple[tuple[str, ConditionStatus], ...] = (
            (PolicyConditionType.READY, "False"),
            (PolicyConditionType.INVALID, "True"),
        )
        for type_, status in settings:
            conditions = set_condition(
                conditions, type_, status, problem.reason, problem.message,
                now=now, observed_generation=generation,
            )  # fmt: skip
        desired = {
            "observedGeneration": generation,
            "conditions": [c.to_wire() for c in conditions],
        }
        if all(desired[k] == self._written.get(k) for k in desired):
            return False
        if self._ready is not False:
            self._events.post("Warning", problem.reason, problem.message)
        self._ready = False
        return await self._write(desired)

    async def _write(self, desired: Mapping[str, Any]) -> bool:
        try:
            await self._sink.patch_status(self._name, desired)
        except StatusWriteError as exc:
            log.warning("PowerPolicy %s: status write failed, retrying: %s", self._name, exc)
            return False
        self._written.update(desired)
        self._last_write_s = self._monotonic()
        self.writes += 1
        return True

    def _post_events(self, report: CycleReport) -> None:
        if report.changed:
            up = report.stage_index > report.previous_stage_index
            warn = report.stale or report.stage_index == report.last_stage_index
            self._events.post(
                "Warning" if warn else "Normal",
                "StageEscalated" if up else "StageReleased",
                event_message(report),
            )
        ready = not report.problems
        if self._ready is not None and ready != self._ready:
            if ready:
                self._events.post("Normal", "SpecAccepted", "the policy is valid and enforced")
            else:
                first = report.problems[0]
                self._events.post("Warning", first.reason, first.message)
        self._ready = ready
