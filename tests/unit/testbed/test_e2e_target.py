"""Which cluster the e2e chart test runs on, decided without a cluster (stub kubectl/docker)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from polca_testbed.e2e_target import (
    KIND_VALUES,
    ExistingClusterConfig,
    TargetError,
    existing_cluster_config,
    existing_cluster_target,
    fake_gpu_settings,
    kind_helm_args,
    pick_node,
    split_image,
)

REPO = Path(__file__).resolve().parents[3]
KIND_CLUSTER = yaml.safe_load((REPO / "deploy" / "kind" / "cluster.yaml").read_text())
REAL_NODE_VALUES = REPO / "deploy" / "real-node" / "values.yaml"


def kind_nodes() -> dict[str, Any]:
    """`kubectl get nodes -o json` of the cluster deploy/kind/cluster.yaml makes."""
    names = {"control-plane": iter(["polca-control-plane"]),
             "worker": iter(["polca-worker", "polca-worker2"])}  # fmt: skip
    items = [
        {"metadata": {"name": next(names[n["role"]]), "labels": n.get("labels", {})}}
        for n in KIND_CLUSTER["nodes"]
    ]
    copied: dict[str, Any] = json.loads(json.dumps({"kind": "List", "items": items}))
    return copied  # tests change it


# --- selection from the environment --------------------------------------------------------------


def test_without_a_kubeconfig_the_local_node_is_started() -> None:
    assert existing_cluster_config({}) is None
    assert existing_cluster_config({"POLCA_E2E_KUBECONFIG": "  "}) is None


def test_a_kubeconfig_selects_the_existing_cluster_with_kinds_defaults(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kind.yaml"
    kubeconfig.write_text("apiVersion: v1\n")
    config = existing_cluster_config({"POLCA_E2E_KUBECONFIG": str(kubeconfig)})
    assert config == ExistingClusterConfig(kubeconfig, None, "polca:dev", ("docker", "exec"))


def test_podman_kind_and_overrides(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kind.yaml"
    kubeconfig.write_text("apiVersion: v1\n")
    env = {"POLCA_E2E_KUBECONFIG": str(kubeconfig), "KIND_EXPERIMENTAL_PROVIDER": "podman"}
    config = existing_cluster_config(env)
    assert config is not None
    assert config.node_exec == ("podman", "exec")
    env |= {"POLCA_E2E_NODE": "polca-worker2", "POLCA_E2E_IMAGE": "reg:5000/team/polca:e2e",
            "POLCA_E2E_NODE_EXEC": "sudo nerdctl exec"}  # fmt: skip
    config = existing_cluster_config(env)
    assert config == ExistingClusterConfig(
        kubeconfig, "polca-worker2", "reg:5000/team/polca:e2e", ("sudo", "nerdctl", "exec")
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"POLCA_E2E_KUBECONFIG": "/nonexistent/kubeconfig"}, "no such file"),
        ({"POLCA_E2E_IMAGE": "polca@sha256:abc"}, "no digest"),
        ({"POLCA_E2E_IMAGE": "polca dev"}, "want repository"),
    ],
)
def test_bad_settings_are_refused_with_the_variable_named(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    kubeconfig = tmp_path / "kind.yaml"
    kubeconfig.write_text("apiVersion: v1\n")
    with pytest.raises(TargetError, match=message) as raised:
        existing_cluster_config({"POLCA_E2E_KUBECONFIG": str(kubeconfig), **env})
    assert "POLCA_E2E_" in str(raised.value)


@pytest.mark.parametrize(
    ("reference", "split"),
    [
        ("polca:dev", ("polca", "dev")),
        ("polca", ("polca", "latest")),
        ("localhost/polca:dev", ("localhost/polca", "dev")),
        ("registry:5000/team/polca", ("registry:5000/team/polca", "latest")),
        ("registry:5000/team/polca:0.1.0", ("registry:5000/team/polca", "0.1.0")),
    ],
)
def test_split_image(reference: str, split: tuple[str, str]) -> None:
    assert split_image(reference) == split


# --- the node under test -------------------------------------------------------------------------


def test_kinds_first_worker_and_its_domain() -> None:
    assert pick_node(kind_nodes(), None) == ("polca-worker", "row-a")
    assert pick_node(kind_nodes(), "polca-worker2") == ("polca-worker2", "row-a")


@pytest.mark.parametrize(
    ("wanted", "message"),
    [("polca-control-plane", "not a node labelled nvidia.com/gpu.present"), ("nope", "none|not")],
)
def test_a_node_without_the_daemon_is_refused(wanted: str, message: str) -> None:
    with pytest.raises(TargetError, match=message):
        pick_node(kind_nodes(), wanted)


def test_a_node_outside_any_domain_or_no_gpu_node_is_refused() -> None:
    nodes = kind_nodes()
    del nodes["items"][1]["metadata"]["labels"]["polca.dev/power-domain"]
    with pytest.raises(TargetError, match="kubectl label node polca-worker"):
        pick_node(nodes, None)
    with pytest.raises(TargetError, match="no node is labelled"):
        pick_node({"items": nodes["items"][:1]}, None)


# --- the same values as kind-deploy ---------------------------------------------------------------


def test_kind_helm_args_are_kind_deploys_values_without_the_example_policy() -> None:
    assert kind_helm_args("polca:dev") == (
        "-f", str(KIND_VALUES), "--set", "image.repository=polca,image.tag=dev",
        "--set", "examplePolicy.enabled=false",
    )  # fmt: skip
    assert KIND_VALUES == REPO / "deploy" / "kind" / "values.yaml"
    assert "-f $(KIND_VALUES)" in (REPO / "Makefile").read_text()  # kind-deploy's


def test_fake_gpu_state_and_annotation_follow_the_values() -> None:
    state, annotation = fake_gpu_settings([KIND_VALUES])
    assert (state, annotation) == ("/var/lib/polca/fake-gpus/state.json", "polca.dev/fake-gpus")
    # The real node's values give GPUs by device plugin: no annotation.
    assert fake_gpu_settings([KIND_VALUES, REAL_NODE_VALUES])[1] is None


# --- the whole selection against stub tools -------------------------------------------------------


def stub(path: Path, script: str) -> None:
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def stub_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """kubectl answering for the kind cluster (no namespace polca-system), helm, docker."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "nodes.json").write_text(json.dumps(kind_nodes()))
    stub(bin_dir / "kubectl", f"""case "$*" in
  *"get nodes -o json"*) cat {tmp_path / "nodes.json"};;
  *"get namespace polca-system"*) [ -e {tmp_path / "ns-exists"} ] || exit 1;;
  *) exit 3;;
esac
""")  # fmt: skip
    stub(bin_dir / "helm", "exit 0\n")
    (tmp_path / "state.json").write_text(json.dumps({"gpus": [{"uuid": "GPU-1"}]}))
    stub(
        bin_dir / "docker",
        f'[ "$1 $2 $3" = "exec polca-worker cat" ] && cat {tmp_path}/state.json\n',
    )
    monkeypatch.setenv("POLCA_CONTROL_PLANE_BIN", str(bin_dir))
    return bin_dir


def test_existing_cluster_target_on_kind(stub_tools: Path, tmp_path: Path) -> None:
    config = ExistingClusterConfig(tmp_path / "kubeconfig", None, "polca:dev",
                                   (str(stub_tools / "docker"), "exec"))  # fmt: skip
    target = existing_cluster_target(config, tmp_path / "work")
    assert (target.node, target.domain, target.image) == ("polca-worker", "row-a", "polca:dev")
    assert target.helm_args == kind_helm_args("polca:dev")
    assert target.gpu_annotation == "polca.dev/fake-gpus"
    assert target.gpu_state.read() == {"gpus": [{"uuid": "GPU-1"}]}  # read inside the node
    assert target.logs.is_dir()


def test_existing_cluster_with_polca_installed_is_refused(stub_tools: Path, tmp_path: Path) -> None:
    (tmp_path / "ns-exists").touch()
    config = ExistingClusterConfig(tmp_path / "kubeconfig", None, "polca:dev", ("docker", "exec"))
    with pytest.raises(TargetError, match="helm uninstall polca -n polca-system"):
        existing_cluster_target(config, tmp_path / "work")
