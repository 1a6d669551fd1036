"""The fluid engine's arrivals: the request workload's rate, round-robin dealing, sums."""

from __future__ import annotations

import numpy as np
import pytest

from polca.sim.domain import SERVICE_MODELS
from polca.sim.fluid_arrivals import (
    DECODERS,
    REQUESTS,
    TABLE_DRAWS,
    TABLE_MAX_COUNT,
    TOKENS,
    FluidArrivals,
    SumTable,
    expected_arrivals,
)
from polca.sim.trace import Trace
from polca.sim.workload import JITTER_S, build_requests

SERVICE = SERVICE_MODELS["H100-SXM"]


def trace(arrivals: list[float], context: list[int], generated: list[int]) -> Trace:
    return Trace(
        arrival_s=np.asarray(arrivals, dtype=np.float64),
        context_tokens=np.asarray(context, dtype=np.int64),
        generated_tokens=np.asarray(generated, dtype=np.int64),
    )


def poisson_trace(rate_per_s: float, span_s: float, seed: int = 0) -> Trace:
    rng = np.random.default_rng(seed)
    n = int(rate_per_s * span_s)
    return trace(
        list(np.sort(rng.random(n) * span_s)),
        list(rng.integers(50, 3000, n)),
        list(rng.integers(1, 400, n)),
    )


class TestExpectedArrivals:
    def test_one_request_spreads_over_its_jitter_window(self) -> None:
        t = trace([0.0, 600.0], [100, 100], [10, 10])
        mean = expected_arrivals(t, rate_factor=3.0, duration_s=120.0, dt_s=1.0, steps=130)
        assert mean[:60] == pytest.approx(np.full(60, 3.0 / JITTER_S))
        assert mean[60:] == pytest.approx(np.zeros(70))  # nothing after the window, nor drain

    def test_matches_the_request_workload_on_average(self) -> None:
        t = poisson_trace(2.0, 900.0)
        mean = expected_arrivals(t, rate_factor=4.0, duration_s=600.0, dt_s=1.0, steps=600)
        per_minute = mean.reshape(10, 60).sum(axis=1)
        counts = np.zeros(10)
        for seed in range(20):
            requests = build_requests(
                t,
                rate_factor=4.0,
                inference_servers=3,
                duration_s=600.0,
                rng=np.random.default_rng(seed),
            )
            counts += np.bincount((requests.arrival_s // 60).astype(int), minlength=10)
        assert counts / 20 == pytest.approx(per_minute, rel=0.03)


class TestSumTable:
    def test_sums_have_the_mean_of_their_rows(self) -> None:
        t = poisson_trace(1.0, 5000.0)
        table = SumTable.build(t, SERVICE, np.random.default_rng(1))
        sums = table.sums.reshape(3, TABLE_MAX_COUNT + 1, TABLE_DRAWS)
        for c in (1, 4, TABLE_MAX_COUNT):
            assert sums[:, c].mean(axis=1) == pytest.approx(c * table.mean, rel=0.05)
        assert not sums[:, 0].any()  # no request, nothing

    def test_knows_when_every_request_decodes(self) -> None:
        rng = np.random.default_rng(0)
        assert SumTable.build(trace([0.0, 1.0], [5, 5], [2, 9]), SERVICE, rng).all_decode
        assert not SumTable.build(trace([0.0, 1.0], [5, 5], [1, 9]), SERVICE, rng).all_decode


class TestFluidArrivals:
    def source(self, servers: int, samples: int = 1000) -> FluidArrivals:
        return FluidArrivals(
            poisson_trace(2.0, 1200.0),
            SERVICE,
            rate_factor=30.0,
            servers=servers,
            duration_s=600.0,
            dt_s=1.0,
            steps=620,
            rng=np.random.default_rng(3),
            max_samples=samples,
        )

    def test_requests_are_dealt_round_robin_across_blocks(self) -> None:
        source = self.source(servers=7)
        blocks = [source.block(k, 64) for k in range(0, 620, 64)]
        count = np.concatenate([b.requests[REQUESTS] for b in blocks])
        # Within a step the servers differ by at most one request, and so do their totals.
        assert (count.max(axis=1) - count.min(axis=1) <= 1).all()
        totals = count.sum(axis=0)
        assert totals.max() - totals.min() <= 1
        assert count[600:].sum() == 0  # the drain: no arrivals

    def test_sums_follow_the_counts(self) -> None:
        source = self.source(servers=5)
        block = source.block(0, 200)
        count = block.requests[REQUESTS]
        assert (block.work_s[count == 0] == 0).all()
        assert (block.work_s[count > 0] >= SERVICE.prefill_overhead_s).all()
        assert (block.requests[DECODERS] <= count).all()
        per_request = block.requests[TOKENS].sum() / count.sum()
        assert per_request == pytest.approx(source.table.mean[TOKENS], rel=0.1)

    def test_samples_land_where_requests_arrived(self) -> None:
        source = self.source(servers=5, samples=10**9)  # every request
        block = source.block(0, 100)
        count = block.requests[REQUESTS]
        assert block.sample_step.size == count.sum()
        cells = np.zeros_like(count)
        np.add.at(cells, (block.sample_step, block.sample_server), 1.0)
        assert cells == pytest.approx(count)  # one sample per request, in its cell
        assert (block.sample_cell_count == count[block.sample_step, block.sample_server]).all()
