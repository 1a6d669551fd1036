"""A real node: the kubelet registers, runs the project's image in a host-network pod, and
its PodResources socket answers."""

from __future__ import annotations

import json

import pytest

from polca_node.podresources.client import PodResourcesClient
from polca_testbed.cluster import Cluster
from polca_testbed.containers import IMAGE
from polca_testbed.real_node import RealNode

pytestmark = pytest.mark.e2e


def test_node_registers_ready_with_its_labels(real_node: RealNode, node_cluster: Cluster) -> None:
    node = json.loads(node_cluster.kubectl("get", "node", real_node.name, "-o", "json").stdout)
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    server = json.loads(node_cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert node["status"]["nodeInfo"]["kubeletVersion"] == server["gitVersion"]
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_scheduled_pod_runs_the_image_with_a_service_account_token(
    real_node: RealNode, node_cluster: Cluster
) -> None:
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "image-check", "namespace": "default"},
        "spec": {
            "hostNetwork": True, "restartPolicy": "Never",
            "containers": [{
                "name": "check", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "polca-node --help >/dev/null && "
                            "test -s /var/run/secrets/kubernetes.io/serviceaccount/token"],
            }],
        },
    }  # fmt: skip
    node_cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        node_cluster.kubectl("wait", "pod/image-check", "--for=jsonpath={.status.phase}=Succeeded",
                             "--timeout=120s", timeout_s=130)  # fmt: skip
    finally:
        node_cluster.kubectl("delete", "pod", "image-check", "--wait=true", "--timeout=60s",
                             check=False, timeout_s=70)  # fmt: skip


def test_kubelets_pod_resources_socket_answers_the_daemons_client(real_node: RealNode) -> None:
    with PodResourcesClient(real_node.pod_resources_socket) as client:
        assert client.list_gpu_assignments() == ()  # no device plugin yet, no GPU pods
