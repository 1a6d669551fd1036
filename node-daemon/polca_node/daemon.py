"""The node daemon: watches, decisions, actuation, the guard, metrics and status, wired together.

Tasks on one event loop, blocking work in threads:
- three watch threads (`polca_node.watching`) keep `ObservedCluster` current: this node's Node
  (labels), every PowerPolicy, and this node's pods (field selector `spec.nodeName=<node>`);
  any change wakes the reconciler at once, so a PowerPolicy status change reaches the GPUs in
  milliseconds, with no polling period in between;
- the reconciler decides (`policies.decide_node`, pure) and applies (`Actuator.apply`, in a
  thread); it also runs every `resync_s` to retry rejected writes;
- the sampler, every guard period (≤ 0.5 s): reads every GPU (thread), runs the local guards
  (`GuardBank`), refreshes the metrics snapshot, and wakes the reconciler when a guard moves;
- the GPU→pod mapper (PodResources mode) polls the kubelet and on every pod event;
- the status writer writes NodePowerState on change and as a 30 s heartbeat, and posts Events.

Start-up: the GPUs keep what they have until the daemon has read its previous NodePowerState,
listed the policies and pods and seen its Node (mode HOLD). Shutdown (SIGTERM) stops the
tasks, the watch threads, the kubelet channel and NVML, and leaves every GPU setting in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from polca.api.conditions import Condition
from polca.api.nodepowerstate import AppliedPolicy, NodePowerStateStatus
from polca.control.plan import GpuLimits
from polca.control.tiers import PodFacts
from polca_node.actuator import ActuationResult, Actuator, Knob
from polca_node.energy_cadence import EnergyCadence
from polca_node.exporter import GpuSample, NodeMetrics, NodeSnapshot
from polca_node.gpu.backend import GpuBackend, GpuInfo, GpuReading, Inventory
from polca_node.gpu.errors import GpuError
from polca_node.guard_loop import GuardBank, GuardOutcome, run_periodic
from polca_node.kube_client import ApiError, KubeClient
from polca_node.observed import LoopSink, ObservedCluster, PodKey
from polca_node.policies import DecisionInputs, Mode, NodeDecision, decide_node
from polca_node.status_writer import (
    NodeStateClient,
    PreviousRecord,
    StatusInputs,
    StatusSchedule,
    applied_policies,
    build_status,
    previous_record,
    status_fingerprint,
)
from polca_node.tiering import (
    PodResourcesMapper,
    assign_fake_gpus,
    fake_gpu_owners,
    gpu_pod_facts,
)
from polca_node.watching import Watcher, WatchTarget

__all__ = ["DaemonConfig", "NodeDaemon", "gpu_limits"]

logger = logging.getLogger(__name__)

POWER_POLICIES = "/apis/polca.dev/v1alpha1/powerpolicies"
RETRY_S = 2.0
OPEN_RETRY_S = 30.0


@dataclass(frozen=True)
class DaemonConfig:
    node_name: str
    guard_period_s: float = 0.5
    heartbeat_s: float = 30.0
    resync_s: float = 30.0
    podresources_interval_s: float = 5.0
    fake_gpu_annotation: str | None = None  # set: GPUs from pod annotations, not the kubelet
    metrics_endpoint: str | None = None
    event_namespace: str = "default"


def gpu_limits(info: GpuInfo) -> GpuLimits:
    """What a stage action is resolved against for this GPU."""
    return GpuLimits(
        max_sm_clock_mhz=info.max_sm_clock_mhz,
        min_sm_clock_mhz=min(info.supported_clocks_mhz) if info.supported_clocks_mhz else 1,
        min_limit_w=info.min_limit_w,
        max_limit_w=info.max_limit_w,
        default_limit_w=info.default_limit_w,
    )


class NodeDaemon:
    """One node's daemon. `await run(stop)` until `stop` is set."""

    def __init__(
        self,
        config: DaemonConfig,
        backend: GpuBackend,
        kube: KubeClient,
        metrics: NodeMetrics,
        *,
        pod_mapper_factory: Callable[[Inventory], PodResourcesMapper] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.backend = backend
        self.kube = kube
        self.metrics = metrics
        self.observed = ObservedCluster(config.node_name)
        self.state_client = NodeStateClient(
            kube, config.node_name, event_namespace=config.event_namespace
        )
        self._pod_mapper_factory = pod_mapper_factory
        self._pod_mapper: PodResourcesMapper | None = None
        self._clock = clock
        self._wall_clock = wall_clock
        self._inventory: Inventory | None = None
        self._gpus: dict[int, GpuInfo] = {}
        self._limits: dict[int, GpuLimits] = {}
        self.actuator: Actuator | None = None
        self._guards = GuardBank()
        self._guard_since: datetime | None = None
        self._readings: dict[int, GpuReading] = {}
        self._energy = EnergyCadence(config.heartbeat_s)
        self._read_errors: dict[int, str] = {}
        self._inventory_errors: dict[int, str] = {}  # GPUs NVML could not even describe
        self._last_sample_s: float | None = None
        self._previous: PreviousRecord | None = None  # None until our NodePowerState is read
        self._record: tuple[AppliedPolicy, ...] = ()
        self._restored = False
        self._fake_assignment: dict[PodKey, tuple[int, ...]] = {}
        self.decision = NodeDecision(Mode.HOLD, "starting")
        self._dry_run_seen: dict[tuple[int, Knob], object] = {}
        self._open_error: GpuError | None = None
        self._reported_failures: set[tuple[int, Knob, str]] = set()
        self._wake = asyncio.Event()
        self._status_wake = asyncio.Event()
        self._pods_changed = asyncio.Event()
        self._watchers: list[Watcher] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._conditions: tuple[Condition, ...] = ()  # as last written
        self._started_s = clock()

    # -- health ------------------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        """Live while GPU samples keep coming (or NVML is still being opened)."""
        now = self._clock()
        if self._last_sample_s is None:
            if self._open_error is not None:
                return True, f"waiting for NVML: {self._open_error}"
            return now - self._started_s < 60.0, "starting"
        age_s = now - self._last_sample_s
        limit_s = max(10.0, 20 * self.config.guard_period_s)
        return age_s < limit_s, f"last GPU sample {age_s:.1f} s ago"

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        inventory = await self._open(stop)
        if inventory is None:
            return
        loop = asyncio.get_running_loop()
        self._start_watchers(loop)
        tasks = [
            asyncio.create_task(self._read_previous(stop), name="previous-status"),
            asyncio.create_task(self._reconcile_loop(stop), name="reconcile"),
            asyncio.create_task(self._status_loop(stop), name="status"),
            asyncio.create_task(self._resync_loop(stop), name="resync"),
            asyncio.create_task(
                run_periodic(
                    self.sample, lambda: self.config.guard_period_s, stop, clock=self._clock
                ),
                name="sampler",
            ),
        ]
        if self._pod_mapper is not None:
            tasks.append(asyncio.create_task(self._podresources_loop(stop), name="kubelet"))
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        for watcher in self._watchers:
            watcher.stop()
        self.kube.close()
        if self._pod_mapper is not None:
            self._pod_mapper.close()
        with contextlib.suppress(GpuError):
            self.backend.close()  # settings stay on the GPUs (safety rule 1)
        logger.info("stopped; GPU settings left as they are")

    async def _open(self, stop: asyncio.Event) -> Inventory | None:
        """Open NVML, retrying: a node without a usable driver reports it, never crash-loops."""
        while not stop.is_set():
            try:
                inventory = await asyncio.to_thread(self.backend.open)
            except GpuError as exc:
                self._open_error = exc
                # An expected condition on nodes without a driver: the message, no traceback.
                logger.error("cannot open NVML (retrying in %.0f s): %s", OPEN_RETRY_S, exc)  # noqa: TRY400
                await self._report_open_error(exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), OPEN_RETRY_S)
                continue
            self._open_error = None
            self.adopt(inventory)
            return inventory
        return None

    async def _report_open_error(self, exc: GpuError) -> None:
        """Ready=False with NVML's reason. Only the conditions and the heartbeat are patched:
        the record of applied policies must survive for when NVML comes back."""
        now = self._wall_clock()
        try:
            found = await asyncio.to_thread(self.state_client.ensure)
            conditions = previous_record(found).conditions
            status = NodePowerStateStatus(conditions=list(conditions) or None).with_condition(
                "Ready", "False", exc.reason, str(exc), now=now
            )
            await asyncio.to_thread(
                self.state_client.patch_status,
                {
                    "conditions": status.to_wire()["conditions"],
                    "heartbeatTime": now.isoformat().replace("+00:00", "Z"),
                    "metricsEndpoint": self.config.metrics_endpoint,
                },
            )
        except ApiError as api_exc:
            logger.warning("cannot report the NVML failure: %s", api_exc)

    def adopt(self, inventory: Inventory) -> None:
        """Take the GPUs NVML found (done by `run`; tests call it directly)."""
        self._inventory = inventory
        self._gpus = inventory.by_index()
        self._limits = {index: gpu_limits(info) for index, info in self._gpus.items()}
        for index, failure in inventory.failures.items():
            logger.error("GPU %d unusable: %s", index, failure)
        self._inventory_errors = {i: str(e) for i, e in inventory.failures.items()}
        self.actuator = Actuator(
            self.backend, self._gpus, self.metrics, wall_clock=self._wall_clock
        )
        if self._pod_mapper_factory is not None and self.config.fake_gpu_annotation is None:
            self._pod_mapper = self._pod_mapper_factory(inventory)
        logger.info(
            "%d GPUs: %s", len(self._gpus), ", ".join(sorted({g.name for g in self._gpus.values()}))
        )

    def _start_watchers(self, loop: asyncio.AbstractEventLoop) -> None:
        node = self.config.node_name
        observed = self.observed

        def on_pods_change() -> None:
            self._pods_changed.set()
            self.wake()

        specs = [
            (
                WatchTarget("node", "/api/v1/nodes", field_selector=f"metadata.name={node}"),
                LoopSink(loop, observed.replace_nodes, observed.apply_node, self.wake),
            ),
            (
                WatchTarget("powerpolicies", POWER_POLICIES),
                LoopSink(loop, observed.replace_policies, observed.apply_policy, self.wake),
            ),
            (
                WatchTarget("pods", "/api/v1/pods", field_selector=f"spec.nodeName={node}"),
                LoopSink(loop, observed.replace_pods, observed.apply_pod, on_pods_change),
            ),
        ]
        self._watchers = [Watcher(self.kube, target, sink).start() for target, sink in specs]

    def wake(self) -> None:
        """Reconcile as soon as possible (coalesced)."""
        self._wake.set()

    # -- the previous record -----------------------------------------------------------------

    async def _read_previous(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                obj = await asyncio.to_thread(self.state_client.ensure)
            except ApiError as exc:
                logger.warning("cannot read our NodePowerState yet: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RETRY_S)
                continue
            self.recall(previous_record(obj))
            return

    def recall(self, record: PreviousRecord) -> None:
        """Take what our NodePowerState recorded before this process started."""
        self._previous = record
        self._record = record.policies
        if self.actuator is not None:
            self.actuator.recall(record.ceilings_mhz)
        logger.info(
            "previous record: %s",
            ", ".join(f"{p.name}/{p.stage}" for p in record.policies) or "no policy",
        )
        self.wake()

    # -- deciding and applying ---------------------------------------------------------------

    def _gpu_pods(self) -> dict[int, tuple[PodFacts, ...]] | None:
        observed = self.observed
        if not observed.pods_synced:
            return None
        annotation = self.config.fake_gpu_annotation
        if annotation is not None:
            self._fake_assignment = assign_fake_gpus(
                observed.pods.values(), annotation, len(self._gpus), self._fake_assignment
            )
            owners = fake_gpu_owners(self._fake_assignment)
        elif self._pod_mapper is not None and self._pod_mapper.owners is not None:
            owners = self._pod_mapper.owners
        else:
            return None
        return gpu_pod_facts(owners, observed.pods)

    def inputs(self) -> DecisionInputs:
        observed = self.observed
        return DecisionInputs(
            node_labels=observed.node_labels,
            policies=list(observed.policies.values()) if observed.policies_synced else None,
            gpu_limits=self._limits,
            gpu_pods=self._gpu_pods(),
            previously_managed=None
            if self._previous is None
            else any(not p.dry_run for p in self._record),
            guard_actions=self._guards.actions(),
        )

    async def _reconcile_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            await self.reconcile()

    async def reconcile(self) -> ActuationResult:
        """Decide and apply once."""
        assert self.actuator is not None
        decision = decide_node(self.inputs())
        if decision.mode != self.decision.mode or decision.reason != self.decision.reason:
            logger.info("%s: %s", decision.mode.value, decision.reason)
        self.decision = decision
        result = await asyncio.to_thread(self.actuator.apply, decision)
        self._after_apply(decision, result)
        self._status_wake.set()
        return result

    def _after_apply(self, decision: NodeDecision, result: ActuationResult) -> None:
        restore_complete = decision.mode is Mode.RESTORE and result.complete
        record = applied_policies(decision, self._record, restore_complete=restore_complete)
        if restore_complete and self._record:
            self._restored = True
            message = (
                "the node left every enforcing PowerPolicy (was under "
                f"{', '.join(p.name for p in self._record if not p.dry_run)}): clock ceilings "
                "reset and default power limits restored on every GPU"
            )
            logger.info(message)
            self._post_event("DefaultsRestored", message)
        if decision.managed:
            self._restored = False
        self._record = record
        self._count_dry_run(decision)
        for index, failure in result.failures:
            key = (index, failure.knob, failure.reason)
            if key not in self._reported_failures:
                self._reported_failures.add(key)
                self._post_event("GpuWriteFailed", failure.message, warning=True)
        for index, knob in result.changed:
            self._reported_failures = {
                k for k in self._reported_failures if (k[0], k[1]) != (index, knob)
            }

    def _count_dry_run(self, decision: NodeDecision) -> None:
        """Count and log what dry-run policies would change (once per new would-be value)."""
        if not any(p.dry_run for p in decision.policies):
            self._dry_run_seen.clear()
            return
        for index, gpu in decision.gpus.items():
            would = {
                "clockCeiling": gpu.report.clock_ceiling_mhz,
                "powerLimit": gpu.report.power_limit_w,
            }
            enforced = {
                "clockCeiling": gpu.enforce.clock_ceiling_mhz,
                "powerLimit": gpu.enforce.power_limit_w,
            }
            knob: Knob
            for knob in ("clockCeiling", "powerLimit"):
                value = would[knob]
                if value == enforced[knob] or self._dry_run_seen.get((index, knob)) == value:
                    continue
                self._dry_run_seen[(index, knob)] = value
                self.metrics.on_dry_run_write(index, knob)
                logger.info("dry run: GPU %d %s would be %s", index, knob, value)

    def _post_event(self, reason: str, message: str, *, warning: bool = False) -> None:
        now = self._wall_clock()

        async def post() -> None:
            try:
                await asyncio.to_thread(
                    self.state_client.post_event, reason, message, now=now, warning=warning
                )
            except ApiError as exc:
                logger.warning("could not post event %s: %s", reason, exc)

        self._background(post())

    async def flush_background(self) -> None:
        """Wait for background work (Event posts) to finish."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        # Keep a reference: the loop holds tasks only weakly.
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resync_loop(self, stop: asyncio.Event) -> None:
        """Reconcile now and then even without events: retries rejected writes, fixes drift."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.resync_s)
            self.wake()

    async def _podresources_loop(self, stop: asyncio.Event) -> None:
        mapper = self._pod_mapper
        assert mapper is not None
        while not stop.is_set():
            self._pods_changed.clear()
            if await mapper.refresh_async():
                self.wake()
            with contextlib.suppress(TimeoutError):
                # A new pod may just have got its devices: look again at once on pod events.
                await asyncio.wait_for(
                    self._pods_changed.wait(), self.config.podresources_interval_s
                )

    # -- sampling and the guard --------------------------------------------------------------

    def _read_all(self) -> tuple[dict[int, GpuReading], dict[int, str]]:
        readings: dict[int, GpuReading] = {}
        errors: dict[int, str] = {}
        now_s = self._clock()
        energy = self._energy.due(now_s)  # 3.9 ms a GPU: once per heartbeat, not every tick
        for index in self._gpus:
            try:
                reading = self.backend.read(index, energy=energy)
                readings[index] = self._energy.carried(reading, self._readings.get(index))
            except GpuError as exc:
                errors[index] = str(exc)
        if energy:
            self._energy.done(now_s)
        if self.actuator is not None:
            self.actuator.observe(readings)
        return readings, errors

    async def sample(self) -> None:
        """Read every GPU, run the guards and refresh the metrics (one sampler tick)."""
        readings, errors = await asyncio.to_thread(self._read_all)
        if errors.keys() != self._read_errors.keys():
            for index, message in errors.items():
                logger.warning("GPU %d read failed: %s", index, message)
            self._status_wake.set()
        self._readings, self._read_errors = readings, errors
        self._last_sample_s = self._clock()
        self._run_guards(readings)
        self._publish(readings)

    def _run_guards(self, readings: Mapping[int, GpuReading]) -> None:
        policies = {
            p.name: self.observed.policies[p.name]
            for p in self.decision.policies
            if p.name in self.observed.policies
        }
        tiers = {p.name: {i: g.tier for i, g in p.gpus.items()} for p in self.decision.policies}
        # The instant field where the driver has it: the 1 s average would let the guard act late.
        power_w = sum(r.fresh_power_w for r in readings.values()) if readings else None
        was_active = any(o.active for o in self._guards.outcomes.values())
        outcomes = self._guards.tick(
            now_s=self._clock(),
            gpu_power_w=power_w,
            policies=policies,
            gpu_tiers=tiers,
            gpu_limits=self._limits,
        )
        for outcome in outcomes.values():
            if outcome.activated:
                self.metrics.on_guard_activation(outcome.policy)
        if any(o.changed for o in outcomes.values()):
            if any(o.active for o in outcomes.values()) != was_active:
                self._guard_since = self._wall_clock()
            self.wake()

    def _publish(self, readings: Mapping[int, GpuReading]) -> None:
        applied = self.actuator.applied if self.actuator is not None else {}
        samples = []
        for index, info in sorted(self._gpus.items()):
            decided = self.decision.gpus.get(index)
            pod = decided.pod if decided is not None else None
            gpu = applied.get(index)
            samples.append(
                GpuSample(
                    info=info,
                    reading=readings.get(index),
                    pod_namespace=pod.namespace if pod is not None else "",
                    pod_name=pod.name if pod is not None else "",
                    tier=(decided.tier or "") if decided is not None else "",
                    clock_ceiling_mhz=gpu.clock_ceiling_mhz if gpu is not None else None,
                    clock_ceiling_known=gpu is not None and gpu.clock_known,
                )
            )
        throttled = sum(
            1
            for index, gpu in applied.items()
            if (gpu.clock_known and gpu.clock_ceiling_mhz is not None
                and gpu.clock_ceiling_mhz < self._gpus[index].max_sm_clock_mhz)
            or gpu.power_cap_w is not None
        )  # fmt: skip
        self.metrics.update(NodeSnapshot(tuple(samples), throttled, self._wall_clock().timestamp()))

    # -- status ------------------------------------------------------------------------------

    def guard_outcomes(self) -> Mapping[str, GuardOutcome]:
        return self._guards.outcomes

    def build_status_inputs(self) -> StatusInputs:
        previous = self._previous.conditions if self._previous is not None else ()
        return StatusInputs(
            gpus=self._gpus,
            decision=self.decision,
            applied=self.actuator.applied if self.actuator is not None else {},
            readings=self._readings,
            policies=self._record,
            guards=self._guards.outcomes,
            guard_since=self._guard_since,
            previous_conditions=self._conditions or previous,
            now=self._wall_clock(),
            metrics_endpoint=self.config.metrics_endpoint,
            restored=self._restored,
            read_errors={**self._inventory_errors, **self._read_errors},
        )

    async def _status_loop(self, stop: asyncio.Event) -> None:
        schedule = StatusSchedule(self.config.heartbeat_s)
        while not stop.is_set():
            self._status_wake.clear()
            if self._previous is not None:  # never overwrite the record before reading it
                status = build_status(self.build_status_inputs())
                fingerprint = status_fingerprint(status)
                now_s = self._clock()
                if schedule.due(now_s, fingerprint):
                    try:
                        await asyncio.to_thread(self.state_client.write_status, status)
                        schedule.written(now_s, fingerprint)
                        self._conditions = tuple(status.conditions or ())
                    except ApiError as exc:
                        logger.warning("status write failed (retrying): %s", exc)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), RETRY_S)
                        continue
            next_s = schedule.next_heartbeat_s()
            timeout_s = RETRY_S if next_s is None else max(0.0, next_s - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_wake.wait(), timeout_s)
