"""Status reporting: the node daemon's NodePowerState, kept current (the `status` and
`previous-status` tasks).

- `previous-status` reads what a previous run recorded (retrying while the API is away) and
  hands it to the reconciler, once;
- `status` builds the status (`node_status.build_status`, pure) from the reconciler's decision
  and record, the sampler's readings and guards, and the GPUs, and writes it on change and as a
  heartbeat (`StatusSchedule`), never before the previous record was read;
- while NVML cannot open, only Ready=False with NVML's reason and the heartbeat are patched,
  so the record of applied policies survives for when NVML comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from polca.api.conditions import Condition
from polca.api.nodepowerstate import NodePowerStateStatus
from polca_node.gpu.errors import GpuError
from polca_node.kube_client import ApiError
from polca_node.node_gpus import NodeGpus
from polca_node.node_status import (
    StatusInputs,
    StatusSchedule,
    build_status,
    previous_record,
    status_fingerprint,
)
from polca_node.reconciler import Reconciler
from polca_node.sampling import Sampler
from polca_node.status_writer import NodeStateClient

__all__ = ["RETRY_S", "StatusReporter"]

logger = logging.getLogger(__name__)

RETRY_S = 2.0


class StatusReporter:
    """Owns the NodePowerState writes and the conditions as last written."""

    def __init__(
        self,
        client: NodeStateClient,
        gpus: NodeGpus,
        reconciler: Reconciler,
        sampler: Sampler,
        *,
        heartbeat_s: float = 30.0,
        metrics_endpoint: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._gpus = gpus
        self._reconciler = reconciler
        self._sampler = sampler
        self._heartbeat_s = heartbeat_s
        self._metrics_endpoint = metrics_endpoint
        self._clock = clock
        self._wall_clock = wall_clock
        self._wake = asyncio.Event()
        self._conditions: tuple[Condition, ...] = ()  # as last written

    def wake(self) -> None:
        """Look at the status now (written only if it changed or the heartbeat is due)."""
        self._wake.set()

    async def read_previous(self, stop: asyncio.Event) -> None:
        """The `previous-status` task: our NodePowerState as a previous run left it."""
        while not stop.is_set():
            try:
                obj = await asyncio.to_thread(self._client.ensure)
            except ApiError as exc:
                logger.warning("cannot read our NodePowerState yet: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RETRY_S)
                continue
            self._reconciler.recall(previous_record(obj))
            return

    async def report_open_error(self, exc: GpuError) -> None:
        """Ready=False with NVML's reason. Only the conditions and the heartbeat are patched:
        the record of applied policies must survive for when NVML comes back."""
        now = self._wall_clock()
        try:
            found = await asyncio.to_thread(self._client.ensure)
            conditions = previous_record(found).conditions
            status = NodePowerStateStatus(conditions=list(conditions) or None).with_condition(
                "Ready", "False", exc.reason, str(exc), now=now
            )
            await asyncio.to_thread(
                self._client.patch_status,
                {
                    "conditions": status.to_wire()["conditions"],
                    "heartbeatTime": now.isoformat().replace("+00:00", "Z"),
                    "metricsEndpoint": self._metrics_endpoint,
                },
            )
        except ApiError as api_exc:
            logger.warning("cannot report the NVML failure: %s", api_exc)

    def inputs(self) -> StatusInputs:
        """What `build_status` needs, from every component as it is now."""
        reconciler, sampler = self._reconciler, self._sampler
        previous = reconciler.previous.conditions if reconciler.previous is not None else ()
        return StatusInputs(
            gpus=self._gpus.info,
            decision=reconciler.decision,
            applied=self._gpus.applied,
            readings=sampler.readings,
            policies=reconciler.record,
            guards=sampler.guards.outcomes,
            guard_since=sampler.guard_since,
            previous_conditions=self._conditions or previous,
            now=self._wall_clock(),
            metrics_endpoint=self._metrics_endpoint,
            restored=reconciler.restored,
            read_errors={**self._gpus.unusable, **sampler.read_errors},
        )

    async def status_loop(self, stop: asyncio.Event) -> None:
        """The `status` task: write on change and on the heartbeat, retry failed writes."""
        schedule = StatusSchedule(self._heartbeat_s)
        while not stop.is_set():
            self._wake.clear()
            if self._reconciler.previous is not None:  # never overwrite the record unread
                status = build_status(self.inputs())
                fingerprint = status_fingerprint(status)
                now_s = self._clock()
                if schedule.due(now_s, fingerprint):
                    try:
                        await asyncio.to_thread(self._client.write_status, status)
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
                await asyncio.wait_for(self._wake.wait(), timeout_s)
