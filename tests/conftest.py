"""Shared test configuration, and the fixtures of the tests on the real control plane
(kube-apiserver + etcd on loopback): tests/integration and tests/chaos."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from polca_node.kube_client import KubeClient, kubeconfig_credentials
from polca_testbed.cluster import Cluster, running_cluster
from polca_testbed.nodes import SimNodes

REPO = Path(__file__).resolve().parents[1]

_counter = itertools.count()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One control plane for the whole run, stopped (process group) at the end."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Names unique across the session: tests share one cluster and nothing is collected."""
    test_id = "".join(c for c in request.node.name.lower() if c.isalnum())[:20]

    def make(prefix: str) -> str:
        return f"{prefix}-{test_id}-{os.getpid() % 10000}-{next(_counter)}"

    return make


@pytest.fixture
def cleanup(cluster: Cluster) -> Iterator[Callable[[str, str], None]]:
    """Register `kind/name` (optionally namespaced via `-n ns kind/name`) to delete afterwards.

    There is no garbage collector: cluster-scoped objects a test creates stay unless deleted.
    """
    registered: list[tuple[str, str]] = []

    def register(resource: str, namespace: str = "") -> None:
        registered.append((resource, namespace))

    yield register
    for resource, namespace in reversed(registered):
        args = ["delete", resource, "--ignore-not-found", "--wait=false"]
        if namespace:
            args += ["-n", namespace]
        cluster.kubectl(*args, check=False)


@pytest.fixture
def namespace(
    cluster: Cluster, unique_name: Callable[[str], str], cleanup: Callable[..., None]
) -> str:
    """A namespace for the test's pods, deleted afterwards."""
    name = unique_name("ns")
    cleanup(f"namespace/{name}")
    cluster.kubectl("create", "namespace", name)
    return name


@pytest.fixture
def apply(cluster: Cluster) -> Callable[[str], subprocess.CompletedProcess[str]]:
    """`kubectl apply -f -` of a YAML string, returning the result without raising."""

    def run(manifest: str) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl("apply", "-f", "-", input=manifest, check=False)

    return run


@pytest.fixture(scope="module")
def node_crds(cluster: Cluster) -> None:
    """The CRDs installed (server-side) and Established, for tests that run node daemons."""
    cluster.install_crds(REPO / "crds")


@pytest.fixture
def api(cluster: Cluster) -> Iterator[KubeClient]:
    """The daemon's own API client, as the admin."""
    client = KubeClient(kubeconfig_credentials(cluster.kubeconfig))
    yield client
    client.close()


@pytest.fixture
def sim(cluster: Cluster, node_crds: None) -> Iterator[SimNodes]:
    """Simulated nodes (fake kubelet + real polca-node over fake GPUs), stopped afterwards."""
    with SimNodes(cluster.kubeconfig) as nodes:
        yield nodes
