"""List-then-watch: authoritative lists, events, bookmarks, 410 Gone, failures keep state, and
the backoff rules (issue 12, finding 7): a watch that ends at once backs off, a 410 forgets the
resource version before the relist, any failure is contained and retried."""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, cast

import pytest

from polca.backoff import Backoff
from polca_node.kube_client import ApiError, KubeClient
from polca_node.watching import Watcher, WatchTarget

WAIT_S = 10.0


class FakeStream:
    """A watch stream that yields queued events until closed (or told to end)."""

    END = object()

    def __init__(self, events: list[dict[str, Any]], *, end: bool) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        for event in events:
            self._queue.put(event)
        if end:
            self._queue.put(self.END)
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            item = self._queue.get()
            if item is self.END:
                return
            yield item

    def close(self) -> None:
        self.closed.set()
        self._queue.put(self.END)


class FakeApi:
    """Scripted list answers and watch streams; records what was asked."""

    def __init__(self, lists: list[Any], streams: list[FakeStream | Exception]) -> None:
        self.lists = lists
        self.streams = streams
        self.list_calls = 0
        self.watch_params: list[Mapping[str, Any]] = []
        self.idle = FakeStream([], end=False)  # served once the script runs out

    def request(self, method: str, path: str, *, params: Any = None, **_: Any) -> Any:
        assert (method, path) == ("GET", "/api/v1/pods")
        assert params == {"fieldSelector": "spec.nodeName=n1"}
        self.list_calls += 1
        answer = self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def watch(self, path: str, params: Mapping[str, Any], *, read_timeout_s: float) -> Any:
        self.watch_params.append(dict(params))
        if not self.streams:
            return self.idle
        stream = self.streams.pop(0)
        if isinstance(stream, Exception):
            raise stream
        return stream


class RecordingSink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.changed = threading.Condition()

    def _record(self, call: tuple[str, Any]) -> None:
        with self.changed:
            self.calls.append(call)
            self.changed.notify_all()

    def replace(self, items: list[dict[str, Any]]) -> None:
        self._record(("replace", [i["metadata"]["name"] for i in items]))

    def apply(self, event_type: str, obj: dict[str, Any]) -> None:
        self._record((event_type, obj["metadata"]["name"]))

    def failed(self, error: Exception) -> None:
        self._record(("failed", type(error).__name__))

    def wait_for(self, count: int) -> list[tuple[str, Any]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.calls) >= count, WAIT_S), self.calls
            return list(self.calls)


def listing(version: str, *names: str) -> dict[str, Any]:
    return {
        "metadata": {"resourceVersion": version},
        "items": [{"metadata": {"name": n}} for n in names],
    }


def event(kind: str, name: str, version: str) -> dict[str, Any]:
    return {"type": kind, "object": {"metadata": {"name": name, "resourceVersion": version}}}


TARGET = WatchTarget("pods", "/api/v1/pods", field_selector="spec.nodeName=n1")


@pytest.fixture
def run_watcher() -> Iterator[Any]:
    started: list[Watcher] = []

    def start(api: FakeApi, sink: RecordingSink) -> Watcher:
        backoff = Backoff(base_s=0.001, cap_s=0.01, rng=random.Random(1))
        watcher = Watcher(cast(KubeClient, api), TARGET, sink, backoff=backoff)
        started.append(watcher.start())
        return watcher

    yield start
    for watcher in started:
        watcher.stop()
        assert not watcher.alive


def test_list_then_events_then_watch_again_from_the_last_version(run_watcher: Any) -> None:
    first = FakeStream(
        [event("ADDED", "b", "11"), event("BOOKMARK", "", "15"), event("DELETED", "a", "16")],
        end=True,
    )
    api = FakeApi([listing("10", "a")], [first])
    sink = RecordingSink()
    run_watcher(api, sink)
    calls = sink.wait_for(3)
    assert calls == [("replace", ["a"]), ("ADDED", "b"), ("DELETED", "a")]
    assert api.list_calls == 1
    assert [p["resourceVersion"] for p in api.watch_params[:2]] == ["10", "16"]
    assert api.watch_params[0]["watch"] is True
    assert api.watch_params[0]["allowWatchBookmarks"] is True
    assert api.watch_params[0]["fieldSelector"] == "spec.nodeName=n1"


def test_gone_lists_again(run_watcher: Any) -> None:
    expired = FakeStream(
        [{"type": "ERROR", "object": {"code": 410, "reason": "Expired"}}], end=False
    )
    api = FakeApi([listing("10", "a"), listing("20", "a", "b")], [expired])
    sink = RecordingSink()
    run_watcher(api, sink)
    assert sink.wait_for(2) == [("replace", ["a"]), ("replace", ["a", "b"])]
    assert api.list_calls == 2


def test_failed_list_keeps_state_and_retries(run_watcher: Any) -> None:
    api = FakeApi([ApiError(0, "ConnectionRefusedError", "down"), listing("5", "a")], [])
    sink = RecordingSink()
    run_watcher(api, sink)
    calls = sink.wait_for(2)
    assert calls[0] == ("failed", "ApiError")
    assert ("replace", ["a"]) in calls
    assert calls.index(("replace", ["a"])) > 0  # nothing was replaced before a list succeeded


def test_broken_watch_resumes_without_a_new_list(run_watcher: Any) -> None:
    api = FakeApi(
        [listing("10")],
        [
            ApiError(0, "ConnectionResetError", "reset"),
            FakeStream([event("ADDED", "x", "12")], end=False),
        ],
    )
    sink = RecordingSink()
    run_watcher(api, sink)
    assert sink.wait_for(3) == [("replace", []), ("failed", "ApiError"), ("ADDED", "x")]
    assert api.list_calls == 1
    assert [p["resourceVersion"] for p in api.watch_params[:2]] == ["10", "10"]


