"""RequestSet: the engine's waiting and decoding requests, appended and retired lazily."""

from __future__ import annotations

import numpy as np

from polca.sim.request_set import RequestSet


def ints(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def floats(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def test_reached_entries_in_the_order_added() -> None:
    rs = RequestSet(capacity=2)  # grows past its first capacity
    rs.add(ints(10, 11, 12), floats(5.0, 1.0, 3.0), ints(0, 1, 0))
    rs.add(ints(13), floats(2.0), ints(1))
    level = floats(4.0, 2.0)  # per server
    pos = rs.reached(level)
    assert rs.index[pos].tolist() == [11, 12, 13]
    assert rs.threshold[pos].tolist() == [1.0, 3.0, 2.0]
    assert rs.server[pos].tolist() == [1, 0, 1]


def test_tolerance() -> None:
    rs = RequestSet()
    rs.add(ints(0), floats(1.0 + 1e-12), ints(0))
    assert rs.reached(floats(1.0)).size == 0
    assert rs.reached(floats(1.0), 1e-9).tolist() == [0]


def test_retired_entries_never_return_and_are_dropped_when_half() -> None:
    rs = RequestSet()
    rs.add(ints(0, 1, 2, 3), floats(1.0, 2.0, 3.0, 4.0), ints(0, 0, 0, 0))
    rs.retire(rs.reached(floats(1.0)))  # one of four: kept in place
    assert rs.size == 4
    assert rs.reached(floats(10.0)).tolist() == [1, 2, 3]
    rs.retire(rs.reached(floats(2.0)))  # two of four: dropped, order kept
    assert rs.size == 2
    assert rs.index.tolist() == [2, 3]
    rs.add(ints(4), floats(0.5), ints(0))
    assert rs.index[rs.reached(floats(3.0))].tolist() == [2, 4]
