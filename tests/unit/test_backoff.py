"""The retry schedule (issue 12, finding 3): capped exponential backoff with full jitter, on a
seeded random generator, so the schedule is checked exactly and not by waiting."""

from __future__ import annotations

import random

import pytest

from polca.backoff import BASE_S, CAP_S, Backoff


class Highest(random.Random):
    """uniform(a, b) = b: shows the ceiling of each delay."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_ceilings_double_from_the_base_up_to_the_cap() -> None:
    backoff = Backoff(base_s=0.1, cap_s=1.0, rng=Highest())
    assert [round(backoff.next_s(), 6) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_full_jitter_draws_each_delay_from_zero_to_its_ceiling() -> None:
    backoff = Backoff(rng=random.Random(42))
    reference = random.Random(42)
    delays = [backoff.next_s() for _ in range(50)]
    expected = [reference.uniform(0.0, min(CAP_S, BASE_S * 2**n)) for n in range(50)]
    assert delays == expected
    assert all(0.0 <= d <= CAP_S for d in delays)
    # Full jitter, not ±10 %: delays at the cap spread over most of [0, cap].
    capped = delays[10:]
    assert min(capped) < 0.25 * CAP_S
    assert max(capped) > 0.75 * CAP_S


def test_the_default_cap_bounds_the_reconnection_after_an_outage() -> None:
    # However long the outage, the next attempt comes at most CAP_S later: 1 s, well inside
    # the 2 s from "the server answers" to "the GPUs follow".
    backoff = Backoff()
    for _ in range(10_000):
        assert backoff.next_s() <= CAP_S <= 1.0


def test_daemons_seeded_differently_do_not_retry_in_step() -> None:
    # A DaemonSet that lost the server at one instant: 100 daemons, their 6th retry times.
    times = []
    for seed in range(100):
        backoff = Backoff(rng=random.Random(seed))
        times.append(sum(backoff.next_s() for _ in range(6)))
    buckets = {int(t / 0.1) for t in times}  # 100 ms buckets
    assert len(buckets) >= 15


def test_reset_starts_again_from_the_base() -> None:
    backoff = Backoff(base_s=0.1, cap_s=1.0, rng=Highest())
    for _ in range(5):
        backoff.next_s()
    backoff.reset()
    assert backoff.next_s() == pytest.approx(0.1)


def test_no_overflow_after_very_many_attempts() -> None:
    backoff = Backoff(rng=Highest(), attempt=10**6)
    assert backoff.next_s() == CAP_S


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="base_s"):
        Backoff(base_s=2.0, cap_s=1.0)
