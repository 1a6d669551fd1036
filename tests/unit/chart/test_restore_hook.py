"""The uninstall hook's logic (charts/polca/files/restore_on_uninstall.py), with fake time."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "charts/polca/files/restore_on_uninstall.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("restore_on_uninstall", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


hook = _load()


class FakeTime:
    def __init__(self) -> None:
        self.now_s = 0.0

    def monotonic(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds


class FakeStore:
    """PowerPolicies held by finalizers that an 'operator' releases after some seconds."""

    def __init__(self, time: FakeTime, release_after_s: dict[str, float]) -> None:
        self.time = time
        self.release_after_s = release_after_s
        self.deleted_at_s: dict[str, float] = {}
        self.failing_reads = 0

    def list(self) -> list[object]:
        if self.failing_reads:
            self.failing_reads -= 1
            raise hook.ReadFailedError("connection refused")
        return [
            hook.Leftover(name, ("polca.dev/restore",))
            for name, delay in self.release_after_s.items()
            if name not in self.deleted_at_s or self.time.now_s < self.deleted_at_s[name] + delay
        ]

    def delete(self, name: str) -> None:
        self.deleted_at_s.setdefault(name, self.time.now_s)


def run(store: FakeStore, time: FakeTime, timeout_s: float) -> list[object]:
    left: list[object] = hook.release_all(
        store, timeout_s=timeout_s, poll_interval_s=1.0, monotonic=time.monotonic, sleep=time.sleep
    )
    return left


def test_deletes_every_policy_and_waits_for_the_finalizers() -> None:
    time = FakeTime()
    store = FakeStore(time, {"row-a": 3.0, "row-b": 5.0})
    assert run(store, time, timeout_s=60) == []
    assert store.deleted_at_s == {"row-a": 0.0, "row-b": 0.0}
    assert 5.0 <= time.now_s < 7.0  # returned as soon as the last finalizer let go


def test_nothing_to_do_returns_at_once() -> None:
    time = FakeTime()
    assert run(FakeStore(time, {}), time, timeout_s=60) == []
    assert time.now_s == 0.0


def test_reports_what_is_left_at_the_deadline() -> None:
    time = FakeTime()
    store = FakeStore(time, {"row-a": 1.0, "stuck": 1e9})
    left = run(store, time, timeout_s=10)
    assert [p.name for p in left] == ["stuck"]  # type: ignore[attr-defined]
    assert 10.0 <= time.now_s <= 11.0
    message = hook.describe(left)
    assert "stuck: finalizers ['polca.dev/restore']" in message
    assert "--no-hooks" in message


def test_a_failed_read_is_not_an_empty_list() -> None:
    time = FakeTime()
    store = FakeStore(time, {"row-a": 0.0})
    store.failing_reads = 3
    assert run(store, time, timeout_s=60) == []
    assert "row-a" in store.deleted_at_s  # it waited out the failures, then deleted


def test_reads_failing_until_the_deadline_raise() -> None:
    time = FakeTime()
    store = FakeStore(time, {"row-a": 0.0})
    store.failing_reads = 1000
    with pytest.raises(hook.ReadFailedError):
        run(store, time, timeout_s=5)
    assert store.deleted_at_s == {}


def test_policies_created_meanwhile_are_deleted_too() -> None:
    time = FakeTime()
    store = FakeStore(time, {"row-a": 2.0})
    original_sleep = time.sleep

    def sleep_and_create(seconds: float) -> None:
        original_sleep(seconds)
        store.release_after_s.setdefault("late", 1.0)

    left = hook.release_all(
        store, timeout_s=60, poll_interval_s=1.0, monotonic=time.monotonic, sleep=sleep_and_create
    )
    assert left == []
    assert set(store.deleted_at_s) == {"row-a", "late"}
