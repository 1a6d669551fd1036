"""Kopf indexes of Nodes and NodePowerStates, holding only the fields a control cycle uses.

A cycle reads domain membership (node labels) and the daemons' reports (metrics endpoint, GPU
counts) from these in-memory indexes, so it makes no API reads at all. Kopf fills
them from its watches before any handler runs and keeps the last content while a watch
reconnects: a failed read never turns into an empty cluster.

Index values are small frozen records, copied out of the bodies, so the indexes never keep a
whole Node object alive.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import kopf

from polca.api.powerpolicy import GROUP, VERSION
from polca_operator.endpoints import NodeAddresses, node_addresses

__all__ = [
    "NODE_ADDRESSES_INDEX",
    "NODE_LABELS_INDEX",
    "NODE_REPORTS_INDEX",
    "ChangeTracker",
    "ClusterView",
    "IndexView",
    "NodeReport",
    "Trackers",
    "heartbeat_seconds",
    "node_labels_entry",
    "node_report_entry",
    "register_indexes",
]

NODE_LABELS_INDEX = "polca_node_labels"
NODE_REPORTS_INDEX = "polca_node_reports"
NODE_ADDRESSES_INDEX = "polca_node_addresses"


@dataclass(frozen=True, slots=True)
class NodeReport:
    """What a node's daemon reports in its NodePowerState status, as far as the operator cares."""

    metrics_url: str | None = None
    gpu_count: int = 0
    throttled_gpu_count: int = 0
    policies: frozenset[str] = frozenset()


def node_labels_entry(name: str, labels: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Index entry of a Node: its labels (copied, so the body can be freed)."""
    return {name: dict(labels)}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def heartbeat_seconds(status: Mapping[str, Any]) -> float | None:
    """`status.heartbeatTime` (RFC 3339) as Unix seconds; None when absent or unreadable."""
    stamp = status.get("heartbeatTime")
    if not isinstance(stamp, str):
        return None
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def node_report_entry(name: str, status: Mapping[str, Any]) -> dict[str, NodeReport]:
    """Index entry of a NodePowerState, read defensively: a daemon's odd status is not a crash."""
    gpus = status.get("gpus")
    policies = status.get("policies")
    url = status.get("metricsEndpoint")
    return {
        name: NodeReport(
            metrics_url=url if isinstance(url, str) and url else None,
            gpu_count=_int(status.get("gpuCount", len(gpus) if isinstance(gpus, list) else 0)),
            throttled_gpu_count=_int(status.get("throttledGpuCount")),
            policies=frozenset(
                str(p["name"]) for p in policies or () if isinstance(p, dict) and "name" in p
            ),
        )
    }


class ChangeTracker:
    """Counts changes of index entries, so a cycle can reuse what it derived from them.

    Kopf calls an index function on every watch event, most of them heartbeats that change
    nothing the operator uses; only real changes move `version`. Deletions are seen by the
    caller through the index's length.
    """

    def __init__(self) -> None:
        self.version = 0
        self._seen: dict[str, object] = {}

    def saw(self, name: str, entry: object) -> None:
        if self._seen.get(name) != entry:
            self._seen[name] = entry
            self.version += 1

    def prune(self, live: Collection[str]) -> None:
        """Forget deleted names once they pile up (the index drops them without a call)."""
        if len(self._seen) > 2 * len(live) + 100:
            self._seen = {k: v for k, v in self._seen.items() if k in live}


@dataclass(frozen=True)
class Trackers:
    labels: ChangeTracker
    reports: ChangeTracker
    addresses: ChangeTracker


class ClusterView(Protocol):
    """What a control cycle needs to know about the cluster; in production, Kopf's indexes."""

    def fingerprint(self) -> Hashable:
        """Changes whenever node labels or reports change (may change more often)."""
        ...

    def node_labels(self) -> Iterable[tuple[str, Mapping[str, str]]]: ...

    def report(self, node: str) -> NodeReport | None: ...

    def reports(self) -> Iterable[tuple[str, NodeReport]]: ...

    def addresses(self, node: str) -> NodeAddresses:
        """The node's addresses and pod CIDRs (empty when unknown)."""
        ...


class IndexView:
    """A ClusterView over the Kopf indexes (one value per key: names are unique)."""

    def __init__(
        self,
        labels: kopf.Index[str, dict[str, str]],
        reports: kopf.Index[str, NodeReport],
        trackers: Trackers,
        addresses: kopf.Index[str, NodeAddresses] | None = None,
    ):
        self._labels = labels
        self._reports = reports
        self._trackers = trackers
        self._addresses = addresses

    def fingerprint(self) -> Hashable:
        self._trackers.labels.prune(self._labels.keys())
        self._trackers.reports.prune(self._reports.keys())
        return (
            self._trackers.labels.version,
            len(self._labels),
            self._trackers.reports.version,
            len(self._reports),
            self._trackers.addresses.version,
        )

    def node_labels(self) -> Iterator[tuple[str, Mapping[str, str]]]:
        for name, store in self._labels.items():
            for labels in store:
                yield name, labels
                break

    def report(self, node: str) -> NodeReport | None:
        store = self._reports.get(node)
        return next(iter(store), None) if store is not None else None

    def reports(self) -> Iterator[tuple[str, NodeReport]]:
        for name, store in self._reports.items():
            for report in store:
                yield name, report
                break

    def addresses(self, node: str) -> NodeAddresses:
        store = self._addresses.get(node) if self._addresses is not None else None
        return next(iter(store), NodeAddresses()) if store is not None else NodeAddresses()


def register_indexes(registry: kopf.OperatorRegistry) -> Trackers:
    """Register both indexes; their ids are the kwargs handlers receive them under."""
    trackers = Trackers(ChangeTracker(), ChangeTracker(), ChangeTracker())

    @kopf.index("v1", "nodes", id=NODE_LABELS_INDEX, registry=registry)
    def _node_labels(name: str, labels: Mapping[str, str], **_: Any) -> dict[str, dict[str, str]]:
        entry = node_labels_entry(name, labels)
        trackers.labels.saw(name, entry[name])
        return entry

    @kopf.index(GROUP, VERSION, "nodepowerstates", id=NODE_REPORTS_INDEX, registry=registry)
    def _node_reports(name: str, status: Mapping[str, Any], **_: Any) -> dict[str, NodeReport]:
        entry = node_report_entry(name, status)
        trackers.reports.saw(name, entry[name])
        return entry

    @kopf.index("v1", "nodes", id=NODE_ADDRESSES_INDEX, registry=registry)
    def _node_addresses(
        name: str, spec: Mapping[str, Any], status: Mapping[str, Any], **_: Any
    ) -> dict[str, NodeAddresses]:
        entry = node_addresses(spec, status)
        trackers.addresses.saw(name, entry)
        return {name: entry}

    return trackers
