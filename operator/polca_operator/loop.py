"""One control loop per PowerPolicy: read domain power, decide the stage, report it.

Each cycle (every `controlIntervalSeconds`, and at once when a streamed sample takes the domain
to the next stage's trigger: `polca_operator.wakeup`):

1. takes the spec from the live body; a new generation is parsed into a plan, and a spec that
   does not parse keeps the last valid plan (`Ready=False`, nothing enforced is lost);
2. finds the domain's nodes and their daemons' reports in the indexes (no API reads);
3. reads domain power (policy's source, then the fallback);
4. runs the pure controller (`polca.control.controller.decide`);
5. hands the outcome to the status writer (one write per decision change, slow refresh
   otherwise, an event per stage change) and to the metrics.

Safety: the loop starts from the stage in the policy's status, so a restart, a standby taking
over or a spec edit never passes through stage 0; stale telemetry yields the failsafe stage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from polca.api.powerpolicy import LAST_APPLIED
from polca.api.semantic import Problem
from polca.control.controller import ControllerState, Decision, decide
from polca.control.plan import ControlPlan
from polca_operator.domain_power import DomainNode, NodeSample
from polca_operator.endpoints import endpoint_problem
from polca_operator.indexes import ClusterView
from polca_operator.metrics import Change, Health, OperatorMetrics
from polca_operator.power_streams import SampleListener
from polca_operator.status import CycleReport, EventSink, StatusSink, StatusWriter
from polca_operator.telemetry import PowerQuery, TelemetryReading
from polca_operator.validation import ParsedSpec, SemanticCache, parse_spec
from polca_operator.wakeup import EscalationWatch, wake_at_w

__all__ = [
    "ControlLoop",
    "CycleOutcome",
    "LoopDeps",
    "NodeStreams",
    "PowerReading",
    "StopFlag",
    "run_loop",
    "stage_from_status",
]

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0
# The least time from one cycle's start to the next one's, however many samples wake the loop.
MIN_CYCLE_GAP_S = 0.05


class PowerReading(Protocol):
    async def read(
        self, query: PowerQuery, *, last_known: Mapping[str, NodeSample] | None = None
    ) -> TelemetryReading: ...


class NodeStreams(Protocol):
    """The daemons' power streams (`power_streams.StreamSource`): which nodes a loop follows."""

    def follow(
        self, owner: str, urls: Mapping[str, str], on_sample: SampleListener | None = None
    ) -> None: ...

    def release(self, owner: str) -> None: ...


@dataclass(frozen=True)
class LoopDeps:
    """What every control loop shares: telemetry, the API sink, metrics, clocks."""

    reader: PowerReading
    status_sink: StatusSink
    metrics: OperatorMetrics
    health: Health
    default_prometheus_url: str | None = None
    monotonic: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    status_refresh_s: float = 15.0
    # Ports a daemon's metrics endpoint may use (None: any); see polca_operator.endpoints.
    daemon_ports: frozenset[int] | None = None
    # The `direct` source's streams: a loop follows its domain's (None: no direct telemetry).
    streams: NodeStreams | None = None


@dataclass(frozen=True)
class CycleOutcome:
    """What a cycle did (for tests, logs and the benchmark)."""

    decision: Decision | None
    reading: TelemetryReading | None
    wrote_status: bool
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class _Domain:
    """The domain as derived from the spec and the indexes; rebuilt only when they change."""

    query: PowerQuery
    node_count: int
    gpu_count: int
    throttled_gpu_count: int
    problems: tuple[Problem, ...] = field(default=())


def stage_from_status(status: Mapping[str, Any] | None, plan: ControlPlan) -> int:
    """The stage to continue from: the status's stage by name, else by index, else 0.

    0 only for a policy that never had a stage: a restart never starts below what was decided.
    """
    status = status or {}
    names = [s.name for s in plan.stages]
    name = status.get("stage")
    if isinstance(name, str) and name in names:
        return names.index(name)
    index = status.get("stageIndex")
    if isinstance(index, int) and index >= 0:
        return min(index, plan.last_stage)
    return 0


