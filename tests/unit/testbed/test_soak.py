"""The soak benchmark's restart plan and growth rule (polca_testbed.soak)."""

from __future__ import annotations

import os

from polca_testbed.soak import (
    OPERATOR,
    Incarnation,
    Sample,
    growth,
    judged,
    record,
    restart_plan,
    soak_table,
)

CHURNED = ["demo-01", "demo-03"]


def test_the_plan_is_seeded_and_in_the_run() -> None:
    plan = restart_plan(7, 1800.0, CHURNED, 60.0)
    assert plan == restart_plan(7, 1800.0, CHURNED, 60.0)
    assert plan != restart_plan(8, 1800.0, CHURNED, 60.0)
    times = [r.at_s for r in plan]
    assert times == sorted(times)
    assert all(30.0 <= t < 1800.0 - 10.0 for t in times)
    assert {r.kill for r in plan} == {True, False}


def test_the_operator_restarts_in_the_first_half_only_and_daemons_only_on_churned_nodes() -> None:
    for seed in range(20):
        plan = restart_plan(seed, 1800.0, CHURNED, 60.0)
        operator = [r for r in plan if r.target == OPERATOR]
        assert operator
        assert all(r.at_s < 900.0 for r in operator)
        assert {r.target for r in plan} - {OPERATOR} <= set(CHURNED)


def test_a_short_run_still_restarts_the_operator() -> None:
    for seed in range(20):
        assert any(r.target == OPERATOR for r in restart_plan(seed, 180.0, CHURNED, 600.0))


def life(
    rss_mb: list[float], fds: list[float] | None = None, role: str = "daemon/demo-01"
) -> Incarnation:
    fds = fds or [20.0] * len(rss_mb)
    samples = [Sample(10.0 * i, r, 8, f) for i, (r, f) in enumerate(zip(rss_mb, fds, strict=True))]
    return Incarnation(role, 1234, samples)


def test_growth_needs_both_twenty_percent_and_ten_units() -> None:
    assert growth(life([60, 61, 60, 62, 61, 62])) == []
    # +25% but only +5 MB: small processes may wobble by a few MB
    assert growth(life([20, 20, 20, 22, 24, 25])) == []
    # +15 MB but only +10%
    assert growth(life([150, 150, 150, 160, 163, 165])) == []
    assert growth(life([60, 62, 61, 70, 80, 90])) == ["rss_mb 62 → 90"]
    assert growth(life([60] * 6, fds=[20, 20, 21, 30, 40, 45])) == ["fds 20 → 45"]


def test_growth_compares_maxima_so_a_start_up_peak_is_not_a_leak() -> None:
    assert growth(life([90, 60, 60, 61, 62, 61])) == []


def test_only_long_lived_polca_processes_are_judged() -> None:
    assert judged(life([60] * 7), min_life_s=60.0)
    assert not judged(life([60] * 6), min_life_s=60.0)
    assert not judged(life([60] * 7, role="etcd"), min_life_s=60.0)


def test_the_table_has_a_row_per_role_and_fails_on_growth() -> None:
    lives = [
        life([60, 62, 61, 70, 80, 90, 95]),
        life([300, 320, 340, 360, 380, 400, 420], role="etcd"),
        life([40, 41], role=OPERATOR),
    ]
    table, grows = soak_table(lives, min_life_s=60.0)
    rows = table.splitlines()
    assert grows
    assert rows[1].startswith("etcd")
    assert "not judged (keeps history by design)" in rows[1]
    assert rows[2].startswith("operator")
    assert "not judged (no process lived 60 s)" in rows[2]
    assert rows[3].startswith("daemon/demo-01")
    assert "GROWS: rss_mb 62 → 95" in rows[3]
    _, grows = soak_table(lives[1:], min_life_s=60.0)
    assert not grows


def test_record_samples_live_processes_and_skips_gone_ones() -> None:
    lives: dict[tuple[str, int], Incarnation] = {}
    record(lives, {"me": os.getpid(), "gone": 2**22 + 1}, 0.0)
    record(lives, {"me": os.getpid()}, 5.0)
    (me,) = lives.values()
    assert me.role == "me"
    assert [s.t_s for s in me.samples] == [0.0, 5.0]
    assert me.samples[0].rss_mb > 1
    assert me.samples[0].threads >= 1
    assert me.samples[0].fds >= 3
