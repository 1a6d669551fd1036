"""A scripted HTTP/2 (h2c) server on a unix socket, for the gRPC answers a grpcio server never
gives: messages split into tiny DATA frames, errors in trailers after a message, HTTP errors,
resets, GOAWAY, a connection closed between or during calls.

Each request is answered by `script(path) -> Reply`; the server honours HTTP/2 flow control, so
a big answer arrives only if the client acknowledges what it has read::

    with ScriptedH2Server(sock, lambda path: Reply(messages=[b"..."])) as server:
        ...
        assert server.connections == 1
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived, StreamEnded
from h2.exceptions import H2Error

__all__ = ["OK_TRAILERS", "Reply", "ScriptedH2Server", "frame_message"]

OK_TRAILERS = ((b"grpc-status", b"0"),)
GRPC_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))


def frame_message(payload: bytes, *, compressed: bool = False) -> bytes:
    return bytes([int(compressed)]) + len(payload).to_bytes(4, "big") + payload


@dataclass(frozen=True)
class Reply:
    """How to answer one request."""

    headers: tuple[tuple[bytes, bytes], ...] = GRPC_HEADERS
    messages: tuple[bytes, ...] = ()  # framed by `frame_message` unless `raw_body` is given
    raw_body: bytes | None = None
    data_frame_bytes: int = 16_384  # split the body into DATA frames of at most this size
    trailers: tuple[tuple[bytes, bytes], ...] | None = OK_TRAILERS  # None: end with the data
    trailers_only: bool = False  # one HEADERS frame: `headers` + `trailers`, ending the stream
    reset_code: int | None = None  # reset the stream with this error code instead of answering
    close_without_answer: bool = False
    goaway_after: bool = False  # send GOAWAY after the answer, then close the connection
    close_after: bool = False  # close the connection after the answer (no GOAWAY)


@dataclass
class _Seen:
    connections: int = 0
    requests: list[dict[bytes, bytes]] = field(default_factory=list)


class ScriptedH2Server:
    def __init__(self, socket_path: Path, script: Callable[[str], Reply]) -> None:
        self.socket_path = socket_path
        self._script = script
        self._seen = _Seen()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []

    @property
    def connections(self) -> int:
        with self._lock:
            return self._seen.connections

    @property
    def requests(self) -> list[dict[bytes, bytes]]:
        """The request headers received so far."""
        with self._lock:
            return list(self._seen.requests)

    def start(self) -> ScriptedH2Server:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        listener.listen()
        self._listener = listener
        self._spawn(self._accept_loop, listener)
        return self

    def stop(self) -> None:
        if self._listener is not None:
            # shutdown wakes the blocked accept() (close alone does not on Linux)
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=10)
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> ScriptedH2Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._seen.connections += 1
                self._open.append(sock)
            self._spawn(self._serve, sock)

    def _serve(self, sock: socket.socket) -> None:
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        with contextlib.suppress(OSError, H2Error), sock:
            sock.sendall(conn.data_to_send())
            requests: dict[int, str] = {}
            while data := sock.recv(65_536):
                for event in conn.receive_data(data):
                    if isinstance(event, RequestReceived):
                        headers = dict(event.headers)
                        with self._lock:
                            self._seen.requests.append(headers)
                        requests[event.stream_id] = headers[b":path"].decode()
                    elif isinstance(event, StreamEnded) and event.stream_id in requests:
                        reply = self._script(requests.pop(event.stream_id))
                        if not self._answer(sock, conn, event.stream_id, reply):
                            return
                sock.sendall(conn.data_to_send())

    def _answer(
        self, sock: socket.socket, conn: H2Connection, stream_id: int, reply: Reply
    ) -> bool:
        """Answer one request; False when the connection is to be closed."""
        if reply.close_without_answer:
            return False
        if reply.reset_code is not None:
            conn.reset_stream(stream_id, reply.reset_code)
            sock.sendall(conn.data_to_send())
            return True
        if reply.trailers_only:
            conn.send_headers(stream_id, [*reply.headers, *(reply.trailers or ())], end_stream=True)
        else:
            conn.send_headers(stream_id, list(reply.headers))
            body = reply.raw_body
            if body is None:
                body = b"".join(frame_message(m) for m in reply.messages)
            self._send_body(sock, conn, stream_id, body, reply)
            if reply.trailers is not None:
                conn.send_headers(stream_id, list(reply.trailers), end_stream=True)
            elif not body:
                conn.end_stream(stream_id)
        if reply.goaway_after:
            conn.close_connection(last_stream_id=stream_id)
        sock.sendall(conn.data_to_send())
        return not (reply.goaway_after or reply.close_after)

    def _send_body(
        self, sock: socket.socket, conn: H2Connection, stream_id: int, body: bytes, reply: Reply
    ) -> None:
        """Send `body` in DATA frames, waiting for the client's window updates as needed."""
        offset = 0
        while offset < len(body):
            window = min(conn.local_flow_control_window(stream_id), reply.data_frame_bytes,
                         conn.max_outbound_frame_size)  # fmt: skip
            if window <= 0:
                sock.sendall(conn.data_to_send())
                data = sock.recv(65_536)
                if not data:
                    raise OSError("the client closed the connection")
                conn.receive_data(data)  # h2 opens the window on WINDOW_UPDATE
                continue
            chunk = body[offset : offset + window]
            last = offset + len(chunk) == len(body) and reply.trailers is None
            conn.send_data(stream_id, chunk, end_stream=last)
            offset += len(chunk)
        sock.sendall(conn.data_to_send())
