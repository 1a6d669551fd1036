"""List-then-watch of one resource in a thread, feeding a sink; the daemon's view of the cluster.

Why plain watches in threads and not Kopf (see also `polca_node.kube_client`):
- the daemon must know when it has seen *every* PowerPolicy before it acts, or it could lift a
  limit that a policy it has not listed yet still wants (safety rule 1). A list answers with the
  complete set at one resource version; Kopf's `on.event` handlers get the same objects one by
  one with no "listing complete" signal;
- the daemon owns none of the objects it watches (PowerPolicies, Pods, its Node), so Kopf's
  change-detecting handlers, finalizers and annotations are of no use here, and a DaemonSet would
  need `--standalone` to avoid peering anyway;
- memory: see `polca_node.kube_client`.

Rules: a successful list is authoritative and replaces the sink's state (`replace`); watch
events update it (`apply`); a failed list or watch never clears it (`failed`, safety rule 3),
it is retried with exponential backoff. A `410 Gone` (too old a resource version) lists again.
Server-side selectors restrict what is listed (`fieldSelector=spec.nodeName=<node>` for pods).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from polca_node.kube_client import ApiError, KubeClient, WatchStream

__all__ = ["WatchSink", "WatchTarget", "Watcher"]

logger = logging.getLogger(__name__)

# The API server ends a watch after timeoutSeconds; we then watch again from the last version.
WATCH_TIMEOUT_S = 290
# A socket that hears nothing (not even a bookmark, sent about every minute) for this long is dead.
READ_TIMEOUT_S = WATCH_TIMEOUT_S + 30


class WatchSink(Protocol):
    """Receives what a Watcher sees. Called from the watcher's thread."""

    def replace(self, items: list[dict[str, Any]]) -> None:
        """The complete current set (after a list)."""
        ...

    def apply(self, event_type: str, obj: dict[str, Any]) -> None:
        """ADDED, MODIFIED or DELETED."""
        ...

    def failed(self, error: Exception) -> None:
        """A list or watch failed; the last known-good state stays."""
        ...


@dataclass(frozen=True)
class WatchTarget:
    """What to watch: a collection path and optional server-side selectors."""

    name: str  # for logs
    path: str  # e.g. /api/v1/pods or /apis/polca.dev/v1alpha1/powerpolicies
    field_selector: str | None = None
    label_selector: str | None = None
    extra_params: Mapping[str, str] = field(default_factory=dict)

    def params(self) -> dict[str, str | int | bool]:
        params: dict[str, str | int | bool] = dict(self.extra_params)
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        return params


class Watcher:
    """One thread that keeps a sink in step with one resource until `stop()`."""

    def __init__(
        self,
        client: KubeClient,
        target: WatchTarget,
        sink: WatchSink,
        *,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._client = client
        self._target = target
        self._sink = sink
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._resource_version: str | None = None  # of the last list or event seen
        self._thread = threading.Thread(target=self._run, name=f"watch-{target.name}", daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop and wait for the thread; an open watch is closed so it returns at once."""
        self._stopping.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        resource_version: str | None = None
        backoff_s = self._min_backoff_s
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list()
                self._watch(resource_version)
                # The stream ended normally (server timeout): watch again from where we are.
                resource_version = self._resource_version or resource_version
                backoff_s = self._min_backoff_s
            except ApiError as exc:
                if self._stopping.is_set():
                    break
                if exc.gone:
                    logger.info("%s: resource version expired, listing again", self._target.name)
                    resource_version = None
                    continue
                resource_version = self._resource_version or resource_version
                self._fail(exc, backoff_s)
                backoff_s = min(backoff_s * 2, self._max_backoff_s)
            except Exception as exc:
                # A malformed answer or a bug in a sink must not end the watch for good: list
                # again after a pause.
                if self._stopping.is_set():
                    break
                logger.exception("%s: unexpected failure", self._target.name)
                resource_version = None
                self._fail(exc, backoff_s)
                backoff_s = min(backoff_s * 2, self._max_backoff_s)

    def _fail(self, exc: Exception, backoff_s: float) -> None:
        logger.warning("%s: %s; retrying in %.1f s", self._target.name, exc, backoff_s)
        self._sink.failed(exc)
        self._stopping.wait(backoff_s)

    def _list(self) -> str:
        listing = self._client.request("GET", self._target.path, params=self._target.params())
        items: list[dict[str, Any]] = list(listing.get("items") or [])
        version = str(listing["metadata"]["resourceVersion"])
        self._sink.replace(items)
        self._resource_version = version
        return version

    def _watch(self, resource_version: str) -> None:
        params = {
            **self._target.params(),
            "watch": True,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": WATCH_TIMEOUT_S,
        }
        stream = self._client.watch(self._target.path, params, read_timeout_s=READ_TIMEOUT_S)
        with self._lock:
            if self._stopping.is_set():
                stream.close()
                return
            self._stream = stream
        try:
            for event in stream:
                self._handle(event)
        finally:
            with self._lock:
                self._stream = None

    def _handle(self, event: Mapping[str, Any]) -> None:
        event_type = str(event.get("type"))
        obj: dict[str, Any] = event.get("object") or {}
        if event_type == "ERROR":
            raise ApiError(
                int(obj.get("code") or 0), str(obj.get("reason", "")), str(obj.get("message", ""))
            )
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self._resource_version = str(version)
        if event_type in ("ADDED", "MODIFIED", "DELETED"):
            self._sink.apply(event_type, obj)
