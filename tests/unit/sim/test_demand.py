"""Trace → per-server phase demand: the training cycle, the queue and decode shares, the
calibrated timeline (polca.sim.demand)."""

from __future__ import annotations

import numpy as np
import pytest

from polca.power.profiles import get_profile
from polca.sim.demand import (
    TrainCycle,
    _covered_s,
    build_timeline,
    gpu_power_w,
    inference_fractions,
    mean_batch,
)
from polca.sim.domain import SERVICE_MODELS, TIER_HIGH, TIER_LOW, TIER_TRAIN, ServiceModel
from polca.sim.trace import Trace
from polca.sim.workload import Requests

A100 = get_profile("A100-80GB")
SERVICE = SERVICE_MODELS["A100-80GB"]


def requests(
    arrival_s: list[float], context: list[int], generated: list[int], server: list[int]
) -> Requests:
    return Requests(
        arrival_s=np.asarray(arrival_s, dtype=np.float64),
        context_tokens=np.asarray(context, dtype=np.int64),
        generated_tokens=np.asarray(generated, dtype=np.int64),
        server=np.asarray(server, dtype=np.int64),
    )


def steady_trace(rate_per_s: float, duration_s: float) -> Trace:
    n = int(rate_per_s * duration_s)
    rng = np.random.default_rng(7)
    return Trace(
        arrival_s=np.sort(rng.random(n) * duration_s),
        context_tokens=rng.integers(500, 8000, size=n),
        generated_tokens=rng.integers(20, 200, size=n),
    )


class TestTrainCycle:
    def test_whole_periods_give_the_mean_compute_share(self) -> None:
        cycle = TrainCycle(compute_s=1.2, comm_s=0.3)
        assert cycle.compute_frac(0.0, 3.0) == pytest.approx(0.8)
        assert cycle.compute_frac(4.5, 6.0) == pytest.approx(cycle.mean_compute_frac)

    def test_windows_inside_one_phase(self) -> None:
        cycle = TrainCycle(compute_s=1.2, comm_s=0.3)
        assert cycle.compute_frac(0.1, 1.1) == pytest.approx(1.0)
        assert cycle.compute_frac(1.25, 1.45) == pytest.approx(0.0)
        # 1.0..2.0 holds 0.2 s of compute, 0.3 s of comm and 0.5 s of the next compute.
        assert cycle.compute_frac(1.0, 2.0) == pytest.approx(0.7)

    def test_rejects_empty_windows_and_bad_cycles(self) -> None:
        with pytest.raises(ValueError, match="end_s"):
            TrainCycle(1.0, 0.5).compute_frac(2.0, 2.0)
        with pytest.raises(ValueError, match="positive"):
            TrainCycle(0.0, 0.5)


class TestCoverage:
    def test_overlapping_intervals_count_once(self) -> None:
        edges = np.array([0.0, 10.0])
        covered = _covered_s(np.array([1.0, 2.0]), np.array([5.0, 4.0]), edges)
        assert covered == pytest.approx([4.0])

    def test_gaps_and_intervals_spanning_bins(self) -> None:
        edges = np.array([0.0, 2.0, 4.0, 6.0])
        covered = _covered_s(np.array([1.0, 4.5]), np.array([3.0, 5.0]), edges)
        assert covered == pytest.approx([1.0, 1.0, 0.5])

    def test_nothing_to_cover(self) -> None:
        covered = _covered_s(np.empty(0), np.empty(0), np.array([0.0, 1.0, 2.0]))
        assert covered == pytest.approx([0.0, 0.0])


