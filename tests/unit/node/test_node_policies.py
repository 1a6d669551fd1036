"""The daemon's decision rules: which policies, which stage, which tier, which limit wins."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from polca.api.powerpolicy import PowerPolicy
from polca.control.plan import GpuLimits, ResolvedAction
from polca.control.selectors import Selector
from polca.control.tiers import TIER_LABEL, PodFacts
from polca_node.observed import UnreadablePolicy
from polca_node.policies import DecisionInputs, Mode, decide_node
from polca_testbed.default_clocks import default_ceiling_mhz

PolicyFactory = Callable[..., PowerPolicy]
ROW_LABEL = "polca.dev/row"  # the label the `make_policy` fixture's policies select on
H100 = GpuLimits(
    max_sm_clock_mhz=1980, min_sm_clock_mhz=345, min_limit_w=200, max_limit_w=700,
    default_limit_w=700,
)  # fmt: skip
GPUS = dict.fromkeys(range(4), H100)
# What the default (GPU-relative) policy's stages set on these GPUs.
LOW1 = default_ceiling_mhz("stage1", "low", H100)
LOW2 = default_ceiling_mhz("stage2", "low", H100)
HIGH3 = default_ceiling_mhz("stage3", "high", H100)
TRAINING = PodFacts("ml", "train-0", {"training.kubeflow.org/job-name": "j"})
SERVING = PodFacts("web", "llm-0", {"app": "llm"})
# GPU 0: a training pod (tier low), GPU 1: inference (high), GPUs 2-3: no pod (idle).
PODS: Mapping[int, Sequence[PodFacts]] = {0: (TRAINING,), 1: (SERVING,)}
NODE = {ROW_LABEL: "a"}


def two_stages(actions: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A resting stage and one throttling stage `s1` with these per-tier actions."""
    return [
        {"name": "normal"},
        {"name": "s1", "triggerPercent": 80, "releasePercent": 75, "actions": dict(actions)},
    ]


def inputs(
    policies: Sequence[PowerPolicy] | None,
    *,
    labels: Mapping[str, str] | None = NODE,
    pods: Mapping[int, Sequence[PodFacts]] | None = PODS,
    previously_managed: bool | None = False,
    guard: Mapping[str, Mapping[int, ResolvedAction]] | None = None,
    unreadable: Sequence[UnreadablePolicy] = (),
) -> DecisionInputs:
    return DecisionInputs(
        node_labels=labels,
        policies=policies,
        gpu_limits=GPUS,
        gpu_pods=pods,
        previously_managed=previously_managed,
        guard_actions=guard or {},
        unreadable=unreadable,
    )


def clocks(decision: Any, field: str = "enforce") -> list[int | None]:
    return [getattr(decision.gpus[i], field).clock_ceiling_mhz for i in sorted(decision.gpus)]


class TestHoldUntilKnown:
    @pytest.mark.parametrize(
        ("what", "kwargs"),
        [
            ("policies", {"policies": None}),
            ("node labels", {"labels": None}),
            ("previous record", {"previously_managed": None}),
            ("GPU owners", {"pods": None}),
        ],
    )
    def test_nothing_is_written_while_something_is_unknown(
        self, make_policy: PolicyFactory, what: str, kwargs: dict[str, Any]
    ) -> None:
        given = {"policies": [make_policy(stage="stage2")], **kwargs}
        policies = given.pop("policies")
        decision = decide_node(inputs(policies, **given))
        assert decision.mode is Mode.HOLD, what
        assert not decision.mode.writes
        assert decision.gpus == {}

    def test_no_policy_seen_keeps_whatever_the_gpus_have(self) -> None:
        # Restart with nothing listed yet: hold, never uncap.
        assert decide_node(inputs(None, previously_managed=True)).mode is Mode.HOLD


