"""The node's power stream (`GET /power/stream`): one line per completed GPU sample.

The sampler publishes each sample's node power here; every open stream (a thread of the
metrics server) wakes on the condition and writes the line at once, so the operator sees a
sample milliseconds after it was taken, without scraping the whole of /metrics. The line format
is `polca.power_stream`'s.

Streams are few by design (the active operator holds one; a standby taking over or a person
with curl may add one): more than `max_streams` are refused with 503, so a misbehaving client
cannot take the server's threads. While no sample comes a stream writes an empty keep-alive line
every `keepalive_s`, which is how a reader that went away is noticed (the write fails) and its
slot freed. Closing the feed (the daemon stopping) ends every stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from polca.power_stream import PowerLine, PowerSource, format_line

__all__ = ["DEFAULT_MAX_STREAMS", "PowerFeed", "PowerStream"]

DEFAULT_MAX_STREAMS = 4
DEFAULT_KEEPALIVE_S = 5.0
KEEPALIVE = b"\n"


@dataclass(frozen=True, slots=True)
class _Sample:
    seq: int
    power_w: float
    source: PowerSource
    at_s: float  # monotonic time of publishing


class PowerFeed:
    """The latest node power sample, written by the sampler and read by the streams."""

    def __init__(
        self,
        *,
        max_streams: int = DEFAULT_MAX_STREAMS,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._changed = threading.Condition()
        self._latest: _Sample | None = None
        self._closed = False
        self._streams = 0
        self._max_streams = max_streams
        self._keepalive_s = keepalive_s
        self._clock = clock

    @property
    def streams(self) -> int:
        """Streams open now."""
        return self._streams

    def publish(self, power_w: float, source: PowerSource) -> None:
        with self._changed:
            seq = self._latest.seq + 1 if self._latest is not None else 1
            self._latest = _Sample(seq, power_w, source, self._clock())
            self._changed.notify_all()

    def close(self) -> None:
        """End every stream and refuse new ones (the daemon is stopping)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def open(self) -> PowerStream | None:
        """A new stream, or None when `max_streams` are open or the feed is closed."""
        with self._changed:
            if self._closed or self._streams >= self._max_streams:
                return None
            self._streams += 1
        return PowerStream(self)

    def _release(self) -> None:
        with self._changed:
            self._streams -= 1

    def _next_line(self, sent_seq: int) -> tuple[int, bytes] | None:
        """The line after `sent_seq` (a keep-alive if none came in time); None once closed."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._closed or (self._latest is not None and self._latest.seq > sent_seq),
                timeout=self._keepalive_s,
            )
            latest = self._latest
            if self._closed:
                return None
            if latest is None or latest.seq <= sent_seq:
                return sent_seq, KEEPALIVE
        age_s = max(0.0, self._clock() - latest.at_s)
        return latest.seq, format_line(PowerLine(latest.seq, latest.power_w, latest.source, age_s))


class PowerStream:
    """One client's stream: a WSGI response body that frees its slot when closed."""

    def __init__(self, feed: PowerFeed) -> None:
        self._feed = feed
        self._sent_seq = 0
        self._open = True

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        step = self._feed._next_line(self._sent_seq) if self._open else None
        if step is None:
            self.close()
            raise StopIteration
        self._sent_seq, line = step
        return line

    def close(self) -> None:
        """Called by the WSGI server when the response ends, however it ends; idempotent."""
        if self._open:
            self._open = False
            self._feed._release()
