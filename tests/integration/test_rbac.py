"""Least privilege, on a real API server: the chart's RBAC and its NodePowerState admission policy.

The RBAC matrix below is written out by hand: each service account's rules, read back from the
API server (SelfSubjectRulesReview), must be exactly these. The admission policy is exercised with
impersonated node-name extras (kubeconfig `as-user-extra`: kubectl 1.34 has no `--as-user-extra`
flag) and with real pod-bound service-account tokens.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from polca_testbed.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "polca"
KOPF_CRD = CHART / "charts" / "kopf-peering" / "crds" / "clusterkopfpeerings.kopf.dev.yaml"
NODE_CLAIM = "authentication.kubernetes.io/node-name"

Names = Callable[[str], str]
Rule = tuple[str, str, str]  # (apiGroup, resource, verb)


def rules(*specs: tuple[str, str, str]) -> set[Rule]:
    """('polca.dev', 'powerpolicies', 'get list') -> one (group, resource, verb) per verb."""
    return {(group, resource, verb) for group, resource, verbs in specs for verb in verbs.split()}


OPERATOR_RULES = rules(
    ("polca.dev", "powerpolicies", "get list watch patch"),
    ("polca.dev", "powerpolicies/status", "get patch"),
    ("polca.dev", "powerpolicies/finalizers", "update"),
    ("polca.dev", "nodepowerstates", "get list watch"),
    ("", "nodes", "list watch"),
    ("", "pods", "get list watch"),
    ("kopf.dev", "clusterkopfpeerings", "get list watch patch"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list watch"),
    ("", "events", "create"),  # in `default` only (events about cluster-scoped objects)
)
NODE_RULES = rules(
    ("polca.dev", "powerpolicies", "get list watch"),
    ("polca.dev", "nodepowerstates", "get create patch update"),
    ("polca.dev", "nodepowerstates/status", "get patch update"),
    ("", "pods", "get list watch"),
    ("", "nodes", "get list watch"),  # its own Node, watched by field selector
    ("apiextensions.k8s.io", "customresourcedefinitions", "list watch"),
    ("", "events", "create"),
)
# (account, verb, resource, namespace or "" for cluster-wide) that must be refused.
REFUSED = [
    ("node", "patch", "powerpolicies.polca.dev", ""),
    ("node", "update", "powerpolicies.polca.dev", ""),
    ("node", "patch", "powerpolicies.polca.dev/status", ""),
    ("node", "delete", "nodepowerstates.polca.dev", ""),
    ("node", "get", "secrets", "kube-system"),
    ("node", "list", "secrets", "RELEASE"),
    ("node", "patch", "nodes", ""),
    ("node", "create", "events", "RELEASE"),
    ("operator", "create", "events", "RELEASE"),
    ("operator", "delete", "powerpolicies.polca.dev", ""),
    ("operator", "create", "powerpolicies.polca.dev", ""),
    ("operator", "create", "nodepowerstates.polca.dev", ""),
    ("operator", "patch", "nodepowerstates.polca.dev/status", ""),
    ("operator", "get", "secrets", "RELEASE"),
    ("operator", "get", "configmaps", "RELEASE"),
    ("operator", "patch", "nodes", ""),
    ("operator", "delete", "pods", "default"),
    ("operator", "delete", "clusterkopfpeerings.kopf.dev", ""),
]


@dataclass(frozen=True)
class Install:
    namespace: str
    release: str

    def account(self, component: str) -> str:
        return f"{self.release}-polca-{component}"

    def user(self, component: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.account(component)}"


@pytest.fixture(scope="module")
def install(cluster: Cluster) -> Iterator[Install]:
    """The chart with default values, in its own namespace, for the whole module."""
    cluster.install_crds(REPO / "crds", KOPF_CRD)
    installed = Install(namespace=f"rbac-{time.monotonic_ns() % 10**8}", release="rbac")
    cluster.helm(
        "install", installed.release, str(CHART), "-n", installed.namespace, "--create-namespace"
    )
    # Another account in the same namespace: what every service account may do anyway.
    cluster.kubectl("create", "serviceaccount", "bystander", "-n", installed.namespace)
    _wait_until_allowed(cluster, installed.user("node"), "watch", "powerpolicies.polca.dev")
    _wait_until_allowed(cluster, installed.user("operator"), "patch", "powerpolicies.polca.dev")
    yield installed
    cluster.helm(
        "uninstall", installed.release, "-n", installed.namespace, "--no-hooks", check=False
    )
    cluster.kubectl("delete", "namespace", installed.namespace, "--wait=false", check=False)


def can_i(cluster: Cluster, user: str, verb: str, resource: str, namespace: str = "") -> bool:
    """`kubectl auth can-i`; `resource` may name a subresource as `kind.group/sub`."""
    resource, _, subresource = resource.partition("/")
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    if subresource:
        scope.append(f"--subresource={subresource}")
    answer = cluster.kubectl(
        "auth", "can-i", verb, resource, *scope, f"--as={user}", check=False
    ).stdout.strip()
    assert answer in {"yes", "no"}, answer
    return answer == "yes"


def _wait_until_allowed(cluster: Cluster, user: str, verb: str, resource: str) -> None:
    deadline = time.monotonic() + 15  # the RBAC authorizer reads through an informer cache
    while not can_i(cluster, user, verb, resource):
        assert time.monotonic() < deadline, f"{user} never got {verb} {resource}"
        time.sleep(0.2)


def granted_rules(cluster: Cluster, user: str, namespace: str) -> set[Rule]:
    """Every (group, resource, verb) the API server grants `user` in `namespace`."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace},
    }
    # --validate=false: client-side validation would list CRDs, as `user`.
    result = cluster.kubectl(
        "create",
        "--validate=false",
        "-f",
        "-",
        "-o",
        "json",
        f"--as={user}",
        input=json.dumps(review),
    )
    status = json.loads(result.stdout)["status"]
    assert not status.get("incomplete"), status
    return {
        (group, resource, verb)
        for rule in status["resourceRules"]
        for group in rule.get("apiGroups", [""])
        for resource in rule.get("resources", [])
        for verb in rule["verbs"]
        if not rule.get("resourceNames")
    }


