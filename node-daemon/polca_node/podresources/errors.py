"""Our PodResources exceptions, and the one place that turns gRPC errors into them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import grpc

__all__ = [
    "KubeletTimeoutError",
    "KubeletUnavailableError",
    "KubeletUnsupportedError",
    "PodResourcesError",
    "translate_grpc_errors",
]


class PodResourcesError(Exception):
    """Reading pod resources from the kubelet failed. Keep the last known-good mapping."""

    reason: ClassVar[str] = "PodResourcesError"

    def __init__(self, message: str, *, method: str = "", status: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.status = status  # the gRPC status code name, e.g. "UNAVAILABLE"

    def __str__(self) -> str:
        return f"kubelet {self.method}: {self.args[0]} ({self.reason})"


class KubeletUnavailableError(PodResourcesError):
    """No kubelet answers on the socket (missing socket, kubelet restarting)."""

    reason = "KubeletUnavailable"


class KubeletTimeoutError(PodResourcesError):
    """The kubelet did not answer within the client's timeout."""

    reason = "KubeletTimeout"


class KubeletUnsupportedError(PodResourcesError):
    """The kubelet does not serve this method (e.g. GetAllocatableResources before 1.23)."""

    reason = "KubeletUnsupported"


_STATUS_TO_ERROR: dict[grpc.StatusCode, type[PodResourcesError]] = {
    grpc.StatusCode.UNAVAILABLE: KubeletUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: KubeletTimeoutError,
    grpc.StatusCode.UNIMPLEMENTED: KubeletUnsupportedError,
}


@contextmanager
def translate_grpc_errors(method: str) -> Iterator[None]:
    """Run a gRPC call; turn any `grpc.RpcError` into the matching `PodResourcesError`."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        cls = _STATUS_TO_ERROR.get(code, PodResourcesError)
        raise cls(details or code.name, method=method, status=code.name) from exc
