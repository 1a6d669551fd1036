"""A real Kubernetes control plane (etcd + kube-apiserver) on loopback, for tests and demos.

By default there is no scheduler, kubelet, controller-manager or garbage collector: callers
create Nodes and Pods (already bound with `spec.nodeName`) themselves. `controllers=True` adds
kube-controller-manager and kube-scheduler (and the ServiceAccount admission plugin they make
usable), for a real node (`polca_testbed.real_node`) running Deployments and DaemonSets.

    python -m polca_testbed.cluster up --dir ~/.cache/polca/cluster    # prints the kubeconfig
    python -m polca_testbed.cluster down --dir ~/.cache/polca/cluster
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from polca_testbed.pki import Pki, make_pki
from polca_testbed.polling import eventually
from polca_testbed.processes import free_port, group_alive, start_process, stop_group, wait_until

if TYPE_CHECKING:
    import kubernetes.client

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tools" / "build-control-plane.sh"
SERVICE_CIDR = "10.0.0.0/24"
START_TIMEOUT_S = 90.0


def find_bin_dir() -> Path:
    """The cached control-plane binaries: $POLCA_CONTROL_PLANE_BIN, else build or find them."""
    env_dir = os.environ.get("POLCA_CONTROL_PLANE_BIN", "").strip()
    if env_dir:
        return Path(env_dir)
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed:\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


def run_tool(
    executable: Path,
    argv: Sequence[str],
    *,
    helm_home: Path,
    stdin: str | None = None,
    check: bool = True,
    timeout_s: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run kubectl or helm (helm's caches in `helm_home`); raise with stderr when `check`."""
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(helm_home / "cache"),
        "HELM_CONFIG_HOME": str(helm_home / "config"),
        "HELM_DATA_HOME": str(helm_home / "data"),
    }
    result = subprocess.run(
        [str(executable), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
        env=env,
    )
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, [executable.name, *argv], result.stdout, result.stderr
        )
    return result


POLCA_CRDS = ("powerpolicies.polca.dev", "nodepowerstates.polca.dev")
KOPF_PEERING_CRD = "clusterkopfpeerings.kopf.dev"


def _files(manifests: Sequence[Path]) -> list[str]:
    return [arg for path in manifests for arg in ("-f", str(path))]


