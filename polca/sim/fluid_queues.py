"""Queue math of the fluid engine: prefill queues per server, decode batches per tier.

Everything is in expectations, not requests:

* **Prefill** is each server's FIFO queue of work in full-speed seconds, served first in a
  step (prompts pre-empt decoding, as in the request engine): ``min(queued / speed, dt)``
  seconds, the Lindley recursion ``Q' = max(Q + A - speed × dt, 0)`` (:func:`serve_prefill`).
  This is what makes a server's power bursty, so it is kept per server.
* **Completions.** Requests waiting for their prefill are kept per tier (count, decoders,
  decode tokens, work): a step completes the share of them that the work it did is of the work
  queued (:func:`complete_pending`), i.e. requests complete in proportion to work — the
  tier's aggregate of FIFO order, exact when the queued requests' mix does not depend on the
  server (round-robin dealing).
* **Decode** is each tier's continuous batching, as a total of ``n`` requests (a real number)
  holding ``D`` tokens still to generate, spread evenly over the tier's servers (they are
  dealt the same requests). Each iteration gives every request in a batch one token; a request
  gets ``k`` iterations in the step. The remaining lengths are taken as memoryless (geometric,
  mean ``D / n``): a request then finishes within ``k`` iterations with probability ``1 -
  exp(-k n / D)`` and generates ``D / n`` of that on average, so the step keeps the share
  ``exp(-k n / D)`` of the requests and of the tokens to go (:func:`decode_step`). Token
  conservation holds exactly (every arriving token is decoded once), so by Little's law the
  mean batch is the request engine's whatever the length distribution; the memoryless
  assumption changes only how the batch moves.
* **Busy share.** With a mean of ``b`` requests per server the number a server holds is
  Poisson (an M/G/inf system), so it is decoding with probability ``1 - exp(-b)``
  (:func:`busy_share`): the share of its non-prefill time it draws decode power.

Pure NumPy.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["busy_share", "complete_pending", "decode_step", "serve_prefill"]

FloatArray = npt.NDArray[np.float64]

_TINY = 1e-30  # keeps 0/0 at 0 (an empty queue or batch)


def serve_prefill(
    queued_work_s: FloatArray, speed: FloatArray, per_work_s: FloatArray, dt_s: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """One step of prefill queues at ``speed`` (``per_work_s`` = 1 / speed): (seconds spent
    prefilling, work done, work left)."""
    busy_s = np.minimum(queued_work_s * per_work_s, dt_s)
    done = busy_s * speed
    return busy_s, done, np.maximum(queued_work_s - done, 0.0)


def complete_pending(pending: FloatArray, work_done: FloatArray) -> FloatArray:
    """The part of ``pending`` (rows: tiers; last column: their queued work) that ``work_done``
    (per tier) completes."""
    share = np.minimum(work_done / np.maximum(pending[:, -1], _TINY), 1.0)
    return np.asarray(pending * share[:, None], dtype=np.float64)


def decode_step(batch: FloatArray, tokens_left: FloatArray, iterations: FloatArray) -> FloatArray:
    """One step of decode batches whose members get ``iterations`` each: the share of the
    batch, and of its tokens to go, left after it (``exp(-k n / D)``)."""
    return np.asarray(
        np.exp(-iterations * batch / np.maximum(tokens_left, _TINY)), dtype=np.float64
    )


def busy_share(batch_per_server: FloatArray) -> FloatArray:
    """Probability that a server with a mean of ``batch_per_server`` requests (Poisson) holds
    one."""
    return np.asarray(-np.expm1(-batch_per_server), dtype=np.float64)