def _carry_stage(old: ParsedSpec, stage: int, new: ControlPlan) -> int:
    """The current stage in a changed plan: same name if it still exists, else same index."""
    name = old.plan.stages[stage].name
    names = [s.name for s in new.stages]
    return names.index(name) if name in names else min(stage, new.last_stage)


def _change(before: int, after: int) -> Change:
    return "up" if after > before else "down" if after < before else "none"


class ControlLoop:
    """The state of one policy's loop between cycles; `cycle()` runs one control cycle."""

    def __init__(
        self,
        name: str,
        deps: LoopDeps,
        events: EventSink,
        *,
        status: Mapping[str, Any] | None = None,
    ):
        self.name = name
        self._deps = deps
        self._initial_status = dict(status or {})
        self._writer = StatusWriter(
            name,
            deps.status_sink,
            events,
            initial=self._initial_status,
            refresh_s=deps.status_refresh_s,
            monotonic=deps.monotonic,
            wall_clock=lambda: datetime.fromtimestamp(deps.wall_clock(), UTC).replace(
                microsecond=0
            ),
        )
        self._parsed: ParsedSpec | None = None
        self._state: ControllerState | None = None
        self._spec_problem: Problem | None = None
        self._generation: object = object()  # never equal to a real generation
        self._semantic = SemanticCache()
        self._domain_key: Hashable | None = None
        self._domain: _Domain | None = None
        self._failing_sources: frozenset[str] = frozenset()
        # Each node's latest fresh sample: the floor of its estimate while it is silent.
        self._last_known: dict[str, NodeSample] = {}
        # Set when a streamed sample crosses the next stage's trigger; run_loop waits on it.
        self.wake = asyncio.Event()
        self._watch = EscalationWatch()

    @property
    def deps(self) -> LoopDeps:
        return self._deps

    @property
    def interval_s(self) -> float:
        return self._parsed.spec.control_interval_seconds if self._parsed else DEFAULT_INTERVAL_S

    @property
    def stage(self) -> int | None:
        return None if self._state is None else self._state.stage

    @property
    def status_writes(self) -> int:
        return self._writer.writes

    async def cycle(self, body: Mapping[str, Any], view: ClusterView) -> CycleOutcome:
        started_s = self._deps.monotonic()
        metadata = body.get("metadata") or {}
        generation = metadata.get("generation")
        self._update_spec(body.get("spec") or {}, generation, metadata.get("annotations"))
        parsed = self._parsed
        if parsed is None or self._state is None:
            assert self._spec_problem is not None  # no plan without a problem to say why
            wrote = await self._writer.report_unusable(generation, self._spec_problem)
            self._deps.health.beat(self.name, self.interval_s)
            return CycleOutcome(None, None, wrote, (self._spec_problem,))

        domain = self._domain_for(parsed, view)
        plan = parsed.plan
        staleness_s = plan.staleness_s
        seen_w = self._watch.total_w  # what the read below sees, for the wake-up's edge
        reading = await self._deps.reader.read(domain.query, last_known=self._last_known)
        self._last_known.update(reading.samples)
        self._note_errors(reading)
        age_s = reading.age_s(self._deps.wall_clock())
        power_w = reading.power.power_w if reading.power is not None else None
        before = self._state.stage
        decision = decide(
            plan,
            self._state,
            now_s=self._deps.monotonic(),
            domain_power_w=power_w,
            budget_w=parsed.spec.budget_watts,
            sample_age_s=age_s,
        )
        self._state = decision.state
        if self._watch.arm(self._wake_at_w(parsed, domain), seen_w):
            self.wake.set()
        stale = power_w is None or age_s is None or age_s > staleness_s
        problems = (*((self._spec_problem,) if self._spec_problem else ()), *domain.problems)
        report = CycleReport(
            generation=generation if isinstance(generation, int) else None,
            stage_index=decision.stage,
            stage_name=plan.stages[decision.stage].name,
            last_stage_index=plan.last_stage,
            changed=decision.changed,
            previous_stage_index=before,
            previous_stage_name=plan.stages[before].name,
            reason=decision.reason,
            stale=stale,
            budget_w=parsed.spec.budget_watts,
            staleness_s=staleness_s,
            failsafe_stage_name=plan.stages[plan.failsafe_stage].name,
            power_w=power_w,
            power_time=None
            if reading.power is None
            else datetime.fromtimestamp(reading.power.sample_time_s, UTC),
            node_count=domain.node_count,
            gpu_count=domain.gpu_count,
            throttled_gpu_count=domain.throttled_gpu_count,
            problems=problems,
            enforcing_last_valid=self._spec_problem is not None,
        )
        if decision.changed:
            log.info("PowerPolicy %s: %s → %s: %s", self.name, report.previous_stage_name,
                     report.stage_name, decision.reason)  # fmt: skip
        wrote = await self._writer.report(report)
        metrics = self._deps.metrics
        if wrote:
            metrics.status_written(self.name)
        metrics.observe_cycle(
            self.name,
            stage=decision.stage,
            change=_change(before, decision.stage),
            power_w=power_w,
            budget_w=parsed.spec.budget_watts,
            age_s=age_s,
            stale=stale,
            duration_s=self._deps.monotonic() - started_s,
        )
        self._deps.health.beat(self.name, self.interval_s)
        return CycleOutcome(decision, reading, wrote, problems)

    def _update_spec(
        self, raw_spec: Mapping[str, Any], generation: Any, annotations: Any = None
    ) -> None:
        """Parse a new generation; keep the last valid plan when it does not parse."""
        annotations = annotations if isinstance(annotations, Mapping) else {}
        # kubectl apply may change only the annotation (no new generation), which matters.
        version = (generation, annotations.get(LAST_APPLIED))
        if version == self._generation and (self._parsed or self._spec_problem):
            return
        self._generation = version
        parsed = parse_spec(
            raw_spec, generation if isinstance(generation, int) else None, annotations
        )
        if isinstance(parsed, Problem):
            log.warning("PowerPolicy %s: %s: %s", self.name, parsed.reason, parsed.message)
            self._spec_problem = parsed
            return
        self._spec_problem = None
        if self._parsed is None or self._state is None:
            stage = stage_from_status(self._initial_status, parsed.plan)
            self._state = ControllerState(stage=stage)
        else:
            stage = _carry_stage(self._parsed, self._state.stage, parsed.plan)
            self._state = replace(self._state, stage=stage)
        self._parsed = parsed
        self._domain_key = None
        spec = parsed.spec
        self._deps.metrics.set_plan(
            self.name,
            spec.budget_watts,
            [(s.name, s.trigger_pct * spec.budget_watts / 100) for s in parsed.plan.stages[1:]],
        )

    def _domain_for(self, parsed: ParsedSpec, view: ClusterView) -> _Domain:
        key = (id(parsed), self._deps.default_prometheus_url, view.fingerprint())
        if key == self._domain_key and self._domain is not None:
            return self._domain
        spec = parsed.spec
        all_labels = list(view.node_labels())
        selected = [name for name, labels in all_labels if parsed.selector.matches(labels)]
        nodes: list[DomainNode] = []
        urls: dict[str, str] = {}
        gpus = throttled = 0
        for name in selected:
            report = view.report(name)
            if report is None:
                nodes.append(DomainNode(name, reporting=False))
                continue
            nodes.append(DomainNode(name, reporting=True))
            if report.metrics_url:
                refused = endpoint_problem(
                    report.metrics_url, view.addresses(name), self._deps.daemon_ports
                )
                if refused is None:
                    urls[name] = report.metrics_url
                else:
                    # Logged once per change of the indexes: this runs only when they change.
                    log.warning("PowerPolicy %s: not streaming node %s's power from %r: %s",
                                self.name, name, report.metrics_url, refused)  # fmt: skip
            gpus += report.gpu_count
            throttled += report.throttled_gpu_count
        promql = spec.node_power.source == "promql"
        query = PowerQuery(
            nodes=tuple(nodes),
            source=spec.telemetry.source,
            prometheus_url=spec.telemetry.prometheus_url or self._deps.default_prometheus_url,
            # Direct scrapes count GPU power only: no stand-in for whole-node PromQL power.
            direct_fallback=spec.telemetry.direct_fallback and not promql,
            overhead_w=0.0 if promql else spec.node_power.overhead_watts,
            staleness_s=parsed.plan.staleness_s,
            promql=spec.node_power.query if promql else None,
            node_label=spec.node_power.node_label,
            metrics_urls=urls,
        )
        problems = self._semantic.problems(parsed, len(selected), [lb for _, lb in all_labels])
        members = set(selected)
        self._last_known = {n: s for n, s in self._last_known.items() if n in members}
        self._domain = _Domain(query, len(selected), gpus, throttled, problems)
        self._domain_key = key
        self._follow(query)
        return self._domain

    def _wake_at_w(self, parsed: ParsedSpec, domain: _Domain) -> float | None:
        """The streamed power that should run the next cycle early (direct telemetry only)."""
        query = domain.query
        if query.source != "direct" or self._state is None:
            return None
        overhead_w = query.overhead_w * len(query.nodes)
        return wake_at_w(
            parsed.plan, self._state.stage, parsed.spec.budget_watts, overhead_w=overhead_w
        )

    def _on_sample(self, node: str, power_w: float) -> None:
        if self._watch.sample(node, power_w):
            self.wake.set()

    def _follow(self, query: PowerQuery) -> None:
        """Stream the domain's daemons where direct telemetry may be read: as the source (and
        then wake on samples), or as Prometheus's fallback."""
        streams = self._deps.streams
        if streams is None:
            return
        direct = query.source == "direct"
        urls = query.metrics_urls if direct or query.direct_fallback else {}
        streams.follow(self.name, urls, self._on_sample if direct else None)
        self._watch.retain(query.node_names)

    def close(self) -> None:
        """The loop stopped: let go of its streams."""
        if self._deps.streams is not None:
            self._deps.streams.release(self.name)

    def _note_errors(self, reading: TelemetryReading) -> None:
        failing: frozenset[str] = frozenset(source for source, _ in reading.errors)
        for source, message in reading.errors:
            self._deps.metrics.telemetry_error(self.name, source)
            if source not in self._failing_sources:
                log.warning("PowerPolicy %s: %s telemetry failing: %s", self.name, source, message)
        for recovered in self._failing_sources - failing:
            log.info("PowerPolicy %s: %s telemetry recovered", self.name, recovered)
        self._failing_sources = failing


