"""Unary gRPC calls over HTTP/2 (h2c, prior knowledge) on a unix socket, with the pure-Python
`h2`: the kubelet's PodResources API needs nothing more, and grpcio costs the daemon ~20 MB.

One connection, opened on the first call and reused; a connection the server closed or sent
GOAWAY on is replaced on the next call. Every call has a deadline: it bounds the connect, each
send and each receive, and travels as grpc-timeout. A call that times out closes the
connection (the server then cancels its handler). Calls block; a lock makes one channel safe
to share between threads, one call at a time.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

from polca_node.podresources.grpc_wire import (
    MAX_MESSAGE_BYTES,
    MessageReader,
    RpcError,
    call_status,
    encode_message,
    request_headers,
    status_from_http,
    status_from_reset,
)

__all__ = ["UnaryChannel"]

_READ_BYTES = 64 * 1024
# gRPC clients name a unix-socket server "localhost" (grpc-go's default authority).
_AUTHORITY = "localhost"
# Client stream ids are odd and below 2**31; start afresh well before they run out.
_LAST_STREAM_ID = 2**31 - 1 - 2


class _ConnectionLostError(Exception):
    """The connection ended under a call; `retry` when the server cannot have handled it."""

    def __init__(self, details: str, *, retry: bool) -> None:
        super().__init__(details)
        self.retry = retry


class _Connection:
    """One HTTP/2 connection on a connected socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.h2.update_settings({SettingCodes.ENABLE_PUSH: 0})
        self.reusable = True  # False after GOAWAY: finish the call at hand, then replace it

    def flush(self, deadline: float) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.settimeout(_remaining_s(deadline))
            self.sock.sendall(data)

    def receive(self, deadline: float) -> list[Event]:
        """Block for the next bytes; their events. EOF raises `_ConnectionLostError`."""
        self.sock.settimeout(_remaining_s(deadline))
        data = self.sock.recv(_READ_BYTES)
        if not data:
            raise _ConnectionLostError("the server closed the connection", retry=False)
        events = self.h2.receive_data(data)
        self.flush_acks(deadline)
        return events

    def flush_acks(self, deadline: float) -> None:
        """Send SETTINGS and PING acknowledgements and window updates. A server that closed
        the connection may still have sent the whole answer: read on rather than fail."""
        try:
            self.flush(deadline)
        except (BrokenPipeError, ConnectionResetError):
            self.reusable = False

    def drain_idle(self) -> None:
        """Read what the server sent while no call ran (GOAWAY, PING, EOF) without blocking;
        mark the connection unusable when it is going away."""
        self.sock.settimeout(0)  # non-blocking: a timeout would make recv wait
        while self.reusable:
            try:
                data = self.sock.recv(_READ_BYTES)
            except BlockingIOError:
                return
            except OSError:
                self.reusable = False
                return
            if not data:
                self.reusable = False
                return
            try:
                events = self.h2.receive_data(data)
            except H2Error:
                events, self.reusable = [], False
            if any(isinstance(event, ConnectionTerminated) for event in events):
                self.reusable = False

    def close(self) -> None:
        self.sock.close()


