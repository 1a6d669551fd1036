"""Events about a PowerPolicy, shaped so the API server takes them and `kubectl describe` finds
them: namespace `default`, no involvedObject.namespace (the policy is cluster-scoped)."""

from __future__ import annotations

from datetime import UTC, datetime

from polca_operator.kube import MAX_MESSAGE, policy_event

BODY = {"metadata": {"name": "row-a", "uid": "1234-abcd"}, "spec": {}}


def test_event_about_a_cluster_scoped_policy() -> None:
    now = datetime(2026, 11, 30, 1, 2, 3, tzinfo=UTC)
    event = policy_event(BODY, "Normal", "StageEscalated", "normal → stage1", now)
    assert event["metadata"] == {"generateName": "row-a.", "namespace": "default"}
    assert event["involvedObject"] == {
        "apiVersion": "polca.dev/v1alpha1",
        "kind": "PowerPolicy",
        "name": "row-a",
        "uid": "1234-abcd",
    }
    assert "namespace" not in event["involvedObject"]
    assert (event["type"], event["reason"]) == ("Normal", "StageEscalated")
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-11-30T01:02:03Z"
    assert event["source"] == {"component": "polca-operator"}


def test_long_messages_are_cut() -> None:
    event = policy_event(BODY, "Warning", "RestoreIncomplete", "x" * 5000, datetime.now(UTC))
    assert len(event["message"]) == MAX_MESSAGE