class StopFlag(Protocol):
    """Kopf's `stopped` flag of a daemon: false while running, awaitable with a timeout."""

    def __bool__(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> Awaitable[object]: ...


async def run_loop(
    loop: ControlLoop, body: Mapping[str, Any], view: ClusterView, stopped: StopFlag
) -> None:
    """Cycle at the policy's interval, and early when a sample calls for an escalation
    (`ControlLoop.wake`), until stopped; an unexpected error costs one cycle only."""
    deps = loop.deps
    try:
        while not stopped:
            started_s = deps.monotonic()
            loop.wake.clear()  # this cycle reads every sample that came so far
            try:
                await loop.cycle(body, view)
            except Exception:  # a bug in one cycle must not end the control loop
                log.exception("PowerPolicy %s: control cycle failed", loop.name)
            await _until_next_cycle(loop, stopped, started_s)
    finally:
        # Paused (a peer took over), stopped or deleted: this replica no longer speaks for it.
        loop.close()
        deps.metrics.forget(loop.name)
        deps.health.forget(loop.name)


async def _until_next_cycle(loop: ControlLoop, stopped: StopFlag, started_s: float) -> None:
    """Until the interval ends, the loop is woken or stopped; never sooner than the minimum gap
    after the cycle's start."""
    deps = loop.deps
    remaining_s = loop.interval_s - (deps.monotonic() - started_s)
    if remaining_s <= 0:
        return
    if not loop.wake.is_set():
        stop = asyncio.ensure_future(stopped.wait(remaining_s))
        wake = asyncio.ensure_future(loop.wake.wait())
        try:
            await asyncio.wait((stop, wake), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            wake.cancel()
    if not loop.wake.is_set() or stopped:
        return
    deps.metrics.early_cycle(loop.name)
    gap_s = MIN_CYCLE_GAP_S - (deps.monotonic() - started_s)
    if gap_s > 0 and not stopped:
        await stopped.wait(gap_s)
