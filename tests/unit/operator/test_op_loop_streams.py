"""The control loop and the power streams: which daemons it follows, and its early wake-up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from polca_operator.fakes import Harness, domain_view, policy_body
from polca_operator.loop import ControlLoop, run_loop
from polca_operator.power_streams import SampleListener

BUDGET_W = 100_000.0


@dataclass
class FakeStreams:
    """Records what each loop follows; the test calls the listeners as samples would."""

    follows: dict[str, tuple[dict[str, str], SampleListener | None]] = field(default_factory=dict)
    released: list[str] = field(default_factory=list)

    def follow(
        self, owner: str, urls: Mapping[str, str], on_sample: SampleListener | None = None
    ) -> None:
        self.follows[owner] = (dict(urls), on_sample)

    def release(self, owner: str) -> None:
        self.follows.pop(owner, None)
        self.released.append(owner)

    def sample(self, owner: str, node: str, power_w: float) -> None:
        listener = self.follows[owner][1]
        assert listener is not None
        listener(node, power_w)


class Flag:
    """Kopf's stop flag, in real time."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.waits = 0

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self, timeout: float | None = None) -> object:
        self.waits += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)
        return self


def streaming(harness: Harness) -> tuple[ControlLoop, FakeStreams]:
    streams = FakeStreams()
    deps = replace(harness.deps, streams=streams)
    return ControlLoop("row-a", deps, harness.events), streams


async def test_the_loop_follows_its_domain_where_direct_telemetry_may_be_read(
    harness: Harness,
) -> None:
    loop, streams = streaming(harness)
    view = domain_view(2)
    await loop.cycle(policy_body(), view)  # direct (the default): with the wake-up listener
    urls, listener = streams.follows["row-a"]
    assert set(urls) == {"node-00000", "node-00001"}
    assert listener is not None
    prometheus = {"source": "prometheus", "prometheusURL": "http://prom:9090"}
    await loop.cycle(policy_body(generation=2, telemetry=prometheus), view)
    urls, listener = streams.follows["row-a"]
    assert set(urls) == {"node-00000", "node-00001"}  # the fallback's, ready when needed
    assert listener is None  # Prometheus decides: no early cycles on streamed samples
    no_fallback = {**prometheus, "directFallback": False}
    await loop.cycle(policy_body(generation=3, telemetry=no_fallback), view)
    assert streams.follows["row-a"][0] == {}
    loop.close()
    assert streams.released == ["row-a"]


async def until(what: str, check: Callable[[], Any], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout_s:g} s: {what}"
        await asyncio.sleep(0.005)


async def test_a_sample_reaching_the_next_trigger_runs_the_cycle_at_once(
    harness: Harness,
) -> None:
    loop, streams = streaming(harness)
    harness.reader.power_w = 50_000.0
    stopped = Flag()
    body = policy_body(budget_w=BUDGET_W, controlIntervalSeconds=60)  # the interval never ends
    task = asyncio.create_task(run_loop(loop, body, domain_view(2), stopped))
    try:
        await until("the first cycle", lambda: len(harness.reader.queries) == 1)
        streams.sample("row-a", "node-00000", 30_000.0)
        streams.sample("row-a", "node-00001", 30_000.0)  # 60 kW: below stage 1's 80 kW
        await asyncio.sleep(0.2)
        assert len(harness.reader.queries) == 1  # no early cycle below the trigger
        harness.reader.power_w = 85_000.0
        streams.sample("row-a", "node-00001", 55_000.0)  # 85 kW
        await until("an early cycle", lambda: len(harness.reader.queries) == 2)
        assert loop.stage == 1
        early = {"policy": "row-a"}
        assert harness.metrics.registry.get_sample_value("polca_early_cycles_total", early) == 1
        # A flood of crossings (each sample alternately below and over the next trigger, 89 kW)
        # runs at most one cycle per minimum gap (50 ms).
        flood_s = 0.5
        started = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() - started < flood_s:
            streams.sample("row-a", "node-00001", 50_000.0)
            streams.sample("row-a", "node-00001", 60_000.0)
            await asyncio.sleep(0.001)
        cycles = len(harness.reader.queries) - 2
        assert 1 <= cycles <= flood_s / 0.05 + 1
    finally:
        stopped.event.set()
        await asyncio.wait_for(task, 5)
    assert streams.released == ["row-a"]  # the stopped loop let go of its streams
