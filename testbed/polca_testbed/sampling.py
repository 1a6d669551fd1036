"""Looking at a running system from outside: background sampling and one metric from /metrics.

A safety test must see every moment, not only the end: `BackgroundSampler` records a value
(e.g. the fake GPUs' clock ceilings) every `interval_s` in a thread while the test disturbs the
system, so a limit lifted for a moment and set again is still caught.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Generic, TypeVar

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["BackgroundSampler", "metric_value"]

T = TypeVar("T")


class BackgroundSampler(Generic[T]):
    """Calls `sample` every `interval_s` from a thread while the `with` block runs.

    `samples` holds (monotonic seconds, value) pairs; one more sample is taken on exit, so the
    last state counts too. An exception in `sample` ends the test at exit, never silently.
    """

    def __init__(self, sample: Callable[[], T], *, interval_s: float = 0.05) -> None:
        self._sample = sample
        self._interval_s = interval_s
        self.samples: list[tuple[float, T]] = []
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> BackgroundSampler[T]:
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()
        if self._error is not None:
            raise AssertionError(f"the background sampler failed: {self._error!r}")

    @property
    def values(self) -> list[T]:
        return [value for _, value in self.samples]

    def _take(self) -> None:
        self.samples.append((time.monotonic(), self._sample()))

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._take()
            except Exception as exc:  # noqa: BLE001 - reported at exit, in the test's thread
                self._error = exc
                return


def metric_value(url: str, name: str, **labels: str) -> float | None:
    """The first sample called `name` with these labels at a /metrics URL; None when absent
    or the endpoint does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our loopback
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None
