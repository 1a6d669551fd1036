"""The PowerPolicy and NodePowerState models: defaults, examples, wire form, status helpers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from pydantic import ValidationError

from polca.api.base import server_integer
from polca.api.conditions import PolicyConditionType, find_condition, set_condition
from polca.api.convert import plan_from_spec, tier_set_from_spec
from polca.api.nodepowerstate import NodePowerState, NodePowerStateStatus
from polca.api.powerpolicy import (
    LAST_APPLIED,
    PowerPolicy,
    PowerPolicySpec,
    PowerPolicyStatus,
    labels_dropped_by_kubectl,
)
from polca.control.actions import resolve_for_gpu
from polca.control.plan import ControlPlan
from polca.power.profiles import PROFILES, get_profile

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}#{i}", doc)
        for path in EXAMPLES
        for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
    ]


def minimal_spec(**extra: Any) -> PowerPolicySpec:
    selection = {} if "nodeSelector" in extra else {"allNodes": True}
    return PowerPolicySpec.model_validate({**selection, "budgetWatts": 1000, **extra})


def test_defaults_are_polcas_table() -> None:
    spec = minimal_spec()
    stages = [(s.name, s.trigger_percent, s.release_percent) for s in spec.stages]
    assert stages == [
        ("normal", None, None),
        ("stage1", 80, 75),
        ("stage2", 89, 84),
        ("stage3", 89, 84),
        ("brake", 100, 89),
    ]
    clocks = {
        s.name: {tier: a.clock_ceiling_percent for tier, a in s.actions.items()}
        for s in spec.stages
    }
    assert clocks["stage1"] == {"idle": 90.43, "low": 90.43}
    assert clocks["stage2"] == {"idle": 78.73, "low": 78.73}
    assert clocks["stage3"] == {"idle": 78.73, "low": 78.73, "high": 92.56}
    assert set(clocks["brake"].values()) == {20.43}
    assert all(a.clock_ceiling_mhz is None for s in spec.stages for a in s.actions.values())
    assert [t.name for t in spec.tiers] == ["low", "high"]
    assert spec.default_tier == "high"
    assert spec.failsafe_stage == "stage2"
    assert spec.stage_index(spec.failsafe_stage) != 0
    assert not spec.dry_run


def clocks_on(plan: ControlPlan, profile: str) -> list[dict[str, int | None]]:
    """Each stage's clock ceiling per tier, resolved on one GPU model."""
    limits = get_profile(profile).limits
    return [
        {tier: resolve_for_gpu([a], limits).clock_ceiling_mhz for tier, a in s.actions.items()}
        for s in plan.stages
    ]


A100_TABLE = [
    {},
    {"idle": 1275, "low": 1275},
    {"idle": 1110, "low": 1110},
    {"idle": 1110, "low": 1110, "high": 1305},
    {"idle": 288, "low": 288, "high": 288},
]


def test_defaults_are_polcas_a100_clocks_on_an_a100() -> None:
    assert clocks_on(plan_from_spec(minimal_spec()), "A100-80GB") == A100_TABLE


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_defaults_mean_the_same_share_of_max_clock_on_every_gpu(profile: str) -> None:
    """The default's ceilings are the A100's shares of its max clock on every model (within
    the rounding to whole MHz), not the A100's MHz: on an H100, 1275 MHz would be 64%."""
    max_mhz = get_profile(profile).max_sm_clock_mhz
    for got, a100 in zip(
        clocks_on(plan_from_spec(minimal_spec()), profile), A100_TABLE, strict=True
    ):
        assert got.keys() == a100.keys()
        for tier, mhz in got.items():
            assert mhz is not None
            assert abs(mhz / max_mhz - a100[tier] / 1410) < 1 / max_mhz, (tier, mhz)


def test_default_stage_descriptions_give_percent_and_mhz_per_gpu() -> None:
    stage1 = minimal_spec().stages[1]
    assert stage1.description is not None
    assert "90.43% of max SM clock" in stage1.description
    assert "A100 1275 MHz" in stage1.description
    assert "H100/H200 1790 MHz" in stage1.description


@pytest.mark.parametrize(("name", "doc"), example_documents(), ids=lambda v: str(v)[:40])
def test_examples_round_trip_unchanged(name: str, doc: dict[str, Any]) -> None:
    policy = PowerPolicy.model_validate(doc)
    assert policy.model_dump(mode="json", by_alias=True, exclude_unset=True) == doc
    assert PowerPolicy.model_validate(policy.to_wire()) == policy


def test_the_required_examples_exist() -> None:
    names = {path.stem for path in EXAMPLES}
    assert {
        "polca-default",
        "a100-fleet-mhz",
        "power-cap-first",
        "dry-run",
        "promql-node-power",
        "dcgm-node-power",
    } <= names


