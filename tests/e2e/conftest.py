"""Fixtures for tests on a real node: kubelet + containerd next to a full control plane.

Each fixture skips, with the reason, when a prerequisite is missing (root, Debian's packages,
the node binaries, the image); `make e2e` installs and builds them all.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from polca_node.fake_gpus import fake_gpu_uuids
from polca_testbed.cluster import Cluster, find_bin_dir, start_cluster
from polca_testbed.containers import IMAGE, image_missing_reason
from polca_testbed.processes import start_process, stop_group, wait_until
from polca_testbed.real_node import (
    RealNode,
    mounts_below,
    node_missing_reason,
    save_image,
    shim_pids,
    start_node,
)

NODE_NAME = "polca-e2e-node"
NODE_LABELS = {"nvidia.com/gpu.present": "true", "polca.dev/power-domain": "row-e2e"}


@pytest.fixture(scope="session")
def image_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's image (`make image`), saved for import into the node's containerd."""
    missing = image_missing_reason()
    if missing is not None:
        pytest.skip(missing)
    return save_image(IMAGE, tmp_path_factory.mktemp("images") / "polca.tar")


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A control plane with kube-controller-manager and kube-scheduler (not the shared one:
    a real node needs the ServiceAccount admission plugin that the shared one turns off)."""
    bin_dir = find_bin_dir()
    missing = node_missing_reason(bin_dir)
    if missing is not None:
        pytest.skip(missing)
    cluster = start_cluster(tmp_path_factory.mktemp("node-cluster"), bin_dir=bin_dir,
                            controllers=True)  # fmt: skip
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def real_node(
    node_cluster: Cluster, image_archive: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealNode]:
    """One GPU-labelled node for the session, the project's image imported; its start-up time
    is recorded in the node's log directory (start-seconds.txt) for the README's figure."""
    state_dir = tmp_path_factory.mktemp("node")
    started = time.monotonic()
    node = start_node(node_cluster, state_dir, name=NODE_NAME, labels=NODE_LABELS,
                      images=[image_archive])  # fmt: skip
    (node.logs / "start-seconds.txt").write_text(f"{time.monotonic() - started:.1f}\n")
    try:
        yield node
    finally:
        node.stop()
        assert not mounts_below(state_dir), "mounts left behind"
        assert not shim_pids(str(node.containerd_socket)), "container shims left behind"


FAKE_GPU_PROFILE = "H100-SXM:8"  # the chart's fakeGpu.profile default


@pytest.fixture(scope="session")
def gpu_node(real_node: RealNode, node_cluster: Cluster) -> Iterator[list[str]]:
    """The fake NVIDIA device plugin (its own process) on the real node, its GPUs allocatable;
    yields their UUIDs."""
    argv = [sys.executable, "-m", "polca_testbed.device_plugin", "--dir",
            str(real_node.device_plugin_dir), "--profile", FAKE_GPU_PROFILE,
            "--node-name", real_node.name]  # fmt: skip
    log = real_node.logs / "device-plugin.log"
    plugin = start_process(argv, log_path=log)
    try:
        uuids = fake_gpu_uuids(FAKE_GPU_PROFILE, node_name=real_node.name)
        wait_until(lambda: allocatable_gpus(node_cluster, real_node.name) == str(len(uuids)),
                   timeout_s=60, what="nvidia.com/gpu allocatable",
                   alive=lambda: plugin.poll() is None, log_path=log)  # fmt: skip
        yield uuids
    finally:
        stop_group(plugin.pid)


def allocatable_gpus(cluster: Cluster, node: str) -> str | None:
    jsonpath = r"jsonpath={.status.allocatable.nvidia\.com/gpu}"
    got = cluster.kubectl("get", "node", node, "-o", jsonpath, check=False)
    return got.stdout.strip() or None
