"""Queue math of the fluid engine: prefill queues (Lindley), tier batches, busy share."""

from __future__ import annotations

import math

import numpy as np
import pytest

from polca.sim.fluid_queues import TierBatch, busy_share, prefill_block


def lindley(queue: float, work: list[float], capacity: float) -> list[float]:
    out = [queue]
    for w in work:
        out.append(max(out[-1] + w - capacity, 0.0))
    return out


class TestPrefillBlock:
    def test_matches_the_recursion_per_server(self) -> None:
        rng = np.random.default_rng(0)
        work = rng.exponential(0.6, size=(40, 3))
        speed = np.array([1.0, 0.5, 2.0])
        queues, done = prefill_block(np.array([0.0, 2.0, 0.3]), work, speed, 1.0)
        for i in range(3):
            expected = lindley(float(queues[0, i]), list(work[:, i]), float(speed[i]))
            assert queues[:, i] == pytest.approx(expected, abs=1e-12)
        # Work is conserved: what arrived is done or still queued.
        assert done.sum(axis=0) + queues[-1] == pytest.approx(queues[0] + work.sum(axis=0))

    def test_work_beyond_a_step_carries_over(self) -> None:
        work = np.array([[1.5], [0.0], [0.0]])
        queues, done = prefill_block(np.zeros(1), work, np.ones(1), 1.0)
        assert queues[:, 0].tolist() == pytest.approx([0.0, 0.5, 0.0, 0.0])
        assert done[:, 0].tolist() == pytest.approx([1.0, 0.5, 0.0])

    def test_a_slower_server_serves_less_work_per_step(self) -> None:
        _, done = prefill_block(np.array([5.0]), np.zeros((1, 1)), np.array([0.5]), 1.0)
        assert float(done[0, 0]) == pytest.approx(0.5)


def step(tier: TierBatch, arrived: tuple[float, float, float, float], **kw: float) -> list[float]:
    inputs = [
        *arrived,
        kw.get("prefill_s", 0.0),
        kw.get("joined_prefill_s", 0.0),
        kw.get("joined_weight", 0.0),
        kw.get("work_done_s", arrived[3]),
    ]
    out = tier.step(inputs, 1.0, 0.02, 0.0004)
    return [out.iterations, out.prefill_s, out.tokens, out.first_tokens, out.decoding]


class TestTierBatch:
    def test_every_token_is_decoded_once(self) -> None:
        tier = TierBatch(servers=10)
        tokens = first = 0.0
        for k in range(400):
            arrived = (20.0, 20.0, 20 * 99.0, 20 * 0.05) if k < 100 else (0.0, 0.0, 0.0, 0.0)
            _, _, t, f, _ = step(tier, arrived)
            tokens += t
            first += f
        assert first == pytest.approx(2000.0)
        assert tokens == pytest.approx(2000 * 99.0, rel=1e-6)

    def test_requests_wait_for_the_work_ahead_of_them(self) -> None:
        tier = TierBatch(servers=1)
        # Two requests' worth of work arrives; only half of it is done this step.
        _, _, _, first, _ = step(tier, (2.0, 2.0, 20.0, 2.0), work_done_s=1.0)
        assert first == pytest.approx(1.0)
        _, _, _, first, _ = step(tier, (0.0, 0.0, 0.0, 0.0), work_done_s=1.0)
        assert first == pytest.approx(1.0)

    def test_steady_batch_follows_littles_law(self) -> None:
        # 2 requests of 100 decode tokens a step: tokens per step match the arrivals', and the
        # batch over a step (it decays as exp(-x t) from its start, x = iterations / length)
        # is the rate times the decode time (Little's law).
        tier = TierBatch(servers=1)
        for _ in range(300):
            iterations, _, tokens, _, _ = step(tier, (2.0, 2.0, 200.0, 0.1))
        assert tokens == pytest.approx(200.0, rel=1e-6)
        x = iterations / 100.0
        mean_batch = tier.batch * -math.expm1(-x) / x
        assert mean_batch == pytest.approx(2.0 * 100.0 / iterations, rel=1e-6)

    def test_prefill_time_leaves_less_time_to_decode(self) -> None:
        plain, busy = TierBatch(servers=1), TierBatch(servers=1)
        for tier in (plain, busy):
            step(tier, (1.0, 1.0, 500.0, 0.1))
        free = step(plain, (0.0, 0.0, 0.0, 0.0))[0]
        halved = step(busy, (0.0, 0.0, 0.0, 0.0), prefill_s=0.5)[0]
        assert halved == pytest.approx(free / 2)


class TestBusyShare:
    def test_an_empty_tier_does_not_decode(self) -> None:
        assert busy_share(0.0, 0.0) == 0.0

    def test_joins_dealt_round_robin_cover_every_server(self) -> None:
        assert busy_share(0.0, 1.0) == 1.0
        assert busy_share(0.0, 0.4) == pytest.approx(0.4)

    def test_carried_requests_are_spread_evenly_too(self) -> None:
        assert busy_share(2.0, 0.0) == 1.0
        assert busy_share(0.3, 0.0) == pytest.approx(0.3)
        assert busy_share(0.5, 0.5) == pytest.approx(1.0 - 0.5 * 0.5)
