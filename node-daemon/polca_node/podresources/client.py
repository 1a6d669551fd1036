"""A typed client for kubelet's PodResources API (v1): which container holds which GPU.

Calls block (with a deadline); async callers run them with `asyncio.to_thread`. Every failure
is a `PodResourcesError`; a caller keeps its last known-good mapping then (safety rule 3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from polca_node.podresources import api_pb2, api_pb2_grpc
from polca_node.podresources.devices import (
    DeviceId,
    is_gpu_resource,
    parse_device_id,
    resolve_gpu_index,
)
from polca_node.podresources.errors import translate_grpc_errors

__all__ = [
    "DEFAULT_SOCKET",
    "ContainerRef",
    "GpuAssignment",
    "PodResourcesClient",
    "owners_by_device",
    "owners_by_gpu_index",
]

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")

# Kubernetes' own PodResources clients (e.g. the e2e_node tests) use 16 MiB messages.
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# After a kubelet restart, reconnect within seconds rather than gRPC's default 120 s backoff.
_MAX_RECONNECT_BACKOFF_MS = 5_000


@dataclass(frozen=True, slots=True, order=True)
class ContainerRef:
    namespace: str
    pod: str
    container: str


@dataclass(frozen=True, slots=True)
class GpuAssignment:
    """One GPU device id held by one container."""

    device: DeviceId
    resource_name: str
    owner: ContainerRef


class PodResourcesClient:
    """Reads GPU assignments from the kubelet over its unix socket. Reuses one channel."""

    def __init__(
        self,
        socket_path: Path | str = DEFAULT_SOCKET,
        *,
        timeout_s: float = 5.0,
        resource_filter: Callable[[str], bool] = is_gpu_resource,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s
        self._resource_filter = resource_filter
        self._channel: grpc.Channel | None = None
        self._stub: Any = None

    def _lister(self) -> Any:
        if self._stub is None:
            self._channel = grpc.insecure_channel(
                f"unix://{self.socket_path.absolute()}",
                options=[
                    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                    ("grpc.max_reconnect_backoff_ms", _MAX_RECONNECT_BACKOFF_MS),
                ],
            )
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        return self._stub

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._stub = None

    def __enter__(self) -> PodResourcesClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def list_gpu_assignments(self) -> tuple[GpuAssignment, ...]:
        """Every GPU device id held by a container on this node (`List`)."""
        with translate_grpc_errors("List"):
            response = self._lister().List(
                api_pb2.ListPodResourcesRequest(), timeout=self.timeout_s
            )
        return tuple(
            GpuAssignment(
                device=parse_device_id(device_id),
                resource_name=devices.resource_name,
                owner=ContainerRef(pod.namespace, pod.name, container.name),
            )
            for pod in response.pod_resources
            for container in pod.containers
            for devices in container.devices
            if self._resource_filter(devices.resource_name)
            for device_id in devices.device_ids
        )

    def allocatable_gpu_devices(self) -> tuple[DeviceId, ...]:
        """Every GPU device id the kubelet can hand out, held or not
        (`GetAllocatableResources`, kubelet >= 1.23)."""
        with translate_grpc_errors("GetAllocatableResources"):
            response = self._lister().GetAllocatableResources(
                api_pb2.AllocatableResourcesRequest(), timeout=self.timeout_s
            )
        return tuple(
            parse_device_id(device_id)
            for devices in response.devices
            if self._resource_filter(devices.resource_name)
            for device_id in devices.device_ids
        )


def owners_by_device(assignments: Iterable[GpuAssignment]) -> dict[str, tuple[ContainerRef, ...]]:
    """Device id without replica suffix → the containers holding it (several when shared)."""
    owners: dict[str, set[ContainerRef]] = {}
    for assignment in assignments:
        owners.setdefault(assignment.device.base, set()).add(assignment.owner)
    return {device: tuple(sorted(refs)) for device, refs in owners.items()}


def owners_by_gpu_index(
    assignments: Iterable[GpuAssignment], index_by_uuid: Mapping[str, int]
) -> tuple[dict[int, tuple[ContainerRef, ...]], tuple[GpuAssignment, ...]]:
    """Physical GPU index → the containers using it, and the assignments no local GPU matches.

    MIG devices and time-sliced replicas of one GPU all count for that GPU.
    """
    owners: dict[int, set[ContainerRef]] = {}
    unresolved: list[GpuAssignment] = []
    for assignment in assignments:
        index = resolve_gpu_index(assignment.device, index_by_uuid)
        if index is None:
            unresolved.append(assignment)
        else:
            owners.setdefault(index, set()).add(assignment.owner)
    return {index: tuple(sorted(refs)) for index, refs in owners.items()}, tuple(unresolved)
