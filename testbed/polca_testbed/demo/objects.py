"""Kubernetes objects of the demo: its namespace, a low PriorityClass and one pod per node.

Each node runs one workload in one pod that holds all the node's GPUs. The pods carry what the
default tier rules look at (examples/polca-default.yaml):

* high-priority inference: nothing special (the default tier, ``high``);
* low-priority inference: PriorityClass ``polca-demo-low`` (value -1, ``priority: {max: -1}``);
* training: the Kubeflow Training Operator's job label.
"""

from __future__ import annotations

from typing import Any

from polca.sim.domain import TIER_HIGH, TIER_LOW, TIER_TRAIN

__all__ = [
    "LOW_PRIORITY_CLASS",
    "NAMESPACE",
    "WORKLOAD_LABEL",
    "namespace",
    "pod",
    "pod_name",
    "priority_class",
]

NAMESPACE = "polca-demo"
LOW_PRIORITY_CLASS = "polca-demo-low"
WORKLOAD_LABEL = "polca.dev/demo-workload"
GPU_RESOURCE = "nvidia.com/gpu"
_POD_PREFIX = {TIER_HIGH: "llm-high", TIER_LOW: "llm-low", TIER_TRAIN: "train"}


def namespace() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


def priority_class() -> dict[str, Any]:
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": LOW_PRIORITY_CLASS},
        "value": -1,
        "preemptionPolicy": "Never",
        "description": "Low-priority inference in the POLCA demo: throttled before high.",
    }


def pod_name(kind: str, node: str) -> str:
    return f"{_POD_PREFIX[kind]}-{node}"


def pod(kind: str, node: str, gpus: int) -> dict[str, Any]:
    """The pod of workload `kind` bound to `node`, holding `gpus` GPUs."""
    if kind not in _POD_PREFIX:
        raise ValueError(f"unknown workload {kind!r}; use {sorted(_POD_PREFIX)}")
    labels = {"app.kubernetes.io/part-of": "polca-demo", WORKLOAD_LABEL: kind}
    spec: dict[str, Any] = {
        "nodeName": node,  # no scheduler in the demo: pods are created bound
        "containers": [
            {
                "name": "main",
                "image": "registry.k8s.io/pause:3.10",
                "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
            }
        ],
    }
    if kind == TIER_LOW:
        spec["priorityClassName"] = LOW_PRIORITY_CLASS
    if kind == TIER_TRAIN:
        labels["training.kubeflow.org/job-name"] = "polca-demo-train"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name(kind, node), "namespace": NAMESPACE, "labels": labels},
        "spec": spec,
    }
