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
listed the policies and pods and seen its Node (mode HOLD) — unless a node-local checkpoint
(`polca_node.checkpoint`, under `--state-dir`) says what it last acted on: then what the API has
not told it yet comes from the checkpoint, the guard runs at once and decisions only tighten
until the API answers (safety rule 8). Shutdown (SIGTERM) stops the
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
from pathlib import Path
from typing import Any

from polca.api.conditions import Condition
from polca.api.nodepowerstate import AppliedPolicy, NodePowerStateStatus
from polca.api.powerpolicy import PowerPolicy
from polca.control.plan import GpuLimits
from polca_node.actuator import ActuationResult, Actuator, Knob
from polca_node.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    CheckpointError,
    read_checkpoint,
    resume_inputs,
    resumed_decision,
    to_document,
    write_checkpoint,
)
from polca_node.energy_cadence import EnergyCadence
from polca_node.exporter import GpuSample, NodeMetrics, NodeSnapshot
from polca_node.gpu.backend import GpuBackend, GpuInfo, GpuReading, Inventory
from polca_node.gpu.errors import GpuError
from polca_node.guard_loop import GuardBank, GuardOutcome, run_periodic
from polca_node.kube_client import ApiError, KubeClient
from polca_node.node_status import (
    PreviousRecord,
    StatusInputs,
    StatusSchedule,
    applied_policies,
    build_status,
    previous_record,
    status_fingerprint,
)
from polca_node.observed import LoopSink, ObservedCluster, PodKey
from polca_node.policies import DecisionInputs, Mode, NodeDecision, decide_node
from polca_node.status_writer import NodeStateClient
from polca_node.supervision import Supervisor
from polca_node.tiering import (
    GpuOwners,
    OwnerConflict,
    PodResourcesMapper,
    assign_fake_gpus,
    check_owners,
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
    # Node-local directory for the checkpoint (safety rule 8); None: no checkpoint.
    state_dir: Path | None = None


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
        # GPUs each live pod held when the kubelet last listed it (`check_owners`).
        self._kubelet_memory: dict[PodKey, tuple[int, ...]] = {}
        self.decision = NodeDecision(Mode.HOLD, "starting")
        self._dry_run_seen: dict[tuple[int, Knob], object] = {}
        self._open_error: GpuError | None = None
        self._reported_failures: set[tuple[int, Knob, str]] = set()
        self._unreadable_reported: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._status_wake = asyncio.Event()
        self._pods_changed = asyncio.Event()
        self._watchers: list[Watcher] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._conditions: tuple[Condition, ...] = ()  # as last written
        self._started_s = clock()
        # The checkpoint this process started from (None: none, or not usable), the policies the
        # last decision used (the guard's too), and the last checkpoint document written.
        self._checkpoint: Checkpoint | None = None
        self._decided_policies: dict[str, PowerPolicy] = {}
        self._checkpoint_written: dict[str, Any] | None = None
        self._supervisor: Supervisor | None = None
        self._last_reconcile_s: float | None = None

    # -- health ------------------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        """Live while GPU samples keep coming (or NVML is still being opened) and no task
        keeps failing: a restart of the pod is the remedy left for either."""
        now = self._clock()
        failing = self._supervisor.failing() if self._supervisor is not None else []
        if failing:
            return False, f"tasks failing again and again: {', '.join(failing)}"
        if self._last_sample_s is None:
            if self._open_error is not None:
                return True, f"waiting for NVML: {self._open_error}"
            return now - self._started_s < 60.0, "starting"
        age_s = now - self._last_sample_s
        limit_s = max(10.0, 20 * self.config.guard_period_s)
        return age_s < limit_s, f"last GPU sample {age_s:.1f} s ago"

    def ready(self) -> tuple[bool, str]:
        """Ready when NVML is open, the watches have listed, a reconcile ran recently and
        every task runs: what a rolling update must wait for before it takes the next node."""
        live, detail = self.healthy()
        observed = self.observed
        synced = observed.policies_synced and observed.pods_synced and observed.node_synced
        down = self._supervisor.down() if self._supervisor is not None else ["all"]
        last_s = self._last_reconcile_s
        age_s = float("inf") if last_s is None else self._clock() - last_s
        problems = (
            (not live, detail),
            (self.actuator is None, "NVML not open yet"),
            (not synced, "watches not synced yet"),
            (bool(down), f"tasks down: {', '.join(down)}"),
            (last_s is None, "no reconcile yet"),
            # The resync loop reconciles at least every resync_s, events more often.
            (age_s > 3 * self.config.resync_s, f"last reconcile {age_s:.0f} s ago"),
        )
        problem = next((message for bad, message in problems if bad), None)
        if problem is not None:
            return False, problem
        return True, f"ready; last reconcile {age_s:.1f} s ago"

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        inventory = await self._open(stop)
        if inventory is None:
            return
        await asyncio.to_thread(self.resume)
        loop = asyncio.get_running_loop()
        self._start_watchers(loop)
        supervisor = Supervisor(stop, on_restart=self.metrics.on_task_restart)
        self._supervisor = supervisor
        supervisor.start("previous-status", lambda: self._read_previous(stop), once=True)
        supervisor.start("reconcile", lambda: self._reconcile_loop(stop))
        supervisor.start("status", lambda: self._status_loop(stop))
        supervisor.start("resync", lambda: self._resync_loop(stop))
        supervisor.start(
            "sampler",
            lambda: run_periodic(
                self.sample, lambda: self.config.guard_period_s, stop, clock=self._clock
            ),
        )
        if self._pod_mapper is not None:
            supervisor.start("kubelet", lambda: self._podresources_loop(stop))
        try:
            await stop.wait()
        finally:
            await supervisor.stop()
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

    # -- the node-local checkpoint (safety rule 8) -------------------------------------------

    @property
    def checkpoint_path(self) -> Path | None:
        state_dir = self.config.state_dir
        return None if state_dir is None else state_dir / CHECKPOINT_FILE

    def resume(self) -> Checkpoint | None:
        """Read the checkpoint (blocking; `run` does it before anything else), so decisions and
        the guard can start from it before the API server answers."""
        path = self.checkpoint_path
        if path is None:
            return None
        try:
            checkpoint = read_checkpoint(path, self.config.node_name)
        except CheckpointError as exc:
            # Ignored, never acted on: the GPUs are held as they are until the API answers.
            logger.warning("ignoring the checkpoint %s (%s): %s", path, exc.reason, exc)
            self.metrics.on_checkpoint_error(exc.reason)
            return None
        if checkpoint is None:
            logger.info("no checkpoint at %s: holding the GPUs until the API answers", path)
            return None
        self._checkpoint = checkpoint
        self._record = checkpoint.applied
        if self.actuator is not None:
            self.actuator.recall(checkpoint.ceilings_mhz)
        logger.info(
            "resuming from the checkpoint %s: %s", path,
            ", ".join(f"{p.name}/{p.stage}" for p in checkpoint.applied) or "no policy",
        )  # fmt: skip
        self.wake()
        return checkpoint

    def _checkpoint_now(self, inputs: DecisionInputs, decision: NodeDecision) -> Checkpoint:
        applied = self.actuator.applied if self.actuator is not None else {}
        chosen = {p.name for p in decision.policies}
        return Checkpoint(
            node_name=self.config.node_name,
            node_labels=dict(inputs.node_labels or {}),
            policies=tuple(p for p in inputs.policies or () if p.metadata.name in chosen),
            applied=self._record,
            gpu_pods={i: tuple(pods) for i, pods in (inputs.gpu_pods or {}).items()},
            ceilings_mhz={i: a.clock_ceiling_mhz for i, a in applied.items() if a.clock_known},
        )

    async def _save_checkpoint(self, inputs: DecisionInputs, decision: NodeDecision) -> None:
        """Write the checkpoint when what it would hold changed (never in HOLD: nothing new)."""
        path = self.checkpoint_path
        if path is None or decision.mode is Mode.HOLD:
            return
        checkpoint = self._checkpoint_now(inputs, decision)
        document = to_document(checkpoint)
        if document == self._checkpoint_written:
            return
        try:
            await asyncio.to_thread(write_checkpoint, path, checkpoint)
        except OSError as exc:
            # A full or read-only disk costs the restart-during-outage guarantee, not actuation.
            logger.warning("cannot write the checkpoint %s: %s", path, exc)
            self.metrics.on_checkpoint_error("WriteFailed")
            return
        self._checkpoint_written = document

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
        if self._checkpoint is None:
            # With a checkpoint, the record it gave (and what decisions made of it since) is at
            # least as new as the NodePowerState, which is written after the checkpoint.
            self._record = record.policies
        if self.actuator is not None:
            self.actuator.recall(record.ceilings_mhz)
        logger.info(
            "previous record: %s",
            ", ".join(f"{p.name}/{p.stage}" for p in record.policies) or "no policy",
        )
        self.wake()

    # -- deciding and applying ---------------------------------------------------------------

    def _gpu_owners(self) -> tuple[GpuOwners | None, OwnerConflict | None]:
        """Which pods hold each GPU (None: not known yet), and where the sources disagree."""
        observed = self.observed
        if not observed.pods_synced:
            return None, None
        annotation = self.config.fake_gpu_annotation
        if annotation is not None:
            self._fake_assignment = assign_fake_gpus(
                observed.pods.values(), annotation, len(self._gpus), self._fake_assignment
            )
            return fake_gpu_owners(self._fake_assignment), None
        if self._pod_mapper is None or self._pod_mapper.owners is None:
            return None, None
        # Never trust the kubelet's answer alone (safety rule 6): check it against the watch.
        check = check_owners(
            self._pod_mapper.owners, observed.pods, self._kubelet_memory, self._gpus
        )
        self._kubelet_memory = check.remembered
        return check.owners, check.conflict

    def inputs(self) -> DecisionInputs:
        observed = self.observed
        owners, conflict = self._gpu_owners()
        return DecisionInputs(
            node_labels=observed.node_labels,
            policies=list(observed.policies.values()) if observed.policies_synced else None,
            gpu_limits=self._limits,
            gpu_pods=None if owners is None else gpu_pod_facts(owners, observed.pods),
            previously_managed=None
            if self._previous is None
            else any(not p.dry_run for p in self._record),
            guard_actions=self._guards.actions(),
            unreadable=tuple(observed.unreadable.values()),
            owner_conflict=conflict,
        )

    async def _reconcile_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            await self.reconcile()

    async def reconcile(self) -> ActuationResult:
        """Decide and apply once."""
        assert self.actuator is not None
        inputs, resumed = resume_inputs(self.inputs(), self._checkpoint)
        decision = resumed_decision(decide_node(inputs), resumed)
        self._decided_policies = {p.metadata.name or "": p for p in inputs.policies or ()}
        if decision.mode != self.decision.mode or decision.reason != self.decision.reason:
            logger.info("%s: %s", decision.mode.value, decision.reason)
        self._report_owner_conflict(decision)
        self.decision = decision
        self._report_unreadable(decision)
        result = await asyncio.to_thread(self.actuator.apply, decision)
        self._last_reconcile_s = self._clock()
        self._after_apply(decision, result)
        await self._save_checkpoint(inputs, decision)
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

    def _report_unreadable(self, decision: NodeDecision) -> None:
        """A metric, and a warning Event per policy and error, for policies we cannot read."""
        self.metrics.set_unreadable_policies(len(decision.unreadable))
        current = {(u.name, u.error) for u in decision.unreadable}
        for unknown in decision.unreadable:
            if (unknown.name, unknown.error) not in self._unreadable_reported:
                self._post_event(
                    "PolicyUnreadable",
                    f"cannot read PowerPolicy {unknown.name} ({unknown.error}); it may select "
                    f"this node, so the GPUs keep their limits: {decision.reason}",
                    warning=True,
                )
        self._unreadable_reported = current

    def _report_owner_conflict(self, decision: NodeDecision) -> None:
        """A metric, a log line and a warning Event when the GPU-owner sources disagree."""
        conflict = decision.owner_conflict
        self.metrics.set_unconfirmed_gpus(len(decision.unconfirmed_gpus))
        previous = self.decision.owner_conflict
        if conflict is not None and (previous is None or previous.pods != conflict.pods):
            logger.warning("%s", conflict.describe())
            self._post_event("GpuOwnersUnknown", conflict.describe(), warning=True)
        elif conflict is None and previous is not None:
            logger.info("the kubelet and the pod watch agree again on the GPUs' pods")

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
        # The policy objects the decision used: the API's, or the checkpoint's after a restart
        # during an outage, so the guard runs before the API server answers (safety rule 8).
        policies = {
            p.name: self._decided_policies[p.name]
            for p in self.decision.policies
            if p.name in self._decided_policies
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
            throttled = gpu is not None and (
                (gpu.clock_known and gpu.clock_ceiling_mhz is not None
                 and gpu.clock_ceiling_mhz < info.max_sm_clock_mhz)
                or gpu.power_cap_w is not None
            )  # fmt: skip
            samples.append(
                GpuSample(
                    info=info,
                    reading=readings.get(index),
                    pod_namespace=pod.namespace if pod is not None else "",
                    pod_name=pod.name if pod is not None else "",
                    tier=(decided.tier or "") if decided is not None else "",
                    clock_ceiling_mhz=gpu.clock_ceiling_mhz if gpu is not None else None,
                    clock_ceiling_known=gpu is not None and gpu.clock_known,
                    throttled=throttled,
                )
            )
        self.metrics.update(NodeSnapshot(tuple(samples), self._wall_clock().timestamp()))

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