@pytest.mark.parametrize(
    ("component", "expected"), [("operator", OPERATOR_RULES), ("node", NODE_RULES)]
)
def test_each_account_gets_exactly_its_rules(
    cluster: Cluster, install: Install, component: str, expected: set[Rule]
) -> None:
    everyone = granted_rules(
        cluster, f"system:serviceaccount:{install.namespace}:bystander", install.namespace
    )
    granted = granted_rules(cluster, install.user(component), "default") - everyone
    assert granted == expected
    # Events only in `default`: elsewhere the account has only what everyone has.
    in_release = granted_rules(cluster, install.user(component), install.namespace) - everyone
    assert in_release == {rule for rule in expected if rule[1] != "events"}


@pytest.mark.parametrize(
    ("component", "verb", "resource", "namespace"),
    REFUSED,
    ids=[f"{c}-{v}-{r}" for c, v, r, _ in REFUSED],
)
def test_refused(
    cluster: Cluster, install: Install, component: str, verb: str, resource: str, namespace: str
) -> None:
    namespace = install.namespace if namespace == "RELEASE" else namespace
    assert not can_i(cluster, install.user(component), verb, resource, namespace)


def test_matrix_allowances_are_real(cluster: Cluster, install: Install) -> None:
    """`can-i` agrees with the rules review on what each account may do."""
    for component, expected in (("operator", OPERATOR_RULES), ("node", NODE_RULES)):
        for group, resource, verb in expected:
            full = f"{resource.split('/')[0]}.{group}" if group else resource.split("/")[0]
            target = full + (f"/{resource.split('/')[1]}" if "/" in resource else "")
            namespace = "default" if resource == "events" else ""
            assert can_i(cluster, install.user(component), verb, target, namespace), (
                component,
                verb,
                target,
            )


# --- the admission policy: a daemon writes only its own node's NodePowerState ---------------


def node_power_state(node: str) -> str:
    return json.dumps(
        {
            "apiVersion": "polca.dev/v1alpha1",
            "kind": "NodePowerState",
            "metadata": {"name": node},
            "spec": {"nodeName": node},
        }
    )