def test_stop_closes_an_open_watch(run_watcher: Any) -> None:
    api = FakeApi([listing("1")], [])
    sink = RecordingSink()
    watcher = run_watcher(api, sink)
    sink.wait_for(1)
    watcher.stop(timeout_s=5)
    assert not watcher.alive
    assert api.idle.closed.is_set()


class RecordingBackoff(Backoff):
    """A Backoff that records the ceilings asked for and waits almost nothing."""

    def __init__(self) -> None:
        super().__init__(base_s=0.001, cap_s=0.004, rng=random.Random(0))
        self.ceilings: list[float] = []
        self.resets = 0

    def next_s(self) -> float:
        self.ceilings.append(self.ceiling_s())
        return super().next_s()

    def reset(self) -> None:
        self.resets += 1
        super().reset()


def start_watcher(api: FakeApi, sink: RecordingSink, backoff: Backoff) -> Watcher:
    return Watcher(cast(KubeClient, api), TARGET, sink, backoff=backoff).start()


def test_a_watch_that_ends_at_once_backs_off_growing_to_the_cap() -> None:
    # A server (or proxy) that ends every watch at once with no event: 30 such watches.
    api = FakeApi([listing("10", "a")], [FakeStream([], end=True) for _ in range(30)])
    sink = RecordingSink()
    backoff = RecordingBackoff()
    watcher = start_watcher(api, sink, backoff)
    try:
        assert sink.wait_for(1) == [("replace", ["a"])]
        deadline = time.monotonic() + WAIT_S
        while len(backoff.ceilings) < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        watcher.stop()
    # Each empty watch paused for the next backoff step: 1, 2, 4 ms, then the 4 ms cap.
    assert backoff.ceilings[:5] == [0.001, 0.002, 0.004, 0.004, 0.004]
    assert api.list_calls == 1  # a quick end is not a reason to list again
    assert sink.calls == [("replace", ["a"])]  # and not a failure the daemon is told about


def test_an_event_resets_the_backoff() -> None:
    streams: list[FakeStream | Exception] = [FakeStream([], end=True) for _ in range(3)]
    streams.append(FakeStream([event("ADDED", "b", "11")], end=True))
    streams += [FakeStream([], end=True) for _ in range(3)]
    api = FakeApi([listing("10")], streams)
    sink = RecordingSink()
    backoff = RecordingBackoff()
    watcher = start_watcher(api, sink, backoff)
    try:
        sink.wait_for(2)
        deadline = time.monotonic() + WAIT_S
        while api.streams and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        watcher.stop()
    assert backoff.ceilings[:3] == [0.001, 0.002, 0.004]
    # After the watch that carried an event, the schedule starts again from the base.
    assert backoff.ceilings[3:5] == [0.001, 0.002]


def test_gone_forgets_the_version_even_when_the_relist_fails() -> None:
    expired = FakeStream(
        [{"type": "ERROR", "object": {"code": 410, "reason": "Expired"}}], end=False
    )
    api = FakeApi(
        [listing("10", "a"), ApiError(0, "ConnectionRefusedError", "down"), listing("20", "a")],
        [expired],
    )
    sink = RecordingSink()
    watcher = start_watcher(api, sink, RecordingBackoff())
    try:
        calls = sink.wait_for(3)
    finally:
        watcher.stop()
    assert calls == [("replace", ["a"]), ("failed", "ApiError"), ("replace", ["a"])]
    # Never a watch from the expired version 10 after the 410: the next one starts at 20.
    assert [p["resourceVersion"] for p in api.watch_params][:2] == ["10", "20"]


def test_a_gone_right_after_a_fresh_list_backs_off() -> None:
    def expired() -> FakeStream:
        return FakeStream([{"type": "ERROR", "object": {"code": 410}}], end=False)

    api = FakeApi([listing("10")], [expired(), expired(), expired()])
    sink = RecordingSink()
    backoff = RecordingBackoff()
    watcher = start_watcher(api, sink, backoff)
    try:
        sink.wait_for(4)
    finally:
        watcher.stop()
    # The first 410 relists at once; the next ones, each right after a fresh list, pause.
    assert len(backoff.ceilings) >= 2


@pytest.mark.parametrize(
    "error",
    [OSError("connection reset by a proxy"), ValueError("not JSON"), KeyError("metadata")],
)
def test_any_failure_is_contained_and_retried_with_a_relist(error: Exception) -> None:
    api = FakeApi([error, listing("5", "a")], [])
    sink = RecordingSink()
    watcher = start_watcher(api, sink, RecordingBackoff())
    try:
        calls = sink.wait_for(2)
        assert watcher.alive
    finally:
        watcher.stop()
    assert calls == [("failed", type(error).__name__), ("replace", ["a"])]


def test_an_outage_warns_once_then_retries_quietly(caplog: pytest.LogCaptureFixture) -> None:
    down = ApiError(0, "ConnectionRefusedError", "down")
    api = FakeApi([down] * 20 + [listing("5", "a")], [])
    sink = RecordingSink()
    with caplog.at_level("DEBUG", logger="polca_node.watching"):
        watcher = start_watcher(api, sink, RecordingBackoff())
        try:
            assert sink.wait_for(21)[-1] == ("replace", ["a"])
        finally:
            watcher.stop()
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 20  # every retry is logged...
    assert [r.levelname for r in retries].count("WARNING") == 1  # ...one of them as a warning