class KubectlHelm:
    """`kubectl()` and `helm()` against one cluster, for its kubeconfig and tool binaries."""

    @property
    def kubeconfig(self) -> Path:
        raise NotImplementedError

    @property
    def helm_home(self) -> Path:
        """Where helm keeps its caches (never the user's own)."""
        raise NotImplementedError

    def tool_path(self, tool: str) -> Path:
        raise NotImplementedError

    def kubectl(
        self,
        *args: str,
        input: str | None = None,  # noqa: A002 - mirrors subprocess.run
        check: bool = True,
        timeout_s: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raise with stderr when `check` and it fails."""
        return self._run("kubectl", args, input, check, timeout_s)

    def install_crds(
        self, *manifests: Path, names: Sequence[str] = POLCA_CRDS, timeout_s: float = 60.0
    ) -> None:
        """Apply `manifests` (server-side, forcing conflicts with other appliers) and wait until
        each CRD in `names` is Established."""
        apply = ("apply", "--server-side", "--force-conflicts", *_files(manifests))
        self.kubectl(*apply)
        self.wait_crds_established(names, reapply=apply, timeout_s=timeout_s)

    def wait_crds_established(
        self, names: Sequence[str], *, reapply: Sequence[str] = (), timeout_s: float = 60.0
    ) -> None:
        """Wait until each CRD in `names` is Established and not being deleted.

        A poll rather than `kubectl wait`, which now and then exited 1 right after an apply; a
        CRD still being deleted by an earlier test is applied again (`reapply`) once it is gone.
        """
        names = [name.removeprefix("crd/") for name in names]

        def established() -> bool:
            got = self.kubectl("get", "crd", *names, "-o", "json", check=False)
            if got.returncode != 0:  # one is missing (deleted meanwhile): apply again
                if reapply:
                    self.kubectl(*reapply, check=False)
                return False
            data = json.loads(got.stdout)
            items = data.get("items", [data])
            return len(items) == len(names) and all(
                "deletionTimestamp" not in crd["metadata"]
                and any(
                    c.get("type") == "Established" and c.get("status") == "True"
                    for c in crd.get("status", {}).get("conditions", [])
                )
                for crd in items
            )

        eventually(f"CRDs {', '.join(names)} Established", established, timeout_s)

    def helm(
        self,
        *args: str,
        input: str | None = None,  # noqa: A002
        check: bool = True,
        timeout_s: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this cluster."""
        return self._run("helm", args, input, check, timeout_s)

    def _run(
        self, tool: str, args: Sequence[str], stdin: str | None, check: bool, timeout_s: float
    ) -> subprocess.CompletedProcess[str]:
        argv = ["--kubeconfig", str(self.kubeconfig), *args]
        return run_tool(self.tool_path(tool), argv, helm_home=self.helm_home, stdin=stdin,
                        check=check, timeout_s=timeout_s)  # fmt: skip


@dataclass
class Cluster(KubectlHelm):
    """A running control plane and the helpers to talk to it."""

    state_dir: Path
    bin_dir: Path
    pki: Pki
    api_port: int
    etcd_port: int
    pids: dict[str, int] = field(default_factory=dict)
    # With the scheduler and controller-manager (a real node): the API server then keeps the
    # ServiceAccount admission plugin, so a restart must start it with the same flags.
    controllers: bool = False
    etcd_peer_port: int = 0  # 0: not started by this process (a restart takes a free one)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def helm_home(self) -> Path:
        return self.state_dir / "helm"

    def tool_path(self, tool: str) -> Path:
        return self.bin_dir / tool

    def api_client(self) -> kubernetes.client.ApiClient:
        """A kubernetes-client ApiClient authenticated as the admin."""
        import kubernetes.config

        client: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(
            config_file=str(self.kubeconfig)
        )
        return client

    def ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        try:
            url = f"{self.server}/readyz"  # always https to our own loopback server
            with urllib.request.urlopen(url, context=context, timeout=2) as r:  # noqa: S310
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop_apiserver(self, *, grace_s: float = 10.0) -> None:
        """Stop the API server alone (etcd keeps the data): an API outage for the tests. It
        drains open watches for longer than `grace_s`, then it is killed."""
        pid = self.pids.pop("kube-apiserver", None)
        if pid is not None:
            stop_group(pid, grace_s=grace_s)
        self._save_state()

    def start_apiserver(self, *, tie_to_parent: bool = True, wait: bool = True) -> None:
        """Start the API server on its port again (after `stop_apiserver`); with `wait`, return
        once /readyz says ok (without, at once: a test can time the first answer itself). Its
        log is appended to the same file."""
        if "kube-apiserver" in self.pids and group_alive(self.pids["kube-apiserver"]):
            raise RuntimeError("the API server is already running")
        log_path = self.state_dir / "logs" / "kube-apiserver.log"
        argv = _apiserver_argv(self, controllers=self.controllers)
        api = start_process(argv, log_path=log_path, tie_to_parent=tie_to_parent)
        self.pids["kube-apiserver"] = api.pid
        self._save_state()
        if not wait:
            return
        wait_until(self.ready, timeout_s=START_TIMEOUT_S, what="kube-apiserver",
                   alive=lambda: api.poll() is None, log_path=log_path)  # fmt: skip

    def stop_etcd(self, *, grace_s: float = 10.0) -> None:
        """Stop etcd alone (its data stays): the API server stays up and answers with errors."""
        pid = self.pids.pop("etcd", None)
        if pid is not None:
            stop_group(pid, grace_s=grace_s)
        self._save_state()

    def start_etcd(self, *, tie_to_parent: bool = True) -> None:
        """Start etcd on its ports over its data again (after `stop_etcd` or at start-up);
        return once it reports healthy. Its log is appended to the same file."""
        if "etcd" in self.pids and group_alive(self.pids["etcd"]):
            raise RuntimeError("etcd is already running")
        self.etcd_peer_port = self.etcd_peer_port or free_port()
        log_path = self.state_dir / "logs" / "etcd.log"
        argv = _etcd_argv(self.bin_dir, self.state_dir / "etcd-data", self.etcd_port,
                          self.etcd_peer_port)  # fmt: skip
        etcd = start_process(argv, log_path=log_path, tie_to_parent=tie_to_parent)
        self.pids["etcd"] = etcd.pid
        self._save_state()
        wait_until(lambda: _etcd_healthy(self.etcd_port), timeout_s=START_TIMEOUT_S,
                   what="etcd", alive=lambda: etcd.poll() is None, log_path=log_path)  # fmt: skip

    def stop(self) -> None:
        """Stop the controllers, then the API server (it holds etcd connections), then etcd."""
        for name in (*CONTROLLERS, "kube-apiserver", "etcd"):
            pid = self.pids.pop(name, None)
            if pid is not None:
                stop_group(pid)
        self._save_state()

    def alive(self) -> bool:
        return bool(self.pids) and all(group_alive(pid) for pid in self.pids.values())

    def _save_state(self) -> None:
        state = {"api_port": self.api_port, "etcd_port": self.etcd_port, "pids": self.pids,
                 "bin_dir": str(self.bin_dir)}  # fmt: skip
        (self.state_dir / "state.json").write_text(json.dumps(state, indent=2))


def _write_kubeconfig(cluster: Cluster) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "polca", "cluster": {
            "server": cluster.server, "certificate-authority": str(cluster.pki.ca_cert)}}],
        "users": [{"name": "polca-admin", "user": {
            "client-certificate": str(cluster.pki.admin_cert),
            "client-key": str(cluster.pki.admin_key)}}],
        "contexts": [{"name": "polca", "context": {"cluster": "polca", "user": "polca-admin"}}],
        "current-context": "polca",
    }  # fmt: skip
    cluster.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))