class TestStageActionsByTier:
    def test_polca_stage2_caps_low_and_idle_gpus_not_high(self, make_policy: PolicyFactory) -> None:
        decision = decide_node(inputs([make_policy(stage="stage2")]))
        assert decision.mode is Mode.ENFORCE
        assert clocks(decision) == [LOW2, None, LOW2, LOW2]
        assert [decision.gpus[i].tier for i in range(4)] == ["low", "high", "idle", "idle"]
        assert decision.gpus[0].pod == TRAINING
        assert decision.gpus[2].pod is None
        assert {g.policy for g in decision.gpus.values()} == {"row-a"}
        assert {g.stage for g in decision.gpus.values()} == {"stage2"}

    def test_resting_stage_lifts_every_limit(self, make_policy: PolicyFactory) -> None:
        decision = decide_node(inputs([make_policy(stage="normal")]))
        assert decision.mode is Mode.ENFORCE
        assert clocks(decision) == [None] * 4
        assert all(g.enforce.power_limit_w is None for g in decision.gpus.values())

    def test_stage3_throttles_high_priority_too(self, make_policy: PolicyFactory) -> None:
        assert clocks(decide_node(inputs([make_policy(stage="stage3")]))) == [
            LOW2,
            HIGH3,
            LOW2,
            LOW2,
        ]

    def test_tier_label_and_priority_decide_the_tier(self, make_policy: PolicyFactory) -> None:
        labelled = PodFacts("web", "batch", {TIER_LABEL: "low"})
        preemptible = PodFacts("web", "spot", {}, priority=-10)
        pods = {0: (labelled,), 1: (preemptible,), 2: (SERVING,), 3: (SERVING,)}
        decision = decide_node(inputs([make_policy(stage="stage1")], pods=pods))
        assert clocks(decision) == [LOW1, LOW1, None, None]

    def test_shared_gpu_takes_the_tier_throttled_last(self, make_policy: PolicyFactory) -> None:
        pods = {0: (TRAINING, SERVING)}
        decision = decide_node(inputs([make_policy(stage="stage2")], pods=pods))
        assert decision.gpus[0].tier == "high"
        assert decision.gpus[0].enforce.clock_ceiling_mhz is None

    def test_percentages_resolve_against_each_gpu(self, make_policy: PolicyFactory) -> None:
        stages = two_stages({"idle": {"clockCeilingPercent": 50, "powerLimitPercent": 60}})
        policy = make_policy(stage="s1", stages=stages, failsafe="s1")
        decision = decide_node(inputs([policy]))
        assert decision.gpus[2].enforce == ResolvedAction(990, 420.0)

    def test_values_are_clamped_to_what_the_gpu_accepts(self, make_policy: PolicyFactory) -> None:
        stages = two_stages({"idle": {"clockCeilingMHz": 100, "powerLimitWatts": 50}})
        policy = make_policy(stage="s1", stages=stages, failsafe="s1")
        assert decide_node(inputs([policy])).gpus[2].enforce == ResolvedAction(345, 200.0)


class TestAcrossPolicies:
    def test_most_restrictive_knob_by_knob(self, make_policy: PolicyFactory) -> None:
        hall = make_policy(
            "hall", stage="s1", failsafe="s1",
            stages=two_stages({"low": {"clockCeilingMHz": 1500}, "high": {"powerLimitWatts": 600}}),
        )  # fmt: skip
        row = make_policy(
            "row", stage="s1", failsafe="s1",
            stages=two_stages({"low": {"clockCeilingMHz": 1200, "powerLimitWatts": 500}}),
        )  # fmt: skip
        elsewhere = make_policy(
            "other-row", row="b", stage="s1", failsafe="s1",
            stages=two_stages({"low": {"clockCeilingMHz": 400}}),
        )  # fmt: skip
        decision = decide_node(inputs([hall, row, elsewhere]))
        assert decision.mode is Mode.ENFORCE
        assert [p.name for p in decision.policies] == ["hall", "row"]
        assert decision.gpus[0].enforce == ResolvedAction(1200, 500.0)
        assert decision.gpus[0].policy == "row"
        assert decision.gpus[1].enforce == ResolvedAction(None, 600.0)
        assert decision.gpus[1].policy == "hall"
        assert decision.gpus[2].enforce == ResolvedAction()

    def test_tiers_are_per_policy(self, make_policy: PolicyFactory) -> None:
        # The second policy calls the serving pod's namespace "batch": its tier is throttled.
        tiers = [
            {"name": "batch", "rules": [{"namespaces": ["web"]}]},
            {"name": "rest"},
        ]
        other = make_policy(
            "web-batch", stage="s1", failsafe="s1", tiers=tiers,
            stages=two_stages({"batch": {"clockCeilingMHz": 1000}}),
        )  # fmt: skip
        decision = decide_node(inputs([make_policy(stage="stage2"), other]))
        assert clocks(decision) == [LOW2, 1000, LOW2, LOW2]
        assert decision.gpus[1].tier == "batch"
        assert decision.gpus[1].policy == "web-batch"


class TestDryRun:
    def test_dry_run_is_reported_never_enforced(self, make_policy: PolicyFactory) -> None:
        decision = decide_node(inputs([make_policy(stage="stage2", dry_run=True)]))
        assert decision.mode is Mode.UNMANAGED
        assert not decision.mode.writes
        assert clocks(decision) == [None] * 4
        assert clocks(decision, "report") == [LOW2, None, LOW2, LOW2]

    def test_dry_run_beside_an_enforcing_policy(self, make_policy: PolicyFactory) -> None:
        enforcing = make_policy("row-a", stage="normal")
        trial = make_policy("trial", stage="stage3", dry_run=True)
        decision = decide_node(inputs([enforcing, trial]))
        assert decision.mode is Mode.ENFORCE
        assert clocks(decision) == [None] * 4
        assert clocks(decision, "report") == [LOW2, HIGH3, LOW2, LOW2]
        assert decision.gpus[0].policy == "row-a"  # attribution follows what is enforced


