"""The node's NodePowerState on the API server, the I/O part (its content: `node_status`).

`NodeStateClient` creates the object (cluster-scoped, named after the node) if it is missing,
replaces its status through the status subresource, merges single fields into it, reads it
back, and posts Kubernetes Events about it. Blocking calls. `EventPoster` posts those Events
from the event loop without waiting for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any

from polca.api.nodepowerstate import NodePowerStateStatus
from polca.api.powerpolicy import API_VERSION
from polca_node.kube_client import ApiError, KubeClient
from polca_node.node_status import MAX_MESSAGE

__all__ = ["NODE_POWER_STATES", "EventPoster", "NodeStateClient"]

logger = logging.getLogger(__name__)

NODE_POWER_STATES = "/apis/polca.dev/v1alpha1/nodepowerstates"
COMPONENT = "polca-node"


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class NodeStateClient:
    """The node's NodePowerState and its Events on the API server. Blocking calls."""

    def __init__(self, client: KubeClient, node_name: str, *, event_namespace: str) -> None:
        self._client = client
        self.node_name = node_name
        self.event_namespace = event_namespace
        self.uid = ""

    @property
    def _path(self) -> str:
        return f"{NODE_POWER_STATES}/{self.node_name}"

    def read(self) -> dict[str, Any] | None:
        """The object as stored, or None when there is none. Raises ApiError otherwise."""
        try:
            obj: dict[str, Any] = self._client.request("GET", self._path)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        self.uid = str((obj.get("metadata") or {}).get("uid", ""))
        return obj

    def ensure(self) -> dict[str, Any]:
        """The object, created (empty status) when missing."""
        found = self.read()
        if found is not None:
            return found
        body = {
            "apiVersion": API_VERSION,
            "kind": "NodePowerState",
            "metadata": {"name": self.node_name, "labels": {"app.kubernetes.io/name": "polca"}},
            "spec": {"nodeName": self.node_name},
        }
        try:
            created: dict[str, Any] = self._client.request("POST", NODE_POWER_STATES, body=body)
        except ApiError as exc:
            if exc.status != 409:  # someone (a previous run) created it meanwhile
                raise
            created = self._client.request("GET", self._path)
        self.uid = str((created.get("metadata") or {}).get("uid", ""))
        return created

    def write_status(self, status: NodePowerStateStatus) -> None:
        """Replace the whole status (a JSON patch `add` replaces an existing member)."""
        patch = [{"op": "add", "path": "/status", "value": status.to_wire()}]
        for attempt in (1, 2):
            try:
                self._client.request(
                    "PATCH",
                    f"{self._path}/status",
                    body=patch,
                    content_type="application/json-patch+json",
                )
            except ApiError as exc:
                if not exc.not_found or attempt == 2:
                    raise
                self.ensure()  # deleted under us: create it again
            else:
                return

    def patch_status(self, fields: Mapping[str, Any]) -> None:
        """Merge `fields` into the status, leaving the others as they are."""
        self._client.request(
            "PATCH",
            f"{self._path}/status",
            body={"status": dict(fields)},
            content_type="application/merge-patch+json",
        )

    def post_event(
        self, reason: str, message: str, *, now: datetime, warning: bool = False
    ) -> None:
        """A core/v1 Event about the NodePowerState (`kubectl describe nodepowerstate`)."""
        stamp = _rfc3339(now)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.node_name}.", "namespace": self.event_namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": "NodePowerState",
                "name": self.node_name,
                "uid": self.uid,
            },
            "reason": reason,
            "message": message[:MAX_MESSAGE],
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT, "host": self.node_name},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "reportingComponent": COMPONENT,
            "reportingInstance": self.node_name,
        }
        self._client.request("POST", f"/api/v1/namespaces/{self.event_namespace}/events", body=body)


class EventPoster:
    """Posts Events in the background: a slow or failing API never holds up the caller."""

    def __init__(self, client: NodeStateClient, *, wall_clock: Callable[[], datetime]) -> None:
        self._client = client
        self._wall_clock = wall_clock
        self._tasks: set[asyncio.Task[None]] = set()

    def post(self, reason: str, message: str, *, warning: bool = False) -> None:
        """Post an Event about the NodePowerState (from the event loop); failures are logged."""
        now = self._wall_clock()

        async def post() -> None:
            try:
                await asyncio.to_thread(
                    self._client.post_event, reason, message, now=now, warning=warning
                )
            except ApiError as exc:
                logger.warning("could not post event %s: %s", reason, exc)

        self._background(post())

    async def flush(self) -> None:
        """Wait for the Events being posted."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        # Keep a reference: the loop holds tasks only weakly.
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
