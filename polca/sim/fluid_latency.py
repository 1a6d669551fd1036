"""Latencies without per-request state: first-token and finish times of sampled requests.

The fluid engine keeps no requests, so latencies come from samples (:mod:`polca.sim.
fluid_arrivals`: a share of the arrivals, each with its own trace row, server, step and offset
in the step) read against the engine's state:

* **First token** (:func:`first_token_s`), with the request engine's rule at any step: a step's
  arrivals join their server's FIFO queue at its start, and a request's first token comes when
  the server has done the work ahead of it and its own, but not before its own prefill after
  its arrival: ``max(t + (Q + ahead + w) / speed, arrival + w / speed)``. ``Q`` is the
  server's queue at the step's start (exact: the engine's state), ``w`` the sample's own work;
  ``ahead``, the work of the step's other arrivals before it, is their expected share, ``offset
  × cell work × (c - 1) / c`` (each of the ``c - 1`` others arrived earlier with probability
  ``offset``). The speed is the server's in that step.
* **Finish** (:func:`finish_s`): the request joins the decode batch in the step after the one
  in which its server did its work (as in the request engine, where a step's prefill starts at
  the step's start, so a request arriving late in a step can join the next step's batch before
  its first token is due), and needs ``generated - 1`` iterations. Its
  iterations come at its **tier's** mean rate per step, weighted by batch size (what a request
  in a batch sees), not its own server's: per-server iteration rates are not kept (a week at
  1,000 servers would be 600 M of them). Within a step the iterations start after the
  prefill time (prefill comes first), at the tier's batch-weighted mean prefill time.

What this leaves out, and the direction of the error (docs/simulator.md §6 measures it): the
spread of iteration rates between servers of a tier (batch sizes and prefill stalls differ),
which widens the request engine's end-to-end distribution, so the fluid P99 is lower; and the
exact order of a step's arrivals, replaced by its expectation.

Pure NumPy.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["finish_s", "first_token_s"]

FloatArray = npt.NDArray[np.float64]


def first_token_s(
    *,
    step_start_s: FloatArray,
    offset_s: FloatArray,
    queue_work_s: FloatArray,
    cell_work_s: FloatArray,
    cell_count: FloatArray,
    own_work_s: FloatArray,
    speed: FloatArray,
    dt_s: float,
) -> tuple[FloatArray, FloatArray]:
    """First-token times of sampled requests (``offset_s``: arrival within the step, share),
    and when their server has done their work (the queue's view: when they join a batch)."""
    others = cell_work_s * (cell_count - 1.0) / np.maximum(cell_count, 1.0)
    ahead = offset_s * np.maximum(others, 0.0)
    served = step_start_s + (queue_work_s + ahead + own_work_s) / speed
    own = step_start_s + offset_s * dt_s + own_work_s / speed
    return np.asarray(np.maximum(served, own), dtype=np.float64), served


def finish_s(
    first_s: FloatArray,
    served_s: FloatArray,
    tokens: FloatArray,
    *,
    progress: FloatArray,
    prefill_s: FloatArray,
    dt_s: float,
) -> FloatArray:
    """Finish times of requests with ``first_s``, prefill work done at ``served_s`` (they join
    a batch in the next step) and ``tokens`` decode tokens still to go.

    ``progress[k]``: iterations a request in the batch gets in step ``k``; ``prefill_s[k]``: the
    prefill time before them. NaN: not finished by the last step.
    """
    steps = progress.size
    cum = np.concatenate([[0.0], np.cumsum(progress)])
    # A prefill ending exactly at a step's end joins in the next step, as in the engine.
    join = np.floor(served_s / dt_s - 1e-9).astype(np.int64) + 1
    out = np.full(first_s.size, np.nan)
    done_at_first = tokens <= 0
    out[done_at_first] = first_s[done_at_first]
    live = np.flatnonzero(~done_at_first & (join < steps))
    target = cum[join[live]] + tokens[live]
    step = np.searchsorted(cum, target, side="left") - 1  # cum[step] < target <= cum[step + 1]
    ok = step < steps
    live, target, step = live[ok], target[ok], step[ok]
    share = (target - cum[step]) / np.maximum(progress[step], 1e-300)
    decode_s = dt_s - prefill_s[step]
    out[live] = step * dt_s + prefill_s[step] + share * decode_s
    return out
