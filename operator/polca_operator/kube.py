"""The operator's two writes to the API besides Kopf's own: policy status patches and events.

The Kubernetes client is synchronous, so patches run in a thread; its errors are translated to
:class:`StatusWriteError` here, at the one boundary.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kubernetes.client
import kubernetes.config
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from polca.api.powerpolicy import GROUP, VERSION
from polca_operator.status import EventType, StatusWriteError

__all__ = ["CoreEvents", "KubeStatusSink", "PolicyEvents", "api_client", "policy_event"]

log = logging.getLogger(__name__)

PLURAL = "powerpolicies"
REQUEST_TIMEOUT_S = 10.0


def api_client() -> kubernetes.client.ApiClient:
    """A client from the service account in a pod, else from $KUBECONFIG or ~/.kube/config."""
    config = kubernetes.client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=config)
    else:
        kubernetes.config.load_kube_config(client_configuration=config)
    return kubernetes.client.ApiClient(configuration=config)


class KubeStatusSink:
    """Merge-patches `PowerPolicy.status` through the status subresource."""

    def __init__(self, client: kubernetes.client.ApiClient):
        self._api = kubernetes.client.CustomObjectsApi(client)

    async def patch_status(self, name: str, status: Mapping[str, Any]) -> None:
        try:
            await asyncio.to_thread(
                self._api.patch_cluster_custom_object_status,
                GROUP,
                VERSION,
                PLURAL,
                name,
                {"status": dict(status)},
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except ApiException as exc:
            raise StatusWriteError(f"HTTP {exc.status}: {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StatusWriteError(f"{type(exc).__name__}: {exc}") from exc


# Events about cluster-scoped objects must live in `default` with no involvedObject.namespace:
# the API server refuses any other namespace for them (422), and `kubectl describe` searches
# exactly there. (Kopf would file them under the operator's namespace, invisible to describe.)
EVENT_NAMESPACE = "default"
COMPONENT = "polca-operator"
MAX_MESSAGE = 1024


def policy_event(
    body: Mapping[str, Any], type_: EventType, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    """A core/v1 Event about a PowerPolicy, as `kubectl describe powerpolicy` finds it."""
    meta = body.get("metadata") or {}
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": f"{meta.get('name', 'powerpolicy')}.",
            "namespace": EVENT_NAMESPACE,
        },
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "PowerPolicy",
            "name": meta.get("name"),
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "type": type_,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": os.environ.get("POD_ID") or COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class CoreEvents:
    """Posts events in the background: an event is auxiliary and never delays a cycle."""

    def __init__(self, client: kubernetes.client.ApiClient):
        self._api = kubernetes.client.CoreV1Api(client)
        self._tasks: set[asyncio.Task[None]] = set()

    def post(self, body: Mapping[str, Any], type_: EventType, reason: str, message: str) -> None:
        event = policy_event(body, type_, reason, message, datetime.now(UTC))
        task = asyncio.get_running_loop().create_task(self._post(event))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _post(self, event: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(
                self._api.create_namespaced_event,
                EVENT_NAMESPACE,
                event,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("could not post event %s about %s: %s", event["reason"],
                        event["involvedObject"]["name"], exc)  # fmt: skip


class PolicyEvents:
    """Events about one policy (the EventSink a control loop writes to)."""

    def __init__(self, poster: CoreEvents, body: Mapping[str, Any]):
        self._poster = poster
        self._body = body

    def post(self, type_: EventType, reason: str, message: str) -> None:
        self._poster.post(self._body, type_, reason, message)
