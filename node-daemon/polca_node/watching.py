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
it is retried after a capped, fully jittered backoff (`polca.backoff`: at most 1 s, so the
daemon is back within about a second of the API server). A `410 Gone` (too old a resource
version) forgets that version and lists again; a watch that ends at once without events, and
a 410 right after a fresh list, back off too, so a misbehaving server never makes us spin.
Server-side selectors restrict what is listed (`fieldSelector=spec.nodeName=<node>` for pods).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from polca.backoff import Backoff
from polca_node.kube_client import ApiError, KubeClient, WatchStream

__all__ = ["WatchSink", "WatchTarget", "Watcher"]

logger = logging.getLogger(__name__)

# The API server ends a watch after timeoutSeconds; we then watch again from the last version.
WATCH_TIMEOUT_S = 290
# A socket that hears nothing (not even a bookmark, sent about every minute) for this long is dead.
READ_TIMEOUT_S = WATCH_TIMEOUT_S + 30
# A watch that ends sooner than this without a single event made no progress: back off before
# the next one, or a server (or proxy) that closes watches at once makes us spin.
QUICK_END_S = 1.0
# During an outage, repeat the failure warning at most this often (each retry is logged at debug).
WARN_EVERY_S = 30.0


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
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._target = target
        self._sink = sink
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._resource_version: str | None = None  # of the last list or event seen
        self._events = 0  # events handled so far: progress, which resets the backoff
        self._warned_s = float("-inf")  # when a failure was last logged as a warning
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
        gone_in_a_row = 0
        while not self._stopping.is_set():
            events_before = self._events
            try:
                if self._resource_version is None:
                    self._list()
                    self._backoff.reset()  # the server answered with the complete set
                started_s = self._clock()
                self._watch(self._resource_version or "")
                # The stream ended without an error: the server's timeoutSeconds, or a server
                # (or proxy) that ends every watch at once. Only the first is progress.
                if self._events == events_before and self._clock() - started_s < QUICK_END_S:
                    self._pause("the watch ended at once without events")
                    continue
                self._backoff.reset()
                gone_in_a_row = 0
            except ApiError as exc:
                if self._stopping.is_set():
                    break
                if self._events != events_before:
                    self._backoff.reset()
                if exc.gone:
                    # Too old a version: forget it before listing again, so a failing relist
                    # can never send us back to watching from it.
                    logger.info("%s: resource version expired, listing again", self._target.name)
                    self._resource_version = None
                    gone_in_a_row += 1
                    if gone_in_a_row > 1:  # a fresh list expired at once: do not spin
                        self._pause("the resource version expired again")
                    continue
                self._fail(exc)
            except Exception as exc:
                # A malformed answer or a bug in a sink must not end the watch for good: list
                # again after a pause.
                if self._stopping.is_set():
                    break
                logger.exception("%s: unexpected failure", self._target.name)
                self._resource_version = None
                self._fail(exc)

    def _pause(self, why: str) -> None:
        delay_s = self._backoff.next_s()
        logger.debug("%s: %s; again in %.2f s", self._target.name, why, delay_s)
        self._stopping.wait(delay_s)

    def _fail(self, exc: Exception) -> None:
        first = self._backoff.attempt == 0
        delay_s = self._backoff.next_s()
        # Retries come every ~0.5 s during an outage: warn on the first failure and then at most
        # every WARN_EVERY_S, the others at debug level, so an outage does not flood the log.
        now_s = self._clock()
        quiet = not first and now_s - self._warned_s < WARN_EVERY_S
        if not quiet:
            self._warned_s = now_s
        level = logging.DEBUG if quiet else logging.WARNING
        logger.log(level, "%s: %s; retrying in %.2f s", self._target.name, exc, delay_s)
        self._sink.failed(exc)
        self._stopping.wait(delay_s)

    def _list(self) -> None:
        listing = self._client.request("GET", self._target.path, params=self._target.params())
        items: list[dict[str, Any]] = list(listing.get("items") or [])
        version = str(listing["metadata"]["resourceVersion"])
        self._sink.replace(items)
        self._resource_version = version

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
        self._events += 1
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self._resource_version = str(version)
        if event_type in ("ADDED", "MODIFIED", "DELETED"):
            self._sink.apply(event_type, obj)
