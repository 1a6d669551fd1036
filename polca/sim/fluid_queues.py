"""Queue math of the fluid engine: one step of a server's prefill queue and decode batch.

Everything is per server (NumPy arrays over servers) and in expectations, not requests:

* **Prefill** is a FIFO queue of work in full-speed seconds, served first in a step (prompts
  pre-empt decoding, as in the request engine). A step serves ``min(queued / speed, dt)``
  seconds: the Lindley recursion ``Q' = max(Q + A - speed * dt, 0)``. The requests in the
  queue complete in proportion to the work done (the share of the queue served), the fluid
  stand-in for FIFO order within a step.
* **Decode** is a continuous batch of ``n`` requests (a real number: an expectation) holding
  ``D`` tokens still to generate. Each iteration gives every request in the batch one token;
  a request in the batch gets ``k`` iterations in the step. The batch's remaining lengths are
  taken as memoryless (geometric, mean ``D / n``): a request then finishes within ``k``
  iterations with probability ``g = 1 - exp(-k n / D)`` and generates ``(D / n) g`` tokens
  on average, so the step retires ``n g`` requests and ``D g`` tokens and leaves the mean
  remaining length ``D / n`` as it was. Token conservation holds exactly (every arriving token
  is decoded once), so by Little's law the mean batch is the request engine's whatever the
  length distribution; what the memoryless assumption changes is how the batch fluctuates.
* **Busy share.** A batch of ``n`` requests is empty with probability ``exp(-n)`` (the number
  in an M/G/inf system is Poisson), so it decodes for ``1 - exp(-n)`` of the time it has: a
  fluid ``n`` that decays towards 0 does not keep a GPU decoding for ever.

Pure NumPy.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["busy_share", "decode_step", "serve_prefill"]

FloatArray = npt.NDArray[np.float64]

_TINY = 1e-30  # keeps 0/0 at 0 (an empty queue or batch)


def serve_prefill(
    queued_work_s: FloatArray, per_work_s: FloatArray, dt_s: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """One step of a prefill queue, ``per_work_s`` seconds per second of full-speed work (1 /
    speed): (seconds spent prefilling, work left, share of the queue served)."""
    needed_s = queued_work_s * per_work_s
    busy_s = np.minimum(needed_s, dt_s)
    share = busy_s / np.maximum(needed_s, _TINY)
    return busy_s, queued_work_s - queued_work_s * share, share


def decode_step(batch: FloatArray, tokens_left: FloatArray, iterations: FloatArray) -> FloatArray:
    """One step of a decode batch whose members get ``iterations`` each: the share of the
    batch, and of its tokens to go, left after it (``exp(-k n / D)``)."""
    return np.exp(-iterations * batch / np.maximum(tokens_left, _TINY))


def busy_share(batch: FloatArray) -> FloatArray:
    """Probability that a batch of mean size ``batch`` (Poisson) holds a request."""
    return np.asarray(-np.expm1(-batch), dtype=np.float64)
