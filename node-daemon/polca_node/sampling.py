"""Sampling and the local guard: the node daemon's fast loop (the `sampler` task).

Every guard period (≤ 0.5 s) the sampler reads every GPU (in a thread; the energy counter once
per heartbeat, it costs 3.9 ms a GPU), runs the local guards (`GuardBank`) on the policies the
last decision used, refreshes the metrics snapshot, and wakes the reconciler when a guard moves.
It needs nothing from the API server, so the guard keeps working through an outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from polca_node.energy_cadence import EnergyCadence
from polca_node.exporter import GpuSample, NodeMetrics, NodeSnapshot
from polca_node.gpu.backend import GpuBackend, GpuReading
from polca_node.gpu.errors import GpuError
from polca_node.guard_loop import GuardBank
from polca_node.node_gpus import NodeGpus
from polca_node.reconciler import Reconciler

__all__ = ["Sampler"]

logger = logging.getLogger(__name__)


class Sampler:
    """Owns the last readings, the guards and the metrics snapshot."""

    def __init__(
        self,
        backend: GpuBackend,
        gpus: NodeGpus,
        reconciler: Reconciler,
        guards: GuardBank,
        metrics: NodeMetrics,
        *,
        on_read_errors_changed: Callable[[], None],
        heartbeat_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._backend = backend
        self._gpus = gpus
        self._reconciler = reconciler
        self.guards = guards
        self._metrics = metrics
        self._on_read_errors_changed = on_read_errors_changed
        self._clock = clock
        self._wall_clock = wall_clock
        self._energy = EnergyCadence(heartbeat_s)
        self.readings: dict[int, GpuReading] = {}
        self.read_errors: dict[int, str] = {}
        self.last_sample_s: float | None = None
        self.guard_since: datetime | None = None  # when the guards last went active or idle

    def _read_all(self) -> tuple[dict[int, GpuReading], dict[int, str]]:
        readings: dict[int, GpuReading] = {}
        errors: dict[int, str] = {}
        now_s = self._clock()
        energy = self._energy.due(now_s)  # 3.9 ms a GPU: once per heartbeat, not every tick
        for index in self._gpus.info:
            try:
                reading = self._backend.read(index, energy=energy)
                readings[index] = self._energy.carried(reading, self.readings.get(index))
            except GpuError as exc:
                errors[index] = str(exc)
        if energy:
            self._energy.done(now_s)
        if self._gpus.actuator is not None:
            self._gpus.actuator.observe(readings)
        return readings, errors

    async def sample(self) -> None:
        """Read every GPU, run the guards and refresh the metrics (one sampler tick)."""
        readings, errors = await asyncio.to_thread(self._read_all)
        if errors.keys() != self.read_errors.keys():
            for index, message in errors.items():
                logger.warning("GPU %d read failed: %s", index, message)
            self._on_read_errors_changed()
        self.readings, self.read_errors = readings, errors
        self.last_sample_s = self._clock()
        self._run_guards(readings)
        self._publish(readings)

    def _run_guards(self, readings: Mapping[int, GpuReading]) -> None:
        decision = self._reconciler.decision
        decided = self._reconciler.decided_policies
        # The policy objects the decision used: the API's, or the checkpoint's after a restart
        # during an outage, so the guard runs before the API server answers (safety rule 8).
        policies = {p.name: decided[p.name] for p in decision.policies if p.name in decided}
        tiers = {p.name: {i: g.tier for i, g in p.gpus.items()} for p in decision.policies}
        # The instant field where the driver has it: the 1 s average would let the guard act late.
        power_w = sum(r.fresh_power_w for r in readings.values()) if readings else None
        was_active = any(o.active for o in self.guards.outcomes.values())
        outcomes = self.guards.tick(
            now_s=self._clock(),
            gpu_power_w=power_w,
            policies=policies,
            gpu_tiers=tiers,
            gpu_limits=self._gpus.limits,
        )
        for outcome in outcomes.values():
            if outcome.activated:
                self._metrics.on_guard_activation(outcome.policy)
        if any(o.changed for o in outcomes.values()):
            if any(o.active for o in outcomes.values()) != was_active:
                self.guard_since = self._wall_clock()
            self._reconciler.wake()

    def _publish(self, readings: Mapping[int, GpuReading]) -> None:
        applied = self._gpus.applied
        decision = self._reconciler.decision
        samples = []
        for index, info in sorted(self._gpus.info.items()):
            decided = decision.gpus.get(index)
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
        self._metrics.update(NodeSnapshot(tuple(samples), self._wall_clock().timestamp()))
