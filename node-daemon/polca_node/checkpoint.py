"""The node-local checkpoint: what the daemon last acted on, so a restart during an API outage
resumes its holds and its guard before the API server answers (safety rule 8, issue 12).

Without it a daemon restarted while the API server is down knows no policy, so it holds the GPUs
as they are (mode HOLD) but never runs the guard: a node ran at 2.8 kW against a 1.2 kW trigger
for 25 s. With it the daemon starts from the last inputs it decided on:

- the PowerPolicies that selected the node (spec and status: stage, node count, guard budget),
  the node's labels, which pod held which GPU (tier inputs), the record of applied policies and
  the clock ceilings it set (NVML cannot read those back);
- a decision that uses anything from the checkpoint only tightens (`resumed_decision`): stale
  inputs may add or keep limits, never lift one. Once the API has answered for every input, the
  checkpoint is out of the decision and the daemon is back to normal;
- it is written after every apply whose inputs or ceilings changed, atomically (temporary file,
  fsync, rename, fsync of the directory), so a crash leaves the old or the new file, whole.

The file is versioned (`version`). One that cannot be used (unreadable, not JSON, an unknown
version, another node's, a policy this daemon's models refuse) is logged, counted
(`polca_node_checkpoint_errors_total{reason}`) and ignored: the daemon then holds every GPU as
it is until the API answers, as it did before checkpoints — ignoring one never uncaps.

`Checkpoint`, `to_document`, `from_document`, `resume_inputs` and `resumed_decision` are pure;
`write_checkpoint` and `read_checkpoint` do the file I/O.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from polca.api.nodepowerstate import AppliedPolicy
from polca.api.powerpolicy import PowerPolicy
from polca.control.tiers import PodFacts
from polca_node.policies import DecisionInputs, Mode, NodeDecision

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_KIND",
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "from_document",
    "read_checkpoint",
    "resume_inputs",
    "resumed_decision",
    "to_document",
    "write_checkpoint",
]

CHECKPOINT_FILE = "checkpoint.json"
CHECKPOINT_KIND = "PolcaNodeCheckpoint"
CHECKPOINT_VERSION = 1
# A checkpoint holds a few policies and one entry per GPU: anything this big is not ours.
MAX_BYTES = 16 * 1024 * 1024


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; `reason` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Checkpoint:
    """The inputs of the daemon's last decision, and what it left on the GPUs."""

    node_name: str
    node_labels: Mapping[str, str] = field(default_factory=dict)
    policies: tuple[PowerPolicy, ...] = ()
    applied: tuple[AppliedPolicy, ...] = ()
    gpu_pods: Mapping[int, tuple[PodFacts, ...]] = field(default_factory=dict)
    ceilings_mhz: Mapping[int, int | None] = field(default_factory=dict)

    @property
    def managed(self) -> bool:
        return any(not p.dry_run for p in self.applied)


# -- the document (pure) ---------------------------------------------------------------------


def _pod_to_wire(pod: PodFacts) -> dict[str, Any]:
    return {
        "namespace": pod.namespace,
        "name": pod.name,
        "labels": dict(pod.labels),
        "priority": pod.priority,
    }


def _pod_from_wire(entry: Mapping[str, Any]) -> PodFacts:
    priority = entry.get("priority")
    if priority is not None and not isinstance(priority, int):
        raise TypeError(f"pod priority {priority!r} is not an integer")
    labels = entry.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise TypeError("pod labels are not a mapping")
    return PodFacts(
        str(entry["namespace"]), str(entry["name"]), {str(k): str(v) for k, v in labels.items()},
        priority,
    )  # fmt: skip


def to_document(checkpoint: Checkpoint) -> dict[str, Any]:
    """The JSON document for `checkpoint` (keys sorted by the writer; no timestamps, so an
    unchanged checkpoint is an equal document and is not rewritten)."""
    return {
        "kind": CHECKPOINT_KIND,
        "version": CHECKPOINT_VERSION,
        "node": checkpoint.node_name,
        "nodeLabels": dict(checkpoint.node_labels),
        "policies": [p.to_wire() for p in checkpoint.policies],
        "applied": [a.to_wire() for a in checkpoint.applied],
        "gpuPods": {
            str(index): [_pod_to_wire(p) for p in pods]
            for index, pods in sorted(checkpoint.gpu_pods.items())
        },
        "clockCeilingsMHz": {
            str(index): ceiling for index, ceiling in sorted(checkpoint.ceilings_mhz.items())
        },
    }


