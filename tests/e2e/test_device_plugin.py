"""The fake NVIDIA device plugin on a real kubelet: pods get fake GPUs by resource request, and
the kubelet's own PodResources socket says which pod holds which fake NVML UUID."""

from __future__ import annotations

import functools
import json

import pytest

from polca_node.podresources.client import ContainerRef, PodResourcesClient
from polca_testbed.cluster import Cluster
from polca_testbed.containers import IMAGE
from polca_testbed.processes import wait_until
from polca_testbed.real_node import RealNode

pytestmark = pytest.mark.e2e


def gpu_pod(name: str, gpus: int) -> dict[str, object]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "hostNetwork": True, "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "server", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", 'echo "$NVIDIA_VISIBLE_DEVICES"; exec sleep 3600'],
                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
            }],
        },
    }  # fmt: skip


def test_pods_get_fake_gpus_and_podresources_reports_them(
    gpu_node: list[str], real_node: RealNode, node_cluster: Cluster
) -> None:
    names = {"llm-a": 2, "llm-b": 1}
    for name, gpus in names.items():
        node_cluster.kubectl("apply", "-f", "-", input=json.dumps(gpu_pod(name, gpus)))
    try:
        for name in names:
            node_cluster.kubectl("wait", f"pod/{name}", "--for=condition=Ready",
                                 "--timeout=120s", timeout_s=130)  # fmt: skip
        with PodResourcesClient(real_node.pod_resources_socket) as client:
            assignments = client.list_gpu_assignments()
            allocatable = client.allocatable_gpu_devices()
        held: dict[str, set[str]] = {}
        for a in assignments:
            assert a.resource_name == "nvidia.com/gpu"
            held.setdefault(a.owner.pod, set()).add(a.device.raw)
            assert a.owner == ContainerRef("default", a.owner.pod, "server")
        assert {pod: len(uuids) for pod, uuids in held.items()} == names
        assert set().union(*held.values()) <= set(gpu_node)
        assert {d.raw for d in allocatable} == set(gpu_node)
        for pod, uuids in held.items():  # Allocate's answer reached the container
            said = functools.partial(real_node.container_log, "default", pod, "server")
            wait_until(lambda: bool(said()), timeout_s=30, what=f"{pod}'s output")  # noqa: B023
            visible = real_node.container_log("default", pod, "server").split()[0]
            assert set(visible.split(",")) == uuids
    finally:
        for name in names:
            node_cluster.kubectl("delete", "pod", name, "--wait=true", "--timeout=60s",
                                 check=False, timeout_s=70)  # fmt: skip
