"""The chart installed for real on a real node: what a user does in kind, done here or in kind.

`helm install` with the project's image (imported into the node's containerd) and fake GPUs
that a fake NVIDIA device plugin hands to pods; the operator and the daemon run as pods with
their service-account tokens, probes and securityContext. Workload pods (high, low, training)
request GPUs; a PowerPolicy throttles the GPUs of the low tier only; `helm upgrade` rolls the
DaemonSet without lifting a cap; `helm uninstall` restores every GPU. What the GPUs have is read
from the fake GPUs' own state file on the node, not from POLCA's reports.

By default the node is started here (`make e2e`); with POLCA_E2E_KUBECONFIG the test runs on
that cluster instead, e.g. kind with the image loaded (`make kind-e2e`), with the same values
and without a device plugin (polca_testbed.e2e_target says what differs).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from polca_testbed import e2e_target
from polca_testbed.cluster import Cluster
from polca_testbed.containers import IMAGE
from polca_testbed.default_clocks import applied_ceiling_mhz
from polca_testbed.processes import free_port, wait_until
from polca_testbed.real_node import RealNode

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "polca"
VALUES = (REPO / "deploy" / "kind" / "values.yaml", REPO / "deploy" / "real-node" / "values.yaml")
NAMESPACE = "polca-system"
RELEASE = "polca"
# Stage 1 of the default (GPU-relative) policy on the chart's fake GPUs (H100-SXM).
LOW_CLOCK_MHZ = applied_ceiling_mhz("stage1", "low", "H100-SXM")
# Workloads: name → (GPUs, labels, priority class)
WORKLOADS: dict[str, tuple[int, dict[str, str], str | None]] = {
    "llm-high": (2, {}, None),
    "llm-low": (2, {}, "polca-e2e-low"),
    "trainer": (2, {"training.kubeflow.org/job-name": "trainer"}, None),
}


def policy(domain: str) -> dict[str, Any]:
    """Stage `throttle` as soon as the row draws anything: the low tier (priority < 0 and
    training) and idle GPUs get a clock ceiling, the high tier keeps its clocks."""
    return {
        "apiVersion": "polca.dev/v1alpha1", "kind": "PowerPolicy",
        "metadata": {"name": "e2e-row"},
        "spec": {
            "nodeSelector": {"matchLabels": {"polca.dev/power-domain": domain}},
            "budgetWatts": 1000,
            "settleSeconds": 1,
            "failsafeStage": "throttle",
            "stages": [
                {"name": "normal"},
                {"name": "throttle", "triggerPercent": 1, "releasePercent": 0.5, "actions": {
                    "idle": {"clockCeilingMHz": LOW_CLOCK_MHZ},
                    "low": {"clockCeilingMHz": LOW_CLOCK_MHZ}}},
            ],
        },
    }  # fmt: skip


def workload(
    target: e2e_target.Target, name: str, gpus: int, labels: dict[str, str], priority: str | None
) -> dict[str, Any]:
    """A pod on the target node holding `gpus` fake GPUs: requested from the device plugin, or
    by annotation where none runs (kind)."""
    container: dict[str, Any] = {
        "name": "server", "image": target.image, "imagePullPolicy": "Never",
        "command": ["sleep", "3600"],
    }  # fmt: skip
    annotations = {}
    if target.gpu_annotation:
        annotations[target.gpu_annotation] = str(gpus)
    else:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    spec: dict[str, Any] = {
        "hostNetwork": True, "terminationGracePeriodSeconds": 0, "containers": [container],
        "nodeSelector": {"kubernetes.io/hostname": target.node},
    }  # fmt: skip
    if priority:
        spec["priorityClassName"] = priority
    return {"apiVersion": "v1", "kind": "Pod", "spec": spec,
            "metadata": {"name": name, "namespace": "default", "labels": labels,
                         "annotations": annotations}}  # fmt: skip


def ceilings(state: e2e_target.GpuState) -> dict[str, int | None]:
    """uuid → the clock ceiling the fake GPU has now (None: unlocked)."""
    return {g["uuid"]: g.get("clock_ceiling_mhz") for g in state.read().get("gpus", [])}


def gpu_owners(cluster: e2e_target.KubeTools, node: str) -> dict[str, str]:
    """uuid → pod name, from the daemon's NodePowerState (which read the kubelet)."""
    got = cluster.kubectl("get", "nodepowerstate", node, "-o", "json", check=False)
    if got.returncode != 0:
        return {}
    gpus = (json.loads(got.stdout).get("status") or {}).get("gpus") or []
    return {g["uuid"]: g["pod"]["name"] for g in gpus if g.get("pod")}


