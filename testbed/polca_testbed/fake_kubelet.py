"""A fake kubelet serving the PodResources API (v1) on a unix socket.

It speaks the same wire protocol as kubelet (the stubs in `polca_node.podresources`), so the node
daemon's real client talks to it unchanged. Tests change pod↔device assignments while it runs,
make it fail (`fail_with`) or slow (`delay_s`)::

    with FakeKubelet(tmp_path / "kubelet.sock") as kubelet:
        kubelet.assign("default", "llm-0", "server", ["GPU-..."])
        ...

For the demo it also runs as a process that serves a JSON file and re-reads it when it changes:

    python -m polca_testbed.fake_kubelet --socket /tmp/kubelet.sock --state state.json

    {"pods": [{"namespace": "default", "name": "llm-0",
               "containers": {"server": {"nvidia.com/gpu": ["GPU-..."]}}}],
     "allocatable": {"nvidia.com/gpu": ["GPU-...", "GPU-..."]},
     "failWith": "UNAVAILABLE", "delaySeconds": 8}      # optional: a failing or slow kubelet
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from polca_node.podresources import api_pb2, api_pb2_grpc

__all__ = ["FakeKubelet", "PodDevices", "main"]

logger = logging.getLogger("polca_testbed.fake_kubelet")

GPU_RESOURCE = "nvidia.com/gpu"

# container name → resource name → device ids
PodDevices = Mapping[str, Mapping[str, Sequence[str]]]


class _Servicer(api_pb2_grpc.PodResourcesListerServicer):  # type: ignore[misc]
    def __init__(self, kubelet: FakeKubelet) -> None:
        self._kubelet = kubelet

    def List(self, _request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        return self._kubelet.serve("List", context)

    def GetAllocatableResources(self, _request: Any, context: Any) -> Any:  # noqa: N802
        return self._kubelet.serve("GetAllocatableResources", context)


class FakeKubelet:
    """PodResourcesLister on `socket_path`, with assignments tests can change at runtime."""

    def __init__(self, socket_path: Path | str, *, max_workers: int = 4) -> None:
        self.socket_path = Path(socket_path)
        self.calls: Counter[str] = Counter()
        self.delay_s = 0.0  # every call waits this long first (a slow kubelet)
        # Fail after sending the answer's HEADERS (the status comes in trailers), not with the
        # trailers-only answer grpcio gives by default.
        self.fail_after_headers = False
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._pods: dict[tuple[str, str], dict[str, dict[str, list[str]]]] = {}
        self._allocatable: dict[str, list[str]] = {}
        self._failures: dict[str | None, grpc.StatusCode] = {}
        self._server: Any = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeKubelet:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)  # a stale socket from a killed run
        self._stopping.clear()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(_Servicer(self), server)
        server.add_insecure_port(f"unix://{self.socket_path.absolute()}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases handlers waiting out delay_s
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- state -------------------------------------------------------------------------------

    def set_pod(self, namespace: str, name: str, containers: PodDevices) -> None:
        """Create or replace a pod: container → resource name → device ids."""
        with self._lock:
            self._pods[(namespace, name)] = {
                container: {resource: list(ids) for resource, ids in resources.items()}
                for container, resources in containers.items()
            }

    def assign(
        self,
        namespace: str,
        pod: str,
        container: str,
        device_ids: Sequence[str],
        *,
        resource_name: str = GPU_RESOURCE,
    ) -> None:
        """Give `container` of `pod` these devices (creating pod and container as needed)."""
        with self._lock:
            resources = self._pods.setdefault((namespace, pod), {}).setdefault(container, {})
            resources[resource_name] = list(device_ids)

    def remove_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self._pods.pop((namespace, name), None)

    def clear(self) -> None:
        with self._lock:
            self._pods.clear()

    def set_allocatable(
        self, device_ids: Sequence[str], *, resource_name: str = GPU_RESOURCE
    ) -> None:
        with self._lock:
            self._allocatable[resource_name] = list(device_ids)

    def fail_with(self, code: grpc.StatusCode | None, *, method: str | None = None) -> None:
        """Answer `method` (every method when None) with `code` until cleared with None."""
        with self._lock:
            if code is None:
                self._failures.pop(method, None)
            else:
                self._failures[method] = code

    def load_state(self, data: Mapping[str, Any]) -> None:
        """Replace everything with the JSON state format of the module docstring."""
        pods = {
            (pod["namespace"], pod["name"]): {
                container: {resource: list(ids) for resource, ids in resources.items()}
                for container, resources in pod.get("containers", {}).items()
            }
            for pod in data.get("pods", [])
        }
        allocatable = {resource: list(ids) for resource, ids in data.get("allocatable", {}).items()}
        fail_with = data.get("failWith")
        failures: dict[str | None, grpc.StatusCode] = {}
        if fail_with is not None:
            failures[None] = grpc.StatusCode[fail_with]
        with self._lock:
            self._pods = pods
            self._allocatable = allocatable
            self._failures = failures
            self.delay_s = float(data.get("delaySeconds", 0.0))

    # -- serving -----------------------------------------------------------------------------

    def serve(self, method: str, context: Any) -> Any:
        """Answer one call (the servicer's hook): count it, delay or fail it as told."""
        with self._lock:
            self.calls[method] += 1
            code = self._failures.get(method, self._failures.get(None))
        if self.delay_s > 0:
            self._stopping.wait(self.delay_s)
        if code is not None:
            if self.fail_after_headers:
                context.send_initial_metadata(())
            context.abort(code, f"fake kubelet told to fail {method}")
        return self.list_response() if method == "List" else self.allocatable_response()

    def list_response(self) -> Any:
        with self._lock:
            return api_pb2.ListPodResourcesResponse(
                pod_resources=[
                    api_pb2.PodResources(
                        namespace=namespace,
                        name=name,
                        containers=[
                            api_pb2.ContainerResources(
                                name=container,
                                devices=[
                                    api_pb2.ContainerDevices(resource_name=resource, device_ids=ids)
                                    for resource, ids in resources.items()
                                ],
                            )
                            for container, resources in containers.items()
                        ],
                    )
                    for (namespace, name), containers in self._pods.items()
                ]
            )

    def allocatable_response(self) -> Any:
        with self._lock:
            return api_pb2.AllocatableResourcesResponse(
                devices=[
                    api_pb2.ContainerDevices(resource_name=resource, device_ids=ids)
                    for resource, ids in self._allocatable.items()
                ]
            )


def _serve_state_file(kubelet: FakeKubelet, state_path: Path, poll_s: float) -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    seen: tuple[int, int] | None = None
    while not stop.is_set():
        with contextlib.suppress(OSError):
            stat = state_path.stat()
            if (stat.st_mtime_ns, stat.st_size) != seen:
                seen = (stat.st_mtime_ns, stat.st_size)
                try:
                    kubelet.load_state(json.loads(state_path.read_text(encoding="utf-8")))
                    logger.info("loaded %s", state_path)
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    logger.warning("keeping the previous state: %s: %s", state_path, exc)
        stop.wait(poll_s)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m polca_testbed.fake_kubelet",
        description="Serve kubelet's PodResources API (v1) on a unix socket from a JSON file.",
    )
    parser.add_argument("--socket", type=Path, required=True, help="unix socket path to serve on")
    parser.add_argument(
        "--state",
        type=Path,
        required=True,
        help="JSON file with 'pods' and 'allocatable' (see the module docstring); re-read",
    )
    parser.add_argument("--poll-s", type=float, default=0.2, help="how often to check the file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fake-kubelet %(message)s")
    with FakeKubelet(args.socket) as kubelet:
        logger.info("serving on %s", args.socket)
        _serve_state_file(kubelet, args.state, args.poll_s)


if __name__ == "__main__":
    main()
