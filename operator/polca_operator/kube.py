"""The operator's two writes to the API besides Kopf's own: policy status patches and events.

The Kubernetes client is synchronous, so patches run in a thread; its errors are translated to
:class:`StatusWriteError` here, at the one boundary.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

import kopf
import kubernetes.client
import kubernetes.config
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from polca.api.powerpolicy import GROUP, VERSION
from polca_operator.status import EventType, StatusWriteError

__all__ = ["KopfEvents", "KubeStatusSink", "api_client"]

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


class KopfEvents:
    """Events about one policy, posted by Kopf's event queue (non-blocking, retried)."""

    def __init__(self, body: kopf.Body):
        self._body = body

    def post(self, type_: EventType, reason: str, message: str) -> None:
        kopf.event(self._body, type=type_, reason=reason, message=message)