def daemon_pod_uids(cluster: e2e_target.KubeTools) -> set[str]:
    selector = "app.kubernetes.io/component=node-daemon"
    got = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", selector, "-o",
                          "jsonpath={.items[*].metadata.uid}")  # fmt: skip
    return set(got.stdout.split())


def helm_args(node: RealNode, cluster: Cluster) -> list[str]:
    api_env = json.dumps(
        [
            {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(cluster.api_port)},
        ]
    )
    # No kube-proxy runs, so the `kubernetes` Service's cluster IP leads nowhere: pods on the
    # host network reach the API server where it listens, on loopback.
    return [
        *(arg for f in VALUES for arg in ("-f", str(f))),
        "--set", f"node.podResourcesSocket={node.pod_resources_socket}",
        "--set", f"fakeGpu.stateDir={node.state_dir / 'fake-gpus'}",
        "--set", f"node.metricsPort={free_port()}",
        "--set", f"operator.metricsPort={free_port()}",
        "--set-json", f"operator.extraEnv={api_env}",
        "--set-json", f"node.extraEnv={api_env}",
        "--set-json", f"restoreOnUninstall.extraEnv={api_env}",
    ]  # fmt: skip


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> e2e_target.Target:
    """The cluster POLCA_E2E_KUBECONFIG names (`make kind-e2e`), else the real node started
    here (`make e2e`) with the fake device plugin handing out its GPUs."""
    try:
        existing = e2e_target.existing_cluster_config(os.environ)
        if existing is not None:
            return e2e_target.existing_cluster_target(existing, tmp_path)
    except e2e_target.TargetError as exc:
        pytest.fail(str(exc))
    real_node: RealNode = request.getfixturevalue("real_node")
    cluster: Cluster = request.getfixturevalue("node_cluster")
    request.getfixturevalue("gpu_node")
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)
    return e2e_target.Target(
        tools=cluster,
        node=real_node.name,
        domain=e2e_target.pick_node(nodes, real_node.name)[1],
        image=IMAGE,
        helm_args=tuple(helm_args(real_node, cluster)),
        gpu_state=e2e_target.LocalGpuState(real_node.state_dir / "fake-gpus" / "state.json"),
        gpu_annotation=None,
        logs=real_node.logs,
        keep_logs=real_node.keep_pod_logs,
    )


@pytest.fixture
def release(target: e2e_target.Target) -> Iterator[list[str]]:
    kubectl = target.tools.kubectl
    kubectl("create", "namespace", NAMESPACE)
    kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=privileged")
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": "polca-e2e-low"}, "value": -10}))  # fmt: skip
    args = list(target.helm_args)
    try:
        yield args
    finally:
        # What the cluster looked like, kept beside the node's logs for whoever reads a failure.
        dump = [kubectl(*a, check=False).stdout for a in (
            ("get", "all,nodepowerstates,powerpolicies", "-A", "-o", "wide"),
            ("describe", "daemonsets,deployments,pods", "-n", NAMESPACE),
            ("get", "events", "-A", "--sort-by=.lastTimestamp"))]  # fmt: skip
        (target.logs / "cluster-state.txt").write_text("\n".join(dump))
        target.keep_logs()
        for name in WORKLOADS:
            kubectl("delete", "pod", name, "--ignore-not-found", "--wait=true", "--timeout=60s",
                    check=False, timeout_s=70)  # fmt: skip
        if target.tools.helm("status", RELEASE, "-n", NAMESPACE, check=False).returncode == 0:
            target.tools.helm("uninstall", RELEASE, "-n", NAMESPACE, "--no-hooks", "--wait",
                              check=False, timeout_s=180)  # fmt: skip
        kubectl("delete", "namespace", NAMESPACE, "--wait=true", "--timeout=120s", check=False,
                timeout_s=130)  # fmt: skip


