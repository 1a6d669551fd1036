"""A typed client for kubelet's PodResources API (v1): which container holds which GPU.

Calls block (with a deadline); async callers run them with `asyncio.to_thread`. Every failure
is a `PodResourcesError`; a caller keeps its last known-good mapping then (safety rule 3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from polca_node.podresources.devices import (
    DeviceId,
    is_gpu_resource,
    parse_device_id,
    resolve_gpu_index,
)
from polca_node.podresources.errors import translate_grpc_errors
from polca_node.podresources.messages import decode_allocatable_response, decode_list_response
from polca_node.podresources.unary_channel import UnaryChannel

__all__ = [
    "DEFAULT_SOCKET",
    "ContainerRef",
    "GpuAssignment",
    "PodResourcesClient",
    "owners_by_device",
    "owners_by_gpu_index",
]

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
_SERVICE = "/v1.PodResourcesLister"
_Answer = TypeVar("_Answer")
# Both requests are empty messages, and an empty message is no bytes at all.
_EMPTY_REQUEST = b""


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
    """Reads GPU assignments from the kubelet over its unix socket. Reuses one connection and
    opens a new one on the next call after the kubelet closed it (a restart)."""

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
        self._channel = UnaryChannel(self.socket_path.absolute())

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PodResourcesClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _unary(self, method: str, decode: Callable[[bytes], _Answer]) -> _Answer:
        with translate_grpc_errors(method):
            return decode(
                self._channel.call(f"{_SERVICE}/{method}", _EMPTY_REQUEST, self.timeout_s)
            )

    def list_gpu_assignments(self) -> tuple[GpuAssignment, ...]:
        """Every GPU device id held by a container on this node (`List`)."""
        pods = self._unary("List", decode_list_response)
        return tuple(
            GpuAssignment(
                device=parse_device_id(device_id),
                resource_name=devices.resource_name,
                owner=ContainerRef(pod.namespace, pod.name, container.name),
            )
            for pod in pods
            for container in pod.containers
            for devices in container.devices
            if self._resource_filter(devices.resource_name)
            for device_id in devices.device_ids
        )

    def allocatable_gpu_devices(self) -> tuple[DeviceId, ...]:
        """Every GPU device id the kubelet can hand out, held or not
        (`GetAllocatableResources`, kubelet >= 1.23)."""
        allocatable = self._unary("GetAllocatableResources", decode_allocatable_response)
        return tuple(
            parse_device_id(device_id)
            for devices in allocatable
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