class TestInferenceFractions:
    def test_prefill_work_carries_over_to_later_bins(self) -> None:
        # 1.2 s of prefill work arriving at once fills a 0.5 s bin twice and a fifth of the next.
        context = round((1.2 - SERVICE.prefill_overhead_s) * SERVICE.prefill_tokens_per_s)
        reqs = requests([0.0], [context], [1], [0])
        prefill, decode = inference_fractions(reqs, SERVICE, servers=1, bin_s=0.5, bins=4)
        assert prefill[0] == pytest.approx([1.0, 1.0, 0.4, 0.0], abs=1e-3)
        assert decode[0] == pytest.approx([0.0, 0.0, 0.0, 0.0])

    def test_decode_follows_prefill_for_the_generated_tokens(self) -> None:
        service = ServiceModel(1000.0, 0.0, 0.01, 0.0)
        # 500 tokens prefill in 0.5 s, then 100 more tokens at 10 ms each: decode 0.5..1.49 s.
        reqs = requests([0.0], [500], [100], [0])
        prefill, decode = inference_fractions(reqs, service, servers=1, bin_s=0.5, bins=4)
        assert prefill[0] == pytest.approx([1.0, 0.0, 0.0, 0.0])
        assert decode[0] == pytest.approx([0.0, 1.0, 0.98, 0.0])

    def test_prefill_and_decode_never_exceed_the_bin(self) -> None:
        rng = np.random.default_rng(3)
        n = 60
        reqs = requests(
            list(np.sort(rng.random(n) * 20.0)),
            list(rng.integers(100, 4000, size=n)),
            list(rng.integers(10, 500, size=n)),
            list(rng.integers(0, 3, size=n)),
        )
        prefill, decode = inference_fractions(reqs, SERVICE, servers=3, bin_s=1.0, bins=20)
        assert prefill.shape == decode.shape == (3, 20)
        assert np.all(prefill >= 0)
        assert np.all(decode >= 0)
        assert np.all(prefill + decode <= 1.0 + 1e-12)
        assert prefill.sum() > 0
        assert decode.sum() > 0

    def test_rejects_empty_domains(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            inference_fractions(requests([], [], [], []), SERVICE, servers=0, bin_s=1.0, bins=1)


def test_mean_batch_satisfies_littles_law() -> None:
    rate, tokens = 1.5, 200.0
    batch = mean_batch(rate, tokens, SERVICE)
    tbt_s = SERVICE.tbt_base_s + SERVICE.tbt_per_request_s * batch
    assert batch == pytest.approx(rate * tokens * tbt_s)


def test_gpu_power_spans_idle_to_prefill_power() -> None:
    zero, one = np.asarray(0.0), np.asarray(1.0)
    assert float(gpu_power_w(A100, zero, zero)) == pytest.approx(A100.idle_context_w)
    assert float(gpu_power_w(A100, one, zero)) == pytest.approx(A100.prefill_w)
    assert float(gpu_power_w(A100, zero, one)) == pytest.approx(A100.decode_w)
    # GEMM work sits at the default limit, held there by the board's limiter.
    assert float(gpu_power_w(A100, zero, zero, 1.0)) == pytest.approx(A100.default_limit_w)


class TestTimeline:
    KINDS = (TIER_HIGH, TIER_LOW, TIER_TRAIN, TIER_HIGH)

    def timeline(self, target_pct: float = 79.0, seed: int = 0):  # type: ignore[no-untyped-def]
        return build_timeline(
            steady_trace(5.0, 1200.0),
            kinds=self.KINDS,
            profile=A100,
            service=SERVICE,
            speedup=20.0,
            duration_s=60.0,
            target_peak_pct=target_pct,
            seed=seed,
        )

    @pytest.mark.parametrize("target_pct", [70.0, 79.0, 85.0])
    def test_calibrates_the_peak_node_power(self, target_pct: float) -> None:
        timeline = self.timeline(target_pct)
        per_bin_w = []
        for b in range(timeline.bins):
            # The calibration counts training at its mean compute share.
            demands = timeline.at(b * timeline.bin_s)
            total = 0.0
            for kind, demand in zip(self.KINDS, demands, strict=True):
                train = timeline.train.mean_compute_frac if kind == TIER_TRAIN else 0.0
                decode = 1.0 - train if kind == TIER_TRAIN else demand.decode_frac
                total += float(
                    gpu_power_w(A100, np.asarray(demand.prefill_frac), np.asarray(decode), train)
                )
            per_bin_w.append(total / len(self.KINDS))
        peak_pct = 100.0 * max(per_bin_w) / A100.max_limit_w
        # 0.5 points: each rate draws its own requests, so the peak moves in small jumps.
        assert peak_pct == pytest.approx(target_pct, abs=0.5)

    def test_a_higher_target_needs_more_requests(self) -> None:
        assert self.timeline(85.0).rate_factor > self.timeline(70.0).rate_factor

    def test_bins_cover_the_duration_in_wall_time(self) -> None:
        timeline = self.timeline()
        assert timeline.bins == 60
        assert timeline.duration_s == pytest.approx(60.0)
        assert timeline.prefill_frac.shape == (3, 60)  # inference nodes only

    def test_each_node_gets_its_workload(self) -> None:
        timeline = self.timeline()
        demands = timeline.at(12.3)
        assert len(demands) == len(self.KINDS)
        train = demands[2]
        assert train.prefill_frac == 0.0
        assert train.train_frac + train.decode_frac == pytest.approx(1.0)
        for demand in (demands[0], demands[1], demands[3]):
            assert demand.train_frac == 0.0
            assert demand.prefill_frac + demand.decode_frac > 0.5  # busy servers

    def test_training_swings_from_bin_to_bin(self) -> None:
        timeline = self.timeline()
        shares = {round(timeline.at(float(s))[2].train_frac, 3) for s in range(6)}
        assert len(shares) > 1

    def test_times_outside_the_run_use_the_nearest_bin(self) -> None:
        timeline = self.timeline()
        assert timeline.at(-5.0)[0] == timeline.at(0.0)[0]
        assert timeline.at(1e6)[0] == timeline.at(timeline.duration_s - 0.01)[0]

    def test_needs_an_inference_node(self) -> None:
        with pytest.raises(ValueError, match="inference"):
            build_timeline(
                steady_trace(1.0, 10.0),
                kinds=(TIER_TRAIN,),
                profile=A100,
                service=SERVICE,
                speedup=1.0,
                duration_s=5.0,
            )
