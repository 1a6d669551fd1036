"""Request scaling, load balancing, the domain's servers and budget."""

from __future__ import annotations

import numpy as np
import pytest

from polca.power.profiles import get_profile
from polca.sim.domain import DomainConfig, Mix
from polca.sim.trace import Trace
from polca.sim.workload import build_requests


def uniform_trace(n: int = 1000, span_s: float = 100.0) -> Trace:
    return Trace(
        arrival_s=np.linspace(0.0, span_s, n),
        context_tokens=np.arange(1, n + 1, dtype=np.int64),
        generated_tokens=np.full(n, 10, dtype=np.int64),
    )


class TestScaling:
    @pytest.mark.parametrize("factor", [0.5, 1.0, 3.7])
    def test_rate_scales_with_factor(self, factor: float) -> None:
        reqs = build_requests(
            uniform_trace(),
            rate_factor=factor,
            inference_servers=4,
            duration_s=100.0,
            rng=np.random.default_rng(1),
            jitter_s=1.0,
        )
        assert len(reqs) == pytest.approx(1000 * factor, rel=0.06)

    def test_keeps_the_rate_profile(self) -> None:
        # All arrivals in the first half: copies stay there (jitter is small).
        half = Trace(
            arrival_s=np.linspace(0.0, 50.0, 500),
            context_tokens=np.full(500, 5, dtype=np.int64),
            generated_tokens=np.full(500, 5, dtype=np.int64),
        )
        reqs = build_requests(
            half,
            rate_factor=4,
            inference_servers=2,
            duration_s=50.0,
            rng=np.random.default_rng(0),
            jitter_s=2.0,
        )
        assert reqs.arrival_s.max() < 50.0
        assert np.histogram(reqs.arrival_s, bins=5, range=(0, 50))[0].min() > 300

    def test_short_trace_repeats_to_cover_duration(self) -> None:
        reqs = build_requests(
            uniform_trace(100, 10.0),
            rate_factor=1.0,
            inference_servers=1,
            duration_s=95.0,
            rng=np.random.default_rng(0),
            jitter_s=0.5,
        )
        assert reqs.arrival_s.max() > 80.0
        assert len(reqs) == pytest.approx(900, rel=0.1)

    def test_round_robin_and_sorted(self) -> None:
        reqs = build_requests(
            uniform_trace(),
            rate_factor=2.0,
            inference_servers=3,
            duration_s=100.0,
            rng=np.random.default_rng(2),
        )
        assert np.all(np.diff(reqs.arrival_s) >= 0)
        assert np.bincount(reqs.server).max() - np.bincount(reqs.server).min() <= 1

    def test_tokens_drawn_from_the_trace(self) -> None:
        trace = uniform_trace()
        reqs = build_requests(
            trace,
            rate_factor=2.0,
            inference_servers=3,
            duration_s=100.0,
            rng=np.random.default_rng(2),
        )
        assert set(reqs.context_tokens.tolist()) <= set(trace.context_tokens.tolist())

    def test_deterministic_for_a_seed(self) -> None:
        kwargs = {"rate_factor": 2.5, "inference_servers": 3, "duration_s": 100.0}
        a = build_requests(uniform_trace(), rng=np.random.default_rng(9), **kwargs)  # type: ignore[arg-type]
        b = build_requests(uniform_trace(), rng=np.random.default_rng(9), **kwargs)  # type: ignore[arg-type]
        assert np.array_equal(a.arrival_s, b.arrival_s)

    def test_invalid_arguments(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            build_requests(
                uniform_trace(),
                rate_factor=0,
                inference_servers=1,
                duration_s=1,
                rng=np.random.default_rng(),
            )


class TestDomain:
    def test_budget_is_provisioned_power_of_base_servers(self) -> None:
        domain = DomainConfig(get_profile("H100-SXM"), base_servers=40, oversubscription=0.3)
        assert domain.servers == 52
        assert domain.provisioned_server_w == 8 * 700 + 1500
        assert domain.budget_w == 40 * (8 * 700 + 1500)

    def test_mix_interleaves_and_keeps_proportions(self) -> None:
        tiers = Mix(high=0.5, low=0.3, train=0.2).server_tiers(50)
        assert tiers.count("high") == 25
        assert tiers.count("low") == 15
        assert tiers.count("train") == 10
        # Every prefix is close to the mix, so added servers come in proportion.
        prefix = Mix(1, 1, 0).server_tiers(41)
        assert prefix[:40].count("high") == 20

    def test_invalid_mix(self) -> None:
        with pytest.raises(ValueError, match="mix"):
            Mix(0, 0, 0)

    def test_invalid_domain(self) -> None:
        with pytest.raises(ValueError, match="oversubscription"):
            DomainConfig(get_profile("H200"), oversubscription=-0.1)
