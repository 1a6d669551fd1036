"""The NodePowerState client: creating the object, replacing its status, posting Events."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from polca.api.nodepowerstate import NodePowerStateStatus
from polca_node.gpu.nvml_backend import NvmlBackend
from polca_node.kube_client import ApiError, KubeClient
from polca_node.status_writer import NodeStateClient

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


class StubClient:
    """Answers requests from a script and records them."""

    def __init__(self, answers: Mapping[tuple[str, str], list[Any]]) -> None:
        self.answers = {k: list(v) for k, v in answers.items()}
        self.requests: list[tuple[str, str, Any, str]] = []

    def request(self, method: str, path: str, *, params: Any = None, body: Any = None,
                content_type: str = "application/json") -> Any:  # fmt: skip
        self.requests.append((method, path, body, content_type))
        answer = self.answers[(method, path)].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


PATH = "/apis/polca.dev/v1alpha1/nodepowerstates/node-a"


class TestNodeStateClient:
    def test_creates_the_object_when_missing(self) -> None:
        stub = StubClient({
            ("GET", PATH): [ApiError(404, "NotFound", "gone")],
            ("POST", "/apis/polca.dev/v1alpha1/nodepowerstates"): [{"metadata": {"uid": "u-9"}}],
        })  # fmt: skip
        client = NodeStateClient(cast(KubeClient, stub), "node-a", event_namespace="default")
        client.ensure()
        created = stub.requests[1][2]
        assert created["spec"] == {"nodeName": "node-a"}
        assert created["metadata"]["name"] == "node-a"
        assert client.uid == "u-9"

    def test_status_is_replaced_through_the_subresource(self, h100_backend: NvmlBackend) -> None:
        stub = StubClient({
            ("PATCH", f"{PATH}/status"): [ApiError(404, "NotFound", "deleted"), {}],
            ("GET", PATH): [ApiError(404, "NotFound", "gone")],
            ("POST", "/apis/polca.dev/v1alpha1/nodepowerstates"): [{"metadata": {"uid": "u"}}],
        })  # fmt: skip
        client = NodeStateClient(cast(KubeClient, stub), "node-a", event_namespace="default")
        status = NodePowerStateStatus(gpu_count=4, heartbeat_time=NOW)
        client.write_status(status)
        method, path, body, content_type = stub.requests[-1]
        assert (method, path, content_type) == (
            "PATCH", f"{PATH}/status", "application/json-patch+json"
        )  # fmt: skip
        assert body == [{"op": "add", "path": "/status", "value": status.to_wire()}]

    def test_other_errors_propagate(self) -> None:
        stub = StubClient({("PATCH", f"{PATH}/status"): [ApiError(403, "Forbidden", "no")]})
        client = NodeStateClient(cast(KubeClient, stub), "node-a", event_namespace="default")
        with pytest.raises(ApiError, match="Forbidden"):
            client.write_status(NodePowerStateStatus())

    def test_events_name_the_nodepowerstate(self) -> None:
        stub = StubClient({("POST", "/api/v1/namespaces/polca/events"): [{}]})
        client = NodeStateClient(cast(KubeClient, stub), "node-a", event_namespace="polca")
        client.uid = "u-1"
        client.post_event("DefaultsRestored", "restored", now=NOW)
        event = stub.requests[0][2]
        assert event["involvedObject"] == {
            "apiVersion": "polca.dev/v1alpha1", "kind": "NodePowerState", "name": "node-a",
            "uid": "u-1",
        }  # fmt: skip
        assert (event["reason"], event["type"]) == ("DefaultsRestored", "Normal")
        assert event["firstTimestamp"] == "2025-06-01T12:00:00Z"
        assert event["source"] == {"component": "polca-node", "host": "node-a"}
