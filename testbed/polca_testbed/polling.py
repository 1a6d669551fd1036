"""Waiting for something to become true, for the tests, the benchmarks and the demo."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["NotInTimeError", "eventually"]

T = TypeVar("T")


class NotInTimeError(AssertionError):
    """What was awaited did not happen in time (an assertion: tests fail with the message)."""


def eventually(
    what: str, check: Callable[[], T], timeout_s: float = 45.0, *, interval_s: float = 0.25
) -> T:
    """Call `check` every `interval_s` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise NotInTimeError(f"not within {timeout_s:g} s: {what}; last: {last!r}")
