"""The real node's configuration files and the fake device plugin's answers, without a node."""

from __future__ import annotations

import tomllib
from pathlib import Path

from polca_testbed.cluster import Cluster
from polca_testbed.device_plugin import allocate_response
from polca_testbed.pki import Pki
from polca_testbed.real_node import (
    PAUSE_IMAGE,
    RealNode,
    _toml,
    containerd_config,
    kubelet_config,
    node_missing_reason,
)


def node(tmp_path: Path) -> RealNode:
    pki = Pki(*(tmp_path / f"{n}.pem" for n in "abcdefgh"))
    cluster = Cluster(state_dir=tmp_path / "c", bin_dir=tmp_path / "bin", pki=pki, api_port=1,
                      etcd_port=2)  # fmt: skip
    return RealNode(cluster=cluster, name="n1", state_dir=tmp_path / "node")


def test_containerd_config_is_toml_that_keeps_everything_under_the_state_dir(
    tmp_path: Path,
) -> None:
    config = tomllib.loads(_toml(containerd_config(node(tmp_path))))
    assert config == containerd_config(node(tmp_path))
    for key in ("root", "state"):
        assert Path(config[key]).is_relative_to(tmp_path / "node")
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == PAUSE_IMAGE  # never a registry's pause image
    assert cri["restrict_oom_score_adj"] is True  # the sandbox refuses negative scores
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False


def test_kubelet_stays_on_loopback_and_off_the_shared_disk(tmp_path: Path) -> None:
    config = kubelet_config(node(tmp_path), port=10250, healthz_port=10248)
    assert config["address"] == config["healthzBindAddress"] == "127.0.0.1"
    assert config["readOnlyPort"] == 0
    assert config["imageGCHighThresholdPercent"] == 100  # never deletes the imported images
    assert config["cgroupsPerQOS"] is False  # no cgroup hierarchy left on the host
    assert str(config["containerRuntimeEndpoint"]).endswith("containerd/containerd.sock")


def test_missing_binaries_are_named_with_the_command_that_builds_them(tmp_path: Path) -> None:
    reason = node_missing_reason(tmp_path)
    assert reason is not None
    assert "kubelet" in reason or "root" in reason or "installed" in reason


def test_allocate_answers_each_container_with_its_devices() -> None:
    answer = allocate_response([["GPU-a", "GPU-b"], ["GPU-c"]])
    envs = [dict(c.envs) for c in answer.container_responses]
    assert envs == [{"NVIDIA_VISIBLE_DEVICES": "GPU-a,GPU-b"}, {"NVIDIA_VISIBLE_DEVICES": "GPU-c"}]
