"""Where the end-to-end chart test runs: the real node started here, or a cluster you have.

`make e2e` starts a kubelet and containerd on this machine (:mod:`polca_testbed.real_node`).
`make kind-e2e` sets ``POLCA_E2E_KUBECONFIG`` to a kind cluster's kubeconfig instead; the same
test (tests/e2e/test_chart_on_node.py) then installs the chart there with the same values
(``deploy/kind/values.yaml``) and starts no node. What differs between the two is gathered in a
:class:`Target`: how to run kubectl and helm, the node under test and its power domain, the
extra Helm arguments, how workloads ask for fake GPUs and how to read those GPUs' state.

Environment (only with ``POLCA_E2E_KUBECONFIG``):

- ``POLCA_E2E_NODE``: the node whose GPUs the test watches (default: the first, by name, of the
  nodes labelled ``nvidia.com/gpu.present=true``); it needs a ``polca.dev/power-domain`` label;
- ``POLCA_E2E_IMAGE``: the image loaded into the cluster (default ``polca:dev``, what
  ``make image kind-load`` gives);
- ``POLCA_E2E_NODE_EXEC``: the command that runs a program on a node, the node's name appended
  (default ``docker exec``, or ``podman exec`` with ``KIND_EXPERIMENTAL_PROVIDER=podman``):
  the test reads the fake GPUs' state file on the node with it.

The selection (:func:`existing_cluster_config`, :func:`pick_node`, :func:`split_image`,
:func:`kind_helm_args`) is pure; unit tests cover it without a cluster.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from polca_node.fake_gpus import read_fake_state
from polca_testbed.cluster import REPO_ROOT, KubectlHelm, find_bin_dir

__all__ = [
    "E2E_KUBECONFIG",
    "KIND_VALUES",
    "ExistingClusterConfig",
    "GpuState",
    "KubeTools",
    "LocalGpuState",
    "Target",
    "TargetError",
    "existing_cluster_config",
    "existing_cluster_target",
    "kind_helm_args",
    "pick_node",
    "split_image",
]

E2E_KUBECONFIG = "POLCA_E2E_KUBECONFIG"
E2E_NODE = "POLCA_E2E_NODE"
E2E_IMAGE = "POLCA_E2E_IMAGE"
E2E_NODE_EXEC = "POLCA_E2E_NODE_EXEC"
DEFAULT_IMAGE = "polca:dev"
# The values `make kind-deploy` installs and both e2e paths start from.
KIND_VALUES = REPO_ROOT / "deploy" / "kind" / "values.yaml"
CHART_VALUES = REPO_ROOT / "charts" / "polca" / "values.yaml"
GPU_NODE_LABEL = "nvidia.com/gpu.present"
DOMAIN_LABEL = "polca.dev/power-domain"
NAMESPACE = "polca-system"


class TargetError(ValueError):
    """The existing cluster cannot serve as the e2e target; the message says what to fix."""


# kubectl and helm against the target (a Cluster here, KubeconfigTools on kind).
KubeTools = KubectlHelm


class GpuState(Protocol):
    """The fake GPUs' own state file on the node under test (what the GPUs really have)."""

    def read(self) -> dict[str, Any]:
        """Its content; {} while it is missing or unreadable."""
        ...


@dataclass(frozen=True)
class Target:
    """The cluster and node the chart test runs on, and what differs between the two paths."""

    tools: KubeTools
    node: str
    domain: str  # the node's polca.dev/power-domain label: the test's policy selects it
    image: str  # what the workload pods run
    helm_args: tuple[str, ...]  # values and settings for helm install/upgrade
    gpu_state: GpuState
    gpu_annotation: str | None  # fake GPUs by this pod annotation; None: nvidia.com/gpu requests
    logs: Path  # where the test leaves what it saw
    keep_logs: Callable[[], None] = field(default=lambda: None)


# --- selection, pure ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExistingClusterConfig:
    kubeconfig: Path
    node: str | None
    image: str
    node_exec: tuple[str, ...]


def existing_cluster_config(env: Mapping[str, str]) -> ExistingClusterConfig | None:
    """The existing cluster to test, from the environment; None: start the local node."""
    raw = env.get(E2E_KUBECONFIG, "").strip()
    if not raw:
        return None
    kubeconfig = Path(raw).expanduser()
    if not kubeconfig.is_file():
        raise TargetError(f"{E2E_KUBECONFIG}={raw}: no such file (kind get kubeconfig > FILE)")
    provider = env.get("KIND_EXPERIMENTAL_PROVIDER", "").strip() or "docker"
    node_exec = tuple(shlex.split(env.get(E2E_NODE_EXEC, "").strip() or f"{provider} exec"))
    image = env.get(E2E_IMAGE, "").strip() or DEFAULT_IMAGE
    split_image(image)  # refuse a malformed reference now, not at helm install
    return ExistingClusterConfig(kubeconfig, env.get(E2E_NODE, "").strip() or None, image,
                                 node_exec)  # fmt: skip


def split_image(reference: str) -> tuple[str, str]:
    """`registry:5000/team/polca:dev` → (`registry:5000/team/polca`, `dev`); no tag: `latest`."""
    if not reference or any(c.isspace() for c in reference) or "@" in reference:
        raise TargetError(f"{E2E_IMAGE}={reference!r}: want repository[:tag], no digest")
    repository, _, tag = reference.rpartition(":")
    if not repository or "/" in tag:  # no colon, or the colon belongs to a registry port
        return reference, "latest"
    return repository, tag


