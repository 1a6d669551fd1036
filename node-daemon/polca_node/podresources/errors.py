"""Our PodResources exceptions, and the one place that turns gRPC errors into them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from polca_node.podresources.grpc_wire import RpcError
from polca_node.podresources.messages import DecodeError

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


_STATUS_TO_ERROR: dict[str, type[PodResourcesError]] = {
    "UNAVAILABLE": KubeletUnavailableError,
    "DEADLINE_EXCEEDED": KubeletTimeoutError,
    "UNIMPLEMENTED": KubeletUnsupportedError,
}


@contextmanager
def translate_grpc_errors(method: str) -> Iterator[None]:
    """Run a gRPC call and read its answer; turn an `RpcError` or an unreadable answer into
    the matching `PodResourcesError`."""
    try:
        yield
    except RpcError as exc:
        cls = _STATUS_TO_ERROR.get(exc.code, PodResourcesError)
        raise cls(exc.details or exc.code, method=method, status=exc.code) from exc
    except DecodeError as exc:  # what grpcio reports as INTERNAL
        raise PodResourcesError(
            f"unreadable answer: {exc}", method=method, status="INTERNAL"
        ) from exc
