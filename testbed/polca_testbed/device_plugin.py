"""A fake NVIDIA device plugin: kubelet's real device-plugin API (v1beta1) advertising
`nvidia.com/gpu` devices whose IDs are the fake NVML's GPU UUIDs for the node.

With it a real kubelet assigns "GPUs" to pods that request `nvidia.com/gpu`, and its real
PodResources socket reports which pod holds which UUID; the node daemon, running the fake NVML
seeded by the same node name, then finds those UUIDs among its GPUs::

    with FakeGpuDevicePlugin(node.device_plugin_dir, "H100-SXM:8", node_name=node.name):
        ...  # the Node's allocatable nvidia.com/gpu is 8 once the kubelet lists the devices

Tests run it as a process of its own, as a real plugin runs (a gRPC server's threads in the test
process would make every later fork of that process unsafe)::

    python -m polca_testbed.device_plugin --dir /var/lib/kubelet/device-plugins \
        --profile H100-SXM:8 --node-name gpu-node-1

Allocate answers with NVIDIA_VISIBLE_DEVICES (as NVIDIA's plugin does, in its env strategy);
nothing is mounted, since there is no device to mount.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from polca_node.fake_gpus import fake_gpu_uuids
from polca_testbed.deviceplugin import api_pb2, api_pb2_grpc

logger = logging.getLogger("polca_testbed.device_plugin")

API_VERSION = "v1beta1"
GPU_RESOURCE = "nvidia.com/gpu"
KUBELET_SOCKET = "kubelet.sock"  # the Registration service, in the device-plugin directory


def allocate_response(requests: Sequence[Sequence[str]]) -> Any:
    """The answer to Allocate for containers requesting these device IDs (pure)."""
    return api_pb2.AllocateResponse(container_responses=[
        api_pb2.ContainerAllocateResponse(envs={"NVIDIA_VISIBLE_DEVICES": ",".join(ids)})
        for ids in requests
    ])  # fmt: skip


class _Servicer(api_pb2_grpc.DevicePluginServicer):  # type: ignore[misc]
    def __init__(self, plugin: FakeGpuDevicePlugin) -> None:
        self._plugin = plugin

    def GetDevicePluginOptions(self, _request: Any, _context: Any) -> Any:  # noqa: N802
        return api_pb2.DevicePluginOptions()

    def ListAndWatch(self, _request: Any, context: Any) -> Iterator[Any]:  # noqa: N802
        # One list, then hold the stream open: the kubelet reads a closed stream as the plugin
        # gone and marks every device unhealthy.
        yield api_pb2.ListAndWatchResponse(devices=[
            api_pb2.Device(ID=uuid, health="Healthy") for uuid in self._plugin.uuids
        ])  # fmt: skip
        while context.is_active() and not self._plugin.stopping.wait(0.5):
            pass

    def Allocate(self, request: Any, _context: Any) -> Any:  # noqa: N802
        return allocate_response([list(c.devices_ids) for c in request.container_requests])

    def GetPreferredAllocation(self, _request: Any, _context: Any) -> Any:  # noqa: N802
        return api_pb2.PreferredAllocationResponse()

    def PreStartContainer(self, _request: Any, _context: Any) -> Any:  # noqa: N802
        return api_pb2.PreStartContainerResponse()


class FakeGpuDevicePlugin:
    """Serves the DevicePlugin service next to the kubelet's socket and registers with it."""

    def __init__(self, plugin_dir: Path, profile: str, *, node_name: str,
                 endpoint: str = "polca-fake-gpu.sock") -> None:  # fmt: skip
        self.plugin_dir = plugin_dir
        self.endpoint = endpoint
        self.uuids = fake_gpu_uuids(profile, node_name=node_name)
        self.stopping = threading.Event()
        self._server: grpc.Server | None = None

    def start(self) -> None:
        socket = self.plugin_dir / self.endpoint
        socket.unlink(missing_ok=True)
        # One worker per open ListAndWatch stream plus the short calls.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_DevicePluginServicer_to_server(_Servicer(self), server)
        server.add_insecure_port(f"unix://{socket}")
        server.start()
        self._server = server
        self.register()

    def register(self) -> None:
        """Register with the kubelet (again after a kubelet restart, as real plugins do)."""
        kubelet = f"unix://{self.plugin_dir / KUBELET_SOCKET}"
        with grpc.insecure_channel(kubelet) as channel:
            api_pb2_grpc.RegistrationStub(channel).Register(
                api_pb2.RegisterRequest(version=API_VERSION, endpoint=self.endpoint,
                                        resource_name=GPU_RESOURCE),
                timeout=10,
            )  # fmt: skip

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.stop(grace=1).wait()
            self._server = None
        (self.plugin_dir / self.endpoint).unlink(missing_ok=True)

    def __enter__(self) -> FakeGpuDevicePlugin:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m polca_testbed.device_plugin",
        description="Fake NVIDIA device plugin: the fake NVML's GPUs as nvidia.com/gpu.",
    )
    parser.add_argument("--dir", type=Path, required=True, help="kubelet's device-plugin dir")
    parser.add_argument("--profile", required=True, help="fake GPUs, e.g. H100-SXM:8")
    parser.add_argument("--node-name", required=True, help="seeds the UUIDs, as in the daemon")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with FakeGpuDevicePlugin(args.dir, args.profile, node_name=args.node_name) as plugin:
        logger.info("registered %s: %s", GPU_RESOURCE, ", ".join(plugin.uuids))
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
