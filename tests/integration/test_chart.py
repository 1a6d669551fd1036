"""The Helm chart on a real kube-apiserver: lint, server-side dry runs, install, upgrade, uninstall.

No kubelet or controller runs here, so these tests assert on objects, never on pods. Where the
chart's uninstall hook needs a Job to run, the test plays the kubelet: it runs the Job's command
from the Job's own ConfigMap with a real token of the Job's service account, and writes the exit
status into the Job's status as the job controller would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from polca_testbed.cluster import KOPF_PEERING_CRD, POLCA_CRDS, Cluster
from polca_testbed.polling import eventually

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "polca"
KOPF_CRD = CHART / "charts" / "kopf-peering" / "crds" / "clusterkopfpeerings.kopf.dev.yaml"
VALUE_SETS = {
    "default": [],
    "kind": [REPO / "deploy" / "kind" / "values.yaml"],
    "all-features": [CHART / "ci" / "all-features-values.yaml"],
}
MONITORING_KINDS = {
    "ServiceMonitor": "servicemonitors",
    "PodMonitor": "podmonitors",
    "PrometheusRule": "prometheusrules",
}
FINALIZER = "polca.dev/test-restore"  # stands in for the operator's restore finalizer

Names = Callable[[str], str]
Cleanup = Callable[..., None]
Manifest = dict[str, Any]


def get_json(cluster: Cluster, *args: str) -> Manifest:
    result: Manifest = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return result


def exists(cluster: Cluster, *args: str) -> bool:
    return cluster.kubectl("get", *args, "-o", "name", check=False).returncode == 0


def values_args(files: list[Path]) -> list[str]:
    return [arg for path in files for arg in ("-f", str(path))]


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> None:
    """POLCA's CRDs and Kopf's peering CRD, as `helm install` would create them."""
    cluster.install_crds(REPO / "crds", KOPF_CRD, names=[*POLCA_CRDS, KOPF_PEERING_CRD])


@pytest.fixture
def namespace(cluster: Cluster, unique_name: Names) -> Iterator[str]:
    name = unique_name("ns")
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def monitoring_crds(cluster: Cluster) -> Iterator[None]:
    """Minimal stand-ins for the Prometheus Operator's CRDs, for the dry run only.

    The real CRDs are not part of this test cluster; these accept any spec, so the dry run
    proves our objects reach the API server as the kinds they claim, not their field schema.
    """
    names = []
    for kind, plural in MONITORING_KINDS.items():
        crd = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.monitoring.coreos.com"},
            "spec": {
                "group": "monitoring.coreos.com",
                "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "x-kubernetes-preserve-unknown-fields": True,
                                    }
                                },
                            }
                        },
                    }
                ],
            },
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(crd))
        names.append(f"crd/{plural}.monitoring.coreos.com")
    cluster.wait_crds_established(names)
    yield
    cluster.kubectl("delete", *names, check=False)


# --- lint, render, dry run ------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_strict(cluster: Cluster, values: list[Path]) -> None:
    result = cluster.helm("lint", "--strict", str(CHART), *values_args(values), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.usefixtures("crds", "monitoring_crds")
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_objects_pass_server_side_dry_run(
    cluster: Cluster, namespace: str, values: list[Path]
) -> None:
    rendered = cluster.helm(
        "template", "polca", str(CHART), "-n", namespace, *values_args(values)
    ).stdout
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered) if doc}
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    assert result.returncode == 0, result.stderr
    applied = [line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(applied) == rendered.count("\nkind: ") + rendered.startswith("kind: ")
    assert {
        "Deployment",
        "DaemonSet",
        "ValidatingAdmissionPolicy",
        "ClusterKopfPeering",
        "Job",
    } <= kinds


KIND_ARGS = values_args(VALUE_SETS["kind"])
POD_SECURITY_CASES = {
    # id: (helm args, component, Pod Security level, what it violates; [] = admitted)
    "operator-restricted": ([], "operator", "restricted", []),
    "stateless-fake-daemon-restricted": (
        [*KIND_ARGS, "--set", "fakeGpu.stateDir="],
        "node-daemon",
        "restricted",
        [],
    ),
    "fake-daemon-restricted": (KIND_ARGS, "node-daemon", "restricted", ["hostPath"]),
    "fake-daemon-privileged": (KIND_ARGS, "node-daemon", "privileged", []),
    "nvml-daemon-restricted": ([], "node-daemon", "restricted", ["SYS_ADMIN", "hostPath"]),
    "nvml-daemon-privileged": ([], "node-daemon", "privileged", []),
}


@pytest.mark.usefixtures("crds")
@pytest.mark.parametrize(
    ("helm_args", "component", "pod_security", "violations"),
    POD_SECURITY_CASES.values(),
    ids=POD_SECURITY_CASES.keys(),
)
def test_pod_templates_meet_pod_security(
    cluster: Cluster,
    namespace: str,
    helm_args: list[str],
    component: str,
    pod_security: str,
    violations: list[str],
) -> None:
    """Each workload's pod, bound to a node, against the namespace's Pod Security level."""
    cluster.kubectl(
        "label", "namespace", namespace, f"pod-security.kubernetes.io/enforce={pod_security}"
    )
    rendered = cluster.helm("template", "polca", str(CHART), "-n", namespace, *helm_args).stdout
    workload = next(
        doc
        for doc in yaml.safe_load_all(rendered)
        if doc
        and doc["kind"] in {"Deployment", "DaemonSet"}
        and doc["metadata"]["labels"]["app.kubernetes.io/component"] == component
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "probe",
            "namespace": namespace,
            "labels": workload["spec"]["template"]["metadata"]["labels"],
        },
        "spec": {**workload["spec"]["template"]["spec"], "nodeName": "gpu-node"},
    }
    result = cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False
    )
    assert (result.returncode == 0) is (not violations), result.stderr
    if violations:
        assert "violates PodSecurity" in result.stderr
        assert all(violation in result.stderr for violation in violations), result.stderr


def test_bad_values_fail_helm_install(cluster: Cluster, unique_name: Names) -> None:
    release = unique_name("bad")
    result = cluster.helm(
        "install",
        release,
        str(CHART),
        "-n",
        "default",
        "--set",
        "node.guardPeriodSeconds=5",
        check=False,
    )
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert "/node/guardPeriodSeconds" in result.stderr
    assert cluster.helm("status", release, "-n", "default", check=False).returncode != 0


# --- install, upgrade, uninstall ------------------------------------------------------------


def release_objects(namespace: str, release: str) -> list[tuple[str, ...]]:
    """`kubectl get` arguments of every object a default install creates (hooks aside)."""
    full = f"{release}-polca"
    namespaced: list[tuple[str, str]] = [
        ("deployment", f"{full}-operator"),
        ("daemonset", f"{full}-node"),
        ("serviceaccount", f"{full}-operator"),
        ("serviceaccount", f"{full}-node"),
        ("service", f"{full}-operator-metrics"),
        ("service", f"{full}-node-metrics"),
    ]
    # Events about cluster-scoped objects are accepted only in `default`: so are the Roles.
    in_default: list[tuple[str, ...]] = [
        ("role", f"{full}-operator-events", "-n", "default"),
        ("rolebinding", f"{full}-node-events", "-n", "default"),
    ]
    cluster_scoped: list[tuple[str, ...]] = [
        ("clusterrole", f"{full}-operator"),
        ("clusterrole", f"{full}-node"),
        ("clusterrolebinding", f"{full}-operator"),
        ("clusterrolebinding", f"{full}-node"),
        ("validatingadmissionpolicy", f"{full}-node-own-nodepowerstate"),
        ("validatingadmissionpolicybinding", f"{full}-node-own-nodepowerstate"),
        ("validatingadmissionpolicy", f"{full}-operator-no-spec-writes"),
        ("validatingadmissionpolicybinding", f"{full}-operator-no-spec-writes"),
        ("clusterkopfpeering", full),
    ]
    with_namespace: list[tuple[str, ...]] = [(k, n, "-n", namespace) for k, n in namespaced]
    return with_namespace + in_default + cluster_scoped


class HookKubelet:
    """Runs the uninstall hook's Job as a kubelet and a job controller would, once it appears."""

    def __init__(self, cluster: Cluster, namespace: str, job: str, workdir: Path) -> None:
        self.cluster, self.namespace, self.job, self.workdir = cluster, namespace, job, workdir
        self.exit_code: int | None = None
        self.output = ""

    def run_when_created(self, timeout_s: float = 60.0) -> None:
        eventually(
            f"job/{self.job}",
            lambda: exists(self.cluster, "job", self.job, "-n", self.namespace),
            timeout_s,
        )
        job = get_json(self.cluster, "job", self.job, "-n", self.namespace)
        started = datetime.now(UTC)
        self._set_status({"startTime": _stamp(started), "active": 1})
        result = subprocess.run(
            self._argv(job),
            env=self._env(job),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        self.exit_code, self.output = result.returncode, result.stdout + result.stderr
        self._report(started, succeeded=result.returncode == 0)

    def _argv(self, job: Manifest) -> list[str]:
        """The container's command, with its ConfigMap mounts materialised locally."""
        pod = job["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        argv = list(container["command"])
        for mount in container["volumeMounts"]:
            local = self.workdir / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            configmap = volumes[mount["name"]]["configMap"]["name"]
            data = get_json(self.cluster, "configmap", configmap, "-n", self.namespace)["data"]
            for key, text in data.items():
                (local / key).write_text(text)
            argv = [arg.replace(mount["mountPath"], str(local)) for arg in argv]
        return [sys.executable if arg == "python" else arg for arg in argv]

    def _env(self, job: Manifest) -> dict[str, str]:
        """A kubeconfig holding a real token of the Job's service account, nothing else."""
        account = job["spec"]["template"]["spec"]["serviceAccountName"]
        token = self.cluster.kubectl(
            "create", "token", account, "-n", self.namespace, "--duration=10m"
        ).stdout.strip()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "hook",
            "clusters": [
                {
                    "name": "c",
                    "cluster": {
                        "server": self.cluster.server,
                        "certificate-authority": str(self.cluster.pki.ca_cert),
                    },
                }
            ],
            "users": [{"name": "hook", "user": {"token": token}}],
            "contexts": [{"name": "hook", "context": {"cluster": "c", "user": "hook"}}],
        }
        path = self.workdir / "kubeconfig"
        path.write_text(json.dumps(config))
        env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
        return {**env, "KUBECONFIG": str(path)}

    def _report(self, started: datetime, *, succeeded: bool) -> None:
        now = _stamp(datetime.now(UTC))
        if succeeded:
            first, final, reason, counts = (
                "SuccessCriteriaMet",
                "Complete",
                "CompletionsReached",
                {"succeeded": 1},
            )
        else:
            first, final, reason, counts = (
                "FailureTarget",
                "Failed",
                "BackoffLimitExceeded",
                {"failed": 1},
            )
        conditions = [
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": reason,
                "lastProbeTime": now,
                "lastTransitionTime": now,
            }
            for kind in (first, final)
        ]
        status = {
            "startTime": _stamp(started),
            "active": 0,
            "ready": 0,
            **counts,
            "conditions": conditions,
        }
        if succeeded:
            status["completionTime"] = now
        self._set_status(status)

    def _set_status(self, status: Manifest) -> None:
        self.cluster.kubectl(
            "patch",
            "job",
            self.job,
            "-n",
            self.namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": status}),
        )


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class BackgroundUninstall:
    """`helm uninstall` in a thread: it blocks while its hook Job runs."""

    def __init__(self, cluster: Cluster, release: str, namespace: str) -> None:
        self._results: list[subprocess.CompletedProcess[str]] = []
        argv = ("uninstall", release, "-n", namespace, "--timeout=120s")
        self._thread = threading.Thread(
            target=lambda: self._results.append(cluster.helm(*argv, check=False, timeout_s=150)),
            daemon=True,
        )
        self._thread.start()

    def result(self) -> subprocess.CompletedProcess[str]:
        self._thread.join(timeout=160)
        assert self._results, "helm uninstall did not finish"
        return self._results[0]


