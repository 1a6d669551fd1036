"""kubelet's PodResources API (v1): which container on this node holds which GPU.

`client.PodResourcesClient` reads it; `devices` parses the NVIDIA device plugin's device ids;
`api_pb2*` are stubs generated from `api.proto` by tools/gen-protos.sh (do not edit). The client
calls the kubelet with `unary_channel` (gRPC over the pure-Python h2, framing in `grpc_wire`)
and decodes its answers with `messages`, not with grpcio and the protobuf runtime, which would
cost the daemon ~24 MB; `api_pb2` and `api_pb2_grpc` serve the test kubelet (polca_testbed) and
check `messages` in the tests.
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