class Identity:
    """kubectl with a kubeconfig of its own: impersonation (as admin) or a bearer token."""

    def __init__(self, cluster: Cluster, path: Path, user: dict[str, Any]) -> None:
        self.cluster = cluster
        self.path = path
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "c",
            "clusters": [
                {
                    "name": "c",
                    "cluster": {
                        "server": cluster.server,
                        "certificate-authority": str(cluster.pki.ca_cert),
                    },
                }
            ],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        }
        path.write_text(json.dumps(config))

    @classmethod
    def impersonating(
        cls, cluster: Cluster, path: Path, username: str, extra: dict[str, list[str]]
    ) -> Identity:
        namespace = username.split(":")[2]
        return cls(
            cluster,
            path,
            {
                "client-certificate": str(cluster.pki.admin_cert),
                "client-key": str(cluster.pki.admin_key),
                "as": username,
                "as-groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{namespace}",
                    "system:authenticated",
                ],
                "as-user-extra": extra,
            },
        )

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002
        return subprocess.run(
            [str(self.cluster.bin_dir / "kubectl"), "--kubeconfig", str(self.path), *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )


@pytest.fixture
def nodes(cluster: Cluster, unique_name: Names) -> Iterator[tuple[str, str]]:
    own, other = unique_name("gpu-a"), unique_name("gpu-b")
    yield own, other
    for name in (own, other):
        cluster.kubectl("delete", "nodepowerstate", name, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "node", name, "pod", "--ignore-not-found", check=False)


def assert_own_node_only(cluster: Cluster, daemon: Identity, own: str, other: str) -> None:
    """The daemon creates and updates its node's NodePowerState and no other's."""
    cluster.kubectl("create", "-f", "-", input=node_power_state(other))  # as admin
    deadline = time.monotonic() + 15  # the policy takes effect once its informer has synced
    while (
        refused := daemon.kubectl("create", "-f", "-", input=node_power_state(f"{other}-x"))
    ).returncode == 0:
        cluster.kubectl("delete", "nodepowerstate", f"{other}-x", check=False)
        assert time.monotonic() < deadline, "the admission policy never took effect"
        time.sleep(0.3)
    assert f"may write only NodePowerState {own}, not {other}-x" in refused.stderr

    created = daemon.kubectl("create", "-f", "-", input=node_power_state(own))
    assert created.returncode == 0, created.stderr
    status = json.dumps({"status": {"gpuCount": 8}})
    for target, allowed in ((own, True), (other, False)):
        patched = daemon.kubectl(
            "patch", "nodepowerstate", target, "--subresource=status", "--type=merge", "-p", status
        )
        assert (patched.returncode == 0) is allowed, patched.stderr
        labelled = daemon.kubectl("label", "nodepowerstate", target, "polca.dev/seen=yes")
        assert (labelled.returncode == 0) is allowed, labelled.stderr
        if not allowed:
            assert "ValidatingAdmissionPolicy" in patched.stderr
            assert "denied request" in labelled.stderr
    stored = json.loads(cluster.kubectl("get", "nodepowerstate", own, "-o", "json").stdout)
    assert stored["status"]["gpuCount"] == 8


def test_daemon_writes_only_its_node_impersonated(
    cluster: Cluster, install: Install, nodes: tuple[str, str], tmp_path: Path
) -> None:
    own, other = nodes
    daemon = Identity.impersonating(
        cluster, tmp_path / "daemon", install.user("node"), {NODE_CLAIM: [own]}
    )
    assert_own_node_only(cluster, daemon, own, other)


def test_daemon_without_node_claim_is_refused(
    cluster: Cluster, install: Install, nodes: tuple[str, str], tmp_path: Path
) -> None:
    own, _ = nodes
    daemon = Identity.impersonating(cluster, tmp_path / "no-claim", install.user("node"), {})
    deadline = time.monotonic() + 15
    while (
        result := daemon.kubectl("create", "-f", "-", input=node_power_state(own))
    ).returncode == 0:
        cluster.kubectl("delete", "nodepowerstate", own, check=False)
        assert time.monotonic() < deadline, "the admission policy never took effect"
        time.sleep(0.3)
    assert "pod-bound service-account token that" in result.stderr


def test_other_accounts_are_not_affected(
    cluster: Cluster, install: Install, nodes: tuple[str, str], tmp_path: Path
) -> None:
    """The policy matches the daemon's account only: the admin writes any NodePowerState."""
    own, other = nodes
    assert cluster.kubectl("create", "-f", "-", input=node_power_state(other)).returncode == 0
    bystander = Identity.impersonating(
        cluster,
        tmp_path / "bystander",
        f"system:serviceaccount:{install.namespace}:bystander",
        {NODE_CLAIM: [own]},
    )
    refused = bystander.kubectl("create", "-f", "-", input=node_power_state(own))
    assert "forbidden" in refused.stderr.lower()  # by RBAC, not by the policy
    assert "ValidatingAdmissionPolicy" not in refused.stderr


def test_daemon_writes_only_its_node_with_a_pod_bound_token(
    cluster: Cluster, install: Install, nodes: tuple[str, str], tmp_path: Path
) -> None:
    """A real token, bound to a daemon pod on `own`, as the kubelet would mount it."""
    own, other = nodes
    cluster.kubectl(
        "create",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": own}}),
    )
    pod_name = f"daemon-{own}"
    cluster.kubectl(
        "create",
        "-n",
        install.namespace,
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod_name},
                "spec": {
                    "nodeName": own,
                    "serviceAccountName": install.account("node"),
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "c", "image": "polca:dev"}],
                },
            }
        ),
    )
    pod_uid = json.loads(
        cluster.kubectl("get", "pod", pod_name, "-n", install.namespace, "-o", "json").stdout
    )["metadata"]["uid"]
    token = cluster.kubectl(
        "create",
        "token",
        install.account("node"),
        "-n",
        install.namespace,
        "--bound-object-kind=Pod",
        f"--bound-object-name={pod_name}",
        f"--bound-object-uid={pod_uid}",
        "--duration=10m",
    ).stdout.strip()
    daemon = Identity(cluster, tmp_path / "token", {"token": token})
    whoami = json.loads(daemon.kubectl("auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == install.user("node")
    assert whoami["status"]["userInfo"]["extra"][NODE_CLAIM] == [own]
    try:
        assert_own_node_only(cluster, daemon, own, other)
    finally:
        cluster.kubectl(
            "delete", "pod", pod_name, "-n", install.namespace, "--wait=false", check=False
        )


def test_operator_may_not_rewrite_a_policy_spec(
    cluster: Cluster, install: Install, unique_name: Names, tmp_path: Path
) -> None:
    """RBAC grants the operator `patch` on policies (finalizer, Kopf's annotations); the chart's
    admission policy refuses any change of their spec or labels by that account."""
    name = unique_name("pp")
    policy = {
        "apiVersion": "polca.dev/v1alpha1",
        "kind": "PowerPolicy",
        "metadata": {"name": name, "labels": {"team": "infra"}},
        "spec": {"nodeSelector": {"matchLabels": {"row": "a"}}, "budgetWatts": 10000},
    }
    cluster.kubectl("create", "-f", "-", input=json.dumps(policy))
    operator = Identity.impersonating(cluster, tmp_path / "operator", install.user("operator"), {})
    try:
        spec_patch = json.dumps({"spec": {"budgetWatts": 99999}})
        deadline = time.monotonic() + 15  # the policy takes effect once its informer has synced
        while (
            result := operator.kubectl(
                "patch", "powerpolicy", name, "--type=merge", "-p", spec_patch
            )
        ).returncode == 0:
            restore = json.dumps({"spec": {"budgetWatts": 10000}})
            cluster.kubectl("patch", "powerpolicy", name, "--type=merge", "-p", restore)
            assert time.monotonic() < deadline, "the admission policy never took effect"
            time.sleep(0.3)
        assert "never its spec" in result.stderr, result.stderr
        relabel = operator.kubectl("label", "powerpolicy", name, "team=other", "--overwrite")
        assert "may not change a PowerPolicy's labels" in relabel.stderr, relabel.stderr

        # What the operator needs stays allowed.
        annotated = operator.kubectl("annotate", "powerpolicy", name, "kopf.zalando.org/x=1")
        assert annotated.returncode == 0, annotated.stderr
        finalizer = json.dumps({"metadata": {"finalizers": ["polca.dev/restore-defaults"]}})
        added = operator.kubectl("patch", "powerpolicy", name, "--type=merge", "-p", finalizer)
        assert added.returncode == 0, added.stderr

        stored = json.loads(cluster.kubectl("get", "powerpolicy", name, "-o", "json").stdout)
        assert stored["spec"]["budgetWatts"] == 10000
        assert stored["metadata"]["labels"] == {"team": "infra"}
    finally:
        unfinalize = json.dumps({"metadata": {"finalizers": None}})
        cluster.kubectl("patch", "powerpolicy", name, "--type=merge", "-p", unfinalize, check=False)
        cluster.kubectl("delete", "powerpolicy", name, "--wait=false", check=False)