def _etcd_argv(bin_dir: Path, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [
        str(bin_dir / "etcd"),
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=default={peer}",
        "--unsafe-no-fsync=true",  # throwaway data: durability only slows tests down
        "--log-level=warn",
    ]


def _apiserver_argv(cluster: Cluster, *, controllers: bool) -> list[str]:
    pki = cluster.pki
    # Without a controller-manager nothing creates the `default` ServiceAccount, so the admission
    # plugin that requires it would refuse every Pod (envtest does the same). With one, the
    # plugin must run: it is what mounts the service-account token into a kubelet's pods.
    no_sa_admission = [] if controllers else ["--disable-admission-plugins=ServiceAccount"]
    return [
        str(cluster.bin_dir / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{cluster.etcd_port}",
        f"--etcd-prefix=/polca-{cluster.api_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={cluster.api_port}",
        f"--cert-dir={cluster.state_dir / 'apiserver-certs'}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        f"--service-account-key-file={pki.sa_public_key}",
        f"--service-account-signing-key-file={pki.sa_private_key}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=RBAC",
        "--allow-privileged=true",
        *no_sa_admission,
        "--v=1",
    ]


CONTROLLERS = ("kube-scheduler", "kube-controller-manager")


def _controller_argv(cluster: Cluster, name: str, port: int) -> list[str]:
    kubeconfig = str(cluster.kubeconfig)
    common = [
        str(cluster.bin_dir / name),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--leader-elect=false",  # one instance, and a leader lease would only slow start-up
        "--v=1",
    ]
    if name == "kube-scheduler":
        return common
    return [
        *common,
        # The root CA goes into every namespace's kube-root-ca.crt, which projected
        # service-account volumes need; the key signs legacy token secrets.
        f"--root-ca-file={cluster.pki.ca_cert}",
        f"--service-account-private-key-file={cluster.pki.sa_private_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--use-service-account-credentials=false",
    ]


def _healthz(port: int) -> bool:
    # Our own loopback component with its self-signed serving certificate: nothing to verify.
    context = ssl._create_unverified_context()  # noqa: S323
    try:
        url = f"https://127.0.0.1:{port}/healthz"
        with urllib.request.urlopen(url, context=context, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_cluster(
    state_dir: Path,
    *,
    bin_dir: Path | None = None,
    tie_to_parent: bool = True,
    controllers: bool = False,
) -> Cluster:
    """Start etcd and kube-apiserver on free loopback ports; return once /readyz says ok.

    `controllers`: also kube-controller-manager and kube-scheduler, healthy on return.
    """
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    bins = bin_dir or find_bin_dir()
    needed = ("etcd", "kube-apiserver", "kubectl", "helm", *(CONTROLLERS if controllers else ()))
    missing = [b for b in needed if not (bins / b).exists()]
    if missing:
        build = "make control-plane" if not controllers else "tools/build-control-plane.sh --node"
        raise FileNotFoundError(f"control-plane binaries missing in {bins}: {missing}; "
                                f"run `{build}`")  # fmt: skip
    cluster = Cluster(state_dir=state_dir, bin_dir=bins, pki=make_pki(state_dir / "pki"),
                      api_port=free_port(), etcd_port=free_port(),
                      controllers=controllers)  # fmt: skip
    try:
        cluster.start_etcd(tie_to_parent=tie_to_parent)
        _write_kubeconfig(cluster)
        cluster.start_apiserver(tie_to_parent=tie_to_parent)
        for name in CONTROLLERS if controllers else ():
            _start_controller(cluster, name, tie_to_parent=tie_to_parent)
    except BaseException:
        cluster.stop()
        raise
    cluster._save_state()
    return cluster


@contextmanager
def running_cluster(state_dir: Path) -> Iterator[Cluster]:
    """A control plane (`start_cluster`) for the `with` block, stopped at its end."""
    running = start_cluster(state_dir)
    try:
        yield running
    finally:
        running.stop()


def _start_controller(cluster: Cluster, name: str, *, tie_to_parent: bool) -> None:
    port, log = free_port(), cluster.state_dir / "logs" / f"{name}.log"
    proc = start_process(_controller_argv(cluster, name, port), log_path=log,
                         tie_to_parent=tie_to_parent)  # fmt: skip
    cluster.pids[name] = proc.pid
    wait_until(lambda: _healthz(port), timeout_s=START_TIMEOUT_S, what=name,
               alive=lambda: proc.poll() is None, log_path=log)  # fmt: skip


def _etcd_healthy(port: int) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/health"
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(json.loads(response.read()).get("health") == "true")
    except (urllib.error.URLError, OSError, ValueError):
        return False


def load_cluster(state_dir: Path) -> Cluster | None:
    """The cluster recorded in `state_dir` by `up`, or None."""
    state_file = state_dir / "state.json"
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    return Cluster(state_dir=state_dir.resolve(), bin_dir=Path(state["bin_dir"]),
                   pki=make_pki(state_dir / "pki"), api_port=state["api_port"],
                   etcd_port=state["etcd_port"], pids=dict(state["pids"]))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m polca_testbed.cluster",
        description="Start or stop a local kube-apiserver + etcd (no kubelet, no scheduler).",
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path.home() / ".cache/polca/cluster",
        help="state directory: certificates, kubeconfig, logs, etcd data",
    )
    args = parser.parse_args(argv)
    existing = load_cluster(args.dir)
    if args.action == "up":
        if existing is not None and existing.alive():
            print(f"already running: {existing.server}\nexport KUBECONFIG={existing.kubeconfig}")
            return 0
        started = time.monotonic()
        cluster = start_cluster(args.dir, tie_to_parent=False)
        print(f"control plane ready in {time.monotonic() - started:.1f} s at {cluster.server}")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        return 0
    if existing is None:
        print(f"no cluster recorded in {args.dir}")
        return 0 if args.action == "down" else 1
    if args.action == "status":
        print(f"{existing.server}: {'running' if existing.alive() else 'stopped'}")
        return 0 if existing.alive() else 1
    existing.stop()
    print(f"stopped the control plane in {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
