"""The node daemon: its components, wired together and supervised.

Each long-running part is a component with its own state, and each of their loops runs as a
supervised task (`polca_node.supervision`: logged, counted, restarted with backoff):
- `NodeInputs` (`node_inputs`): the watches (Node, PowerPolicies, this node's pods) and the
  kubelet's PodResources (task `kubelet`); any change wakes the reconciler;
- `Reconciler` (`reconciler`): decides and applies, keeps the applied-policy record and the
  node-local checkpoint (tasks `reconcile`, `resync`);
- `Sampler` (`sampling`): reads the GPUs, runs the local guards, refreshes the metrics (task
  `sampler`, every guard period);
- `StatusReporter` (`status_reporting`): the NodePowerState, on change and as a heartbeat
  (tasks `previous-status`, `status`); Events go out through `EventPoster`.
`NodeGpus` (`node_gpus`) is what NVML found and the actuator over it, shared by all of them.

`NodeDaemon` opens NVML (retrying, reporting why it cannot), builds and wires the components,
hands their tasks to the supervisor, and answers liveness and readiness from all of them.
Start-up: the GPUs keep what they have until the daemon has read its previous NodePowerState,
listed the policies and pods and seen its Node (mode HOLD), or resumed from its checkpoint
(safety rule 8; see `reconciler`). Shutdown (SIGTERM) stops the tasks, the watch threads, the
kubelet channel and NVML, and leaves every GPU setting in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from polca_node.actuator import ActuationResult, Actuator
from polca_node.checkpoint import Checkpoint
from polca_node.exporter import NodeMetrics
from polca_node.gpu.backend import GpuBackend, Inventory
from polca_node.gpu.errors import GpuError
from polca_node.guard_loop import GuardBank, GuardOutcome, run_periodic
from polca_node.kube_client import KubeClient
from polca_node.node_gpus import NodeGpus, gpu_limits
from polca_node.node_inputs import NodeInputs
from polca_node.node_status import PreviousRecord, StatusInputs
from polca_node.observed import ObservedCluster
from polca_node.policies import NodeDecision
from polca_node.reconciler import Reconciler
from polca_node.sampling import Sampler
from polca_node.status_reporting import StatusReporter
from polca_node.status_writer import EventPoster, NodeStateClient
from polca_node.supervision import Supervisor
from polca_node.tiering import PodResourcesMapper

__all__ = ["DaemonConfig", "NodeDaemon", "gpu_limits"]

logger = logging.getLogger(__name__)

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
        self._clock = clock
        self._wall_clock = wall_clock
        self.gpus = NodeGpus()
        self.state_client = NodeStateClient(
            kube, config.node_name, event_namespace=config.event_namespace
        )
        self.events = EventPoster(self.state_client, wall_clock=wall_clock)
        guards = GuardBank()  # ticked by the sampler, read by the reconciler

        # Components wake one another, some of them built further down: look them up late.
        def wake_reconciler() -> None:
            self.reconciler.wake()

        def wake_status() -> None:
            self.status.wake()

        self.inputs = NodeInputs(
            config.node_name, kube, self.gpus, wake=wake_reconciler,
            fake_gpu_annotation=config.fake_gpu_annotation,
            podresources_interval_s=config.podresources_interval_s,
            pod_mapper_factory=pod_mapper_factory,
        )  # fmt: skip
        self.reconciler = Reconciler(
            config.node_name, self.gpus, self.inputs, metrics,
            guard_actions=guards.actions, post_event=self.events.post,
            on_applied=wake_status, resync_s=config.resync_s,
            state_dir=config.state_dir, clock=clock,
        )  # fmt: skip
        self.sampler = Sampler(
            backend, self.gpus, self.reconciler, guards, metrics,
            on_read_errors_changed=wake_status, heartbeat_s=config.heartbeat_s,
            clock=clock, wall_clock=wall_clock,
        )  # fmt: skip
        self.status = StatusReporter(
            self.state_client, self.gpus, self.reconciler, self.sampler,
            heartbeat_s=config.heartbeat_s, metrics_endpoint=config.metrics_endpoint,
            clock=clock, wall_clock=wall_clock,
        )  # fmt: skip
        self._open_error: GpuError | None = None
        self._supervisor: Supervisor | None = None
        self._started_s = clock()

    # -- health ------------------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        """Live while GPU samples keep coming (or NVML is still being opened) and no task
        keeps failing: a restart of the pod is the remedy left for either."""
        now = self._clock()
        failing = self._supervisor.failing() if self._supervisor is not None else []
        if failing:
            return False, f"tasks failing again and again: {', '.join(failing)}"
        last_sample_s = self.sampler.last_sample_s
        if last_sample_s is None:
            if self._open_error is not None:
                return True, f"waiting for NVML: {self._open_error}"
            return now - self._started_s < 60.0, "starting"
        age_s = now - last_sample_s
        limit_s = max(10.0, 20 * self.config.guard_period_s)
        return age_s < limit_s, f"last GPU sample {age_s:.1f} s ago"

    def ready(self) -> tuple[bool, str]:
        """Ready when NVML is open, the watches have listed, a reconcile ran recently and
        every task runs: what a rolling update must wait for before it takes the next node."""
        live, detail = self.healthy()
        down = self._supervisor.down() if self._supervisor is not None else ["all"]
        last_s = self.reconciler.last_reconcile_s
        age_s = float("inf") if last_s is None else self._clock() - last_s
        problems = (
            (not live, detail),
            (self.gpus.actuator is None, "NVML not open yet"),
            (not self.inputs.synced, "watches not synced yet"),
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
        self.inputs.start_watches(asyncio.get_running_loop())
        supervisor = Supervisor(stop, on_restart=self.metrics.on_task_restart)
        self._supervisor = supervisor
        # The component is looked up when a task (re)starts, so tests can swap a loop.
        supervisor.start("previous-status", lambda: self.status.read_previous(stop), once=True)
        supervisor.start("reconcile", lambda: self.reconciler.reconcile_loop(stop))
        supervisor.start("status", lambda: self.status.status_loop(stop))
        supervisor.start("resync", lambda: self.reconciler.resync_loop(stop))
        supervisor.start(
            "sampler",
            lambda: run_periodic(
                self.sampler.sample, lambda: self.config.guard_period_s, stop, clock=self._clock
            ),
        )
        if self.inputs.pod_mapper is not None:
            supervisor.start("kubelet", lambda: self.inputs.podresources_loop(stop))
        try:
            await stop.wait()
        finally:
            await supervisor.stop()
            await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self.inputs.stop_watches()
        self.kube.close()
        self.inputs.close_kubelet()
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
                await self.status.report_open_error(exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), OPEN_RETRY_S)
                continue
            self._open_error = None
            self.adopt(inventory)
            return inventory
        return None

    def adopt(self, inventory: Inventory) -> None:
        """Take the GPUs NVML found (done by `run`; tests call it directly)."""
        for index, failure in inventory.failures.items():
            logger.error("GPU %d unusable: %s", index, failure)
        self.gpus.adopt(inventory, self.backend, self.metrics, wall_clock=self._wall_clock)
        self.inputs.adopt(inventory)
        info = self.gpus.info
        logger.info("%d GPUs: %s", len(info), ", ".join(sorted({g.name for g in info.values()})))

    # -- the components' faces, for the entry point, tests and benchmarks --------------------

    @property
    def observed(self) -> ObservedCluster:
        return self.inputs.observed

    @property
    def decision(self) -> NodeDecision:
        return self.reconciler.decision

    @property
    def actuator(self) -> Actuator | None:
        return self.gpus.actuator

    def resume(self) -> Checkpoint | None:
        return self.reconciler.resume()

    def recall(self, record: PreviousRecord) -> None:
        self.reconciler.recall(record)

    def wake(self) -> None:
        self.reconciler.wake()

    async def reconcile(self) -> ActuationResult:
        return await self.reconciler.reconcile()

    async def sample(self) -> None:
        await self.sampler.sample()

    async def flush_background(self) -> None:
        """Wait for background work (Event posts) to finish."""
        await self.events.flush()

    def guard_outcomes(self) -> Mapping[str, GuardOutcome]:
        return self.sampler.guards.outcomes

    def build_status_inputs(self) -> StatusInputs:
        return self.status.inputs()