def pick_node(nodes: Mapping[str, Any], wanted: str | None) -> tuple[str, str]:
    """(name, power domain) of the node to watch, from `kubectl get nodes -o json`."""
    labels = {
        item["metadata"]["name"]: item["metadata"].get("labels") or {}
        for item in nodes.get("items") or ()
    }
    gpu_nodes = sorted(n for n, lb in labels.items() if lb.get(GPU_NODE_LABEL) == "true")
    if wanted is None:
        if not gpu_nodes:
            raise TargetError(
                f"no node is labelled {GPU_NODE_LABEL}=true (the chart's daemon runs only "
                "there; deploy/kind/cluster.yaml labels the workers)"
            )
        wanted = gpu_nodes[0]
    elif wanted not in gpu_nodes:
        raise TargetError(f"{E2E_NODE}={wanted}: not a node labelled {GPU_NODE_LABEL}=true "
                          f"(those are: {', '.join(gpu_nodes) or 'none'})")  # fmt: skip
    domain = labels[wanted].get(DOMAIN_LABEL)
    if not domain:
        raise TargetError(f"node {wanted} has no {DOMAIN_LABEL} label: "
                          f"kubectl label node {wanted} {DOMAIN_LABEL}=row-a")  # fmt: skip
    return wanted, domain


def kind_helm_args(image: str) -> tuple[str, ...]:
    """Helm arguments for an existing cluster: `make kind-deploy`'s values and image, without
    the example policy (the test applies its own)."""
    repository, tag = split_image(image)
    return ("-f", str(KIND_VALUES), "--set", f"image.repository={repository},image.tag={tag}",
            "--set", "examplePolicy.enabled=false")  # fmt: skip


def fake_gpu_settings(values_files: Sequence[Path]) -> tuple[str, str | None]:
    """(state file on the node, pod annotation or None) of the fake GPUs under these values."""
    state_dir, annotation = "", ""
    for path in (CHART_VALUES, *values_files):
        fake = (yaml.safe_load(path.read_text()) or {}).get("fakeGpu") or {}
        state_dir = fake.get("stateDir", state_dir)
        annotation = fake.get("annotation", annotation)
    if not state_dir:
        raise TargetError("fakeGpu.stateDir is empty: the test reads the fake GPUs' state there")
    return f"{state_dir.rstrip('/')}/state.json", annotation or None


@dataclass(frozen=True)
class LocalGpuState:
    """The state file of fake GPUs on this machine's real node."""

    path: Path

    def read(self) -> dict[str, Any]:
        return read_fake_state(self.path)


# --- an existing cluster (kind) -----------------------------------------------------------------


@dataclass(frozen=True)
class KubeconfigTools(KubectlHelm):
    """kubectl and helm with a kubeconfig (helm's caches in `state_dir`)."""

    config_file: Path
    kubectl_bin: Path
    helm_bin: Path
    state_dir: Path

    @property
    def kubeconfig(self) -> Path:
        return self.config_file

    @property
    def helm_home(self) -> Path:
        return self.state_dir

    def tool_path(self, tool: str) -> Path:
        return self.helm_bin if tool == "helm" else self.kubectl_bin


@dataclass(frozen=True)
class NodeExecGpuState:
    """Reads the state file inside the node (a kind node is a container: `docker exec`)."""

    node_exec: tuple[str, ...]
    node: str
    path: str

    def read(self) -> dict[str, Any]:
        try:
            argv = [*self.node_exec, self.node, "cat", self.path]
            got = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
            data = json.loads(got.stdout) if got.returncode == 0 else {}
        except (OSError, subprocess.TimeoutExpired, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def _tool(name: str) -> Path:
    """kubectl or helm: $POLCA_CONTROL_PLANE_BIN's, else the one on PATH, else the pinned build."""
    if os.environ.get("POLCA_CONTROL_PLANE_BIN", "").strip() or not shutil.which(name):
        return find_bin_dir() / name
    return Path(shutil.which(name) or name)


def existing_cluster_target(config: ExistingClusterConfig, work_dir: Path) -> Target:
    """The target for an existing cluster; raises TargetError when it cannot serve."""
    tools = KubeconfigTools(config.kubeconfig, _tool("kubectl"), _tool("helm"), work_dir / "helm")
    nodes = tools.kubectl("get", "nodes", "-o", "json", check=False)
    if nodes.returncode != 0:
        raise TargetError(f"{E2E_KUBECONFIG}={config.kubeconfig}: {nodes.stderr.strip()}")
    node, domain = pick_node(json.loads(nodes.stdout), config.node)
    if tools.kubectl("get", "namespace", NAMESPACE, check=False).returncode == 0:
        raise TargetError(
            f"namespace {NAMESPACE} exists (POLCA installed, e.g. by make kind-deploy?): the "
            f"test installs and removes its own release; first: helm uninstall polca -n "
            f"{NAMESPACE} && kubectl delete namespace {NAMESPACE}"
        )
    state_file, annotation = fake_gpu_settings([KIND_VALUES])
    logs = work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return Target(
        tools=tools,
        node=node,
        domain=domain,
        image=config.image,
        helm_args=kind_helm_args(config.image),
        gpu_state=NodeExecGpuState(config.node_exec, node, state_file),
        gpu_annotation=annotation,
        logs=logs,
    )