def test_the_default_example_spells_out_the_defaults() -> None:
    doc = yaml.safe_load((REPO / "examples" / "polca-default.yaml").read_text())
    spelled = PowerPolicySpec.model_validate(doc["spec"])
    implicit = minimal_spec(nodeSelector=doc["spec"]["nodeSelector"], budgetWatts=250000)
    assert plan_from_spec(spelled) == plan_from_spec(implicit)
    assert tier_set_from_spec(spelled) == tier_set_from_spec(implicit)
    assert spelled.guard == implicit.guard
    assert spelled.telemetry == implicit.telemetry


def test_mhz_example_is_the_default_on_an_a100_only() -> None:
    """MHz is an explicit choice for a one-model fleet: the same as the default on an A100,
    the A100's MHz (not its share of max clock) on an H100."""
    doc = yaml.safe_load((REPO / "examples" / "a100-fleet-mhz.yaml").read_text())
    mhz_plan = plan_from_spec(PowerPolicySpec.model_validate(doc["spec"]))
    default = plan_from_spec(minimal_spec())
    assert clocks_on(mhz_plan, "A100-80GB") == clocks_on(default, "A100-80GB")
    assert clocks_on(mhz_plan, "H100-SXM")[1] == {"idle": 1275, "low": 1275}
    assert clocks_on(default, "H100-SXM")[1] == {"idle": 1790, "low": 1790}


def test_wire_form_is_camel_case_without_nulls() -> None:
    wire = minimal_spec().to_wire()
    assert "budgetWatts" in wire
    assert "budget_watts" not in wire
    assert wire["stages"][0] == {
        "name": "normal",
        "description": "Normal operation: no limits.",
        "actions": {},
    }
    assert wire["stages"][1]["actions"]["low"] == {"clockCeilingPercent": 90.43}


def test_snake_case_names_work_in_python() -> None:
    spec = PowerPolicySpec(all_nodes=True, budget_watts=500)
    assert spec.budget_watts == 500


def test_equal_triggers_are_allowed_for_escalation() -> None:
    spec = minimal_spec()
    assert spec.stages[2].trigger_percent == spec.stages[3].trigger_percent


def test_models_are_frozen() -> None:
    spec = minimal_spec()
    with pytest.raises(ValidationError):
        spec.budget_watts = 5  # type: ignore[misc]


def test_metadata_keeps_fields_it_does_not_model() -> None:
    doc = {
        "apiVersion": "polca.dev/v1alpha1",
        "kind": "PowerPolicy",
        "metadata": {"name": "p", "generation": 3, "managedFields": [{"manager": "kubectl"}]},
        "spec": {"allNodes": True, "budgetWatts": 1},
    }
    policy = PowerPolicy.model_validate(doc)
    assert policy.metadata.generation == 3
    assert policy.to_wire()["metadata"]["managedFields"] == [{"manager": "kubectl"}]


def test_status_accepts_what_kopf_writes() -> None:
    status = PowerPolicyStatus.model_validate(
        {"stage": "stage1", "kopf": {"progress": {"h": {"retries": 1}}, "dummy": "x"}}
    )
    assert status.kopf == {"progress": {"h": {"retries": 1}}, "dummy": "x"}


def test_unknown_status_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="stagee"):
        PowerPolicyStatus.model_validate({"stagee": "stage1"})


