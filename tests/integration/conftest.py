"""Fixtures for tests against the real control plane (kube-apiserver + etcd on loopback)."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from polca_testbed.cluster import Cluster, start_cluster

_counter = itertools.count()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One control plane for the whole run, stopped (process group) at the end."""
    running = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield running
    finally:
        running.stop()


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
def apply(cluster: Cluster) -> Callable[[str], subprocess.CompletedProcess[str]]:
    """`kubectl apply -f -` of a YAML string, returning the result without raising."""

    def run(manifest: str) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl("apply", "-f", "-", input=manifest, check=False)

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
