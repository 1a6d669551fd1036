"""The unary gRPC channel against a scripted HTTP/2 server: the answers a grpcio server never
gives (tests/unit/node/podresources/test_podresources_client.py runs it against grpcio)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from polca_node.podresources.grpc_wire import RpcError
from polca_node.podresources.unary_channel import UnaryChannel
from polca_testbed.scripted_h2_server import GRPC_HEADERS, Reply, ScriptedH2Server, frame_message

PATH = "/v1.PodResourcesLister/List"
ANSWER = b"\x0a\x03abc" * 1000


@pytest.fixture
def serve(socket_path: Path) -> Iterator[Callable[[Callable[[str], Reply]], ScriptedH2Server]]:
    servers: list[ScriptedH2Server] = []

    def start(script: Callable[[str], Reply]) -> ScriptedH2Server:
        servers.append(ScriptedH2Server(socket_path, script).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def channel(socket_path: Path) -> Iterator[UnaryChannel]:
    reader = UnaryChannel(socket_path)
    yield reader
    reader.close()


def _code(channel: UnaryChannel, timeout_s: float = 5.0) -> str:
    with pytest.raises(RpcError) as caught:
        channel.call(PATH, b"", timeout_s)
    return caught.value.code


class TestAnswers:
    def test_request_headers_and_body(
        self, serve: Callable[..., ScriptedH2Server], channel: UnaryChannel
    ) -> None:
        server = serve(lambda path: Reply(messages=(path.encode(),)))
        assert channel.call(PATH, b"", 5.0) == PATH.encode()
        (request,) = server.requests
        assert request[b":method"] == b"POST"
        assert request[b":scheme"] == b"http"
        assert request[b":path"] == PATH.encode()
        assert request[b"content-type"] == b"application/grpc"
        assert request[b"te"] == b"trailers"
        assert request[b"grpc-timeout"].endswith(b"m")
        assert 0 < int(request[b"grpc-timeout"][:-1]) <= 5000

    def test_message_split_into_tiny_data_frames(
        self, serve: Callable[..., ScriptedH2Server], channel: UnaryChannel
    ) -> None:
        serve(lambda _: Reply(messages=(ANSWER,), data_frame_bytes=7))
        assert channel.call(PATH, b"", 10.0) == ANSWER

    def test_answer_beyond_the_initial_flow_control_window(
        self, serve: Callable[..., ScriptedH2Server], channel: UnaryChannel
    ) -> None:
        # The server sends no more than the client's window (64 KiB): 3 MiB arrive only if
        # the client hands the window back as it reads.
        big = bytes(range(256)) * (3 * 4096)
        serve(lambda _: Reply(messages=(big,)))
        assert channel.call(PATH, b"", 20.0) == big

    def test_one_connection_serves_many_calls(
        self, serve: Callable[..., ScriptedH2Server], channel: UnaryChannel
    ) -> None:
        server = serve(lambda _: Reply(messages=(b"x",)))
        for _ in range(5):
            assert channel.call(PATH, b"", 5.0) == b"x"
        assert server.connections == 1

    def test_threads_share_one_channel(
        self, serve: Callable[..., ScriptedH2Server], channel: UnaryChannel
    ) -> None:
        serve(lambda _: Reply(messages=(ANSWER,), data_frame_bytes=100))
        results: list[bytes] = []

        def call() -> None:
            results.extend(channel.call(PATH, b"", 20.0) for _ in range(5))

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert results == [ANSWER] * 20


class TestErrors:
    def test_status_in_trailers_after_a_message(
        self, serve: Callable[..., ScriptedH2Server], channel: UnaryChannel
    ) -> None:
        trailers = ((b"grpc-status", b"5"), (b"grpc-message", b"no%20such%20pod"))
        serve(lambda _: Reply(messages=(b"partial",), trailers=trailers))
        with pytest.raises(RpcError) as caught:
            channel.call(PATH, b"", 5.0)
        assert (caught.value.code, caught.value.details) == ("NOT_FOUND", "no such pod")

    def test_trailers_only(
        self, serve: Callable[..., ScriptedH2Server], channel: UnaryChannel
    ) -> None:
        serve(lambda _: Reply(trailers=((b"grpc-status", b"12"),), trailers_only=True))
        assert _code(channel) == "UNIMPLEMENTED"

    @pytest.mark.parametrize(
        ("reply", "code"),
        [
            (Reply(headers=((b":status", b"404"),), trailers=None), "UNIMPLEMENTED"),
            (Reply(messages=(b"x",), trailers=None), "INTERNAL"),  # no grpc-status
            (Reply(messages=(b"x", b"y")), "INTERNAL"),  # two messages for a unary call
            (Reply(), "INTERNAL"),  # no message at all
            (Reply(raw_body=frame_message(b"x")[:-1]), "INTERNAL"),  # cut short
            (Reply(raw_body=frame_message(b"x", compressed=True)), "INTERNAL"),
            (Reply(reset_code=0x7), "UNAVAILABLE"),  # REFUSED_STREAM
            (Reply(headers=GRPC_HEADERS, close_without_answer=True), "UNAVAILABLE"),
        ],
    )
    def test_broken_answers(
        self,
        serve: Callable[..., ScriptedH2Server],
        channel: UnaryChannel,
        reply: Reply,
        code: str,
    ) -> None:
        serve(lambda _: reply)
        assert _code(channel) == code

    def test_too_big_answer(
        self, serve: Callable[..., ScriptedH2Server], socket_path: Path
    ) -> None:
        replies = iter([Reply(messages=(ANSWER,)), Reply(messages=(b"small",))])
        server = serve(lambda _: next(replies))
        with UnaryChannel(socket_path, max_message_bytes=1000) as small:
            assert _code(small) == "RESOURCE_EXHAUSTED"
            # The refused answer's stream was still open: the next call uses a new connection.
            assert small.call(PATH, b"", 5.0) == b"small"
        assert server.connections == 2

    def test_no_socket(self, channel: UnaryChannel) -> None:
        assert _code(channel) == "UNAVAILABLE"

    def test_socket_nobody_listens_on(self, socket_path: Path, channel: UnaryChannel) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
            dead.bind(str(socket_path))  # bound, never listening: connect is refused
            assert _code(channel) == "UNAVAILABLE"

    def test_silent_server_times_out(self, socket_path: Path, channel: UnaryChannel) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
            silent.bind(str(socket_path))
            silent.listen()  # accepts (the kernel does), never answers
            with pytest.raises(RpcError) as caught:
                channel.call(PATH, b"", 0.3)
        assert caught.value.code == "DEADLINE_EXCEEDED"
        assert "0.3 s" in caught.value.details


class TestReconnect:
    @pytest.mark.parametrize(
        "reply",
        [Reply(messages=(b"x",), goaway_after=True), Reply(messages=(b"x",), close_after=True)],
        ids=["goaway", "close"],
    )
    def test_server_ends_the_connection_after_a_call(
        self, serve: Callable[..., ScriptedH2Server], channel: UnaryChannel, reply: Reply
    ) -> None:
        server = serve(lambda _: reply)
        assert [channel.call(PATH, b"", 5.0) for _ in range(3)] == [b"x"] * 3
        assert server.connections == 3

    def test_server_restarts_between_calls(
        self, serve: Callable[..., ScriptedH2Server], channel: UnaryChannel
    ) -> None:
        before = serve(lambda _: Reply(messages=(b"before",)))
        assert channel.call(PATH, b"", 5.0) == b"before"
        before.stop()  # closes the kept connection
        after = serve(lambda _: Reply(messages=(b"after",)))
        assert channel.call(PATH, b"", 5.0) == b"after"  # no failed call in between
        assert after.connections == 1

    def test_kept_connection_lost_under_a_call_is_retried_once(
        self, serve: Callable[..., ScriptedH2Server], channel: UnaryChannel
    ) -> None:
        # The second request finds the kept connection closing (the server drops it without an
        # answer): the channel retries on a fresh connection, which answers.
        replies = iter([Reply(messages=(b"1",)), Reply(close_without_answer=True),
                        Reply(messages=(b"2",))])  # fmt: skip
        server = serve(lambda _: next(replies))
        assert channel.call(PATH, b"", 5.0) == b"1"
        assert channel.call(PATH, b"", 5.0) == b"2"
        assert server.connections == 2
        assert len(server.requests) == 3
