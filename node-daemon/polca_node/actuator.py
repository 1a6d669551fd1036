"""Turns a `NodeDecision` into GPU settings through the `GpuBackend`, and remembers the result.

The actuator is the only writer of GPU knobs. It runs in a worker thread (the backend blocks);
the daemon calls `apply` with `asyncio.to_thread`. What it does depends on the decision's mode:

- ENFORCE: each GPU's clock ceiling and power limit become the decided ones (None: no
  ceiling / the default limit), except the decision's unconfirmed GPUs (their holder is
  unknown), which are only tightened;
- TIGHTEN: each knob becomes the stronger of what it has and what is decided, and a clock
  ceiling that is not known (after a restart NVML cannot read it back) is left alone;
- RESTORE: every GPU back to no ceiling and its default limit;
- HOLD, UNMANAGED: nothing is written.

Writes are idempotent: the backend reads a power limit before it writes one, and the actuator
skips a clock ceiling this process already set to the same value (NVML cannot read it back).
A rejected write (a `GpuError`) is recorded on that GPU as `last_error` (a status condition
upstream) and counted through the observer (a metric); it is retried at the next apply and
never raised. A limit the GPU did not take (read back differs) counts as a rejected write too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from polca.control.plan import ResolvedAction
from polca_node.gpu.backend import GpuBackend, GpuInfo, GpuReading
from polca_node.gpu.errors import GpuError
from polca_node.policies import Mode, NodeDecision

__all__ = [
    "ActuationObserver",
    "ActuationResult",
    "Actuator",
    "ClockSource",
    "GpuApplied",
    "Knob",
    "KnobTargets",
    "WriteFailure",
    "plan_targets",
]

logger = logging.getLogger(__name__)

Knob = Literal["clockCeiling", "powerLimit"]  # as in NodePowerState's GpuWriteError.knob
CLOCK: Knob = "clockCeiling"
POWER: Knob = "powerLimit"
NOT_CONFIRMED = "NotConfirmed"
# NVML works in milliwatts; two limits within half a watt are the same setting.
_LIMIT_TOLERANCE_W = 0.5


class ClockSource(StrEnum):
    UNKNOWN = "unknown"  # NVML cannot read locked clocks; after a restart we do not know
    RECORDED = "recorded"  # what our NodePowerState says we set before a restart
    SET = "set"  # set (or reset) by this process


@dataclass(frozen=True)
class WriteFailure:
    knob: Knob
    reason: str  # the GpuError's stable reason, e.g. NoPermission
    message: str
    time: datetime


@dataclass(frozen=True)
class GpuApplied:
    """What one GPU has, as far as the daemon knows."""

    clock_ceiling_mhz: int | None = None
    clock_source: ClockSource = ClockSource.UNKNOWN
    power_limit_w: float | None = None  # management limit as last read; None: not read yet
    enforced_limit_w: float | None = None
    default_limit_w: float | None = None
    last_error: WriteFailure | None = None

    @property
    def clock_known(self) -> bool:
        return self.clock_source is not ClockSource.UNKNOWN

    @property
    def power_cap_w(self) -> float | None:
        """The power limit as an action value: None when at (or above) the default."""
        if self.power_limit_w is None or self.default_limit_w is None:
            return None
        if self.power_limit_w >= self.default_limit_w - _LIMIT_TOLERANCE_W:
            return None
        return self.power_limit_w


@dataclass(frozen=True)
class KnobTargets:
    """What to write to one GPU; a knob whose flag is False is left alone."""

    set_clock: bool = False
    clock_ceiling_mhz: int | None = None
    set_power: bool = False
    power_limit_w: float | None = None


def _min_or_none(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _tightened(applied: GpuApplied, wanted: ResolvedAction) -> KnobTargets:
    clock = wanted.clock_ceiling_mhz
    set_clock = applied.clock_known
    if set_clock:
        merged = _min_or_none(applied.clock_ceiling_mhz, clock)
        clock = None if merged is None else int(merged)
    power_known = applied.power_limit_w is not None
    power = _min_or_none(applied.power_cap_w, wanted.power_limit_w) if power_known else None
    return KnobTargets(set_clock, clock, power_known, power)


def plan_targets(
    decision: NodeDecision, applied: Mapping[int, GpuApplied]
) -> dict[int, KnobTargets]:
    """Per GPU, the knobs to write for this decision (pure; `Actuator.apply` writes them)."""
    if decision.mode is Mode.RESTORE:
        return {index: KnobTargets(True, None, True, None) for index in applied}
    if decision.mode is Mode.ENFORCE:
        unconfirmed = decision.unconfirmed_gpus
        return {
            index: _tightened(applied[index], gpu.enforce)
            if index in unconfirmed
            else KnobTargets(True, gpu.enforce.clock_ceiling_mhz, True, gpu.enforce.power_limit_w)
            for index, gpu in decision.gpus.items()
            if index in applied
        }
    if decision.mode is Mode.TIGHTEN:
        return {
            index: _tightened(applied[index], gpu.enforce)
            for index, gpu in decision.gpus.items()
            if index in applied
        }
    return {}


class ActuationObserver(Protocol):
    """Told about every write that changed a GPU and every rejected write (metrics)."""

    def on_write(self, index: int, knob: Knob) -> None: ...

    def on_failure(self, index: int, knob: Knob, reason: str) -> None: ...


@dataclass(frozen=True)
class ActuationResult:
    changed: tuple[tuple[int, Knob], ...] = ()
    failures: tuple[tuple[int, WriteFailure], ...] = ()

    @property
    def complete(self) -> bool:
        """Every knob that was to be written is at its target."""
        return not self.failures


@dataclass
class _Outcome:
    changed: list[tuple[int, Knob]] = field(default_factory=list)
    failures: list[tuple[int, WriteFailure]] = field(default_factory=list)


class Actuator:
    """Applies decisions to the GPUs of one node and keeps what each GPU has.

    `apply` runs in one worker thread at a time; `observe` may run in another (the sampler).
    Each record update is a short locked read-modify-write, never held across an NVML call.
    """

    def __init__(
        self,
        backend: GpuBackend,
        gpus: Mapping[int, GpuInfo],
        observer: ActuationObserver,
        *,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._backend = backend
        self._observer = observer
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._applied: dict[int, GpuApplied] = {
            index: GpuApplied(
                power_limit_w=info.power_limit_w,
                enforced_limit_w=info.enforced_limit_w,
                default_limit_w=info.default_limit_w,
            )
            for index, info in gpus.items()
        }

    @property
    def applied(self) -> Mapping[int, GpuApplied]:
        with self._lock:
            return dict(self._applied)

    def _update(self, index: int, **changes: Any) -> GpuApplied:
        with self._lock:
            updated = replace(self._applied[index], **changes)
            self._applied[index] = updated
            return updated

    def recall(self, ceilings_mhz: Mapping[int, int | None]) -> None:
        """Take the clock ceilings our NodePowerState recorded before a restart as what the GPUs
        have (NVML cannot read them back). Ceilings this process has set win."""
        with self._lock:
            for index, ceiling in ceilings_mhz.items():
                applied = self._applied.get(index)
                if applied is not None and not applied.clock_known:
                    self._applied[index] = replace(
                        applied, clock_ceiling_mhz=ceiling, clock_source=ClockSource.RECORDED
                    )

    def observe(self, readings: Mapping[int, GpuReading]) -> None:
        """Refresh the power limits (and any ceiling the backend knows) from fresh readings."""
        for index, reading in readings.items():
            if index not in self._applied:
                continue
            settings = reading.settings
            changes: dict[str, Any] = {
                "power_limit_w": settings.power_limit_w,
                "enforced_limit_w": settings.enforced_limit_w,
                "default_limit_w": settings.default_limit_w,
            }
            if settings.clock_ceiling_known:
                changes["clock_ceiling_mhz"] = settings.clock_ceiling_mhz
                changes["clock_source"] = ClockSource.SET
            self._update(index, **changes)

    def apply(self, decision: NodeDecision) -> ActuationResult:
        """Write what `decision` asks for (blocking). Never raises for a rejected write."""
        outcome = _Outcome()
        for index, targets in plan_targets(decision, self.applied).items():
            if targets.set_clock:
                self._set_clock(index, targets.clock_ceiling_mhz, outcome)
            if targets.set_power:
                self._set_power(index, targets.power_limit_w, outcome)
        return ActuationResult(tuple(outcome.changed), tuple(outcome.failures))

    def _record_failure(
        self, index: int, knob: Knob, reason: str, message: str, outcome: _Outcome
    ) -> None:
        failure = WriteFailure(knob, reason, message, self._wall_clock())
        self._update(index, last_error=failure)
        outcome.failures.append((index, failure))
        self._observer.on_failure(index, knob, reason)
        logger.warning("GPU %d: %s write rejected: %s", index, knob, message)

    def _succeeded(self, index: int, knob: Knob, changed: bool, outcome: _Outcome) -> None:
        with self._lock:
            applied = self._applied[index]
            if applied.last_error is not None and applied.last_error.knob == knob:
                self._applied[index] = replace(applied, last_error=None)
        if changed:
            outcome.changed.append((index, knob))
            self._observer.on_write(index, knob)

    def _set_clock(self, index: int, ceiling_mhz: int | None, outcome: _Outcome) -> None:
        applied = self.applied[index]
        if applied.clock_source is ClockSource.SET and applied.clock_ceiling_mhz == ceiling_mhz:
            return
        try:
            result = self._backend.set_clock_ceiling(index, ceiling_mhz)
        except GpuError as exc:
            self._record_failure(index, CLOCK, exc.reason, str(exc), outcome)
            return
        self._update(index, clock_ceiling_mhz=result.read_back_mhz, clock_source=ClockSource.SET)
        if result.changed:
            logger.info("GPU %d: clock ceiling %s MHz", index, result.read_back_mhz or "none")
        self._succeeded(index, CLOCK, result.changed, outcome)

    def _set_power(self, index: int, limit_w: float | None, outcome: _Outcome) -> None:
        # No shortcut from the cached limit: someone may have changed it since the last sample,
        # and the backend reads before it writes anyway.
        try:
            result = self._backend.set_power_limit(index, limit_w)
        except GpuError as exc:
            self._record_failure(index, POWER, exc.reason, str(exc), outcome)
            return
        self._update(index, power_limit_w=result.read_back_w, enforced_limit_w=result.enforced_w)
        if not result.confirmed:
            message = (
                f"GPU {index}: asked for a {result.clamped_w:g} W limit, "
                f"the GPU reports {result.read_back_w:g} W"
            )
            self._record_failure(index, POWER, NOT_CONFIRMED, message, outcome)
            return
        if result.changed:
            logger.info("GPU %d: power limit %g W", index, result.read_back_w)
        self._succeeded(index, POWER, result.changed, outcome)
