"""The test control plane is a real Kubernetes API server, not a mock."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from polca_testbed.cluster import Cluster, start_cluster
from polca_testbed.processes import group_alive, port_open

EXPECTED_K8S = re.search(
    r"^require k8s.io/kubernetes (\S+)",
    (Path(__file__).parents[2] / "tools/k8s/go.mod").read_text(),
    re.MULTILINE,
)


def test_versions_are_stamped(cluster: Cluster) -> None:
    assert EXPECTED_K8S is not None
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == EXPECTED_K8S.group(1)
    assert versions["clientVersion"]["gitVersion"] == EXPECTED_K8S.group(1)
    helm = cluster.helm("version", "--short").stdout
    assert helm.startswith("v3."), helm


def test_node_namespace_and_bound_pod(
    cluster: Cluster, unique_name: Callable[[str], str], cleanup: Callable[..., None]
) -> None:
    node, namespace = unique_name("node"), unique_name("ns")
    cleanup(f"node/{node}")
    cleanup(f"namespace/{namespace}")
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": {"polca.dev/test": "yes"}},
    }))  # fmt: skip
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "worker"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "example/none"}]},
    }))  # fmt: skip
    pod = json.loads(cluster.kubectl("get", "pod", "worker", "-n", namespace, "-o", "json").stdout)
    assert pod["spec"]["nodeName"] == node
    selected = cluster.kubectl("get", "nodes", "-l", "polca.dev/test=yes", "-o", "name").stdout
    assert f"node/{node}" in selected.split()


def test_rbac_refuses_then_allows_a_service_account(
    cluster: Cluster, unique_name: Callable[[str], str], cleanup: Callable[..., None]
) -> None:
    namespace = unique_name("rbac")
    cleanup(f"namespace/{namespace}")
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    who = f"--as=system:serviceaccount:{namespace}:reader"

    refused = cluster.kubectl("get", "configmaps", "-n", namespace, who, check=False)
    assert refused.returncode != 0
    assert "forbidden" in refused.stderr.lower()
    assert cluster.kubectl("auth", "can-i", "list", "configmaps", "-n", namespace, who,
                           check=False).stdout.strip() == "no"  # fmt: skip

    cluster.kubectl("create", "role", "read-cm", "--verb=get,list", "--resource=configmaps",
                    "-n", namespace)  # fmt: skip
    cluster.kubectl("create", "rolebinding", "read-cm", "--role=read-cm",
                    f"--serviceaccount={namespace}:reader", "-n", namespace)  # fmt: skip
    deadline = time.monotonic() + 10  # the RBAC authorizer reads through an informer cache
    while time.monotonic() < deadline:
        allowed = cluster.kubectl("get", "configmaps", "-n", namespace, who, check=False)
        if allowed.returncode == 0:
            break
        time.sleep(0.2)
    assert allowed.returncode == 0, allowed.stderr
    assert cluster.kubectl("auth", "can-i", "delete", "configmaps", "-n", namespace, who,
                           check=False).stdout.strip() == "no"  # fmt: skip


def test_server_side_apply(
    cluster: Cluster, unique_name: Callable[[str], str], cleanup: Callable[..., None]
) -> None:
    namespace = unique_name("ssa")
    cleanup(f"namespace/{namespace}")
    manifest = json.dumps(
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": namespace, "labels": {"team": "power"}}}
    )  # fmt: skip
    result = cluster.kubectl("apply", "--server-side", "--field-manager=polca-test", "-f", "-",
                             input=manifest)  # fmt: skip
    assert "serverside-applied" in result.stdout
    got = json.loads(cluster.kubectl("get", "namespace", namespace, "-o", "json",
                                     "--show-managed-fields").stdout)  # fmt: skip
    managers = {entry["manager"] for entry in got["metadata"]["managedFields"]}
    assert "polca-test" in managers
    assert got["metadata"]["labels"]["team"] == "power"


@pytest.mark.slow
def test_stop_leaves_no_process_or_port(cluster: Cluster, tmp_path: Path) -> None:
    second = start_cluster(tmp_path / "second", bin_dir=cluster.bin_dir)
    pids, ports = dict(second.pids), (second.api_port, second.etcd_port)
    assert second.ready()
    second.stop()
    assert not any(group_alive(pid) for pid in pids.values())
    assert not any(port_open(port) for port in ports)
