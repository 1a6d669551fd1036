"""gRPC's wire format over HTTP/2 for unary calls, as pure functions (no sockets).

Facts from grpc/grpc doc/PROTOCOL-HTTP2.md and doc/statuscodes.md:
- a call is one HTTP/2 stream: request HEADERS (POST, content-type application/grpc, te
  trailers, grpc-timeout), then length-prefixed messages: 1 byte compressed flag, 4 bytes
  big-endian length, the protobuf bytes;
- the answer is HEADERS (:status 200), the messages, then trailers with grpc-status and a
  percent-encoded grpc-message. A call that fails before any message may answer with the
  trailers only: one HEADERS frame holding :status and grpc-status, ending the stream;
- an HTTP status other than 200 or a reset stream map to fixed gRPC codes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from urllib.parse import unquote

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MessageReader",
    "RpcError",
    "call_status",
    "encode_message",
    "request_headers",
    "status_from_http",
    "status_from_reset",
    "timeout_header",
]

# Kubernetes' own PodResources clients (e.g. the e2e_node tests) use 16 MiB messages.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_PREFIX_BYTES = 5

# Index = the code's number (doc/statuscodes.md).
STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip

# doc/http-grpc-status-mapping.md: an answer without grpc-status and with this HTTP status.
_HTTP_TO_STATUS = {400: "INTERNAL", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                   404: "UNIMPLEMENTED", 429: "UNAVAILABLE", 502: "UNAVAILABLE",
                   503: "UNAVAILABLE", 504: "UNAVAILABLE"}  # fmt: skip
# PROTOCOL-HTTP2.md, "Errors": RST_STREAM error code → status (others: INTERNAL).
_RESET_TO_STATUS = {0x7: "UNAVAILABLE", 0x8: "CANCELLED", 0xB: "RESOURCE_EXHAUSTED",
                    0xC: "PERMISSION_DENIED"}  # fmt: skip
# grpc-timeout: at most 8 digits, then the unit.
_TIMEOUT_DIGITS_MAX = 99_999_999


class RpcError(Exception):
    """A unary call ended with a non-OK gRPC status (a status code name, e.g. "UNAVAILABLE")."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


def timeout_header(timeout_s: float) -> bytes:
    """The grpc-timeout value for `timeout_s`, rounded up to whole milliseconds (or seconds
    when that needs more than 8 digits)."""
    millis = max(1, math.ceil(timeout_s * 1000))
    if millis <= _TIMEOUT_DIGITS_MAX:
        return f"{millis}m".encode()
    return f"{min(math.ceil(timeout_s), _TIMEOUT_DIGITS_MAX)}S".encode()


def request_headers(path: str, authority: str, timeout_s: float) -> list[tuple[bytes, bytes]]:
    """The HEADERS of a unary call to `path` ("/package.Service/Method")."""
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", authority.encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"grpc-timeout", timeout_header(timeout_s)),
        (b"user-agent", b"polca-node"),
    ]


def encode_message(payload: bytes) -> bytes:
    """One uncompressed length-prefixed message."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class MessageReader:
    """Reassembles length-prefixed messages from DATA frames split anywhere."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self.messages: list[bytes] = []

    def feed(self, data: bytes) -> None:
        """Take more DATA; raise `RpcError` for a message we cannot read."""
        self._buffer += data
        while len(self._buffer) >= _PREFIX_BYTES:
            if self._buffer[0] != 0:  # we never offer an encoding, so none may be used
                raise RpcError("INTERNAL", "compressed message, but no encoding was offered")
            length = int.from_bytes(self._buffer[1:_PREFIX_BYTES], "big")
            if length > self._max_message_bytes:
                raise RpcError(
                    "RESOURCE_EXHAUSTED",
                    f"message of {length} bytes, more than {self._max_message_bytes}",
                )
            end = _PREFIX_BYTES + length
            if len(self._buffer) < end:
                return
            self.messages.append(bytes(self._buffer[_PREFIX_BYTES:end]))
            del self._buffer[:end]

    @property
    def partial(self) -> bool:
        """Whether bytes of an unfinished message are waiting."""
        return bool(self._buffer)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


def call_status(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, str] | None:
    """(status code name, message) from trailers, or None when they hold no grpc-status."""
    headers = list(headers)
    raw_code = _header(headers, b"grpc-status")
    if raw_code is None:
        return None
    message = unquote(_header(headers, b"grpc-message") or b"", errors="replace")
    code = int(raw_code) if raw_code.isdigit() else -1
    if not 0 <= code < len(STATUS_NAMES):
        return "UNKNOWN", f"grpc-status {raw_code!r} {message}".rstrip()
    return STATUS_NAMES[code], message


def status_from_http(headers: Iterable[tuple[bytes, bytes]]) -> RpcError | None:
    """The error an answer's first HEADERS mean by themselves (an HTTP error, not gRPC at
    all), or None when the call may go on."""
    headers = list(headers)
    raw_status = _header(headers, b":status") or b""
    status = int(raw_status) if raw_status.isdigit() else 0
    if status != 200:
        code = _HTTP_TO_STATUS.get(status, "UNKNOWN")
        return RpcError(code, f"HTTP status {raw_status.decode(errors='replace')}")
    content_type = _header(headers, b"content-type") or b""
    if not content_type.startswith(b"application/grpc"):
        return RpcError("UNKNOWN", f"content-type {content_type.decode(errors='replace')!r}")
    return None


def status_from_reset(error_code: int) -> RpcError:
    """The error a stream reset by the server means."""
    return RpcError(_RESET_TO_STATUS.get(error_code, "INTERNAL"), f"stream reset ({error_code})")
