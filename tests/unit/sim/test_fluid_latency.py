"""Latencies of the fluid engine's sampled requests: first token, join, finish."""

from __future__ import annotations

import numpy as np
import pytest

from polca.sim.fluid_latency import FloatArray, finish_s, first_token_s


def first(
    queue: float, offset: float, work: float, *, cell: float = 0.0, count: float = 1.0
) -> tuple[FloatArray, FloatArray]:
    return first_token_s(
        step_start_s=np.array([10.0]),
        offset_s=np.array([offset]),
        queue_work_s=np.array([queue]),
        cell_work_s=np.array([cell]),
        cell_count=np.array([count]),
        own_work_s=np.array([work]),
        speed=np.array([0.5]),
        dt_s=1.0,
    )


class TestFirstToken:
    def test_an_empty_queue_serves_the_request_after_its_arrival(self) -> None:
        at, served = first(0.0, 0.3, 0.1)
        assert float(at[0]) == pytest.approx(10.3 + 0.2)  # its own work at half speed
        assert float(served[0]) == pytest.approx(10.2)  # the step's prefill starts at its start

    def test_work_queued_ahead_delays_it(self) -> None:
        at, served = first(0.5, 0.3, 0.1)
        assert float(at[0]) == pytest.approx(10.0 + (0.5 + 0.1) / 0.5)
        assert float(served[0]) == float(at[0])

    def test_earlier_arrivals_of_its_step_are_ahead_in_expectation(self) -> None:
        # Three arrivals with 3 s of work in all; arriving at 60% of the step, the two others
        # are ahead with probability 0.6 each: 0.6 × 2 s of work.
        at, _ = first(0.0, 0.6, 0.1, cell=3.0, count=3.0)
        assert float(at[0]) == pytest.approx(10.0 + (0.6 * 2.0 + 0.1) / 0.5)


class TestFinish:
    progress = np.full(10, 10.0)  # iterations per step for a request in a batch

    def test_decodes_from_the_step_after_its_prefill(self) -> None:
        out = finish_s(
            np.array([0.4]),
            np.array([0.4]),
            np.array([25.0]),
            progress=self.progress,
            prefill_s=np.zeros(10),
            dt_s=1.0,
        )
        assert float(out[0]) == pytest.approx(1.0 + 2.5)  # steps 1 and 2, then half of step 3

    def test_prefill_comes_first_in_each_step(self) -> None:
        out = finish_s(
            np.array([0.4]),
            np.array([0.4]),
            np.array([25.0]),
            progress=self.progress,
            prefill_s=np.full(10, 0.2),
            dt_s=1.0,
        )
        assert float(out[0]) == pytest.approx(3.0 + 0.2 + 0.5 * 0.8)

    def test_joins_when_its_server_did_the_work_not_at_its_first_token(self) -> None:
        # Arriving late in step 0 with its work done within step 0 (the step's prefill starts
        # at its start), its first token is due in step 1 but it decodes from step 1.
        out = finish_s(
            np.array([1.1]),
            np.array([0.2]),
            np.array([5.0]),
            progress=self.progress,
            prefill_s=np.zeros(10),
            dt_s=1.0,
        )
        assert float(out[0]) == pytest.approx(1.5)

    def test_a_prefill_ending_with_its_step_joins_the_next(self) -> None:
        out = finish_s(
            np.array([1.0]),
            np.array([1.0]),
            np.array([5.0]),
            progress=self.progress,
            prefill_s=np.zeros(10),
            dt_s=1.0,
        )
        assert float(out[0]) == pytest.approx(1.5)

    def test_one_token_finishes_with_its_first_and_too_many_never(self) -> None:
        out = finish_s(
            np.array([0.4, 0.4]),
            np.array([0.4, 0.4]),
            np.array([0.0, 500.0]),
            progress=self.progress,
            prefill_s=np.zeros(10),
            dt_s=1.0,
        )
        assert float(out[0]) == pytest.approx(0.4)
        assert np.isnan(out[1])
