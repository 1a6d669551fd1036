"""Domain power from node samples: silent nodes never make the domain look emptier."""

from __future__ import annotations

import pytest

from polca_operator.domain_power import DomainNode, NodeSample, combine

NOW_S = 1000.0


def test_sums_fresh_samples_and_adds_overhead_per_node() -> None:
    nodes = [DomainNode("a"), DomainNode("b"), DomainNode("cpu-only", reporting=False)]
    samples = {"a": NodeSample(3000.0, NOW_S - 1), "b": NodeSample(2000.0, NOW_S - 2)}
    power = combine(nodes, samples, overhead_w=500.0, now_s=NOW_S, staleness_s=10)
    assert power is not None
    assert power.power_w == pytest.approx(3000 + 2000 + 3 * 500)
    assert (power.measured_nodes, power.estimated_nodes) == (2, 0)
    assert power.age_s(NOW_S) == pytest.approx(2.0)  # the oldest sample used


def test_silent_node_counts_as_the_busiest_measured_node() -> None:
    nodes = [DomainNode("a"), DomainNode("b"), DomainNode("c")]
    samples = {"a": NodeSample(1000.0, NOW_S), "b": NodeSample(4000.0, NOW_S)}
    power = combine(nodes, samples, overhead_w=0, now_s=NOW_S, staleness_s=10)
    assert power is not None
    assert power.power_w == pytest.approx(1000 + 4000 + 4000)
    assert power.estimated_nodes == 1


def test_silent_node_counts_at_least_at_its_last_known_power() -> None:
    nodes = [DomainNode("a"), DomainNode("b")]
    samples = {"a": NodeSample(1000.0, NOW_S)}
    last = {"b": NodeSample(5000.0, NOW_S - 600)}
    power = combine(nodes, samples, overhead_w=0, now_s=NOW_S, staleness_s=10, last_known=last)
    assert power is not None
    assert power.power_w == pytest.approx(1000 + 5000)
    low_last = {"b": NodeSample(10.0, NOW_S - 600)}
    power = combine(nodes, samples, overhead_w=0, now_s=NOW_S, staleness_s=10, last_known=low_last)
    assert power is not None
    assert power.power_w == pytest.approx(1000 + 1000)


def test_node_without_a_daemon_is_not_estimated() -> None:
    nodes = [DomainNode("a"), DomainNode("cpu-only", reporting=False)]
    power = combine(nodes, {"a": NodeSample(1000.0, NOW_S)}, overhead_w=0, now_s=NOW_S,
                    staleness_s=10)  # fmt: skip
    assert power is not None
    assert power.power_w == 1000.0


def test_stale_sample_is_treated_as_silent() -> None:
    nodes = [DomainNode("a"), DomainNode("b")]
    samples = {"a": NodeSample(100.0, NOW_S), "b": NodeSample(50.0, NOW_S - 30)}
    power = combine(nodes, samples, overhead_w=0, now_s=NOW_S, staleness_s=10)
    assert power is not None
    assert power.power_w == pytest.approx(100 + 100)
    assert power.estimated_nodes == 1


def test_no_fresh_sample_means_no_power() -> None:
    nodes = [DomainNode("a")]
    assert combine(nodes, {}, overhead_w=0, now_s=NOW_S, staleness_s=10) is None
    stale = {"a": NodeSample(100.0, NOW_S - 11)}
    assert combine(nodes, stale, overhead_w=0, now_s=NOW_S, staleness_s=10) is None


def test_samples_of_other_nodes_are_ignored() -> None:
    samples = {"a": NodeSample(100.0, NOW_S), "elsewhere": NodeSample(9e9, NOW_S)}
    power = combine([DomainNode("a")], samples, overhead_w=0, now_s=NOW_S, staleness_s=10)
    assert power is not None
    assert power.power_w == 100.0


def test_age_is_never_negative_when_the_source_clock_runs_ahead() -> None:
    power = combine(
        [DomainNode("a")], {"a": NodeSample(1.0, NOW_S + 3)}, overhead_w=0, now_s=NOW_S,
        staleness_s=10,
    )  # fmt: skip
    assert power is not None
    assert power.age_s(NOW_S) == 0.0


def test_negative_power_is_not_a_sample() -> None:
    samples = {"a": NodeSample(-1.0, NOW_S), "b": NodeSample(1.0, NOW_S)}
    power = combine(
        [DomainNode("a", reporting=False), DomainNode("b")], samples, overhead_w=0, now_s=NOW_S,
        staleness_s=5,
    )  # fmt: skip
    assert power is not None
    assert power.measured_nodes == 1
