"""Where ``polca sweep``'s cells run: a local process pool (default) or a Dask cluster.

Both are a :class:`concurrent.futures.Executor`, so the sweep submits and collects its cells the
same way on either. Dask (the optional ``distributed`` extra, ``pip install
'polca[distributed]'``) is for sweeps beyond one machine: ``--scheduler-address`` names a
running scheduler (``dask scheduler``; each worker needs this project installed, as it imports
the simulator), and without one a :class:`distributed.LocalCluster` of worker processes on this
machine runs it (what the tests use). No scheduling of our own: Dask places and retries the
cells.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager

__all__ = [
    "BACKENDS",
    "DASK_INSTALL",
    "DEFAULT_BACKEND",
    "BackendUnavailableError",
    "sweep_executor",
]

PROCESSES = "processes"
DASK = "dask"
BACKENDS = (PROCESSES, DASK)
DEFAULT_BACKEND = PROCESSES
DASK_INSTALL = "pip install 'polca[distributed]'"
_CONNECT_TIMEOUT_S = 30.0


class BackendUnavailableError(RuntimeError):
    """The chosen backend's package is not installed."""


@contextmanager
def sweep_executor(
    backend: str, *, workers: int | None = None, scheduler_address: str | None = None
) -> Iterator[Executor]:
    """An executor for the sweep's cells; ``workers`` defaults to every core (local only)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    if backend == PROCESSES:
        if scheduler_address is not None:
            raise ValueError("a scheduler address needs the dask backend (--backend dask)")
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            yield pool
        return
    with _dask_executor(workers=workers, scheduler_address=scheduler_address) as executor:
        yield executor


@contextmanager
def _dask_executor(*, workers: int | None, scheduler_address: str | None) -> Iterator[Executor]:
    try:
        from distributed import Client, LocalCluster
    except ModuleNotFoundError as exc:
        raise BackendUnavailableError(
            f"the dask backend needs Dask's distributed scheduler ({exc.name} is not "
            f"installed): {DASK_INSTALL}"
        ) from exc
    if scheduler_address is not None:
        if workers is not None:
            raise ValueError("--workers sizes a local cluster; a remote one has its own workers")
        # distributed's constructors carry no annotations (hence the ignores below).
        with Client(scheduler_address, timeout=_CONNECT_TIMEOUT_S) as client:  # type: ignore[no-untyped-call]
            yield client.get_executor()
        return
    # One single-threaded worker process per core: the engine is single-threaded NumPy.
    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,  # no web server: sweeps run side by side on one machine
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        yield client.get_executor()
