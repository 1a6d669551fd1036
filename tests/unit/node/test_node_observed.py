"""The daemon's view of the cluster: a refused policy keeps its last good version, a lost Node
is not a Node without labels, and every update says whether it changed something."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from polca.api.powerpolicy import LAST_APPLIED
from polca_node.observed import LoopSink, ObservedCluster, pod_info


def policy(name: str, stage: str | None = None, budget: Any = 1000) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "polca.dev/v1alpha1",
        "kind": "PowerPolicy",
        "metadata": {"name": name, "resourceVersion": "1", "managedFields": [{"manager": "x"}]},
        "spec": {"allNodes": True, "budgetWatts": budget},
    }
    if stage:
        body["status"] = {"stage": stage}
    return body


def node(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


class TestPolicies:
    def test_list_is_authoritative(self) -> None:
        seen = ObservedCluster("n1")
        assert not seen.policies_synced
        assert seen.replace_policies([policy("a"), policy("b")])
        assert seen.policies_synced
        assert seen.replace_policies([policy("b")])
        assert set(seen.policies) == {"b"}
        assert not seen.replace_policies([policy("b")])

    def test_events_update_and_delete(self) -> None:
        seen = ObservedCluster("n1")
        seen.replace_policies([])
        assert seen.apply_policy("ADDED", policy("a"))
        assert seen.apply_policy("MODIFIED", policy("a", stage="stage1"))
        status = seen.policies["a"].status
        assert status is not None
        assert status.stage == "stage1"
        assert not seen.apply_policy("MODIFIED", policy("a", stage="stage1"))
        assert seen.apply_policy("DELETED", policy("a"))
        assert seen.policies == {}

    def test_a_policy_being_deleted_is_gone(self) -> None:
        # The operator's finalizer holds the object until nodes restore; DELETED comes later.
        seen = ObservedCluster("n1")
        seen.replace_policies([policy("a", stage="stage1"), policy("b")])
        deleting = policy("a", stage="stage1")
        deleting["metadata"]["deletionTimestamp"] = "2026-11-28T21:00:00Z"
        assert seen.apply_policy("MODIFIED", deleting)
        assert set(seen.policies) == {"b"}
        assert not seen.replace_policies([deleting, policy("b")])
        assert set(seen.policies) == {"b"}

    def test_refused_version_keeps_the_last_good_one(self) -> None:
        seen = ObservedCluster("n1")
        seen.replace_policies([policy("a", stage="stage2")])
        # A change: the policy is now unknown, and the daemon must reconsider (hold).
        assert seen.apply_policy("MODIFIED", policy("a", stage="stage3", budget=-5))
        status = seen.policies["a"].status
        assert status is not None
        assert status.stage == "stage2"
        assert "spec.budgetWatts" in seen.unreadable["a"].error
        assert not seen.apply_policy("MODIFIED", policy("a", stage="stage3", budget=-5))
        assert seen.apply_policy("MODIFIED", policy("a", stage="stage3"))
        assert "a" not in seen.unreadable


class TestStoredPolicies:
    """Safety rule 6: read what the server stored tolerantly; what still fails is unknown."""

    def test_values_the_server_stores_are_read(self) -> None:
        stored = policy("a", stage="s1")
        stored["spec"]["stages"] = [
            {"name": "normal"},
            # `kubectl patch` stores a near-integer in an integer field; a newer CRD adds fields.
            {"name": "s1", "triggerPercent": 80, "releasePercent": 75, "futureKnob": True,
             "actions": {"low": {"clockCeilingMHz": 1110.000001, "minClockMHz": 900}}},
        ]  # fmt: skip
        stored["spec"]["failsafeStage"] = "s1"
        stored["spec"]["futureSection"] = {"x": 1}
        stored["spec"]["guard"] = None
        stored["status"]["futureStatus"] = "y"
        seen = ObservedCluster("n1")
        seen.replace_policies([stored])
        assert seen.unreadable == {}
        action = seen.policies["a"].spec.stages[1].actions["low"]
        assert action.clock_ceiling_mhz == 1110
        assert isinstance(action.clock_ceiling_mhz, int)

    def test_an_unreadable_policy_is_unknown_with_the_nodes_it_may_select(self) -> None:
        bad = policy("a", stage="stage1", budget=5e12)  # a newer CRD's bound
        bad["spec"]["nodeSelector"] = {"matchLabels": {"row": "a"}}
        seen = ObservedCluster("n1")
        assert seen.replace_policies([bad])
        assert seen.policies == {}
        unknown = seen.unreadable["a"]
        assert unknown.may_select({"row": "a"})
        assert not unknown.may_select({"row": "b"})
        assert seen.replace_policies([])
        assert seen.unreadable == {}

    @pytest.mark.parametrize(
        "selector",
        [None, {}, {"matchLabels": {}}, {"matchLabels": {"bad key!": "x"}}, "garbage"],
        ids=["missing", "empty", "empty-labels", "unreadable", "not-a-map"],
    )
    def test_a_selector_that_says_nothing_may_select_any_node(self, selector: Any) -> None:
        bad = policy("a", budget=-1)
        bad["spec"]["nodeSelector"] = selector
        seen = ObservedCluster("n1")
        seen.replace_policies([bad])
        assert seen.unreadable["a"].may_select({"any": "node"})

    def test_a_label_kubectl_dropped_holds_the_nodes_of_the_wider_selector(self) -> None:
        # Written {row: a, rack: } (a null kubectl apply drops), stored {row: a}.
        stored = policy("a", stage="stage1")
        stored["spec"] = {"nodeSelector": {"matchLabels": {"row": "a"}}, "budgetWatts": 1000}
        written = {"spec": {"nodeSelector": {"matchLabels": {"row": "a", "rack": None}}}}
        stored["metadata"]["annotations"] = {LAST_APPLIED: json.dumps(written)}
        seen = ObservedCluster("n1")
        seen.replace_policies([stored])
        assert seen.policies == {}
        assert "kubectl apply dropped rack" in seen.unreadable["a"].error
        assert seen.unreadable["a"].may_select({"row": "a"})
        assert not seen.unreadable["a"].may_select({"row": "b"})

    def test_deleting_an_unreadable_policy_forgets_it(self) -> None:
        seen = ObservedCluster("n1")
        seen.replace_policies([policy("a", budget=-1)])
        assert seen.apply_policy("DELETED", policy("a", budget=-1))
        assert seen.unreadable == {}


class TestNode:
    def test_only_our_node_counts(self) -> None:
        seen = ObservedCluster("n1")
        assert not seen.node_synced
        assert not seen.replace_nodes([node("n2", row="b")])
        assert not seen.node_synced
        assert seen.apply_node("ADDED", node("n1", row="a"))
        assert seen.node_labels == {"row": "a"}
        assert not seen.apply_node("MODIFIED", node("n2", row="c"))

    def test_a_deleted_node_is_unknown_not_unlabelled(self) -> None:
        seen = ObservedCluster("n1")
        seen.replace_nodes([node("n1", row="a")])
        assert seen.apply_node("DELETED", node("n1", row="a"))
        assert seen.node_labels is None


class TestPods:
    def test_pod_facts_from_a_pod(self) -> None:
        info = pod_info({
            "metadata": {"namespace": "ns", "name": "p", "uid": "u", "labels": {"a": "b"},
                         "annotations": {"polca.dev/fake-gpus": "2"},
                         "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"priority": -3, "nodeName": "n1"},
            "status": {"phase": "Succeeded"},
        })  # fmt: skip
        assert info.key == ("ns", "p")
        assert info.finished
        assert info.facts().priority == -3
        assert info.facts().labels == {"a": "b"}

    def test_gpu_requests_count_device_plugin_resources(self) -> None:
        gpu = "nvidia.com/gpu"
        info = pod_info({
            "metadata": {"namespace": "ns", "name": "p"},
            "spec": {
                "containers": [
                    {"resources": {"limits": {gpu: "2", "cpu": "4"}}},
                    {"resources": {"requests": {"nvidia.com/mig-3g.20gb": 1}}},
                    {"resources": {"limits": {gpu: "lots"}}},
                    {},
                ],
                "initContainers": [{"resources": {"limits": {gpu: 1}}}],
            },
        })  # fmt: skip
        assert info.gpus_requested == 3
        assert pod_info({"metadata": {"name": "q"}}).gpus_requested == 0

    def test_replace_and_events(self) -> None:
        seen = ObservedCluster("n1")
        pod = {"metadata": {"namespace": "ns", "name": "p"}}
        assert seen.replace_pods([])
        assert seen.pods_synced
        assert not seen.replace_pods([])
        assert seen.apply_pod("ADDED", pod)
        assert not seen.apply_pod("MODIFIED", pod)
        assert seen.apply_pod("DELETED", pod)
        assert seen.pods == {}


async def test_loop_sink_runs_updates_on_the_loop_and_notifies_on_change() -> None:
    seen = ObservedCluster("n1")
    changes: list[str] = []
    failures: list[Exception] = []
    sink = LoopSink(
        asyncio.get_running_loop(),
        seen.replace_policies,
        seen.apply_policy,
        lambda: changes.append("changed"),
        failures.append,
    )
    await asyncio.to_thread(sink.replace, [policy("a")])
    await asyncio.to_thread(sink.apply, "MODIFIED", policy("a"))  # no change
    await asyncio.to_thread(sink.failed, RuntimeError("down"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert changes == ["changed"]
    assert [str(f) for f in failures] == ["down"]
    assert set(seen.policies) == {"a"}
