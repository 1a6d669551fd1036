"""Index entries hold only what a cycle uses, read defensively from daemon-written status."""

from __future__ import annotations

from polca_operator.indexes import ChangeTracker, NodeReport, node_labels_entry, node_report_entry


def test_node_labels_are_copied() -> None:
    labels = {"a": "1"}
    entry = node_labels_entry("n1", labels)
    labels["a"] = "2"
    assert entry == {"n1": {"a": "1"}}


def test_node_report_keeps_endpoint_counts_and_policies() -> None:
    status = {
        "metricsEndpoint": "http://10.0.0.5:9402/metrics",
        "gpuCount": 2,
        "throttledGpuCount": 1,
        "gpus": [
            {"index": 0, "maxPowerLimitWatts": 700},
            {"index": 1, "maxPowerLimitWatts": 700.0},
        ],
        "policies": [{"name": "row-a", "stage": "stage1"}, {"name": "hall", "stage": "normal"}],
        "heartbeatTime": "2025-01-01T00:00:00Z",
    }
    assert node_report_entry("n1", status) == {
        "n1": NodeReport(
            metrics_url="http://10.0.0.5:9402/metrics",
            gpu_count=2,
            throttled_gpu_count=1,
            policies=frozenset({"row-a", "hall"}),
        )
    }


def test_odd_status_gives_an_empty_report_not_a_crash() -> None:
    odd = {"metricsEndpoint": 5, "gpuCount": -1, "gpus": [{"index": 0}], "policies": ["x"]}
    assert node_report_entry("n1", odd) == {"n1": NodeReport()}
    assert node_report_entry("n1", {}) == {"n1": NodeReport()}


def test_heartbeats_do_not_move_the_change_tracker() -> None:
    tracker = ChangeTracker()
    tracker.saw("n1", NodeReport(gpu_count=8))
    tracker.saw("n1", NodeReport(gpu_count=8))
    assert tracker.version == 1
    tracker.saw("n1", NodeReport(gpu_count=7))
    assert tracker.version == 2


def test_change_tracker_forgets_deleted_names() -> None:
    tracker = ChangeTracker()
    for i in range(300):
        tracker.saw(f"n{i}", i)
    tracker.prune(["n1"])
    version = tracker.version
    tracker.saw("n2", 2)  # forgotten, so seen as new
    assert tracker.version == version + 1
