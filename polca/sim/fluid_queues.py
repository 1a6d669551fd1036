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
* **Busy share.** A server draws decode power for its non-prefill time when its batch holds a
  request at the step's start (as in the request engine). Requests are dealt round-robin, so
  the ones that joined in the last step and the ones carried over are both spread evenly
  over the tier's servers: a server has none of ``j`` per server with probability
  ``max(0, 1 - j)`` (:func:`busy_share`).

Pure NumPy.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = ["TierBatch", "TierStep", "busy_share", "prefill_block"]

FloatArray = npt.NDArray[np.float64]

_TINY = 1e-30  # keeps 0/0 at 0 (an empty queue or batch)


def prefill_block(
    queue_s: FloatArray, work_s: FloatArray, speed: FloatArray, dt_s: float
) -> tuple[FloatArray, FloatArray]:
    """Prefill queues (full-speed seconds of work, one per server) over the steps of a block
    at constant speeds, given each step's arriving work ``work_s[step, server]``: (the queues
    before each step and after the last, ``[step + 1, server]``; the work done each step).

    The Lindley recursion ``Q_k = max(Q_{k-1} + A_k - c, 0)``, a row of servers at a time.
    (Its closed form through cumulative sums, ``Q_k = S_k - min(-Q_0, min_{j<=k} S_j)``,
    measured slower: NumPy's accumulations along the step axis cost more than the rows.)
    """
    steps = work_s.shape[0]
    net = work_s - speed * dt_s
    queues = np.empty((steps + 1, queue_s.size))
    queues[0] = queue_s
    for j in range(steps):
        row = queues[j + 1]
        np.add(queues[j], net[j], out=row)
        np.maximum(row, 0.0, out=row)
    done = queues[:-1] + work_s - queues[1:]
    return queues, done


def busy_share(carried_per_server: float, joined_per_server: float) -> float:
    """Probability that a server's batch holds a request at a step's start, given the mean
    requests per server carried over from earlier steps and joined in the last one.

    Requests are dealt round-robin, so both are spread evenly over the tier's servers (each
    holds the whole part of the mean or one more): a server has no join with probability
    ``max(0, 1 - joined)`` and nothing carried over with ``max(0, 1 - carried)``, taken as
    independent. (Drawn as Poisson, as an M/G/inf system would be, the carried-over requests
    left the fluid row's mean power 1.5-1.8 points low on bursty and long-prompt traces,
    against 0.6 this way: docs/simulator.md §6.)
    """
    none_joined = max(0.0, 1.0 - joined_per_server)
    return 1.0 - none_joined * max(0.0, 1.0 - carried_per_server)


class TierStep(NamedTuple):
    """What one step did in a tier: iterations a request in its batch got, the mean prefill
    time before them, tokens generated, first tokens, and the share of its servers'
    non-prefill time spent decoding."""

    iterations: float
    prefill_s: float
    tokens: float
    first_tokens: float
    decoding: float


class TierBatch:
    """One tier's requests waiting for their prefill and its decode batch, as expectations.

    ``step`` takes the step's arrivals and the prefill its servers did, and its iteration time
    (per batch of one, per request added), and returns a :class:`TierStep`.
    """

    def __init__(self, servers: int) -> None:
        self.per_server = 1.0 / max(servers, 1)
        # Waiting for their prefill: requests, decoders, their decode tokens, their work.
        self.requests = self.decoders = self.tokens = self.work_s = 0.0
        self.batch = 0.0
        self.tokens_left = 0.0
        self.joined = 0.0  # of the batch: the requests that joined it in the last step

    def step(
        self,
        inputs: list[float],
        dt_s: float,
        iteration_s: float,
        iteration_per_request_s: float,
    ) -> TierStep:
        """One step. ``inputs``: the step's arrivals (requests, decoders, decode tokens,
        prefill work), then the tier's prefill seconds, the same weighted by each server's
        arrivals of the last step and those arrivals' sum, and the prefill work done."""
        arrived = inputs
        prefill_s, joined_prefill_s, joined_weight, work_done_s = inputs[4:8]
        # Hot loop of hall-scale runs: plain floats, written out.
        requests = self.requests + arrived[0]
        decoders = self.decoders + arrived[1]
        tokens = self.tokens + arrived[2]
        work_s = self.work_s + arrived[3]
        share = min(work_done_s / max(work_s, _TINY), 1.0)
        keep = 1.0 - share
        self.requests, self.decoders = requests * keep, decoders * keep
        self.tokens, self.work_s = tokens * keep, work_s * keep
        # Decode the batch the step started with, after its servers' prefill: the mean over
        # the tier for the requests carried over, over the servers they went to (weighted by
        # their arrivals of the last step) for those that joined in the last step.
        batch, left = self.batch, self.tokens_left
        per_server = batch * self.per_server
        prefill_mean_s = prefill_s * self.per_server
        if joined_weight > 0 and batch > 0:
            carried = max(batch - self.joined, 0.0)
            joined_mean_s = joined_prefill_s / joined_weight
            prefill_mean_s = (carried * prefill_mean_s + self.joined * joined_mean_s) / (
                carried + self.joined
            )
        iterations = (dt_s - prefill_mean_s) / (
            iteration_s + iteration_per_request_s * max(per_server, 1.0)
        )
        kept = math.exp(-iterations * batch / max(left, _TINY))
        decoding = busy_share(
            (batch - self.joined) * self.per_server, self.joined * self.per_server
        )
        self.joined = decoders * share
        self.batch = batch * kept + self.joined
        self.tokens_left = left * kept + tokens * share
        return TierStep(
            iterations=iterations,
            prefill_s=prefill_mean_s,
            tokens=left - left * kept,
            first_tokens=requests * share,
            decoding=decoding,
        )
