"""Requests waiting for a per-server counter to reach their threshold.

The engine keeps two of these: requests waiting for their prefill (threshold: the server's
cumulative prefill work that completes theirs) and requests decoding (threshold: the server's
iteration count at which their last token is out). Every step it asks which have reached their
threshold and retires them.

At hall scale (1,000 servers, thousands of arrivals a second) rebuilding the arrays every step
cost more than the comparisons, so appends go into spare capacity (amortised O(new entries)),
and retired entries stay in place, marked with an infinite threshold, until they are half of
the entries. The order of the live entries is always the order they were added in, so sums
over them come out the same to the last bit as with arrays rebuilt each step.

Pure NumPy.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["RequestSet"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
_T = TypeVar("_T", bound=np.generic)


class RequestSet:
    """Parallel arrays: request index, threshold, server; in the order the entries were added."""

    def __init__(self, capacity: int = 1024) -> None:
        self._idx = np.empty(capacity, dtype=np.int64)
        self._key = np.empty(capacity, dtype=np.float64)
        self._srv = np.empty(capacity, dtype=np.int64)
        self._size = 0  # entries in use, retired ones included
        self._retired = 0

    @property
    def size(self) -> int:
        """Entries held, retired ones not yet dropped included (0: none at all)."""
        return self._size

    @property
    def index(self) -> IntArray:
        return self._idx[: self._size]

    @property
    def threshold(self) -> FloatArray:
        return self._key[: self._size]

    @property
    def server(self) -> IntArray:
        return self._srv[: self._size]

    def add(self, index: IntArray, threshold: FloatArray, server: IntArray) -> None:
        n, m = self._size, index.size
        if n + m > self._idx.size:
            capacity = max(2 * self._idx.size, n + m)
            self._idx = _grown(self._idx, n, capacity)
            self._key = _grown(self._key, n, capacity)
            self._srv = _grown(self._srv, n, capacity)
        self._idx[n : n + m] = index
        self._key[n : n + m] = threshold
        self._srv[n : n + m] = server
        self._size = n + m

    def reached(self, level: FloatArray, tolerance: float = 0.0) -> IntArray:
        """Positions (into the arrays) of the live entries whose server's ``level`` is at or
        above their threshold (less ``tolerance``), in order."""
        at = self.server
        limit = level[at] + tolerance if tolerance else level[at]
        return np.flatnonzero(self.threshold <= limit)

    def retire(self, positions: IntArray) -> None:
        """Drop these entries (positions from :meth:`reached`, before any other change)."""
        self._key[positions] = np.inf  # never reached again
        self._retired += positions.size
        if 2 * self._retired >= self._size:
            n = self._size
            keep = self._key[:n] != np.inf
            live = int(np.count_nonzero(keep))
            for a in (self._idx, self._key, self._srv):
                a[:live] = a[:n][keep]
            self._size, self._retired = live, 0


def _grown(a: npt.NDArray[_T], used: int, capacity: int) -> npt.NDArray[_T]:
    out = np.empty(capacity, dtype=a.dtype)
    out[:used] = a[:used]
    return out
