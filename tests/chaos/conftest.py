"""The chaos suite: the real control plane, real `polca-node` daemons over fake GPUs, the real
operator and Prometheus, disturbed the ways a hostile environment would (issue 12). Every case
samples the fake GPUs' limits every 20 ms for its whole length and checks each sample against
what the policy demanded then (`polca_testbed.limits_watch`): no GPU limit is ever lifted that
the policy still demands.

Random choices (kill points, outage lengths) come from a seeded generator: POLCA_CHAOS_SEED
(default 12) plus the case's name, printed with the case, so a failure replays.

The suite runs on its own control plane: its cases stop etcd and the API server, and one that
could not bring them back must not fail the other suites. A failed case keeps its nodes' logs.
"""

from __future__ import annotations

import os
import random
import shutil
import zlib
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from polca_node.kube_client import KubeClient
from polca_testbed import scenarios
from polca_testbed.cluster import Cluster, running_cluster
from polca_testbed.nodes import SimNodes
from polca_testbed.polling import eventually
from polca_testbed.scenarios import CappedNode

SEED_ENV = "POLCA_CHAOS_SEED"
DEFAULT_SEED = 12
CALL_PASSED = pytest.StashKey[bool]()
Names = Callable[[str], str]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.chaos)
            item.add_marker(pytest.mark.integration)  # needs the real control plane


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[CALL_PASSED] = report.passed
    return report


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The chaos suite's own control plane (see the module doc); its logs stay in pytest's
    temporary directory."""
    with running_cluster(tmp_path_factory.mktemp("chaos-cluster")) as running:
        yield running


@pytest.fixture
def control_plane(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, whose etcd and API server the case may stop: both run again afterwards.
    Ask for it last, so it is torn down first and the others clean up through the API."""
    yield cluster
    if "etcd" not in cluster.pids:
        cluster.start_etcd()
    if "kube-apiserver" not in cluster.pids:
        cluster.start_apiserver()
    eventually("the API server to be ready again", cluster.ready, timeout_s=90)


@pytest.fixture
def sim(cluster: Cluster, node_crds: None, request: pytest.FixtureRequest) -> Iterator[SimNodes]:
    """Simulated nodes whose directories (daemon and kubelet logs, GPU state, checkpoint) are
    kept when the case fails, for the paths its failure message lists."""
    with SimNodes(cluster.kubeconfig, keep_dirs=True) as nodes:
        yield nodes
        directories = [node.directory for node in nodes.nodes.values()]
    if request.node.stash.get(CALL_PASSED, False):
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """The case's random choices, seeded (see the module doc)."""
    base = int(os.environ.get(SEED_ENV, DEFAULT_SEED))
    seed = base + zlib.crc32(request.node.name.encode())
    print(f"chaos seed: {SEED_ENV}={base} (case seed {seed})")
    return random.Random(seed)


@pytest.fixture
def cluster_logs(cluster: Cluster) -> Path:
    return cluster.state_dir / "logs"


@pytest.fixture
def capped_node(
    cluster: Cluster, api: KubeClient, sim: SimNodes, namespace: str, unique_name: Names,
    cleanup: Callable[..., None],
) -> Callable[..., CappedNode]:  # fmt: skip
    """Make a node under a decided policy (`polca_testbed.scenarios.capped_node`)."""

    def make(**options: Any) -> CappedNode:
        policy = unique_name("policy")
        cleanup(f"powerpolicy/{policy}")
        return scenarios.capped_node(cluster, api, sim, namespace, unique_name, policy=policy,
                                     **options)  # fmt: skip

    return make