class TestDomainSelection:
    """Safety rule 7: a domain selects every node only when it says so (allNodes)."""

    def test_all_nodes_selects_every_node(self) -> None:
        spec = minimal_spec()
        assert spec.all_nodes
        assert spec.selects({})
        assert spec.selects({"any": "label"})

    def test_a_selector_selects_its_nodes_only(self) -> None:
        spec = minimal_spec(nodeSelector={"matchLabels": {"row": "a"}})
        assert spec.selects({"row": "a"})
        assert not spec.selects({"row": "b"})
        assert not spec.selects({})

    @pytest.mark.parametrize(
        "spec",
        [
            {"nodeSelector": {}},
            {"nodeSelector": {"matchLabels": {}, "matchExpressions": []}},
            {"nodeSelector": {"matchLabels": {"row": None}}},
            {},
            {"allNodes": False},
        ],
        ids=["empty", "empty-parts", "null-value", "missing", "all-nodes-false"],
    )
    def test_nothing_else_selects_every_node(self, spec: dict[str, Any]) -> None:
        with pytest.raises(ValidationError, match="nodeSelector"):
            PowerPolicySpec.model_validate({**spec, "budgetWatts": 1000})

    @pytest.mark.parametrize(
        "labels", [{"row": None}, {"row": "a", "rack": None}], ids=["only", "beside-another"]
    )
    def test_a_stored_null_label_value_is_never_dropped(self, labels: dict[str, Any]) -> None:
        # Dropping it, as the server would without the nullable schema, widens the domain.
        with pytest.raises(ValidationError, match=r"nodeSelector\.matchLabels"):
            PowerPolicySpec.from_stored({"nodeSelector": {"matchLabels": labels}, "budgetWatts": 1})

    def test_a_label_kubectl_dropped_makes_the_policy_unreadable(self) -> None:
        written = {"spec": {"nodeSelector": {"matchLabels": {"rack": "r1", "row": None}}}}
        stored: dict[str, Any] = {
            "metadata": {"name": "a", "annotations": {LAST_APPLIED: json.dumps(written)}},
            "spec": {"nodeSelector": {"matchLabels": {"rack": "r1"}}, "budgetWatts": 1000},
        }
        with pytest.raises(ValidationError, match="kubectl apply dropped row"):
            PowerPolicy.from_stored(stored)
        # Once the label is there (patched in, say), the policy is what it says.
        stored["spec"]["nodeSelector"]["matchLabels"]["row"] = ""
        assert PowerPolicy.from_stored(stored).spec.selects({"rack": "r1", "row": ""})

    @pytest.mark.parametrize(
        "annotation",
        [None, "not json", json.dumps({"spec": {"nodeSelector": None}}), json.dumps([1])],
    )
    def test_no_usable_annotation_drops_nothing(self, annotation: str | None) -> None:
        annotations = None if annotation is None else {LAST_APPLIED: annotation}
        assert labels_dropped_by_kubectl(annotations, {"rack": "r1"}) == []

    def test_an_old_stored_empty_selector_is_unreadable_not_cluster_wide(self) -> None:
        with pytest.raises(ValidationError, match="allNodes"):
            PowerPolicySpec.from_stored({"nodeSelector": {}, "budgetWatts": 1000})

    def test_all_nodes_excludes_a_selector(self) -> None:
        with pytest.raises(ValidationError, match="leave nodeSelector out"):
            minimal_spec(allNodes=True, nodeSelector={"matchLabels": {"row": "a"}})


class TestStoredObjects:
    """Safety rule 6: strict where users write (`model_validate`), tolerant where the daemons
    and the operator read what the server stored (`from_stored`)."""

    STORED: ClassVar[dict[str, Any]] = {
        "nodeSelector": {"matchLabels": {"row": "a"}, "matchExpressions": None},
        "budgetWatts": 1000,
        "newerCrdField": {"anything": 1},
        "guard": None,
        "stages": [
            {"name": "normal"},
            {
                "name": "s1",
                "triggerPercent": 80,
                "releasePercent": 75,
                "newKnob": 1,
                "actions": {"low": {"clockCeilingMHz": 1110.000001}},
            },
        ],
        "failsafeStage": "s1",
    }

    def test_what_the_server_stores_is_read(self) -> None:
        spec = PowerPolicySpec.from_stored(self.STORED)
        assert spec.stages[1].actions["low"].clock_ceiling_mhz == 1110
        assert spec.guard.enabled  # a null is an absent field: the default applies

    def test_users_writing_it_are_still_refused(self) -> None:
        with pytest.raises(ValidationError) as refused:
            PowerPolicySpec.model_validate(self.STORED)
        text = str(refused.value)
        for problem in ("newerCrdField", "newKnob", "fractional part", "guard"):
            assert problem in text

    def test_every_other_rule_still_holds(self) -> None:
        with pytest.raises(ValidationError, match="budgetWatts"):
            PowerPolicySpec.from_stored({**self.STORED, "budgetWatts": -1})
        with pytest.raises(ValidationError, match="fractional part"):
            PowerPolicySpec.from_stored(
                {**self.STORED, "stages": [{"name": "normal"}, {"name": "s1",
                 "triggerPercent": 80, "releasePercent": 75,
                 "actions": {"low": {"clockCeilingMHz": 1110.5}}}]}
            )  # fmt: skip

    @pytest.mark.parametrize(
        ("value", "expected"),
        [(1110.0, 1110), (1110.000001, 1110), (100000.00001, 100000), (0.0, 0),
         (1110.5, None), (1110.001, None), (float("nan"), None), (float("inf"), None)],
    )  # fmt: skip
    def test_integers_as_the_server_takes_them(self, value: float, expected: int | None) -> None:
        assert server_integer(value) == expected

    def test_metadata_keeps_its_unknown_fields(self) -> None:
        stored = {"metadata": {"name": "a", "managedFields": [{"manager": "kubectl"}]},
                  "spec": self.STORED}  # fmt: skip
        policy = PowerPolicy.from_stored(stored)
        assert policy.metadata.model_extra == {"managedFields": [{"manager": "kubectl"}]}


