"""The daemon's power stream: a line per sample, a bounded number of streams, ended on stop."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator

import pytest

from polca.power_stream import PowerLine, parse_line
from polca_node.exporter import GpuSample, MetricsServer, NodeMetrics, NodeSnapshot
from polca_node.gpu.backend import GpuInfo, GpuReading, GpuSettings
from polca_node.power_feed import KEEPALIVE, PowerFeed
from polca_testbed.polling import eventually


class Clock:
    now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_a_stream_starts_with_the_latest_sample_and_then_follows() -> None:
    clock = Clock()
    feed = PowerFeed(clock=clock)
    feed.publish(1200.0, "instant")
    clock.now_s += 0.25
    stream = feed.open()
    assert stream is not None
    assert parse_line(next(stream)) == PowerLine(1, 1200.0, "instant", 0.25)
    feed.publish(1500.5, "average")
    assert parse_line(next(stream)) == PowerLine(2, 1500.5, "average", 0.0)


def test_a_stream_writes_keepalives_while_no_sample_comes_and_ends_on_close() -> None:
    feed = PowerFeed(keepalive_s=0.01)
    stream = feed.open()
    assert stream is not None
    assert next(stream) == KEEPALIVE  # no sample yet
    feed.publish(10.0, "instant")
    line = parse_line(next(stream))
    assert line is not None
    assert (line.seq, line.power_w, line.age_s < 0.5) == (1, 10.0, True)
    assert next(stream) == KEEPALIVE  # the same sample is never written twice
    feed.close()
    assert list(stream) == []
    assert feed.streams == 0
    assert feed.open() is None  # closed: no new streams


def test_streams_are_bounded_and_a_closed_one_frees_its_slot() -> None:
    feed = PowerFeed(max_streams=2)
    first, second = feed.open(), feed.open()
    assert first is not None
    assert second is not None
    assert feed.open() is None
    first.close()
    first.close()  # idempotent: the server may close twice
    assert feed.streams == 1
    assert feed.open() is not None


def _sample(index: int, power_w: float, instant: bool) -> GpuSample:
    info = GpuInfo(index, f"GPU-{index}", "NVIDIA H200", 200, 700, 700, 700, 700, 1980, ())
    settings = GpuSettings(index, 700, 700, 700, None, True)
    reading = GpuReading(index, power_w - 50, None, 1980, None, None, None, (), settings,
                         instant_power_w=power_w if instant else None)  # fmt: skip
    return GpuSample(info, reading)


def test_the_snapshot_power_is_the_sum_and_the_slower_source() -> None:
    snapshot = NodeSnapshot((_sample(0, 300, True), _sample(1, 400, True)))
    assert snapshot.power() == (700, "instant")
    mixed = NodeSnapshot((_sample(0, 300, True), _sample(1, 400, False)))
    assert mixed.power() == (300 + 350, "average")
    info = _sample(0, 1, True).info
    assert NodeSnapshot((GpuSample(info, None),)).power() is None  # no GPU read: no line


@pytest.fixture
def server() -> Iterator[tuple[MetricsServer, NodeMetrics]]:
    metrics = NodeMetrics("node-a")
    running = MetricsServer(metrics, lambda: (True, "ok"), host="127.0.0.1", port=0).start()
    yield running, metrics
    running.stop()


def _open(port: int) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/power/stream")
    return connection.getresponse()


def test_the_http_stream_writes_each_sample_and_refuses_a_fifth(
    server: tuple[MetricsServer, NodeMetrics],
) -> None:
    running, metrics = server
    metrics.update(NodeSnapshot((_sample(0, 300, True), _sample(1, 400, True))))
    responses = [_open(running.port) for _ in range(4)]
    assert all(r.status == 200 for r in responses)
    lines = [parse_line(r.readline()) for r in responses]
    assert [(x.seq, x.power_w, x.source) if x else None for x in lines] == [
        (1, 700.0, "instant")
    ] * 4
    refused = _open(running.port)
    assert refused.status == 503
    refused.read()
    metrics.update(NodeSnapshot((_sample(0, 650, True),)))
    line = parse_line(responses[0].readline())
    assert line is not None
    assert (line.seq, line.power_w) == (2, 650.0)
    # A client that goes away frees its slot once a write to it fails.
    for response in responses[1:]:
        response.close()

    def freed() -> bool:
        metrics.update(NodeSnapshot((_sample(0, 650, True),)))
        return metrics.power_feed.streams == 1

    eventually("the closed streams' slots freed", freed, 10, interval_s=0.05)
    # The daemon stopping ends the stream: the reader sees the end, not silence.
    ended = threading.Event()

    def read_to_end() -> None:
        while responses[0].readline():
            pass
        ended.set()

    reader = threading.Thread(target=read_to_end, daemon=True)
    reader.start()
    running.stop()
    assert ended.wait(10)
