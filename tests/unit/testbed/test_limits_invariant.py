"""The chaos suite's invariant: no GPU limit lifted that the policy still demands."""

from __future__ import annotations

from polca_testbed.limits_invariant import (
    Demand,
    GpuKnobs,
    LimitsSample,
    binding_demand,
    describe_violations,
    violations,
)


def ceilings(*mhz: float | None) -> tuple[GpuKnobs, ...]:
    return tuple(GpuKnobs(clock_ceiling_mhz=m) for m in mhz)


def sample(at_s: float, *mhz: float | None, node: str = "n1") -> LimitsSample:
    return LimitsSample(at_s, node, ceilings(*mhz))


CAP = Demand(0.0, "n1", ceilings(1110, None), why="stage2")


def test_held_or_tighter_limits_pass() -> None:
    samples = [sample(0.0, 1110, None), sample(0.5, 900, 1275), sample(1.0, 1110, None)]
    assert violations(samples, [CAP]) == []


def test_a_lifted_or_raised_ceiling_is_found_at_its_moment() -> None:
    samples = [sample(0.0, 1110, None), sample(0.02, None, None), sample(0.04, 1275, None),
               sample(0.06, 1110, None)]  # fmt: skip
    found = violations(samples, [CAP])
    assert [(v.sample.at_s, v.gpu, v.applied) for v in found] == [(0.02, 0, None), (0.04, 0, 1275)]
    assert str(found[0]) == (
        "t=0.020 n1 GPU 0: clock ceiling MHz unlocked above the demanded 1110 (stage2)"
    )


def test_power_limits_are_checked_with_a_milliwatt_tolerance() -> None:
    demand = Demand(0.0, "n1", (GpuKnobs(power_limit_w=400.0),))
    ok = LimitsSample(1.0, "n1", (GpuKnobs(power_limit_w=400.0004),))
    raised = LimitsSample(2.0, "n1", (GpuKnobs(power_limit_w=700.0),))
    assert [v.sample for v in violations([ok, raised], [demand])] == [raised]


def test_samples_before_the_first_demand_and_of_other_nodes_are_free() -> None:
    late = Demand(5.0, "n1", ceilings(1110))
    assert violations([sample(1.0, None), sample(6.0, None, node="n2")], [late]) == []


def test_a_tightening_gets_its_grace_but_the_old_cap_still_binds() -> None:
    tighter = Demand(10.0, "n1", ceilings(900, 1110), grace_s=2.0, why="brake")
    # Within the grace: the new cap need not have arrived, the old one must stay.
    assert violations([sample(11.0, 1110, None)], [CAP, tighter]) == []
    assert [v.gpu for v in violations([sample(11.0, None, None)], [CAP, tighter])] == [0]
    # After the grace: the new cap binds.
    assert [v.gpu for v in violations([sample(12.5, 1110, None)], [CAP, tighter])] == [0, 1]


def test_a_loosening_binds_at_once() -> None:
    released = Demand(10.0, "n1", ceilings(None, None), grace_s=2.0, why="normal")
    assert violations([sample(10.0, None, None)], [CAP, released]) == []
    assert binding_demand([CAP, released], 9.9) == (CAP, CAP.gpus)


def test_an_unreadable_sample_violates_only_where_something_is_demanded() -> None:
    blind = LimitsSample(1.0, "n1", None)
    assert [v.gpu for v in violations([blind], [CAP])] == [None]
    assert violations([blind], [Demand(0.0, "n1", ceilings(None, None))]) == []


def test_demands_are_taken_in_time_order_whatever_order_they_come_in() -> None:
    later = Demand(10.0, "n1", ceilings(None, None))
    assert violations([sample(11.0, None, None)], [later, CAP]) == []


def test_the_description_is_capped() -> None:
    found = violations([sample(float(t), None, None) for t in range(5)], [CAP])
    text = describe_violations(found, limit=2)
    assert text.splitlines()[-1] == "... and 3 more"
    assert len(text.splitlines()) == 3
