"""What the daemon has seen of the cluster: its Node's labels, the PowerPolicies, its pods.

Fed by `polca_node.watching` (through `LoopSink`, on the event loop's thread). Each update says
whether it changed anything, so the daemon reconciles only when needed. A source that has not
listed successfully yet is "not synced": decisions wait for it (never uncap for lack of
information), and a failed list or watch leaves the last known-good state in place.

PowerPolicies are read as stored (`ApiModel.from_stored`: unknown fields of a newer CRD
ignored, near-integers taken as the server takes them). One that still cannot be read is
*unknown*, never absent (safety rule 6): it is kept in `unreadable`, with the nodes it may
select, and its last good version (if this process saw one) stays in `policies`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from polca.api.meta import LabelSelector
from polca.api.powerpolicy import PowerPolicy
from polca.control.selectors import Selector
from polca.control.tiers import PodFacts
from polca_node.podresources.devices import is_gpu_resource

__all__ = [
    "LoopSink",
    "ObservedCluster",
    "PodInfo",
    "PodKey",
    "UnreadablePolicy",
    "pod_info",
    "unreadable_policy",
]

logger = logging.getLogger(__name__)

PodKey = tuple[str, str]  # (namespace, name)
_FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class PodInfo:
    """The parts of a Pod the daemon uses: identity, tier inputs, and fake-GPU requests."""

    namespace: str
    name: str
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    priority: int | None = None
    phase: str = ""
    created: str = ""  # metadata.creationTimestamp (RFC 3339 sorts as text)
    gpus_requested: int = 0  # GPUs its containers ask for (device-plugin resources)

    @property
    def key(self) -> PodKey:
        return (self.namespace, self.name)

    @property
    def finished(self) -> bool:
        """A finished pod holds no GPU any more."""
        return self.phase in _FINISHED_PHASES

    def facts(self) -> PodFacts:
        return PodFacts(self.namespace, self.name, dict(self.labels), self.priority)


def _gpus_requested(spec: Mapping[str, Any]) -> int:
    """GPUs the pod's containers ask for. Extended resources must be in limits (requests, if
    given, equal them); init containers run before and count separately, so the larger."""

    def total(containers: Any) -> int:
        count = 0
        for container in containers if isinstance(containers, list) else ():
            resources = container.get("resources") if isinstance(container, Mapping) else None
            if not isinstance(resources, Mapping):
                continue
            limits: dict[str, Any] = {}
            for kind in ("requests", "limits"):  # limits win where both are given
                given = resources.get(kind)
                limits.update(given if isinstance(given, Mapping) else {})
            for name, value in limits.items():
                if is_gpu_resource(str(name)):
                    with contextlib.suppress(TypeError, ValueError):
                        count += max(int(value), 0)
        return count

    return max(total(spec.get("containers")), total(spec.get("initContainers")))


def pod_info(obj: Mapping[str, Any]) -> PodInfo:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    priority = spec.get("priority")
    return PodInfo(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        priority=int(priority) if isinstance(priority, int) else None,
        phase=str((obj.get("status") or {}).get("phase", "")),
        created=str(meta.get("creationTimestamp", "")),
        gpus_requested=_gpus_requested(spec),
    )


@dataclass(frozen=True)
class UnreadablePolicy:
    """A stored PowerPolicy (its latest version) this daemon cannot read."""

    name: str
    error: str
    # The nodes it selects, when that much can be read and says something; None: any node.
    selector: Selector | None = None

    def may_select(self, node_labels: Mapping[str, str]) -> bool:
        return self.selector is None or self.selector.matches(node_labels)


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    first_error = f"{where}: {first['msg']}" if where else first["msg"]
    return f"{exc.error_count()} validation error(s), first {first_error}"


def unreadable_policy(name: str, obj: Mapping[str, Any], exc: ValidationError) -> UnreadablePolicy:
    """What is known of a policy that does not parse: its selector, if it is a usable one.

    An empty, missing or unreadable selector cannot tell which nodes the policy is meant for
    (safety rule 7: nothing widens a policy by accident, nothing narrows an unknown one), so
    such a policy may select any node.
    """
    raw = (obj.get("spec") or {}).get("nodeSelector")
    selector: Selector | None = None
    if isinstance(raw, Mapping):
        try:
            selector = LabelSelector.from_stored(raw).to_selector()
        except ValidationError:
            selector = None
    if selector is not None and selector.empty:
        selector = None
    return UnreadablePolicy(name, _describe(exc), selector)


class ObservedCluster:
    """The daemon's view of the cluster. Not thread-safe: update it on the event loop only."""

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self.node_labels: dict[str, str] | None = None  # None: our Node is not known (yet)
        self.policies: dict[str, PowerPolicy] = {}
        # Policies whose latest version cannot be read, by name.
        self.unreadable: dict[str, UnreadablePolicy] = {}
        self.pods: dict[PodKey, PodInfo] = {}
        self.policies_synced = False
        self.pods_synced = False

    @property
    def node_synced(self) -> bool:
        return self.node_labels is not None

    # -- the Node ----------------------------------------------------------------------------

    def replace_nodes(self, items: list[dict[str, Any]]) -> bool:
        mine = [i for i in items if (i.get("metadata") or {}).get("name") == self.node_name]
        return self._set_labels(_labels(mine[0]) if mine else None)

    def apply_node(self, event_type: str, obj: Mapping[str, Any]) -> bool:
        if (obj.get("metadata") or {}).get("name") != self.node_name:
            return False
        # A deleted Node is not "a node without labels": hold until it is back.
        return self._set_labels(None if event_type == "DELETED" else _labels(obj))

    def _set_labels(self, labels: dict[str, str] | None) -> bool:
        changed = labels != self.node_labels
        self.node_labels = labels
        return changed

    # -- PowerPolicies -----------------------------------------------------------------------

    def replace_policies(self, items: list[dict[str, Any]]) -> bool:
        before = (dict(self.policies), dict(self.unreadable))
        items = [i for i in items if not _being_deleted(i)]
        listed = {str((i.get("metadata") or {}).get("name")) for i in items}
        for name in set(self.policies) - listed:
            del self.policies[name]
        for name in set(self.unreadable) - listed:
            del self.unreadable[name]
        for item in items:
            self._store_policy(item)
        self.policies_synced = True
        return before != (self.policies, self.unreadable) or not before[0]

    def apply_policy(self, event_type: str, obj: Mapping[str, Any]) -> bool:
        name = str((obj.get("metadata") or {}).get("name"))
        if event_type == "DELETED" or _being_deleted(obj):
            # A policy being deleted is gone for the node: the operator's finalizer holds the
            # object until every node has restored its GPUs, so waiting for DELETED would
            # deadlock with it.
            unknown = self.unreadable.pop(name, None)
            return self.policies.pop(name, None) is not None or unknown is not None
        before = (self.policies.get(name), self.unreadable.get(name))
        self._store_policy(obj)
        return (self.policies.get(name), self.unreadable.get(name)) != before

    def _store_policy(self, obj: Mapping[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name"))
        try:
            self.policies[name] = PowerPolicy.from_stored(obj)
            self.unreadable.pop(name, None)
        except ValidationError as exc:
            # Safety rules 5 and 6: a version we cannot read is unknown, not absent; it never
            # undoes what the last good one set (kept in `policies`).
            unknown = unreadable_policy(name, obj, exc)
            if self.unreadable.get(name) != unknown:
                kept = (
                    "keeping its last good version" if name in self.policies else "no version read"
                )
                logger.warning("PowerPolicy %s cannot be read (%s): %s", name, kept, unknown.error)
            self.unreadable[name] = unknown

    # -- Pods --------------------------------------------------------------------------------

    def replace_pods(self, items: list[dict[str, Any]]) -> bool:
        pods = {info.key: info for info in map(pod_info, items)}
        changed = pods != self.pods or not self.pods_synced
        self.pods = pods
        self.pods_synced = True
        return changed

    def apply_pod(self, event_type: str, obj: Mapping[str, Any]) -> bool:
        info = pod_info(obj)
        if event_type == "DELETED":
            return self.pods.pop(info.key, None) is not None
        changed = self.pods.get(info.key) != info
        self.pods[info.key] = info
        return changed


def _being_deleted(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


class LoopSink:
    """A `WatchSink` that hands each update to the event loop and reports whether it changed.

    `on_change` runs on the loop after an update that changed something; `on_failure` after a
    failed list or watch (the state itself is kept).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        replace: Callable[[list[dict[str, Any]]], bool],
        apply: Callable[[str, dict[str, Any]], bool],
        on_change: Callable[[], None],
        on_failure: Callable[[Exception], None] = lambda _exc: None,
    ) -> None:
        self._loop = loop
        self._replace = replace
        self._apply = apply
        self._on_change = on_change
        self._on_failure = on_failure

    def _post(self, callback: Callable[..., Any], *args: Any) -> None:
        # After shutdown the loop is closed: late events from a stopping thread are dropped.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _then_notify(self, update: Callable[..., bool], *args: Any) -> None:
        if update(*args):
            self._on_change()

    def replace(self, items: list[dict[str, Any]]) -> None:
        self._post(self._then_notify, self._replace, items)

    def apply(self, event_type: str, obj: dict[str, Any]) -> None:
        self._post(self._then_notify, self._apply, event_type, obj)

    def failed(self, error: Exception) -> None:
        self._post(self._on_failure, error)