def from_document(document: Any, node_name: str) -> Checkpoint:
    """The checkpoint in `document`; `CheckpointError` when it cannot be used whole."""
    if not isinstance(document, Mapping) or document.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError("Corrupt", f"not a {CHECKPOINT_KIND} document")
    version = document.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            "UnknownVersion",
            f"checkpoint version {version!r}, this daemon reads version {CHECKPOINT_VERSION}",
        )
    if document.get("node") != node_name:
        raise CheckpointError(
            "OtherNode", f"written for node {document.get('node')!r}, this is {node_name!r}"
        )
    try:
        ceilings = {
            int(index): None if value is None else int(value)
            for index, value in (document.get("clockCeilingsMHz") or {}).items()
        }
        return Checkpoint(
            node_name=node_name,
            node_labels={str(k): str(v) for k, v in (document.get("nodeLabels") or {}).items()},
            policies=tuple(PowerPolicy.model_validate(p) for p in document.get("policies") or ()),
            applied=tuple(AppliedPolicy.model_validate(a) for a in document.get("applied") or ()),
            gpu_pods={
                int(index): tuple(_pod_from_wire(p) for p in pods)
                for index, pods in (document.get("gpuPods") or {}).items()
            },
            ceilings_mhz=ceilings,
        )
    except ValidationError as exc:
        # A policy this daemon's models refuse (a newer daemon wrote it): all or nothing, since
        # a partial set of policies could look like a node that left one.
        raise CheckpointError("Unreadable", f"a stored object does not parse: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError("Corrupt", f"malformed checkpoint: {exc!r}") from None


# -- deciding from it (pure) -----------------------------------------------------------------


def resume_inputs(
    inputs: DecisionInputs, checkpoint: Checkpoint | None
) -> tuple[DecisionInputs, tuple[str, ...]]:
    """`inputs` with what the API has not told us yet taken from the checkpoint, and the names
    of the inputs taken from it (empty: the decision is the API's alone)."""
    if checkpoint is None:
        return inputs, ()
    filled: dict[str, Any] = {}
    if inputs.policies is None:
        filled["policies"] = list(checkpoint.policies)
    if inputs.node_labels is None:
        filled["node_labels"] = dict(checkpoint.node_labels)
    if inputs.gpu_pods is None:
        # Only the GPUs this node has now: a GPU that vanished is not carried over.
        filled["gpu_pods"] = {
            index: checkpoint.gpu_pods.get(index, ()) for index in inputs.gpu_limits
        }
    if inputs.previously_managed is None:
        filled["previously_managed"] = checkpoint.managed
    if not filled:
        return inputs, ()
    return replace(inputs, **filled), tuple(sorted(filled))


def resumed_decision(decision: NodeDecision, resumed: tuple[str, ...]) -> NodeDecision:
    """A decision made with inputs from the checkpoint only tightens: ENFORCE could lift a limit
    the GPUs have for a reason the checkpoint does not know yet, RESTORE would uncap."""
    if not resumed or decision.mode not in (Mode.ENFORCE, Mode.RESTORE):
        return decision
    missing = ", ".join(name.replace("_", " ") for name in resumed)
    reason = (
        f"resumed from the node-local checkpoint until the API server answers ({missing}): "
        f"only tightening; {decision.reason}"
    )
    if decision.mode is Mode.RESTORE:
        # Nothing to tighten toward: hold every GPU as it is.
        return NodeDecision(Mode.HOLD, reason)
    return replace(decision, mode=Mode.TIGHTEN, reason=reason)


# -- the file (I/O) --------------------------------------------------------------------------


def write_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Replace the file at `path` atomically: a crash at any point leaves the old file or the
    new one, whole (temporary file in the same directory, fsync, rename, fsync the directory)."""
    data = json.dumps(to_document(checkpoint), sort_keys=True, indent=1).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # Owner-only: it names the node's pods and their labels.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def read_checkpoint(path: Path, node_name: str) -> Checkpoint | None:
    """The checkpoint at `path`; None when there is none; `CheckpointError` when unusable."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError("Unreadable", f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise CheckpointError("Corrupt", f"{path} is over {MAX_BYTES} bytes")
    try:
        document = json.loads(data)
    except ValueError as exc:  # not UTF-8 or not JSON: a torn or foreign file
        raise CheckpointError("Corrupt", f"{path} is not JSON: {exc}") from None
    return from_document(document, node_name)
