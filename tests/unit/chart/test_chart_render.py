"""What the chart renders, checked object by object (helm template; no cluster)."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from polca.options import DEFAULT_DAEMON_METRICS_PORT

REPO_ROOT = Path(__file__).resolve().parents[3]
DCGM_EXPORTER_PORT = 9400
CHART_DIR = REPO_ROOT / "charts" / "polca"
KIND_VALUES = REPO_ROOT / "deploy" / "kind" / "values.yaml"
ALL_FEATURES = CHART_DIR / "ci" / "all-features-values.yaml"
INSTALL_DOC = REPO_ROOT / "docs" / "install.md"

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]

OPTIONAL_KINDS = {
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
    "PodDisruptionBudget",
    "PowerPolicy",
}
# The metric names the issue fixes; docs/install.md may add to them, never drop one.
REQUIRED_METRICS = {
    "polca_domain_power_watts",
    "polca_domain_budget_watts",
    "polca_domain_stage",
    "polca_telemetry_age_seconds",
    "polca_domain_failsafe",
    "polca_node_heartbeat_timestamp_seconds",
    "polca_gpu_write_failures_total",
    "polca_gpu_power_watts",
    "polca_gpu_sm_clock_mhz",
    "polca_gpu_clock_ceiling_mhz",
    "polca_throttled_gpus",
}


def one(objects: Iterable[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    matches = [
        o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)
    ]
    assert len(matches) == 1, f"{kind} *{name_suffix}: {[m['metadata']['name'] for m in matches]}"
    return matches[0]


def the_container(workload: Manifest) -> Manifest:
    containers: list[Manifest] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(workload: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in the_container(workload)["env"]}


def doc_table_first_column(heading: str) -> set[str]:
    """The back-quoted first cells of the markdown table that follows `heading` in install.md."""
    text = INSTALL_DOC.read_text()
    lines = text[text.index(heading) + len(heading) :].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = itertools.takewhile(lambda line: line.startswith("|"), lines[first:])
    rows = {m.group(1) for line in table if (m := re.match(r"^\| `([^`]+)` \|", line))}
    assert rows, f"no table after {heading!r}"
    return rows


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bpolca_[a-z_]+\b", text))


@pytest.fixture(scope="module")
def default(render: Render) -> list[Manifest]:
    return render()


@pytest.fixture(scope="module")
def kind(render: Render) -> list[Manifest]:
    return render([KIND_VALUES])


@pytest.fixture(scope="module")
def everything(render: Render) -> list[Manifest]:
    return render([ALL_FEATURES])


class TestOperator:
    def test_two_replicas_recreated_never_overlapping(self, default: list[Manifest]) -> None:
        deployment = one(default, "Deployment", "-operator")
        assert deployment["spec"]["replicas"] == 2
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        assert the_container(deployment)["command"] == ["polca-operator"]

    def test_environment_is_the_documented_contract(self, default: list[Manifest]) -> None:
        env = env_of(one(default, "Deployment", "-operator"))
        assert set(env) == doc_table_first_column("Operator (`polca-operator`):")
        assert env["POLCA_METRICS_PORT"] == "9401"
        assert env["POLCA_PEERING"] == "polca"
        assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}

    def test_peering_object_is_the_one_the_operator_uses(self, default: list[Manifest]) -> None:
        peering = one(default, "ClusterKopfPeering")
        assert peering["apiVersion"] == "kopf.dev/v1"
        assert env_of(one(default, "Deployment"))["POLCA_PEERING"] == peering["metadata"]["name"]

    def test_liveness_probe_and_restrictive_security(self, default: list[Manifest]) -> None:
        deployment = one(default, "Deployment", "-operator")
        operator = the_container(deployment)
        assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert {p["name"]: p["containerPort"] for p in operator["ports"]} == {"metrics": 9401}
        security = operator["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] != 0
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert operator["resources"]["requests"]
        assert operator["resources"]["limits"]["memory"]


class TestNodeDaemon:
    def test_runs_on_gpu_nodes_only(self, default: list[Manifest]) -> None:
        pod = one(default, "DaemonSet", "-node")["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
        assert "runtimeClassName" not in pod

    def test_runtime_class_is_optional(self, render: Render) -> None:
        objects = render(set_values={"node.runtimeClassName": "nvidia"})
        pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
        assert pod["runtimeClassName"] == "nvidia"

    def test_updates_never_uncap(self, default: list[Manifest]) -> None:
        daemonset = one(default, "DaemonSet", "-node")
        assert daemonset["spec"]["updateStrategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 1},
        }
        # No preStop hook (nor any lifecycle hook) may restore defaults on the way out.
        assert "lifecycle" not in the_container(daemonset)

    def test_pod_resources_mounted_read_only(self, default: list[Manifest]) -> None:
        daemonset = one(default, "DaemonSet", "-node")
        mounts = {m["name"]: m for m in the_container(daemonset)["volumeMounts"]}
        assert mounts["pod-resources"] == {
            "name": "pod-resources",
            "readOnly": True,
            "mountPath": "/var/lib/kubelet/pod-resources",
        }
        volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
        assert volumes["pod-resources"]["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"

    def test_checkpoint_in_a_node_directory(self, default: list[Manifest], render: Render) -> None:
        # Safety rule 8: the checkpoint outlives the pod, so a restart during an API outage
        # resumes the guard from it.
        daemonset = one(default, "DaemonSet", "-node")
        assert env_of(daemonset)["POLCA_STATE_DIR"] == "/var/lib/polca/node"
        mounts = {m["name"]: m for m in the_container(daemonset)["volumeMounts"]}
        assert mounts["state"] == {"name": "state", "mountPath": "/var/lib/polca/node"}
        volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
        assert volumes["state"]["hostPath"] == {
            "path": "/var/lib/polca/node",
            "type": "DirectoryOrCreate",
        }
        off = one(render(set_values={"node.stateDir": ""}), "DaemonSet")
        assert "POLCA_STATE_DIR" not in env_of(off)
        assert "state" not in {v["name"] for v in off["spec"]["template"]["spec"]["volumes"]}

    def test_environment_is_the_documented_contract(self, default: list[Manifest]) -> None:
        env = env_of(one(default, "DaemonSet", "-node"))
        documented = doc_table_first_column("Node daemon (`polca-node`):")
        fake_only = {"POLCA_FAKE_PROFILE", "POLCA_FAKE_GPU_ANNOTATION", "POLCA_FAKE_STATE"}
        nvml_only = {"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"}
        assert set(env) == (documented - fake_only) | nvml_only
        assert env["POLCA_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        assert env["POLCA_EVENT_NAMESPACE"] == "default"
        assert env["POLCA_POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert env["POLCA_GPU_BACKEND"] == "nvml"
        assert env["POLCA_PODRESOURCES_SOCKET"] == "/var/lib/kubelet/pod-resources/kubelet.sock"
        assert (env["POLCA_METRICS_PORT"], env["POLCA_GUARD_PERIOD_S"]) == ("9402", "0.5")
        assert env["POLCA_NVML_LATENCY_METRICS"] == "false"  # ~300 series per node: opt-in

    def test_metrics_port_is_the_programs_default_and_not_dcgm_exporters(
        self, default: list[Manifest]
    ) -> None:
        """dcgm-exporter (GPU Operator clusters) holds 9400 on every GPU node."""
        node_port = env_of(one(default, "DaemonSet", "-node"))["POLCA_METRICS_PORT"]
        operator_env = env_of(one(default, "Deployment", "-operator"))
        assert node_port == operator_env["POLCA_DAEMON_METRICS_PORT"]
        assert int(node_port) == DEFAULT_DAEMON_METRICS_PORT != DCGM_EXPORTER_PORT

    def test_nvml_needs_sys_admin_and_nothing_else(self, default: list[Manifest]) -> None:
        security = the_container(one(default, "DaemonSet", "-node"))["securityContext"]
        assert security["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
        assert security["runAsUser"] == 0
        assert security.get("privileged", False) is False
        assert security["readOnlyRootFilesystem"] is True

    def test_privileged_only_on_request(self, render: Render) -> None:
        daemonset = one(render(set_values={"node.privileged": "true"}), "DaemonSet")
        assert the_container(daemonset)["securityContext"]["privileged"] is True

    def test_fake_gpus_for_kind(self, kind: list[Manifest]) -> None:
        daemonset = one(kind, "DaemonSet", "-node")
        env = env_of(daemonset)
        assert env["POLCA_GPU_BACKEND"] == "fake"
        assert env["POLCA_FAKE_PROFILE"] == "H100-SXM:8"
        assert env["POLCA_FAKE_GPU_ANNOTATION"] == "polca.dev/fake-gpus"
        assert env["POLCA_FAKE_STATE"] == "/var/lib/polca/fake-gpus/state.json"
        assert "NVIDIA_VISIBLE_DEVICES" not in env
        assert "POLCA_PODRESOURCES_SOCKET" not in env
        assert the_container(daemonset)["image"] == "polca:dev"
        # Fake GPUs are unknown to the kubelet: no PodResources socket. Their settings survive
        # restarts in a node directory, written as root without any capability.
        volumes = daemonset["spec"]["template"]["spec"]["volumes"]
        assert [v["hostPath"]["path"] for v in volumes if "hostPath" in v] == [
            "/var/lib/polca/fake-gpus",
            "/var/lib/polca/node",  # the daemon's checkpoint, as on real GPU nodes
        ]
        assert env["POLCA_STATE_DIR"] == "/var/lib/polca/node"
        security = the_container(daemonset)["securityContext"]
        assert security["runAsUser"] == 0
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["allowPrivilegeEscalation"] is False

    def test_fake_gpus_without_state_run_unprivileged(self, render: Render) -> None:
        daemonset = one(render([KIND_VALUES], {"fakeGpu.stateDir": ""}), "DaemonSet")
        assert "hostPath" not in json.dumps(daemonset)
        assert "POLCA_FAKE_STATE" not in env_of(daemonset)
        security = the_container(daemonset)["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}


class TestOptionalParts:
    def test_off_by_default(self, default: list[Manifest]) -> None:
        kinds = {o["kind"] for o in default}
        assert not kinds & OPTIONAL_KINDS
        assert not [o for o in default if o["metadata"]["name"].endswith("-dashboard")]

    def test_all_on(self, everything: list[Manifest]) -> None:
        kinds = [o["kind"] for o in everything]
        assert kinds.count("ServiceMonitor") == 2
        assert kinds.count("PodMonitor") == 0  # mutually exclusive with the ServiceMonitor
        assert {"PrometheusRule", "PodDisruptionBudget", "PowerPolicy"} <= set(kinds)
        node_monitor = one(everything, "ServiceMonitor", "-node")
        assert node_monitor["spec"]["endpoints"][0]["interval"] == "5s"
        assert node_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    def test_monitors_keep_the_workloads_labels(
        self, everything: list[Manifest], render: Render
    ) -> None:
        pods = render([CHART_DIR / "ci" / "podmonitor-values.yaml"])
        assert [o["kind"] for o in pods].count("PodMonitor") == 2
        assert "ServiceMonitor" not in {o["kind"] for o in pods}
        endpoints = [e for o in everything if o["kind"] == "ServiceMonitor"
                     for e in o["spec"]["endpoints"]]  # fmt: skip
        endpoints += [e for o in pods if o["kind"] == "PodMonitor"
                      for e in o["spec"]["podMetricsEndpoints"]]  # fmt: skip
        assert len(endpoints) == 4
        assert all(e["honorLabels"] is True for e in endpoints)

    def test_alerts_cover_the_failure_modes(self, everything: list[Manifest]) -> None:
        rules = one(everything, "PrometheusRule")["spec"]["groups"][0]["rules"]
        assert {r["alert"] for r in rules} == {
            "PolcaDomainAboveBudget",
            "PolcaTelemetryStale",
            "PolcaNodeHeartbeatMissing",
            "PolcaGpuWriteFailures",
            "PolcaFailsafeEngaged",
            "PolcaPolicyUnreadable",
            "PolcaGpuOwnersUnknown",
        }
        for rule in rules:
            assert "{{ $labels." in rule["annotations"]["summary"], rule["alert"]

    def test_alerts_and_dashboard_use_only_contract_metrics(
        self, everything: list[Manifest]
    ) -> None:
        contract = doc_table_first_column("| metric | type | labels | from | meaning |")
        assert contract >= REQUIRED_METRICS
        rules = one(everything, "PrometheusRule")["spec"]["groups"][0]["rules"]
        dashboard = json.loads(one(everything, "ConfigMap", "-dashboard")["data"]["polca.json"])
        used_by_rules = metric_names(" ".join(r["expr"] for r in rules))
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        used_by_dashboard = metric_names(" ".join(exprs))
        assert used_by_rules <= contract
        assert used_by_dashboard <= contract
        # The dashboard shows every metric of the contract except the failure counter's rate
        # (it does), i.e. all of them.
        assert used_by_dashboard == contract

    def test_example_policy(self, everything: list[Manifest]) -> None:
        policy = one(everything, "PowerPolicy")
        assert policy["apiVersion"] == "polca.dev/v1alpha1"
        assert policy["spec"]["budgetWatts"] == 40000
        assert policy["spec"]["nodeSelector"] == {
            "matchLabels": {"polca.dev/power-domain": "row-a"}
        }


class TestEveryObject:
    @pytest.mark.parametrize(
        "values", [[], [KIND_VALUES], [ALL_FEATURES]], ids=["default", "kind", "all-features"]
    )
    def test_labelled_and_placed(self, render: Render, values: list[Path]) -> None:
        for obj in render(values):
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/instance"] == "polca", obj["metadata"]["name"]
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
            assert obj["metadata"]["name"].startswith("polca") or obj["kind"] == "PowerPolicy"

    def test_no_object_reads_secrets(self, everything: list[Manifest]) -> None:
        for role in (o for o in everything if o["kind"] in {"ClusterRole", "Role"}):
            for rule in role["rules"]:
                assert "secrets" not in rule["resources"], role["metadata"]["name"]
                assert "*" not in rule["resources"] + rule["verbs"], role["metadata"]["name"]


class TestRestoreHook:
    def test_runs_before_anything_is_deleted(self, default: list[Manifest]) -> None:
        hooks = [o for o in default if o["metadata"].get("annotations", {}).get("helm.sh/hook")]
        assert {o["kind"] for o in hooks} == {
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Job",
        }
        assert all(o["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete" for o in hooks)
        weights = {
            o["kind"]: int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in hooks
        }
        assert weights["Job"] > max(w for k, w in weights.items() if k != "Job")

    def test_set_up_objects_do_not_outlive_a_failed_uninstall(
        self, default: list[Manifest]
    ) -> None:
        """The hook's account may delete every PowerPolicy: gone whether the hook fails or not;
        the failed Job alone stays, for its logs."""
        hooks = [o for o in default if o["metadata"].get("annotations", {}).get("helm.sh/hook")]
        for hook in hooks:
            policy = set(hook["metadata"]["annotations"]["helm.sh/hook-delete-policy"].split(","))
            assert {"before-hook-creation", "hook-succeeded"} <= policy, hook["kind"]
            assert ("hook-failed" in policy) is (hook["kind"] != "Job"), hook["kind"]

    def test_job_runs_the_shipped_script(self, default: list[Manifest]) -> None:
        job = one(default, "Job", "-restore")
        script = one(default, "ConfigMap", "-restore")["data"]["restore_on_uninstall.py"]
        assert script == (CHART_DIR / "files" / "restore_on_uninstall.py").read_text().rstrip("\n")
        command = the_container(job)["command"]
        assert command[:2] == ["python", "/opt/polca/hooks/restore_on_uninstall.py"]
        assert command[2:] == ["--timeout-s", "240"]
        assert job["spec"]["backoffLimit"] == 0

    def test_can_be_turned_off(self, render: Render) -> None:
        objects = render(set_values={"restoreOnUninstall.enabled": "false"})
        assert not [o for o in objects if "restore" in o["metadata"]["name"]]


class TestCrds:
    def test_chart_crds_are_the_generated_ones(self) -> None:
        top = {p.name: p.read_text() for p in (REPO_ROOT / "crds").glob("*.yaml")}
        chart = {p.name: p.read_text() for p in (CHART_DIR / "crds").glob("*.yaml")}
        assert top, "crds/ is empty: run `make crds`"
        assert chart == top, "charts/polca/crds/ differs from crds/: run `make crds`"

    def test_kopf_peering_crd_ships_in_the_subchart(self, helm_template: Any) -> None:
        with_crds = helm_template(extra=["--include-crds"])
        without = helm_template(
            set_values={"operator.peering.installCRD": "false"}, extra=["--include-crds"]
        )
        assert with_crds.returncode == 0, with_crds.stderr
        assert without.returncode == 0, without.stderr
        names = [
            d["metadata"]["name"]
            for d in yaml.safe_load_all(with_crds.stdout)
            if d and d["kind"] == "CustomResourceDefinition"
        ]
        assert "clusterkopfpeerings.kopf.dev" in names
        assert "clusterkopfpeerings.kopf.dev" not in without.stdout
        # The peering object itself stays: another Kopf operator may have installed the CRD.
        assert "kind: ClusterKopfPeering" in without.stdout
