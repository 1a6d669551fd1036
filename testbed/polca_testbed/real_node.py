"""A real Kubernetes node on this host: Debian's containerd + runc and a kubelet built from Go
modules at the API server's version, registered with a `Cluster(controllers=True)`.

Everything the node makes lives under its state directory (containerd's root and state, the
kubelet's root, pod logs), pods use the host network (no CNI plugin runs; all traffic stays on
loopback), and `stop()` leaves no process, container or mount behind::

    cluster = start_cluster(tmp / "cluster", controllers=True)
    node = start_node(cluster, tmp / "node", name="gpu-node-1", labels={...})
    ...
    node.stop(); cluster.stop()

Needs root (the kubelet and containerd mount and make cgroups); `node_missing_reason` says
what else is missing, so tests can skip with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from polca_testbed.cluster import CONTROLLERS, Cluster
from polca_testbed.polling import NotInTimeError, eventually
from polca_testbed.processes import free_port, http_ok, start_process, stop_group, wait_until

START_TIMEOUT_S = 120.0
K8S_NAMESPACE = "k8s.io"  # containerd's namespace for the CRI (kubelet's) images and containers
# The pod sandbox ("pause") image: Debian's static catatonit in pause mode, made here, since the
# usual registry.k8s.io/pause cannot be pulled.
PAUSE_IMAGE = "localhost/polca-pause:catatonit"
# The kubelet keeps its device-plugin sockets here whatever its --root-dir (a constant in its
# device manager), so one real node at a time per host; start and stop clear what it leaves.
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
NODE_BINARIES = ("kubelet", *CONTROLLERS)
NODE_PROGRAMS = ("containerd", "ctr", "runc", "catatonit", "podman", "mount", "umount")


def node_missing_reason(bin_dir: Path) -> str | None:
    """Why a real node cannot start here, or None when it can."""
    if os.geteuid() != 0:
        return "a real node needs root (the kubelet and containerd mount and make cgroups)"
    for program in NODE_PROGRAMS:
        if shutil.which(program) is None:
            return f"{program} is not installed (`make node-packages` installs it, as root)"
    missing = [b for b in NODE_BINARIES if not (bin_dir / b).exists()]
    if missing:
        build = "tools/build-control-plane.sh --node"
        return f"{', '.join(missing)} not built in {bin_dir} (`{build}` builds them)"
    return None


@dataclass
class RealNode:
    """A running containerd + kubelet and the helpers to reach them."""

    cluster: Cluster
    name: str
    state_dir: Path
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def containerd_socket(self) -> Path:
        return self.state_dir / "containerd" / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.state_dir / "kubelet"

    @property
    def pod_resources_socket(self) -> Path:
        return self.kubelet_root / "pod-resources" / "kubelet.sock"

    @property
    def device_plugin_dir(self) -> Path:
        return DEVICE_PLUGIN_DIR

    @property
    def pod_logs(self) -> Path:
        return self.state_dir / "pod-logs"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def ctr(self, *args: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
        """containerd's own client on this node's socket, in the kubelet's namespace."""
        argv = ["ctr", "--address", str(self.containerd_socket), "--namespace", K8S_NAMESPACE]
        return subprocess.run([*argv, *args], capture_output=True, text=True, check=False,
                              timeout=timeout_s)  # fmt: skip

    def import_image(self, archive: Path) -> None:
        """Load an image archive (`podman save` / `docker save`) into the node's containerd."""
        result = self.ctr("images", "import", "--no-unpack", str(archive))
        if result.returncode != 0:
            raise RuntimeError(f"ctr images import {archive} failed: {result.stderr.strip()}")

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        """A container's output, read from the node's pod-log files (`kubectl logs` cannot
        reach this kubelet: a node on loopback has no address the API server accepts)."""
        paths = sorted(self.pod_logs.glob(f"{namespace}_{pod}_*/{container}/*.log"))
        raw = [line for p in paths for line in p.read_text(errors="replace").splitlines()]
        # CRI log format: "<time> <stream> <P|F> <text>"
        return "\n".join(line.split(" ", 3)[3] for line in raw if line.count(" ") >= 3)

    def keep_pod_logs(self) -> None:
        """Copy the pods' log files into the node's logs: the kubelet deletes a container's
        log with the container."""
        if self.pod_logs.exists():
            shutil.copytree(self.pod_logs, self.logs / "pods", dirs_exist_ok=True)

    def ready(self) -> bool:
        """The Node object exists and its Ready condition is True."""
        got = self.cluster.kubectl("get", "node", self.name, "-o", "json", check=False)
        if got.returncode != 0:
            return False
        conditions = json.loads(got.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def stop(self) -> None:
        """Stop the kubelet, every container it started, containerd; unmount what is left."""
        pid = self.pids.pop("kubelet", None)
        if pid is not None:
            stop_group(pid)
        if "containerd" in self.pids:
            self._remove_containers()
        pid = self.pids.pop("containerd", None)
        if pid is not None:
            stop_group(pid)
        self._kill_shims()
        unmount_below(self.state_dir)
        clear_device_plugin_dir()

    def _remove_containers(self) -> None:
        # The kubelet leaves pods running when it stops (as on a real node): end them here.
        for kind in ("tasks", "containers"):
            listed = self.ctr(kind, "list", "-q", timeout_s=30)
            for ident in listed.stdout.split():
                if kind == "tasks":
                    self.ctr("tasks", "kill", "--signal", "SIGKILL", ident, timeout_s=30)
                    gone = functools.partial(self._task_gone, ident)
                    with contextlib.suppress(NotInTimeError):  # delete --force ends it anyway
                        eventually(f"task {ident} gone", gone, 10.0, interval_s=0.1)
                    self.ctr("tasks", "delete", "--force", ident, timeout_s=30)
                else:
                    self.ctr("containers", "delete", ident, timeout_s=30)

    def _task_gone(self, ident: str) -> bool:
        return ident not in self.ctr("tasks", "list", "-q", timeout_s=30).stdout.split()

    def _kill_shims(self) -> None:
        # containerd's shims outlive containerd by design (their own process groups): end the
        # ones serving this node, found by the socket address on their command line.
        address = str(self.containerd_socket)
        for pid in shim_pids(address):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def shim_pids(containerd_address: str) -> list[int]:
    """Processes whose command line names `containerd_address` (this node's shims)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"containerd-shim" in argv[0] and containerd_address.encode() in argv:
            found.append(int(entry.name))
    return found


def clear_device_plugin_dir() -> None:
    """Remove the kubelet's registration socket and device checkpoint: a stale checkpoint
    would hand a new node the old node's assignments."""
    for name in ("kubelet.sock", "kubelet_internal_checkpoint"):
        (DEVICE_PLUGIN_DIR / name).unlink(missing_ok=True)


def mounts_below(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first (the order to unmount them)."""
    prefix = str(root.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def unmount_below(root: Path) -> None:
    """Unmount everything the kubelet or containerd left mounted under `root` (lazily: a busy
    mount is detached now and freed when its last user goes)."""
    for point in mounts_below(root):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


_RUNC = {
    "runtime_type": "io.containerd.runc.v2",
    "options": {"BinaryName": shutil.which("runc") or "runc", "SystemdCgroup": False},
}


def containerd_config(node: RealNode) -> dict[str, object]:
    """containerd 1.6 configuration: private root, state and socket; CRI with runc, the local
    pause image, and a CNI config directory of our own (host-network pods never use it)."""
    base = node.state_dir / "containerd"
    cri = "io.containerd.grpc.v1.cri"
    return {
        "version": 2,
        "root": str(base / "root"),
        "state": str(base / "state"),
        "grpc": {"address": str(node.containerd_socket)},
        "ttrpc": {"address": str(base / "containerd.sock.ttrpc")},
        "debug": {"address": ""},
        "metrics": {"address": ""},
        "plugins": {
            cri: {
                "sandbox_image": PAUSE_IMAGE,
                "stream_server_address": "127.0.0.1",
                "stream_server_port": "0",
                "enable_selinux": False,
                "disable_apparmor": True,
                # This sandbox refuses negative oom_score_adj (the kubelet asks -998 for pod
                # sandboxes): clamp to containerd's own score, or runc init dies.
                "restrict_oom_score_adj": True,
                # Never reach for a registry: every image is imported (imagePullPolicy Never).
                "max_concurrent_downloads": 1,
                "cni": {"bin_dir": "/usr/lib/cni", "conf_dir": str(base / "cni")},
                "containerd": {
                    "snapshotter": "overlayfs",
                    "default_runtime_name": "runc",
                    "runtimes": {"runc": _RUNC},
                },
            },
            "io.containerd.internal.v1.opt": {"path": str(base / "opt")},
        },
    }


# A loopback-only network: it makes the runtime report NetworkReady (so the Node turns Ready)
# without a bridge, iptables or routes; pods that are not on the host network get only `lo`.
CNI_LOOPBACK = {"cniVersion": "1.0.0", "name": "polca-loopback", "plugins": [{"type": "loopback"}]}


def kubelet_config(node: RealNode, *, port: int, healthz_port: int) -> dict[str, object]:
    """KubeletConfiguration for a throwaway node on a shared machine: loopback only, no cgroup
    hierarchy of its own (cgroupsPerQOS off), and no eviction or image GC acting on the host's
    disk, which other work shares."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(node.cluster.pki.ca_cert)}},
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "failCgroupV1": False,  # this kernel mounts cgroup v1 (hybrid); 1.34 still supports it
        "podLogsDir": str(node.pod_logs),
        "resolvConf": "/etc/resolv.conf",
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "localStorageCapacityIsolation": False,
        "serializeImagePulls": False,
        "registerNode": True,
        "syncFrequency": "5s",
        "nodeStatusUpdateFrequency": "5s",
        "fileCheckFrequency": "5s",
        "hairpinMode": "none",
        "makeIPTablesUtilChains": False,
        "shutdownGracePeriod": "0s",
    }  # fmt: skip


def start_node(
    cluster: Cluster,
    state_dir: Path,
    *,
    name: str,
    labels: Mapping[str, str] | None = None,
    images: Sequence[Path] = (),
) -> RealNode:
    """Start containerd and a kubelet registering Node `name`; return once it is Ready.

    `images`: archives to import into containerd before the kubelet starts (the pause image
    is made and imported in any case).
    """
    state_dir = state_dir.resolve()
    node = RealNode(cluster=cluster, name=name, state_dir=state_dir)
    try:
        clear_device_plugin_dir()
        _start_containerd(node)
        for archive in (pause_image_archive(state_dir / "images"), *images):
            node.import_image(archive)
        _start_kubelet(node, labels or {})
    except BaseException:
        node.stop()
        raise
    return node


def _start_containerd(node: RealNode) -> None:
    base = node.state_dir / "containerd"
    (base / "cni").mkdir(parents=True, exist_ok=True)
    (base / "cni" / "10-loopback.conflist").write_text(json.dumps(CNI_LOOPBACK))
    config = base / "config.toml"
    config.write_text(_toml(containerd_config(node)))
    log = node.logs / "containerd.log"
    proc = start_process(["containerd", "--config", str(config)], log_path=log)
    node.pids["containerd"] = proc.pid
    wait_until(lambda: node.ctr("version", timeout_s=5).returncode == 0, timeout_s=START_TIMEOUT_S,
               what="containerd", alive=lambda: proc.poll() is None, log_path=log)  # fmt: skip


def _start_kubelet(node: RealNode, labels: Mapping[str, str]) -> None:
    port, healthz_port = free_port(), free_port()
    config = node.state_dir / "kubelet-config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(kubelet_config(node, port=port, healthz_port=healthz_port)))
    argv = [
        str(node.cluster.bin_dir / "kubelet"),
        f"--config={config}",
        # The admin credentials: the test API server authorizes with RBAC only (no Node
        # authorizer), where the system:node role is bound to nobody.
        f"--kubeconfig={node.cluster.kubeconfig}",
        f"--root-dir={node.kubelet_root}",
        f"--cert-dir={node.state_dir / 'kubelet-pki'}",
        f"--hostname-override={node.name}",
        "--node-ip=127.0.0.1",
        "--v=2",
    ]
    if labels:
        argv.append("--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
    log = node.logs / "kubelet.log"
    proc = start_process(argv, log_path=log)
    node.pids["kubelet"] = proc.pid
    wait_until(lambda: http_ok(f"http://127.0.0.1:{healthz_port}/healthz"),
               timeout_s=START_TIMEOUT_S, what="kubelet", alive=lambda: proc.poll() is None,
               log_path=log)  # fmt: skip
    wait_until(node.ready, timeout_s=START_TIMEOUT_S, what=f"Node {node.name} Ready",
               alive=lambda: proc.poll() is None, log_path=log)  # fmt: skip


def pause_image_archive(out_dir: Path) -> Path:
    """An image archive of the pod sandbox: Debian's static `catatonit -P` as /pause."""
    archive = out_dir / "pause.tar"
    if archive.exists():
        return archive
    out_dir.mkdir(parents=True, exist_ok=True)
    exists = subprocess.run(["podman", "image", "exists", PAUSE_IMAGE], check=False)
    if exists.returncode != 0:
        rootfs = out_dir / "pause-rootfs.tar"
        catatonit = shutil.which("catatonit") or "catatonit"
        subprocess.run(["tar", "-C", str(Path(catatonit).parent), "--transform",
                        "s,^catatonit$,pause,", "-cf", str(rootfs), "catatonit"],
                       check=True)  # fmt: skip
        _podman("import", "--change", 'ENTRYPOINT ["/pause", "-P"]', str(rootfs), PAUSE_IMAGE)
    return save_image(PAUSE_IMAGE, archive)


def save_image(image: str, archive: Path) -> Path:
    """`podman save` of `image` to `archive`, for `RealNode.import_image`."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.unlink(missing_ok=True)
    _podman("save", "--format", "docker-archive", "-o", str(archive), image)
    return archive


def _podman(*args: str) -> None:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed: {result.stderr.strip()}")


def _toml(table: Mapping[str, object], prefix: str = "") -> str:
    """Just enough TOML for containerd's config: scalars, strings, lists and nested tables."""
    lines, subtables = [], []
    for key, value in table.items():
        if isinstance(value, Mapping):
            subtables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {json.dumps(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in subtables:
        path = f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key)
        out += f"\n[{path}]\n" + _toml(value, path)
    return out


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)
