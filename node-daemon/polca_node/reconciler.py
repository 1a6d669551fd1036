"""Deciding and applying: the node daemon's reconcile loop, its record and its checkpoint.

The reconciler decides (`policies.decide_node`, pure) from `NodeInputs` and the guards' extra
actions, and applies (`Actuator.apply`, in a thread): at once when woken (a watch event, a
guard move, the kubelet), and every `resync_s` to retry rejected writes and fix drift (the
`reconcile` and `resync` tasks). It keeps what the node is recorded as under (the applied
policies, the memory that survives a restart), reports what a decision says about the node
(unreadable policies, disagreeing GPU-owner sources, dry runs, rejected writes, restored
defaults) as metrics, logs and Events, and writes the node-local checkpoint.

Start-up: the GPUs keep what they have until the daemon has read its previous NodePowerState
(`recall`), listed the policies and pods and seen its Node (mode HOLD) — unless the checkpoint
(`polca_node.checkpoint`, under `--state-dir`) says what it last acted on (`resume`): then what
the API has not told it yet comes from the checkpoint, the guard runs at once and decisions only
tighten until the API answers (safety rule 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from polca.api.nodepowerstate import AppliedPolicy
from polca.api.powerpolicy import PowerPolicy
from polca.control.plan import ResolvedAction
from polca_node.actuator import ActuationResult, Knob
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
from polca_node.exporter import NodeMetrics
from polca_node.node_gpus import NodeGpus
from polca_node.node_inputs import NodeInputs
from polca_node.node_status import PreviousRecord, applied_policies
from polca_node.policies import DecisionInputs, Mode, NodeDecision, decide_node

__all__ = ["EventSink", "Reconciler"]

logger = logging.getLogger(__name__)


class EventSink(Protocol):
    def __call__(self, reason: str, message: str, *, warning: bool = False) -> None: ...


class Reconciler:
    """Owns the decision, the applied-policy record and the checkpoint."""

    def __init__(
        self,
        node_name: str,
        gpus: NodeGpus,
        inputs: NodeInputs,
        metrics: NodeMetrics,
        *,
        guard_actions: Callable[[], Mapping[str, Mapping[int, ResolvedAction]]],
        post_event: EventSink,
        on_applied: Callable[[], None],
        resync_s: float = 30.0,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_name = node_name
        self._gpus = gpus
        self._inputs = inputs
        self._metrics = metrics
        self._guard_actions = guard_actions
        self._post_event = post_event
        self._on_applied = on_applied
        self._resync_s = resync_s
        self._state_dir = state_dir
        self._clock = clock
        self.decision = NodeDecision(Mode.HOLD, "starting")
        self.previous: PreviousRecord | None = None  # None until our NodePowerState is read
        self.record: tuple[AppliedPolicy, ...] = ()
        self.restored = False
        self.last_reconcile_s: float | None = None
        self._wake = asyncio.Event()
        self._dry_run_seen: dict[tuple[int, Knob], object] = {}
        self._reported_failures: set[tuple[int, Knob, str]] = set()
        self._unreadable_reported: set[tuple[str, str]] = set()
        # The checkpoint this process started from (None: none, or not usable), the policies the
        # last decision used (the guard's too), and the last checkpoint document written.
        self._checkpoint: Checkpoint | None = None
        self.decided_policies: dict[str, PowerPolicy] = {}
        self._checkpoint_written: dict[str, Any] | None = None

    def wake(self) -> None:
        """Reconcile as soon as possible (coalesced)."""
        self._wake.set()

    # -- the node-local checkpoint (safety rule 8) -------------------------------------------

    @property
    def checkpoint_path(self) -> Path | None:
        state_dir = self._state_dir
        return None if state_dir is None else state_dir / CHECKPOINT_FILE

    def resume(self) -> Checkpoint | None:
        """Read the checkpoint (blocking; `run` does it before anything else), so decisions and
        the guard can start from it before the API server answers."""
        path = self.checkpoint_path
        if path is None:
            return None
        try:
            checkpoint = read_checkpoint(path, self.node_name)
        except CheckpointError as exc:
            # Ignored, never acted on: the GPUs are held as they are until the API answers.
            logger.warning("ignoring the checkpoint %s (%s): %s", path, exc.reason, exc)
            self._metrics.on_checkpoint_error(exc.reason)
            return None
        if checkpoint is None:
            logger.info("no checkpoint at %s: holding the GPUs until the API answers", path)
            return None
        self._checkpoint = checkpoint
        self.record = checkpoint.applied
        if self._gpus.actuator is not None:
            self._gpus.actuator.recall(checkpoint.ceilings_mhz)
        logger.info(
            "resuming from the checkpoint %s: %s", path,
            ", ".join(f"{p.name}/{p.stage}" for p in checkpoint.applied) or "no policy",
        )  # fmt: skip
        self.wake()
        return checkpoint

    def _checkpoint_now(self, inputs: DecisionInputs, decision: NodeDecision) -> Checkpoint:
        applied = self._gpus.applied
        chosen = {p.name for p in decision.policies}
        return Checkpoint(
            node_name=self.node_name,
            node_labels=dict(inputs.node_labels or {}),
            policies=tuple(p for p in inputs.policies or () if p.metadata.name in chosen),
            applied=self.record,
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
            self._metrics.on_checkpoint_error("WriteFailed")
            return
        self._checkpoint_written = document

    # -- the previous record -----------------------------------------------------------------

    def recall(self, record: PreviousRecord) -> None:
        """Take what our NodePowerState recorded before this process started."""
        self.previous = record
        if self._checkpoint is None:
            # With a checkpoint, the record it gave (and what decisions made of it since) is at
            # least as new as the NodePowerState, which is written after the checkpoint.
            self.record = record.policies
        if self._gpus.actuator is not None:
            self._gpus.actuator.recall(record.ceilings_mhz)
        logger.info(
            "previous record: %s",
            ", ".join(f"{p.name}/{p.stage}" for p in record.policies) or "no policy",
        )
        self.wake()

    # -- deciding and applying ---------------------------------------------------------------

    def inputs(self) -> DecisionInputs:
        return self._inputs.decision_inputs(
            previously_managed=None
            if self.previous is None
            else any(not p.dry_run for p in self.record),
            guard_actions=self._guard_actions(),
        )

    async def reconcile_loop(self, stop: asyncio.Event) -> None:
        """The `reconcile` task: once per wake-up (coalesced)."""
        while not stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            await self.reconcile()

    async def resync_loop(self, stop: asyncio.Event) -> None:
        """The `resync` task: reconcile now and then even without events (retries rejected
        writes, fixes drift)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._resync_s)
            self.wake()

    async def reconcile(self) -> ActuationResult:
        """Decide and apply once."""
        actuator = self._gpus.actuator
        assert actuator is not None
        inputs, resumed = resume_inputs(self.inputs(), self._checkpoint)
        decision = resumed_decision(decide_node(inputs), resumed)
        self.decided_policies = {p.metadata.name or "": p for p in inputs.policies or ()}
        if decision.mode != self.decision.mode or decision.reason != self.decision.reason:
            logger.info("%s: %s", decision.mode.value, decision.reason)
        self._report_owner_conflict(decision)
        self.decision = decision
        self._report_unreadable(decision)
        result = await asyncio.to_thread(actuator.apply, decision)
        self.last_reconcile_s = self._clock()
        self._after_apply(decision, result)
        await self._save_checkpoint(inputs, decision)
        self._on_applied()
        return result

    def _after_apply(self, decision: NodeDecision, result: ActuationResult) -> None:
        restore_complete = decision.mode is Mode.RESTORE and result.complete
        record = applied_policies(decision, self.record, restore_complete=restore_complete)
        if restore_complete and self.record:
            self.restored = True
            message = (
                "the node left every enforcing PowerPolicy (was under "
                f"{', '.join(p.name for p in self.record if not p.dry_run)}): clock ceilings "
                "reset and default power limits restored on every GPU"
            )
            logger.info(message)
            self._post_event("DefaultsRestored", message)
        if decision.managed:
            self.restored = False
        self.record = record
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
        self._metrics.set_unreadable_policies(len(decision.unreadable))
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
        self._metrics.set_unconfirmed_gpus(len(decision.unconfirmed_gpus))
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
                self._metrics.on_dry_run_write(index, knob)
                logger.info("dry run: GPU %d %s would be %s", index, knob, value)
