"""gRPC's wire format, without sockets: framing, deadlines, status from trailers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polca_node.podresources.grpc_wire import (
    MessageReader,
    RpcError,
    call_status,
    encode_message,
    request_headers,
    status_from_http,
    status_from_reset,
    timeout_header,
)


class TestFraming:
    def test_prefix_is_flag_and_big_endian_length(self) -> None:
        assert encode_message(b"abc") == b"\x00\x00\x00\x00\x03abc"
        assert encode_message(b"") == b"\x00\x00\x00\x00\x00"

    @given(
        st.lists(st.binary(max_size=300), min_size=1, max_size=5),
        st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=50),
    )
    def test_messages_survive_any_split(self, messages: list[bytes], cuts: list[int]) -> None:
        wire = b"".join(encode_message(m) for m in messages)
        reader = MessageReader()
        offset = 0
        for cut in [*cuts, len(wire)]:
            reader.feed(wire[offset : offset + cut])
            offset += cut
        reader.feed(wire[offset:])
        assert reader.messages == messages
        assert not reader.partial

    def test_unfinished_message_is_partial(self) -> None:
        reader = MessageReader()
        reader.feed(encode_message(b"hello")[:-1])
        assert reader.messages == []
        assert reader.partial

    def test_compressed_message_is_refused(self) -> None:
        with pytest.raises(RpcError) as caught:
            MessageReader().feed(b"\x01\x00\x00\x00\x01x")
        assert caught.value.code == "INTERNAL"

    def test_too_big_message_is_refused_from_its_prefix(self) -> None:
        reader = MessageReader(max_message_bytes=10)
        with pytest.raises(RpcError) as caught:
            reader.feed(b"\x00\x00\x00\x00\x0b")  # 11 bytes announced, none sent yet
        assert caught.value.code == "RESOURCE_EXHAUSTED"


class TestHeaders:
    def test_request_headers(self) -> None:
        headers = dict(request_headers("/v1.PodResourcesLister/List", "localhost", 5.0))
        assert headers == {
            b":method": b"POST",
            b":scheme": b"http",
            b":path": b"/v1.PodResourcesLister/List",
            b":authority": b"localhost",
            b"content-type": b"application/grpc",
            b"te": b"trailers",
            b"grpc-timeout": b"5000m",
            b"user-agent": b"polca-node",
        }
        assert list(dict(request_headers("/a/b", "x", 1.0)))[:4] == [
            b":method", b":scheme", b":path", b":authority"
        ]  # fmt: skip  # pseudo-headers come first (RFC 9113 8.3)

    @pytest.mark.parametrize(
        ("timeout_s", "header"),
        [(5.0, b"5000m"), (0.0001, b"1m"), (0.2501, b"251m"), (1e6, b"1000000S")],
    )
    def test_timeout_rounds_up_and_fits_eight_digits(self, timeout_s: float, header: bytes) -> None:
        assert timeout_header(timeout_s) == header
        assert len(header) <= 9


class TestStatus:
    def test_ok_and_percent_encoded_message(self) -> None:
        assert call_status([(b"grpc-status", b"0")]) == ("OK", "")
        trailers = [
            (b"grpc-status", b"14"),
            (b"grpc-message", b"kubelet%20restarting%3A%20%E2%9C%93"),
        ]
        assert call_status(trailers) == ("UNAVAILABLE", "kubelet restarting: ✓")

    def test_no_status(self) -> None:
        assert call_status([(b":status", b"200")]) is None

    @pytest.mark.parametrize("raw", [b"17", b"-1", b"abc"])
    def test_unknown_codes_are_unknown(self, raw: bytes) -> None:
        code, details = call_status([(b"grpc-status", raw)]) or ("", "")
        assert code == "UNKNOWN"
        assert repr(raw) in details

    @pytest.mark.parametrize(
        ("status", "code"),
        [(b"404", "UNIMPLEMENTED"), (b"503", "UNAVAILABLE"), (b"401", "UNAUTHENTICATED"),
         (b"500", "UNKNOWN")],
    )  # fmt: skip
    def test_http_errors(self, status: bytes, code: str) -> None:
        error = status_from_http([(b":status", status)])
        assert error is not None
        assert error.code == code

    def test_http_200_needs_the_grpc_content_type(self) -> None:
        ok = [(b":status", b"200"), (b"content-type", b"application/grpc+proto")]
        assert status_from_http(ok) is None
        error = status_from_http([(b":status", b"200"), (b"content-type", b"text/html")])
        assert error is not None
        assert error.code == "UNKNOWN"

    @pytest.mark.parametrize(
        ("error_code", "code"),
        [(0x7, "UNAVAILABLE"), (0x8, "CANCELLED"), (0x2, "INTERNAL"), (0xB, "RESOURCE_EXHAUSTED")],
    )
    def test_resets(self, error_code: int, code: str) -> None:
        assert status_from_reset(error_code).code == code