class CapWatch:
    """Samples the fake GPUs' ceilings in the background; remembers any lifted cap."""

    def __init__(self, state_file: e2e_target.GpuState, capped: set[str]) -> None:
        self._state_file, self._capped = state_file, capped
        self.lifted: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            now = ceilings(self._state_file)
            self.samples += 1
            self.lifted += [u for u in self._capped if now.get(u) != LOW_CLOCK_MHZ]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_install_throttle_upgrade_uninstall(release: list[str], target: e2e_target.Target) -> None:
    started = time.monotonic()
    helm, kubectl = target.tools.helm, target.tools.kubectl
    helm("install", RELEASE, str(CHART), "-n", NAMESPACE, *release, "--wait", "--timeout=4m",
         timeout_s=260)  # fmt: skip
    for name, (gpus, labels, priority) in WORKLOADS.items():
        pod = workload(target, name, gpus, labels, priority)
        kubectl("apply", "-f", "-", input=json.dumps(pod))
    for name in WORKLOADS:
        kubectl("wait", f"pod/{name}", "--for=condition=Ready", "--timeout=120s", timeout_s=130)

    kubectl("apply", "-f", "-", input=json.dumps(policy(target.domain)))
    # The daemon learns who holds which GPU through the kubelet's PodResources socket.
    owners: dict[str, str] = {}

    def owners_known() -> bool:
        owners.update(gpu_owners(target.tools, target.node))
        return set(owners.values()) == set(WORKLOADS)

    wait_until(owners_known, timeout_s=90, what="NodePowerState naming every workload's GPUs")
    state_file = target.gpu_state
    high = {u for u, pod in owners.items() if pod == "llm-high"}
    capped = set(ceilings(state_file) or owners) - high  # low, training and idle GPUs

    def throttled() -> bool:
        now = ceilings(state_file)
        return bool(now) and all(now[u] == LOW_CLOCK_MHZ for u in capped) and all(
            now[u] is None for u in high)  # fmt: skip

    wait_until(throttled, timeout_s=90, what="low-tier and idle GPUs at stage 1, high unlocked")

    # A rolling restart of every daemon pod: no sample may see a cap lifted.
    before = daemon_pod_uids(target.tools)
    watch = CapWatch(state_file, capped)
    try:
        upgraded = helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, *release,
                        "--set-string", f"node.podAnnotations.polca\\.dev/rolled={time.time_ns()}",
                        "--wait", "--timeout=4m", check=False, timeout_s=260)  # fmt: skip
        assert upgraded.returncode == 0, upgraded.stderr
        after = daemon_pod_uids(target.tools)
        assert after, "no daemon pod after the upgrade"
        assert not after & before, "the DaemonSet did not roll"
        wait_until(lambda: bool(gpu_owners(target.tools, target.node)), timeout_s=60,
                   what="the new daemon reporting")  # fmt: skip
    finally:
        watch.stop()
    assert watch.samples > 10
    assert not watch.lifted, f"caps lifted during the rollout: {sorted(set(watch.lifted))}"

    # Uninstall: the hook deletes the policy, the operator's finalizer restores the GPUs.
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout=4m", timeout_s=260)
    now = ceilings(state_file)
    assert now, "the fake GPUs' state file is gone"
    assert all(c is None for c in now.values()), now
    (target.logs / "chart-e2e-seconds.txt").write_text(f"{time.monotonic() - started:.1f}\n")
