"""Direct telemetry: one power stream per domain node, each node's latest sample in memory.

Each daemon writes a line per GPU sample on `GET /power/stream` (`polca.power_stream`), beside
the metrics endpoint it publishes in its NodePowerState (checked by
`polca_operator.endpoints.endpoint_problem` before it gets here). :class:`StreamSource` keeps
one connection per (node, endpoint) that some control loop follows, reconnects with capped,
fully jittered backoff, and dates every sample by the operator's own clock at arrival (minus
the age the daemon states). So a stream that goes quiet makes its node stale, exactly as a
failed scrape did, and a control cycle reads power without a network round trip.

A loop follows its domain's endpoints (`follow`), optionally with a listener that hears every
sample (the loop's early wake-up, `polca_operator.wakeup`), and lets go when its domain changes
or it stops (`release`); a connection nobody follows is closed. Several policies over one node
share its connection: a daemon serves only a few streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import aiohttp

from polca.backoff import Backoff
from polca.power_stream import PowerLineError, parse_line
from polca_operator.domain_power import NodeSample
from polca_operator.endpoints import stream_url
from polca_operator.telemetry import DEFAULT_TIMEOUT_S, PowerQuery, SourceName, TelemetryError

__all__ = ["RECONNECT_CAP_S", "SampleListener", "StreamSource"]

log = logging.getLogger(__name__)

SampleListener = Callable[[str, float], None]  # (node, power in watts), for every sample
# Reconnect within 0.1-2 s: a daemon restart is back in well under the staleness limit, and a
# whole row of daemons reconnecting at once is spread over the window (full jitter).
RECONNECT_BASE_S = 0.1
RECONNECT_CAP_S = 2.0
# A daemon writes a keep-alive every 5 s while no sample comes: a silent socket past this is dead.
READ_TIMEOUT_S = 15.0


@dataclass
class _Stream:
    node: str
    url: str
    listeners: dict[str, SampleListener | None] = field(default_factory=dict)  # by owner
    latest: NodeSample | None = None
    error: str | None = None
    # Set by the first line or the first failure: a first read waits for it, briefly.
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class StreamSource:
    """The `direct` telemetry source: the latest streamed sample of each followed node."""

    name: SourceName = "direct"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        connect_timeout_s: float = DEFAULT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        wall_clock: Callable[[], float] = time.time,
        backoff: Callable[[], Backoff] = lambda: Backoff(RECONNECT_BASE_S, RECONNECT_CAP_S),
    ) -> None:
        self._session = session
        self._connect_timeout_s = connect_timeout_s
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._wall_clock = wall_clock
        self._backoff = backoff
        self._streams: dict[tuple[str, str], _Stream] = {}

    # -- following -----------------------------------------------------------------------------

    def follow(
        self, owner: str, urls: Mapping[str, str], on_sample: SampleListener | None = None
    ) -> None:
        """Stream these nodes (node → its published metrics URL) for `owner`, and only these."""
        wanted = set(urls.items())
        for key, stream in list(self._streams.items()):
            if key not in wanted:
                self._drop(key, stream, owner)
        for key in wanted:
            if key not in self._streams:
                new = self._streams[key] = _Stream(*key)
                new.task = asyncio.get_running_loop().create_task(
                    self._run(new), name=f"power-stream {key[0]}"
                )
            self._streams[key].listeners[owner] = on_sample

    def release(self, owner: str) -> None:
        """`owner` follows nothing any more (its loop stopped)."""
        for key, stream in list(self._streams.items()):
            self._drop(key, stream, owner)

    def following(self) -> set[str]:
        """The nodes with an open (or reconnecting) stream."""
        return {node for node, _ in self._streams}

    def _drop(self, key: tuple[str, str], stream: _Stream, owner: str) -> None:
        stream.listeners.pop(owner, None)
        if not stream.listeners:
            del self._streams[key]
            if stream.task is not None:
                stream.task.cancel()

    async def close(self) -> None:
        tasks = [s.task for s in self._streams.values() if s.task is not None]
        self._streams.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- reading -------------------------------------------------------------------------------

    async def node_samples(
        self, query: PowerQuery, nodes: Collection[str]
    ) -> dict[str, NodeSample]:
        """The latest sample of each of `nodes` that has one younger than the staleness limit.

        A stream that is still making its first connection is waited for, at most the connect
        timeout, so an operator that just started does not read its domain as silent. Raises
        TelemetryError when no node has a fresh sample: a failed read is never an empty answer,
        and silent streams count as failing (`polca_telemetry_errors_total`, the log).
        """
        streams = [
            self._streams.get((node, query.metrics_urls[node]))
            for node in nodes
            if node in query.metrics_urls
        ]
        if not streams:
            raise TelemetryError("no node publishes a metrics endpoint")
        followed = [s for s in streams if s is not None]
        pending = [s.settled.wait() for s in followed if not s.settled.is_set()]
        if pending:
            # Past the timeout: read what has come; the rest are silent for now.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending), self._connect_timeout_s)
        oldest_s = self._wall_clock() - query.staleness_s
        samples = {
            s.node: s.latest
            for s in followed
            if s.latest is not None and s.latest.time_s >= oldest_s
        }
        if not samples:
            errors = sorted({s.error for s in followed if s.error})
            why = "; ".join(errors[:3]) if errors else "no fresh sample"
            raise TelemetryError(f"no power from any of {len(streams)} daemons' streams: {why}")
        return samples

    async def _run(self, stream: _Stream) -> None:
        backoff = self._backoff()
        url = stream_url(stream.url)
        while True:
            try:
                async with self._session.get(url, timeout=self._timeout) as response:
                    response.raise_for_status()
                    async for raw in response.content:
                        self._on_line(stream, raw)
                        backoff.reset()
                stream.error = "the stream ended (daemon stopping)"
            except (aiohttp.ClientError, TimeoutError, PowerLineError, ValueError) as exc:
                # ValueError: a line past aiohttp's line limit.
                stream.error = f"{type(exc).__name__}: {exc}"
            log.debug("power stream of node %s: %s", stream.node, stream.error)
            stream.settled.set()
            await asyncio.sleep(backoff.next_s())

    def _on_line(self, stream: _Stream, raw: bytes) -> None:
        line = parse_line(raw)
        if line is None:
            return  # keep-alive: the connection is alive, the power is not newer
        stream.latest = NodeSample(line.power_w, self._wall_clock() - line.age_s)
        stream.error = None
        stream.settled.set()
        for listener in list(stream.listeners.values()):
            if listener is None:
                continue
            try:
                listener(stream.node, line.power_w)
            except Exception:  # a listener's bug must not end the node's telemetry
                log.exception("power stream of node %s: a listener failed", stream.node)
