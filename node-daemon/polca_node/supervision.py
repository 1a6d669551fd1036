"""Supervised long-running tasks: a task that fails is logged, counted and restarted.

Before this, an unexpected exception in the reconcile, status, previous-record or kubelet loop
ended that loop silently: actuation stopped while /healthz stayed green (it watched only the
sampler). Now every long-running task runs under a :class:`Supervisor`: an exception (or a
return before the daemon stops) is logged with its traceback, counted in
``polca_node_task_restarts_total{task}``, and the task is started again after a backoff
(full jitter, 0.5 s doubling to 30 s; reset once the task has run for a minute). Liveness
fails when a task keeps failing, readiness while any task is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from polca.backoff import Backoff

__all__ = ["RESTART_BASE_S", "RESTART_CAP_S", "Supervisor", "TaskState"]

logger = logging.getLogger(__name__)

RESTART_BASE_S = 0.5
RESTART_CAP_S = 30.0
# A task that ran this long before failing starts its backoff afresh.
STABLE_AFTER_S = 60.0
# This many failures in a row, with no stable run between them, fail liveness.
FAILURES_BEFORE_NOT_LIVE = 5


@dataclass
class TaskState:
    """What the supervisor knows of one task (read by health checks and tests)."""

    name: str
    backoff: Backoff
    once: bool = False  # ends by returning (e.g. a first read), not only at stop
    running: bool = False
    done: bool = False
    restarts: int = 0
    failures_in_a_row: int = 0
    last_error: str = ""


class Supervisor:
    """Runs named coroutine factories until `stop` is set, restarting each one that ends."""

    def __init__(
        self,
        stop: asyncio.Event,
        *,
        on_restart: Callable[[str], None] = lambda _name: None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._stop = stop
        self._on_restart = on_restart
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.states: dict[str, TaskState] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(
        self, name: str, factory: Callable[[], Awaitable[object]], *, once: bool = False
    ) -> None:
        """Run `factory()` as task `name`; with `once`, a normal return ends it for good."""
        backoff = Backoff(RESTART_BASE_S, RESTART_CAP_S, rng=self._rng)
        state = TaskState(name, backoff, once=once)
        self.states[name] = state
        self._tasks.append(asyncio.create_task(self._supervise(state, factory), name=name))

    async def _supervise(self, state: TaskState, factory: Callable[[], Awaitable[object]]) -> None:
        while not self._stop.is_set():
            started_s = self._clock()
            state.running = True
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever it was, the task must come back
                logger.exception("task %s failed; restarting it", state.name)
                state.last_error = f"{type(exc).__name__}: {exc}"
            else:
                if self._stop.is_set() or state.once:
                    state.done = True
                    break
                logger.error("task %s ended unexpectedly; restarting it", state.name)
                state.last_error = "ended unexpectedly"
            finally:
                state.running = False
            if self._clock() - started_s >= STABLE_AFTER_S:
                state.backoff.reset()
                state.failures_in_a_row = 0
            state.failures_in_a_row += 1
            state.restarts += 1
            self._on_restart(state.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), state.backoff.next_s())

    def down(self) -> list[str]:
        """Tasks not running now (failed, waiting to be restarted)."""
        return [n for n, state in self.states.items() if not state.running and not state.done]

    def failing(self) -> list[str]:
        """Tasks that failed again and again without a stable run: liveness fails on them."""
        return [
            name
            for name, state in self.states.items()
            if state.failures_in_a_row >= FAILURES_BEFORE_NOT_LIVE
        ]

    async def stop(self) -> None:
        """Cancel every task and wait for them (after `stop` was set, or to abort)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
