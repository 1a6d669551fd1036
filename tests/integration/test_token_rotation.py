"""The daemon's API client survives a service-account token rotation on the real API server
(issue 12, finding 7): the kubelet rewrites the projected token file and the old token stops
working; the client, which re-reads the file only every minute, gets a 401, reads the file
again and the call succeeds.

The old token is made invalid the way Kubernetes does it for a pod-bound token: its pod is
deleted (the API server may keep accepting it for its ~10 s authentication cache, so the test
waits until it is refused).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml

from polca_node.kube_client import ApiError, KubeClient, kubeconfig_credentials
from polca_testbed.cluster import Cluster
from polca_testbed.polling import eventually


def bound_token(cluster: Cluster, namespace: str, account: str, pod: str) -> str:
    """A token of `account` bound to a new pod `pod`, as the kubelet gets for a pod."""
    manifest = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod},
        "spec": {"serviceAccountName": account, "automountServiceAccountToken": False,
                 "containers": [{"name": "c", "image": "none"}]},
    }  # fmt: skip
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    uid = json.loads(cluster.kubectl("get", "pod", pod, "-n", namespace, "-o", "json").stdout)
    return cluster.kubectl(
        "create", "token", account, "-n", namespace, "--bound-object-kind=Pod",
        f"--bound-object-name={pod}", f"--bound-object-uid={uid['metadata']['uid']}",
        "--duration=10m",
    ).stdout.strip()  # fmt: skip


def token_kubeconfig(cluster: Cluster, path: Path, user: dict[str, str]) -> Path:
    path.write_text(yaml.safe_dump({
        "current-context": "t",
        "clusters": [{"name": "c", "cluster": {
            "server": cluster.server, "certificate-authority": str(cluster.pki.ca_cert)}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    return path


def refused(client: KubeClient) -> bool:
    try:
        client.request("GET", "/api")
    except ApiError as exc:
        return exc.status == 401
    return False


def rotate(
    cluster: Cluster, namespace: str, token_file: Path, old_pod: str, new_pod: str
) -> KubeClient:
    """The kubelet's rotation: a new token in the file, and the old one refused (its pod is
    gone). Returns a client holding the old token, closed by the caller."""
    old = token_file.read_text()
    new = bound_token(cluster, namespace, "daemon", new_pod)
    cluster.kubectl("delete", "pod", old_pod, "-n", namespace)
    temporary = token_file.with_name("token.new")
    temporary.write_text(new)
    temporary.replace(token_file)
    stale = KubeClient(kubeconfig_credentials(
        token_kubeconfig(cluster, token_file.with_name(f"stale-{old_pod}"), {"token": old})
    ))  # fmt: skip
    eventually("the old token to be refused", lambda: refused(stale), timeout_s=60)
    return stale


def test_a_rotated_projected_token_is_read_again_on_401(
    cluster: Cluster,
    unique_name: Callable[[str], str],
    cleanup: Callable[..., None],
    tmp_path: Path,
) -> None:
    namespace = unique_name("ns")
    cleanup(f"namespace/{namespace}")
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("create", "serviceaccount", "daemon", "-n", namespace)
    cluster.kubectl("create", "role", "pods", "--verb=list,watch", "--resource=pods",
                    "-n", namespace)  # fmt: skip
    cluster.kubectl("create", "rolebinding", "pods", "--role=pods",
                    f"--serviceaccount={namespace}:daemon", "-n", namespace)  # fmt: skip
    token_file = tmp_path / "token"
    token_file.write_text(bound_token(cluster, namespace, "daemon", "daemon-1"))
    kubeconfig = token_kubeconfig(cluster, tmp_path / "kubeconfig", {"tokenFile": str(token_file)})
    client = KubeClient(kubeconfig_credentials(kubeconfig))
    stale: list[KubeClient] = []
    pods = f"/api/v1/namespaces/{namespace}/pods"
    try:
        assert [p["metadata"]["name"] for p in client.request("GET", pods)["items"]] == ["daemon-1"]
        # The client holds the old token (read less than a minute ago): its call gets a 401,
        # reads the file again and succeeds, the caller sees nothing.
        stale.append(rotate(cluster, namespace, token_file, "daemon-1", "daemon-2"))
        assert [p["metadata"]["name"] for p in client.request("GET", pods)["items"]] == ["daemon-2"]
        # The same for a watch (the daemon's watch threads open a new one after each end).
        stale.append(rotate(cluster, namespace, token_file, "daemon-2", "daemon-3"))
        stream = client.watch(pods, {"watch": True, "timeoutSeconds": 1}, read_timeout_s=10)
        assert {e["object"]["metadata"]["name"] for e in stream} == {"daemon-3"}
    finally:
        for each in [client, *stale]:
            each.close()
