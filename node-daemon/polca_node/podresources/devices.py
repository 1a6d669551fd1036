"""Device ids as the NVIDIA device plugin advertises them, and which GPU each one means.

Facts from NVIDIA/k8s-device-plugin (internal/rm/devices.go, internal/rm/device_map.go):
- a device id is the GPU's UUID ("GPU-<uuid>") with the default deviceIDStrategy=uuid, or its
  index ("3") with deviceIDStrategy=index;
- a MIG device's id is its own UUID: "MIG-<uuid>" on drivers >= R470, "MIG-GPU-<gpu uuid>/<gi>/<ci>"
  before; with deviceIDStrategy=index it is "<gpu index>:<mig index>";
- shared GPUs (time-slicing, MPS) are advertised once per replica as "<id>::<replica>"
  (`NewAnnotatedID`), so several containers can hold replicas of one physical GPU;
- resource names: "nvidia.com/gpu"; "nvidia.com/gpu.shared" for shared GPUs when
  renameByDefault is set; "nvidia.com/mig-<profile>" (e.g. "nvidia.com/mig-3g.20gb") under the
  mixed MIG strategy.
Power and clocks are set per physical GPU, so every form resolves to a GPU index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

__all__ = ["DeviceId", "DeviceKind", "is_gpu_resource", "parse_device_id", "resolve_gpu_index"]

_REPLICA_SEPARATOR = "::"
_LEGACY_MIG = re.compile(r"^MIG-(GPU-[0-9A-Fa-f-]+)/\d+/\d+$")
_INDEX = re.compile(r"^(\d+)$")
_MIG_INDEX = re.compile(r"^(\d+):(\d+)$")


class DeviceKind(Enum):
    GPU_UUID = "gpu-uuid"  # GPU-...
    MIG_UUID = "mig-uuid"  # MIG-... (either spelling)
    GPU_INDEX = "gpu-index"  # 3
    MIG_INDEX = "mig-index"  # 3:1
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class DeviceId:
    """One parsed device id."""

    raw: str  # as the kubelet reported it
    base: str  # without the "::<replica>" suffix: the same for every replica of a GPU
    kind: DeviceKind
    replica: int | None = None  # the time-slicing/MPS replica, None when not shared
    gpu_uuid: str | None = None  # the physical GPU's UUID when the id itself names it
    mig_uuid: str | None = None
    gpu_index: int | None = None  # for index-strategy ids


def parse_device_id(raw: str) -> DeviceId:
    """Parse any id the NVIDIA device plugin hands out. Never raises: odd ids are UNKNOWN."""
    base, separator, suffix = raw.partition(_REPLICA_SEPARATOR)
    replica = int(suffix) if separator and suffix.isdigit() else None
    if separator and replica is None:
        base = raw  # "::" followed by something that is no replica number: keep the id whole
    if base.startswith("GPU-"):
        return DeviceId(raw, base, DeviceKind.GPU_UUID, replica, gpu_uuid=base)
    if base.startswith("MIG-"):
        legacy = _LEGACY_MIG.match(base)
        parent = legacy.group(1) if legacy else None
        return DeviceId(raw, base, DeviceKind.MIG_UUID, replica, gpu_uuid=parent, mig_uuid=base)
    if index := _INDEX.match(base):
        return DeviceId(raw, base, DeviceKind.GPU_INDEX, replica, gpu_index=int(index.group(1)))
    if mig_index := _MIG_INDEX.match(base):
        return DeviceId(raw, base, DeviceKind.MIG_INDEX, replica, gpu_index=int(mig_index.group(1)))
    return DeviceId(raw, base, DeviceKind.UNKNOWN, replica)


def resolve_gpu_index(device: DeviceId, index_by_uuid: Mapping[str, int]) -> int | None:
    """The index of the physical GPU behind `device`, or None when this node does not know it.

    `index_by_uuid` maps GPU UUIDs and MIG device UUIDs to GPU indices (see
    `polca_node.gpu.backend.Inventory.index_by_uuid`).
    """
    for uuid in (device.gpu_uuid, device.mig_uuid):
        if uuid is not None and uuid in index_by_uuid:
            return index_by_uuid[uuid]
    return device.gpu_index


def is_gpu_resource(resource_name: str) -> bool:
    """Whether a kubelet resource name is an NVIDIA GPU, a shared GPU or a MIG device."""
    return resource_name in {"nvidia.com/gpu", "nvidia.com/gpu.shared"} or (
        resource_name.startswith("nvidia.com/mig-")
    )
