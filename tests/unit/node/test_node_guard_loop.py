"""The local guard on a node: its budget and levels from a policy, tier order, hysteresis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from polca.api.powerpolicy import PowerPolicy
from polca.control.plan import GpuLimits
from polca_node.guard_loop import (
    GUARD_HOLD_S,
    GuardBank,
    GuardOutcome,
    guard_config,
    guard_steps,
    node_budget_w,
    run_periodic,
)
from polca_testbed.default_clocks import default_ceiling_mhz

PolicyFactory = Callable[..., PowerPolicy]
H100 = GpuLimits(1980, 345, 200.0, 700.0, 700.0)
LIMITS = dict.fromkeys(range(4), H100)
# What the default (GPU-relative) policy's stages set on these GPUs.
LOW2 = default_ceiling_mhz("stage2", "low", H100)
HIGH3 = default_ceiling_mhz("stage3", "high", H100)
TIERS = {0: "low", 1: "high", 2: "idle", 3: "low"}
GUARD = {"nodeBudgetWatts": 1000, "triggerPercent": 120, "releasePercent": 110}


class TestConfigFromPolicy:
    def test_explicit_node_budget(self, make_policy: PolicyFactory) -> None:
        config = guard_config(make_policy(stage="normal", guard=GUARD))
        assert config is not None
        assert config.budget_w == pytest.approx(1200.0)
        assert config.budget_w * config.release_pct / 100 == pytest.approx(1100.0)

    def test_even_share_of_the_domain_budget(self, make_policy: PolicyFactory) -> None:
        policy = make_policy(stage="normal", budget_w=8000, node_count=4)
        assert node_budget_w(policy) == 2000.0

    def test_off_without_a_node_count_or_when_disabled(self, make_policy: PolicyFactory) -> None:
        assert guard_config(make_policy(stage=None)) is None
        assert guard_config(make_policy(stage="normal", guard={"enabled": False})) is None

    def test_levels_follow_the_tier_order_from_the_reaction_stage_to_the_brake(
        self, make_policy: PolicyFactory
    ) -> None:
        # The default reaction stage is the failsafe (stage2): idle, then low at its ceiling; then
        # stage3 adds high, and the brake tightens every tier, in tier order.
        steps = guard_steps(make_policy(stage="normal"))
        assert [sorted(s.tiers) for s in steps][:3] == [["idle"], ["low"], ["high"]]
        assert [s.action.resolve(H100).clock_ceiling_mhz for s in steps[:2]] == [LOW2, LOW2]
        brake = steps[3:]
        assert [sorted(s.tiers) for s in brake] == [["idle"], ["low"], ["high"]]
        assert all(
            b.action.clock_ceiling_pct is not None or b.action.clock_ceiling_mhz is not None
            for b in brake
        )
        stage3 = guard_steps(make_policy(stage="normal", guard={"reactionStage": "stage3"}))
        assert [sorted(s.tiers) for s in stage3][:3] == [["idle"], ["low"], ["high"]]
        # stage3 repeats stage2's idle/low ceilings (no new level) and adds high; same ladder.
        assert stage3 == steps


def run(
    bank: GuardBank, policy: PowerPolicy, samples: Sequence[tuple[float, float | None]]
) -> list[GuardOutcome]:
    outcomes = []
    for now_s, power_w in samples:
        ticked = bank.tick(
            now_s=now_s,
            gpu_power_w=power_w,
            policies={"row-a": policy},
            gpu_tiers={"row-a": TIERS},
            gpu_limits=LIMITS,
        )
        outcomes.append(ticked["row-a"])
    return outcomes


def ceilings(outcome: GuardOutcome) -> list[int | None]:
    return [
        outcome.actions[i].clock_ceiling_mhz if i in outcome.actions else None for i in range(4)
    ]


class TestGuardBank:
    def test_throttles_in_tier_order_and_releases_with_hysteresis(
        self, make_policy: PolicyFactory
    ) -> None:
        bank, policy = GuardBank(), make_policy(stage="normal", guard=GUARD)
        over, between, under = 1500.0, 1150.0, 1000.0
        hold = GUARD_HOLD_S
        outcomes = run(bank, policy, [
            (0.0, 900.0),  # under the 1200 W trigger: nothing
            (0.5, over),  # level 1: idle GPUs
            (1.0, over),  # level 2: low GPUs too
            (1.5, over),  # level 3: past the reaction stage, stage3's high-tier ceiling
            (2.0, between),  # between release and trigger: hold
            (2.5, under),  # below release: the hold starts
            (2.5 + hold - 0.5, under),  # not yet
            (2.5 + hold, under),  # one level down
            (2.5 + 2 * hold, under),  # another
            (2.5 + 3 * hold, under),  # and the last one
        ])  # fmt: skip
        assert [o.level for o in outcomes] == [0, 1, 2, 3, 3, 3, 3, 2, 1, 0]
        assert [o.activated for o in outcomes] == [False, True] + [False] * 8
        assert [o.active for o in outcomes] == [False] + [True] * 8 + [False]
        assert ceilings(outcomes[1]) == [None, None, LOW2, None]
        assert ceilings(outcomes[2]) == [LOW2, None, LOW2, LOW2]
        assert ceilings(outcomes[3]) == [LOW2, HIGH3, LOW2, LOW2]
        assert ceilings(outcomes[7]) == [LOW2, None, LOW2, LOW2]
        assert ceilings(outcomes[8]) == [None, None, LOW2, None]
        assert outcomes[9].actions == {}
        assert bank.actions() == {}

    def test_config_is_rebuilt_only_when_the_policy_changes(
        self, make_policy: PolicyFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import polca_node.guard_loop as guard_loop

        built: list[str] = []

        def counting(policy: PowerPolicy) -> object:
            built.append(policy.metadata.name or "")
            return guard_config(policy)

        monkeypatch.setattr(guard_loop, "guard_config", counting)
        bank, policy = GuardBank(), make_policy(stage="normal", guard=GUARD)
        run(bank, policy, [(0.0, 900.0), (0.5, 1500.0), (1.0, 1500.0)])
        assert len(built) == 1
        updated = make_policy(stage="stage1", guard=GUARD)
        outcomes = run(bank, updated, [(1.5, 1500.0)])
        assert len(built) == 2
        assert outcomes[0].level == 3  # the guard state carried over the policy update

    def test_overhead_counts_towards_node_power(self, make_policy: PolicyFactory) -> None:
        policy = make_policy(stage="normal", guard=GUARD, node_power={"overheadWatts": 400})
        assert run(GuardBank(), policy, [(0.0, 900.0)])[0].level == 1

    def test_missing_power_holds_the_level(self, make_policy: PolicyFactory) -> None:
        bank, policy = GuardBank(), make_policy(stage="normal", guard=GUARD)
        outcomes = run(bank, policy, [(0.0, 1500.0), (0.5, None), (10.0, None)])
        assert [o.level for o in outcomes] == [1, 1, 1]

    def test_forgets_policies_that_went_away(self, make_policy: PolicyFactory) -> None:
        bank, policy = GuardBank(), make_policy(stage="normal", guard=GUARD)
        run(bank, policy, [(0.0, 1500.0)])
        bank.tick(now_s=1.0, gpu_power_w=1500.0, policies={}, gpu_tiers={}, gpu_limits=LIMITS)
        assert bank.outcomes == {}
        assert run(bank, policy, [(2.0, 900.0)])[0].level == 0


async def test_run_periodic_survives_a_failing_tick_and_stops() -> None:
    stop = asyncio.Event()
    calls: list[int] = []

    async def tick() -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("one bad sample")
        if len(calls) == 5:
            stop.set()

    loop = asyncio.get_running_loop()
    await asyncio.wait_for(run_periodic(tick, lambda: 0.01, stop, clock=loop.time), timeout=10)
    assert calls == [0, 1, 2, 3, 4]