def install(cluster: Cluster, release: str, namespace: str, *args: str) -> None:
    cluster.helm("install", release, str(CHART), "-n", namespace, *args)


@pytest.fixture
def release(cluster: Cluster, unique_name: Names, namespace: str) -> Iterator[str]:
    """A release name, uninstalled without hooks afterwards if a test left it behind."""
    name = unique_name("rel")
    yield name
    if cluster.helm("status", name, "-n", namespace, check=False).returncode == 0:
        cluster.helm("uninstall", name, "-n", namespace, "--no-hooks", check=False)


@pytest.mark.slow
@pytest.mark.usefixtures("crds")
def test_install_upgrade_uninstall(
    cluster: Cluster, namespace: str, release: str, tmp_path: Path
) -> None:
    install(cluster, release, namespace)
    for args in release_objects(namespace, release):
        assert exists(cluster, *args), args
    daemonset = f"{release}-polca-node"
    assert get_json(cluster, "daemonset", daemonset, "-n", namespace)["metadata"]["generation"] == 1

    cluster.helm(
        "upgrade",
        release,
        str(CHART),
        "-n",
        namespace,
        "--reuse-values",
        "--set-json",
        "node.guardPeriodSeconds=0.25",
        "--set",
        "operator.replicas=3",
    )
    upgraded = get_json(cluster, "daemonset", daemonset, "-n", namespace)
    env = {
        e["name"]: e.get("value")
        for e in upgraded["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["POLCA_GUARD_PERIOD_S"] == "0.25"
    operator = get_json(cluster, "deployment", f"{release}-polca-operator", "-n", namespace)
    assert operator["spec"]["replicas"] == 3
    history = json.loads(cluster.helm("history", release, "-n", namespace, "-o", "json").stdout)
    assert [entry["revision"] for entry in history] == [1, 2]

    kubelet = HookKubelet(cluster, namespace, f"{release}-polca-restore", tmp_path)
    uninstall = BackgroundUninstall(cluster, release, namespace)
    kubelet.run_when_created()
    done = uninstall.result()
    assert done.returncode == 0, done.stderr
    assert kubelet.exit_code == 0, kubelet.output
    for args in release_objects(namespace, release):
        assert not exists(cluster, *args), args
    # The hook's own objects are deleted once it succeeds; the CRDs stay (Helm never deletes them).
    assert not exists(cluster, "job", f"{release}-polca-restore", "-n", namespace)
    assert not exists(cluster, "clusterrole", f"{release}-polca-restore")
    assert exists(cluster, "crd", "powerpolicies.polca.dev")


class StandInOperator:
    """Plays the operator's restore finalizer: notes when a policy's deletion starts, and whether
    POLCA's workloads were still there at that moment; lets go when told to."""

    def __init__(self, cluster: Cluster, policy: str, namespace: str, release: str) -> None:
        self.cluster, self.policy = cluster, policy
        self.workloads = [
            ("deployment", f"{release}-polca-operator", "-n", namespace),
            ("daemonset", f"{release}-polca-node", "-n", namespace),
        ]
        self.workloads_present_at_deletion: bool | None = None

    def wait_for_deletion(self) -> None:
        def deleting() -> bool:
            found = self.cluster.kubectl(
                "get", "powerpolicy", self.policy, "-o", "json", check=False
            )
            return (
                found.returncode == 0
                and "deletionTimestamp" in json.loads(found.stdout)["metadata"]
            )

        eventually(f"deletion of powerpolicy/{self.policy}", deleting, timeout_s=60)
        self.workloads_present_at_deletion = all(exists(self.cluster, *w) for w in self.workloads)

    def release(self) -> None:
        self.cluster.kubectl(
            "patch",
            "powerpolicy",
            self.policy,
            "--type=json",
            "-p",
            '[{"op": "remove", "path": "/metadata/finalizers"}]',
        )


def create_policy(cluster: Cluster, name: str) -> None:
    policy = {
        "apiVersion": "polca.dev/v1alpha1",
        "kind": "PowerPolicy",
        "metadata": {"name": name, "finalizers": [FINALIZER]},
        "spec": {
            "nodeSelector": {"matchLabels": {"polca.dev/power-domain": name}},
            "budgetWatts": 40000,
        },
    }
    cluster.kubectl("create", "-f", "-", input=json.dumps(policy))


@pytest.mark.slow
@pytest.mark.usefixtures("crds")
def test_uninstall_restores_before_removing_polca(
    cluster: Cluster, namespace: str, release: str, unique_name: Names, tmp_path: Path
) -> None:
    install(cluster, release, namespace, "--set", "restoreOnUninstall.timeoutSeconds=60")
    policy = unique_name("pp")
    create_policy(cluster, policy)
    operator = StandInOperator(cluster, policy, namespace, release)
    kubelet = HookKubelet(cluster, namespace, f"{release}-polca-restore", tmp_path)
    uninstall = BackgroundUninstall(cluster, release, namespace)
    hook = threading.Thread(target=kubelet.run_when_created, daemon=True)
    hook.start()

    operator.wait_for_deletion()
    assert operator.workloads_present_at_deletion is True  # restore runs while POLCA runs
    time.sleep(1.0)  # the hook keeps waiting while the finalizer holds the policy
    assert kubelet.exit_code is None
    assert all(exists(cluster, *w) for w in operator.workloads)
    operator.release()

    hook.join(timeout=90)
    assert kubelet.exit_code == 0, kubelet.output
    done = uninstall.result()
    assert done.returncode == 0, done.stderr
    assert not exists(cluster, "powerpolicy", policy)
    assert not any(exists(cluster, *w) for w in operator.workloads)


@pytest.mark.slow
@pytest.mark.usefixtures("crds")
def test_uninstall_stops_when_the_restore_does_not_finish(
    cluster: Cluster, namespace: str, release: str, unique_name: Names, tmp_path: Path
) -> None:
    install(cluster, release, namespace, "--set", "restoreOnUninstall.timeoutSeconds=3")
    policy = unique_name("pp")
    create_policy(cluster, policy)
    operator = StandInOperator(cluster, policy, namespace, release)  # never lets go
    kubelet = HookKubelet(cluster, namespace, f"{release}-polca-restore", tmp_path)
    uninstall = BackgroundUninstall(cluster, release, namespace)
    try:
        kubelet.run_when_created()
        done = uninstall.result()
        assert kubelet.exit_code == 1
        assert f"{policy}: finalizers ['{FINALIZER}']" in kubelet.output
        assert done.returncode != 0
        assert f"job {release}-polca-restore failed" in done.stderr
        # Nothing was removed: the operator and the daemons keep managing the GPUs.
        assert all(exists(cluster, *w) for w in operator.workloads)
        assert exists(cluster, "job", f"{release}-polca-restore", "-n", namespace)  # for logs
    finally:
        operator.release()
        cluster.kubectl("delete", "powerpolicy", policy, "--ignore-not-found", check=False)
