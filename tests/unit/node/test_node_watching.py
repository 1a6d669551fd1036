"""List-then-watch: authoritative lists, events, bookmarks, 410 Gone, failures keep state."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any, cast

import pytest

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
        watcher = Watcher(cast(KubeClient, api), TARGET, sink, min_backoff_s=0.01)
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
