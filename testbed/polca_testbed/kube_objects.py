"""The objects tests write and read on the test cluster while the operator is not running:
PowerPolicies (and their status, as the operator would write it), NodePowerStates, GPU pods.

    create_policy(api, "p1", {"nodeSelector": {...}, "budgetWatts": 100000})
    set_stage(api, "p1", "stage2", 2)
    ready_reason(api, "sim-1")   # "Enforce", "Hold", ... ("" when not known)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from polca_node.kube_client import ApiError, KubeClient
from polca_testbed.cluster import Cluster
from polca_testbed.nodes import GPU_RESOURCE, SimNode

__all__ = [
    "NODE_POWER_STATES",
    "POWER_POLICIES",
    "condition",
    "create_pod",
    "create_policy",
    "node_state",
    "ready_reason",
    "set_stage",
    "try_set_stage",
]

POWER_POLICIES = "/apis/polca.dev/v1alpha1/powerpolicies"
NODE_POWER_STATES = "/apis/polca.dev/v1alpha1/nodepowerstates"


def create_policy(api: KubeClient, name: str, spec: Mapping[str, Any]) -> None:
    api.request("POST", POWER_POLICIES, body={
        "apiVersion": "polca.dev/v1alpha1", "kind": "PowerPolicy",
        "metadata": {"name": name}, "spec": dict(spec),
    })  # fmt: skip


def set_stage(api: KubeClient, name: str, stage: str, index: int, nodes: int = 1) -> None:
    """The policy's decision in its status, as the operator writes it."""
    api.request(
        "PATCH", f"{POWER_POLICIES}/{name}/status",
        body={"status": {"stage": stage, "stageIndex": index, "nodeCount": nodes}},
        content_type="application/merge-patch+json",
    )  # fmt: skip


def try_set_stage(api: KubeClient, name: str, stage: str, index: int) -> bool:
    """`set_stage`, False when the API server does not take it (yet)."""
    try:
        set_stage(api, name, stage, index)
    except ApiError:
        return False
    return True


def node_state(api: KubeClient, node: str) -> dict[str, Any]:
    """The node's NodePowerState ({} while there is none)."""
    try:
        found: dict[str, Any] = api.request("GET", f"{NODE_POWER_STATES}/{node}")
    except ApiError as exc:
        if exc.not_found:
            return {}
        raise
    return found


def condition(state: Mapping[str, Any], type_: str) -> dict[str, Any]:
    """One condition of a NodePowerState's status ({} when absent)."""
    for entry in (state.get("status") or {}).get("conditions") or ():
        if entry["type"] == type_:
            return dict(entry)
    return {}


def ready_reason(api: KubeClient, node: str) -> str:
    """The reason of the node's Ready condition ("" when unknown or the API fails)."""
    with contextlib.suppress(ApiError):
        return str(condition(node_state(api, node), "Ready").get("reason", ""))
    return ""


def create_pod(
    cluster: Cluster, node: SimNode, namespace: str, name: str, gpus: Sequence[int], *,
    labels: Mapping[str, str], running: bool = False,
) -> None:  # fmt: skip
    """A pod bound to the node, and the fake kubelet giving it these GPUs (first, as a kubelet
    assigns devices before the pod's containers start). With `running`, the pod asks for its
    GPUs as a device-plugin pod does and its status says Running (there is no real kubelet)."""
    node.assign_pod(namespace, name, gpus)
    container: dict[str, Any] = {"name": "main", "image": "none"}
    if running:
        container["resources"] = {"limits": {GPU_RESOURCE: str(len(gpus))}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": dict(labels)},
        "spec": {"nodeName": node.name, "containers": [container]},
    }))  # fmt: skip
    if running:
        cluster.kubectl(
            "patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"phase": "Running"}}),
        )  # fmt: skip