def _remaining_s(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return remaining


class UnaryChannel:
    """Unary gRPC calls to the server on `socket_path`."""

    def __init__(self, socket_path: Path, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.socket_path = socket_path
        self._max_message_bytes = max_message_bytes
        self._lock = threading.Lock()
        self._connection: _Connection | None = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> UnaryChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, path: str, request: bytes, timeout_s: float) -> bytes:
        """The one response message of the unary method `path` ("/package.Service/Method").

        Raises `RpcError` with the status: the server's, or UNAVAILABLE (no server, connection
        lost), DEADLINE_EXCEEDED (no answer within `timeout_s`), INTERNAL (a protocol error).
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            try:
                return self._call_with_retry(path, request, deadline)
            except TimeoutError:
                self._drop()
                raise RpcError("DEADLINE_EXCEEDED", f"no answer within {timeout_s:g} s") from None
            except _ConnectionLostError as exc:
                self._drop()
                raise RpcError("UNAVAILABLE", str(exc)) from None
            except OSError as exc:
                self._drop()
                raise RpcError("UNAVAILABLE", f"unix:{self.socket_path}: {exc}") from None
            except H2Error as exc:
                self._drop()
                raise RpcError("INTERNAL", f"HTTP/2 protocol error: {exc}") from None

    def _call_with_retry(self, path: str, request: bytes, deadline: float) -> bytes:
        connection, reused = self._connected(deadline)
        try:
            return self._call_once(connection, path, request, deadline)
        except (_ConnectionLostError, BrokenPipeError, ConnectionResetError) as exc:
            # A kept connection the server dropped between calls (a restart) and we had not
            # noticed yet: try a fresh one once, as gRPC's transparent retry does. Our calls
            # only read, so a reset mid-answer may be retried too.
            retry = exc.retry if isinstance(exc, _ConnectionLostError) else True
            self._drop()
            if not (reused and retry):
                raise
        connection, _ = self._connected(deadline)
        return self._call_once(connection, path, request, deadline)

    def _connected(self, deadline: float) -> tuple[_Connection, bool]:
        """The connection to use, and whether it served earlier calls."""
        connection = self._connection
        if connection is not None:
            connection.drain_idle()
            if (
                connection.reusable
                and connection.h2.state_machine.state is not ConnectionState.CLOSED
                and connection.h2.highest_outbound_stream_id < _LAST_STREAM_ID
            ):
                return connection, True
            self._drop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_remaining_s(deadline))
            sock.connect(str(self.socket_path))
            connection = _Connection(sock)
            connection.flush(deadline)
        except BaseException:
            sock.close()
            raise
        self._connection = connection
        return connection, False

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _call_once(
        self, connection: _Connection, path: str, request: bytes, deadline: float
    ) -> bytes:
        conn = connection.h2
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, request_headers(path, _AUTHORITY, _remaining_s(deadline)))
        body = encode_message(request)
        if len(body) > min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size):
            raise ValueError(f"a request of {len(body)} bytes does not fit in one DATA frame")
        conn.send_data(stream_id, body, end_stream=True)
        connection.flush(deadline)

        answer = _Answer(conn, stream_id, MessageReader(self._max_message_bytes))
        while True:
            try:
                events = connection.receive(deadline)
            except _ConnectionLostError as exc:
                raise _ConnectionLostError(str(exc), retry=not answer.answered) from None
            ended = False
            for event in events:  # all of them: a GOAWAY may follow the end of our stream
                if isinstance(event, ConnectionTerminated):
                    connection.reusable = False
                    if (event.last_stream_id or 0) < stream_id:  # it never handled our stream
                        raise _ConnectionLostError("the server sent GOAWAY", retry=True)
                    continue
                try:
                    ended = answer.take(event) or ended
                except RpcError:
                    # The server may still be sending on this stream: the next call starts
                    # on a fresh connection rather than on one whose window it fills.
                    connection.reusable = False
                    raise
            connection.flush_acks(deadline)  # window updates for the data just read
            if ended:
                return answer.message()


class _Answer:
    """What the server has sent on one call's stream so far."""

    def __init__(self, conn: H2Connection, stream_id: int, reader: MessageReader) -> None:
        self._conn = conn
        self._stream_id = stream_id
        self._reader = reader
        self.answered = False  # the server's HEADERS arrived: it has handled the call
        self._status: tuple[str, str] | None = None

    def take(self, event: Event) -> bool:
        """Take one event; True when the stream has ended."""
        if getattr(event, "stream_id", None) != self._stream_id:
            return False
        if isinstance(event, ResponseReceived):
            self.answered = True
            self._status = call_status(event.headers)  # a trailers-only answer
            if self._status is None and (error := status_from_http(event.headers)):
                raise error
        elif isinstance(event, DataReceived):
            self._conn.acknowledge_received_data(event.flow_controlled_length, self._stream_id)
            self._reader.feed(event.data)
        elif isinstance(event, TrailersReceived):
            self._status = call_status(event.headers)
        elif isinstance(event, StreamReset):
            raise status_from_reset(int(event.error_code))
        return isinstance(event, StreamEnded)

    def message(self) -> bytes:
        """The answer of the ended stream, or its error."""
        if self._status is None:
            raise RpcError("INTERNAL", "the answer ended without grpc-status")
        code, details = self._status
        if code != "OK":
            raise RpcError(code, details or code)
        messages = self._reader.messages
        if self._reader.partial or len(messages) != 1:
            raise RpcError("INTERNAL", f"{len(messages)} messages in a unary answer")
        return messages[0]
