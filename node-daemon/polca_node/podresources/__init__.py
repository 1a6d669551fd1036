"""kubelet's PodResources API (v1): which container on this node holds which GPU.

`client.PodResourcesClient` reads it; `devices` parses the NVIDIA device plugin's device ids;
`api_pb2*` are stubs generated from `api.proto` by tools/gen-protos.sh (do not edit). The client
sends the `api_pb2` messages with `unary_channel` (gRPC over the pure-Python h2, framing in
`grpc_wire`), not grpcio: grpcio would cost the daemon ~20 MB. `api_pb2_grpc` (grpcio) is for
the test kubelet in polca_testbed only.
"""

from polca_node.podresources.client import (
    DEFAULT_SOCKET,
    ContainerRef,
    GpuAssignment,
    PodResourcesClient,
    owners_by_device,
    owners_by_gpu_index,
)
from polca_node.podresources.devices import (
    DeviceId,
    DeviceKind,
    is_gpu_resource,
    parse_device_id,
    resolve_gpu_index,
)
from polca_node.podresources.errors import (
    KubeletTimeoutError,
    KubeletUnavailableError,
    KubeletUnsupportedError,
    PodResourcesError,
)

__all__ = [
    "DEFAULT_SOCKET",
    "ContainerRef",
    "DeviceId",
    "DeviceKind",
    "GpuAssignment",
    "KubeletTimeoutError",
    "KubeletUnavailableError",
    "KubeletUnsupportedError",
    "PodResourcesClient",
    "PodResourcesError",
    "is_gpu_resource",
    "owners_by_device",
    "owners_by_gpu_index",
    "parse_device_id",
    "resolve_gpu_index",
]
