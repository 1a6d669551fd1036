"""Direct telemetry from the daemons' power streams, against real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from polca.backoff import Backoff
from polca.power_stream import PowerLine, format_line
from polca_operator.domain_power import DomainNode, NodeSample
from polca_operator.power_streams import StreamSource
from polca_operator.telemetry import PowerQuery, PowerReader, TelemetryError

NOW_S = 1_750_000_000.0


@dataclass
class Daemon:
    """A stand-in daemon: `/power/stream` writes what the test puts in the newest connection's
    queue (lines put before the first connection wait for it); None hangs up."""

    queues: list[asyncio.Queue[bytes | None]] = field(default_factory=lambda: [asyncio.Queue()])
    connections: int = 0
    open_now: int = 0
    status: int = 200

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.connections += 1
        if self.status != 200:
            return web.Response(status=self.status)
        if self.connections > 1:
            self.queues.append(asyncio.Queue())
        lines = self.queues[-1]
        response = web.StreamResponse()
        await response.prepare(request)
        self.open_now += 1
        try:
            while True:
                try:
                    line = await asyncio.wait_for(lines.get(), 0.05)
                except TimeoutError:
                    line = b"\n"  # keep-alive, as the daemon writes: a gone reader is noticed
                if line is None:
                    break
                await response.write(line)
        except (ConnectionError, RuntimeError):
            pass  # the reader went away
        finally:
            self.open_now -= 1
        return response

    @property
    def lines(self) -> asyncio.Queue[bytes | None]:
        return self.queues[-1]

    def send(self, seq: int, power_w: float, age_s: float = 0.0) -> None:
        self.lines.put_nowait(format_line(PowerLine(seq, power_w, "instant", age_s)))


Serve = Callable[[Daemon], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(daemon: Daemon) -> str:
        app = web.Application()
        app.router.add_get("/power/stream", daemon.stream)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"

    yield start
    for runner in runners:
        await runner.cleanup()


@dataclass
class Clock:
    now_s: float = NOW_S

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
async def source() -> AsyncIterator[tuple[StreamSource, Clock]]:
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        streams = StreamSource(
            session,
            connect_timeout_s=2.0,
            wall_clock=clock,
            backoff=lambda: Backoff(0.01, 0.05),  # reconnect at once: the test waits on it
        )
        yield streams, clock
        await streams.close()


async def until(what: str, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(0.01)


async def one_daemon(serve: Serve) -> tuple[Daemon, dict[str, str]]:
    daemon = Daemon()
    return daemon, {"a": await serve(daemon)}


def query(urls: dict[str, str], staleness_s: float = 5.0) -> PowerQuery:
    return PowerQuery(
        nodes=tuple(DomainNode(n) for n in urls), metrics_urls=urls, staleness_s=staleness_s
    )


async def test_samples_are_dated_on_arrival_and_heard_by_the_listener(
    serve: Serve, source: tuple[StreamSource, Clock]
) -> None:
    streams, clock = source
    a, b = Daemon(), Daemon()
    urls = {"a": await serve(a), "b": await serve(b)}
    heard: list[tuple[str, float]] = []
    streams.follow("row-a", urls, lambda node, w: heard.append((node, w)))
    a.send(1, 700.0, age_s=0.25)  # the latest sample, sent on connecting
    b.send(1, 300.0)
    await streams.node_samples(query(urls), {"a", "b"})  # a first read waits for the streams
    await until("both samples", lambda: len(heard) == 2)
    samples = await streams.node_samples(query(urls), {"a", "b"})
    assert samples == {"a": NodeSample(700.0, NOW_S - 0.25), "b": NodeSample(300.0, NOW_S)}
    clock.now_s += 1.0
    a.send(2, 900.0)
    await until("the next sample", lambda: len(heard) == 3)
    assert heard[-1] == ("a", 900.0)
    assert (await streams.node_samples(query(urls), {"a"}))["a"] == NodeSample(900.0, NOW_S + 1)


async def test_a_silent_stream_goes_stale_and_the_reading_has_no_power(
    serve: Serve, source: tuple[StreamSource, Clock]
) -> None:
    """Safety rule 2: a stream that stops sending is old power, not the last power forever."""
    streams, clock = source
    daemon, urls = await one_daemon(serve)
    streams.follow("row-a", urls)
    daemon.send(1, 700.0)
    reader = PowerReader(None, streams, wall_clock=clock)
    fresh = await reader.read(query(urls, staleness_s=3))
    assert fresh.power is not None
    assert fresh.power.power_w == 700.0
    daemon.lines.put_nowait(b"\n")  # a keep-alive proves the socket, not the power
    clock.now_s += 3.5
    stale = await reader.read(query(urls, staleness_s=3))
    assert stale.power is None
    assert stale.errors == (("direct", "no power from any of 1 daemons' streams: no fresh sample"),)


async def test_no_sample_at_all_is_an_error_not_an_empty_answer(
    serve: Serve, source: tuple[StreamSource, Clock]
) -> None:
    """Safety rule 3: a failed read is not an empty list."""
    streams, _ = source
    refusing = Daemon(status=503)  # the daemon's stream limit, say
    urls = {"a": await serve(refusing)}
    streams.follow("row-a", urls)
    with pytest.raises(TelemetryError, match=r"no power from any of 1 daemons' streams: .*503"):
        await streams.node_samples(query(urls), {"a"})
    with pytest.raises(TelemetryError, match="no node publishes"):
        await streams.node_samples(PowerQuery(nodes=(DomainNode("a"),)), {"a"})
    reading = await PowerReader(None, streams).read(query(urls))
    assert reading.power is None
    assert reading.errors[0][0] == "direct"


async def test_a_dropped_or_garbled_stream_reconnects(
    serve: Serve, source: tuple[StreamSource, Clock]
) -> None:
    streams, _ = source
    daemon, urls = await one_daemon(serve)
    heard: list[float] = []
    streams.follow("row-a", urls, lambda _node, w: heard.append(w))
    daemon.send(1, 100.0)
    await until("the first sample", lambda: heard == [100.0])
    daemon.lines.put_nowait(None)  # the daemon hangs up (restarting)
    await until("a second connection", lambda: daemon.connections == 2)
    daemon.send(1, 200.0)  # a restarted daemon counts from 1 again
    await until("the sample after reconnecting", lambda: heard == [100.0, 200.0])
    daemon.lines.put_nowait(b"seq=2 power_w=-1 source=instant\n")
    await until("a third connection", lambda: daemon.connections == 3)
    daemon.send(3, 300.0)
    await until("the sample after the bad line", lambda: heard == [100.0, 200.0, 300.0])


async def test_connections_follow_the_domains_and_are_shared(
    serve: Serve, source: tuple[StreamSource, Clock]
) -> None:
    streams, _ = source
    a, b = Daemon(), Daemon()
    urls = {"a": await serve(a), "b": await serve(b)}
    streams.follow("row-a", urls)
    streams.follow("row-b", {"a": urls["a"]})  # another policy over node a: one connection
    await until("both connected", lambda: a.open_now == 1 and b.open_now == 1)
    streams.follow("row-a", {"a": urls["a"]})  # node b left row-a's domain
    await until("b's stream closed", lambda: b.open_now == 0)
    assert streams.following() == {"a"}
    streams.release("row-a")
    assert streams.following() == {"a"}  # row-b still follows it
    assert a.connections == 1
    streams.release("row-b")
    await until("a's stream closed", lambda: a.open_now == 0)
    assert streams.following() == set()
