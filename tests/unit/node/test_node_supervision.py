"""Supervised tasks: a failing long-running task is logged, counted, restarted; health sees it."""

from __future__ import annotations

import asyncio
import random
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import cast

import pytest

from polca_node.daemon import DaemonConfig, NodeDaemon
from polca_node.exporter import MetricsServer, NodeMetrics
from polca_node.gpu.fake_nvml import FakeNvml, ManualClock
from polca_node.gpu.nvml_backend import NvmlBackend
from polca_node.kube_client import KubeClient
from polca_node.supervision import FAILURES_BEFORE_NOT_LIVE, Supervisor
from polca_testbed.stub_kube import StubKube

DAEMON_NODE = "node-a"  # as tests/unit/node/conftest.py's fixtures


async def wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.005)


def fast_supervisor(stop: asyncio.Event, restarts: list[str]) -> Supervisor:
    return Supervisor(stop, on_restart=restarts.append, rng=random.Random(0))


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real schedule (0.5 s doubling to 30 s) is tested in test_node_backoff; keep it short.
    monkeypatch.setattr("polca_node.supervision.RESTART_BASE_S", 0.001)
    monkeypatch.setattr("polca_node.supervision.RESTART_CAP_S", 0.01)


async def test_a_failing_task_is_restarted_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    restarts: list[str] = []
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("boom")
        await stop.wait()

    supervisor = fast_supervisor(stop, restarts)
    supervisor.start("reconcile", flaky)
    await wait_until(lambda: len(runs) == 3 and supervisor.states["reconcile"].running)
    assert restarts == ["reconcile", "reconcile"]
    assert supervisor.states["reconcile"].last_error == "RuntimeError: boom"
    assert "task reconcile failed; restarting it" in caplog.text
    assert supervisor.down() == []
    stop.set()
    await supervisor.stop()


async def test_a_task_that_returns_early_is_restarted_unless_it_runs_once() -> None:
    stop = asyncio.Event()
    restarts: list[str] = []
    calls = {"loop": 0, "first-read": 0}

    async def returns(name: str) -> None:
        calls[name] += 1
        if name == "loop" and calls[name] >= 3:
            await stop.wait()

    supervisor = fast_supervisor(stop, restarts)
    supervisor.start("loop", lambda: returns("loop"))
    supervisor.start("first-read", lambda: returns("first-read"), once=True)
    await wait_until(lambda: calls["loop"] == 3)
    assert calls["first-read"] == 1
    assert supervisor.states["first-read"].done
    assert restarts == ["loop", "loop"]
    assert supervisor.down() == []  # a finished one-shot task is not "down"
    stop.set()
    await supervisor.stop()


async def test_a_task_failing_again_and_again_fails_liveness() -> None:
    stop = asyncio.Event()

    async def broken() -> None:
        raise OSError("socket gone")

    supervisor = fast_supervisor(stop, [])
    supervisor.start("kubelet", broken)
    await wait_until(lambda: supervisor.failing() == ["kubelet"])
    assert supervisor.states["kubelet"].failures_in_a_row >= FAILURES_BEFORE_NOT_LIVE
    stop.set()
    await supervisor.stop()


async def test_stop_cancels_every_task() -> None:
    stop = asyncio.Event()
    supervisor = fast_supervisor(stop, [])
    supervisor.start("waits", stop.wait)
    await wait_until(lambda: supervisor.states["waits"].running)
    stop.set()
    await supervisor.stop()
    assert not supervisor.states["waits"].running


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_readyz_and_healthz_answer_separately() -> None:
    state = {"live": (True, "sampling"), "ready": (False, "watches not synced yet")}
    server = MetricsServer(
        NodeMetrics("n1"),
        lambda: state["live"],
        ready=lambda: state["ready"],
        host="127.0.0.1",
        port=0,
    ).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert _get(base + "/healthz") == (200, "sampling\n")
        assert _get(base + "/readyz") == (503, "watches not synced yet\n")
        state["ready"] = (True, "ready")
        assert _get(base + "/readyz") == (200, "ready\n")
    finally:
        server.stop()


def test_task_restarts_are_a_metric() -> None:
    metrics = NodeMetrics("n1")
    metrics.on_task_restart("status")
    text = metrics.exposition().decode()
    assert 'polca_node_task_restarts_total{node="n1",task="status"} 1.0' in text


def _restarts(daemon: NodeDaemon, task: str) -> float:
    text = daemon.metrics.exposition().decode()
    prefix = f'polca_node_task_restarts_total{{node="{DAEMON_NODE}",task="{task}"}} '
    values = [float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]
    return values[0] if values else 0.0


async def test_a_daemon_task_that_fails_is_restarted_and_health_says_so(
    h100_fake: FakeNvml, kube: StubKube, fake_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = NodeDaemon(
        DaemonConfig(DAEMON_NODE), NvmlBackend(h100_fake), cast(KubeClient, kube),
        NodeMetrics(DAEMON_NODE), clock=fake_clock.now,
    )  # fmt: skip
    resync = daemon.reconciler.resync_loop
    calls = {"resync": 0}

    async def flaky_resync(stop: asyncio.Event) -> None:
        calls["resync"] += 1
        if calls["resync"] == 1:
            raise RuntimeError("an unexpected bug")
        await resync(stop)

    async def broken_status(_stop: asyncio.Event) -> None:
        raise KeyError("status")

    monkeypatch.setattr(daemon.reconciler, "resync_loop", flaky_resync)
    monkeypatch.setattr(daemon.status, "status_loop", broken_status)
    stop = asyncio.Event()
    running = asyncio.create_task(daemon.run(stop))
    try:
        await wait_until(lambda: _restarts(daemon, "resync") == 1 and calls["resync"] == 2)
        # The status task keeps failing: liveness fails, so the kubelet restarts the pod.
        await wait_until(lambda: not daemon.healthy()[0])
        assert "tasks failing again and again: status" in daemon.healthy()[1]
        ready, detail = daemon.ready()
        assert not ready
        assert "status" in detail
        assert _restarts(daemon, "status") >= FAILURES_BEFORE_NOT_LIVE
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)