class TestNeverUncapForLackOfInformation:
    def test_policy_without_status_contributes_nothing_and_only_tightens(
        self, make_policy: PolicyFactory
    ) -> None:
        known = make_policy("row-a", stage="stage1")
        undecided = make_policy("new-row", stage=None)
        decision = decide_node(inputs([known, undecided]))
        assert decision.mode is Mode.TIGHTEN
        assert decision.waiting_for == ("new-row",)
        assert clocks(decision) == [LOW1, None, LOW1, LOW1]

    def test_stage_missing_from_the_spec_counts_as_no_decision(
        self, make_policy: PolicyFactory
    ) -> None:
        decision = decide_node(inputs([make_policy(stage="renamed-stage")]))
        assert decision.mode is Mode.TIGHTEN
        assert clocks(decision) == [None] * 4


class TestUnreadablePolicyIsUnknownNotAbsent:
    """Safety rule 6: a stored policy the daemon cannot read never makes it restore."""

    ANY_NODE = UnreadablePolicy("row-a", "1 validation error(s)", None)
    OTHER_ROW = UnreadablePolicy("row-b", "1 validation error(s)", Selector({ROW_LABEL: "b"}))

    def test_restarted_daemon_holds_instead_of_restoring(self) -> None:
        decision = decide_node(inputs([], previously_managed=True, unreadable=[self.ANY_NODE]))
        assert decision.mode is Mode.HOLD
        assert not decision.mode.writes
        assert decision.unreadable == (self.ANY_NODE,)
        assert "cannot read PowerPolicy row-a" in decision.reason

    def test_holds_even_before_the_pods_are_known(self) -> None:
        decision = decide_node(
            inputs([], pods=None, previously_managed=True, unreadable=[self.ANY_NODE])
        )
        assert decision.mode is Mode.HOLD

    def test_beside_a_readable_policy_the_node_only_tightens(
        self, make_policy: PolicyFactory
    ) -> None:
        readable = make_policy("row-c", stage="stage1")
        decision = decide_node(inputs([readable], unreadable=[self.ANY_NODE]))
        assert decision.mode is Mode.TIGHTEN
        assert clocks(decision) == [LOW1, None, LOW1, LOW1]

    def test_last_good_version_keeps_enforcing_but_only_tightens(
        self, make_policy: PolicyFactory
    ) -> None:
        last_good = make_policy("row-a", stage="normal")  # the latest version says more
        decision = decide_node(inputs([last_good], unreadable=[self.ANY_NODE]))
        assert decision.mode is Mode.TIGHTEN
        assert [p.name for p in decision.policies] == ["row-a"]

    def test_a_policy_for_other_nodes_does_not_hold_this_one(self) -> None:
        decision = decide_node(inputs([], previously_managed=True, unreadable=[self.OTHER_ROW]))
        assert decision.mode is Mode.RESTORE
        assert decision.unreadable == ()


class TestRestore:
    def test_restore_when_the_node_left_every_policy(self, make_policy: PolicyFactory) -> None:
        policy = make_policy(stage="stage2")
        decision = decide_node(inputs([policy], labels={}, previously_managed=True))
        assert decision.mode is Mode.RESTORE
        assert decision.mode.writes

    def test_restore_when_the_policy_is_deleted(self) -> None:
        assert decide_node(inputs([], previously_managed=True)).mode is Mode.RESTORE

    def test_restore_when_only_dry_run_policies_remain(self, make_policy: PolicyFactory) -> None:
        trial = make_policy(stage="stage2", dry_run=True)
        assert decide_node(inputs([trial], previously_managed=True)).mode is Mode.RESTORE

    def test_never_managed_node_is_left_alone(self, make_policy: PolicyFactory) -> None:
        decision = decide_node(inputs([make_policy(stage="stage2")], labels={"other": "x"}))
        assert decision.mode is Mode.UNMANAGED
        assert not decision.mode.writes

    def test_no_restore_while_another_policy_still_selects_the_node(
        self, make_policy: PolicyFactory
    ) -> None:
        policy = make_policy(stage="normal")
        assert decide_node(inputs([policy], previously_managed=True)).mode is Mode.ENFORCE


class TestGuardActions:
    @pytest.mark.parametrize(("guard_mhz", "expected"), [(800, 800), (1700, LOW2)])
    def test_guard_and_stage_combine_stronger_wins(
        self, make_policy: PolicyFactory, guard_mhz: int, expected: int
    ) -> None:
        guard = {"row-a": {0: ResolvedAction(clock_ceiling_mhz=guard_mhz)}}
        decision = decide_node(inputs([make_policy(stage="stage2")], guard=guard))
        assert decision.gpus[0].enforce.clock_ceiling_mhz == expected

    def test_dry_run_policys_guard_is_only_reported(self, make_policy: PolicyFactory) -> None:
        guard = {"row-a": {1: ResolvedAction(clock_ceiling_mhz=900)}}
        enforcing = make_policy("other", stage="normal")
        trial = make_policy("row-a", stage="normal", dry_run=True)
        decision = decide_node(inputs([enforcing, trial], guard=guard))
        assert decision.gpus[1].enforce.clock_ceiling_mhz is None
        assert decision.gpus[1].report.clock_ceiling_mhz == 900