class TestConditions:
    def test_set_appends_then_keeps_the_transition_time_while_status_holds(self) -> None:
        first = set_condition(None, "Ready", "True", "Enforcing", "ok", now=T0)
        again = set_condition(first, "Ready", "True", "Enforcing", "still ok", now=T1)
        assert len(again) == 1
        assert again[0].last_transition_time == T0
        assert again[0].message == "still ok"

    def test_a_status_change_moves_the_transition_time(self) -> None:
        first = set_condition(None, "Ready", "True", "Enforcing", "", now=T0)
        changed = set_condition(first, "Ready", "False", "NoNodesSelected", "none", now=T1)
        assert changed[0].last_transition_time == T1
        assert changed[0].reason == "NoNodesSelected"

    def test_other_conditions_keep_their_place(self) -> None:
        conditions = set_condition(None, "Ready", "True", "Enforcing", "", now=T0)
        conditions = set_condition(conditions, "Throttling", "False", "Normal", "", now=T0)
        conditions = set_condition(conditions, "Ready", "False", "Invalid", "", now=T1)
        assert [c.type for c in conditions] == ["Ready", "Throttling"]
        throttling = find_condition(conditions, "Throttling")
        assert throttling is not None
        assert throttling.status == "False"

    def test_status_models_set_conditions(self) -> None:
        status = PowerPolicyStatus().with_condition(
            PolicyConditionType.TELEMETRY_STALE,
            "True",
            "NoSamples",
            "Prometheus returned nothing",
            now=T0,
            observed_generation=2,
        )
        assert status.is_true(PolicyConditionType.TELEMETRY_STALE)
        assert not status.is_true(PolicyConditionType.READY)
        stale = status.condition("TelemetryStale")
        assert stale is not None
        assert stale.observed_generation == 2
        assert stale.to_wire()["lastTransitionTime"] == "2026-01-01T00:00:00Z"

    def test_reasons_must_be_camel_case_words(self) -> None:
        with pytest.raises(ValidationError, match="reason"):
            set_condition(None, "Ready", "False", "no nodes", "", now=T0)


def gpu(index: int, **applied: Any) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-{index}",
        "model": "NVIDIA H100 80GB HBM3",
        "maxClockMHz": 1980,
        "defaultPowerLimitWatts": 700,
        "minPowerLimitWatts": 200,
        "maxPowerLimitWatts": 700,
        **applied,
    }


class TestNodePowerState:
    def test_printer_summaries_are_derived_from_policies(self) -> None:
        status = NodePowerStateStatus.model_validate(
            {
                "policies": [
                    {"name": "hall-1", "stage": "normal"},
                    {"name": "row-a", "stage": "stage2"},
                ],
                "policy": "stale value",
            }
        )
        assert status.policy == "hall-1,row-a"
        assert status.stage == "normal,stage2"
        assert NodePowerStateStatus().policy is None

    def test_throttled_means_below_the_gpus_own_limits(self) -> None:
        status = NodePowerStateStatus.model_validate(
            {
                "gpus": [
                    gpu(0),
                    gpu(1, clockCeilingMHz=1980),
                    gpu(2, clockCeilingMHz=1305),
                    gpu(3, powerLimitWatts=700),
                    gpu(4, powerLimitWatts=350),
                ]
            }
        )
        assert status.gpus is not None
        assert [g.throttled for g in status.gpus] == [False, False, True, False, True]

    def test_a_full_object_round_trips(self) -> None:
        doc = {
            "apiVersion": "polca.dev/v1alpha1",
            "kind": "NodePowerState",
            "metadata": {"name": "gpu-node-1"},
            "spec": {"nodeName": "gpu-node-1"},
            "status": {
                "policies": [
                    {"name": "row-a", "stage": "stage1", "observedGeneration": 4, "dryRun": False}
                ],
                "policy": "row-a",
                "stage": "stage1",
                "gpus": [
                    gpu(
                        0,
                        pod={"namespace": "ml", "name": "trainer-0"},
                        tier="low",
                        policy="row-a",
                        stage="stage1",
                        clockCeilingMHz=1275,
                        powerWatts=612.5,
                        lastError={
                            "knob": "powerLimit",
                            "message": "Insufficient Permissions",
                            "time": "2026-01-01T00:00:00Z",
                        },
                    )
                ],
                "gpuCount": 1,
                "throttledGpuCount": 1,
                "powerWatts": 612.5,
                "guard": {"active": False},
                "heartbeatTime": "2026-01-01T00:00:05Z",
            },
        }
        state = NodePowerState.model_validate(doc)
        assert state.to_wire() == doc
