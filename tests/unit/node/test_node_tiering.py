"""GPU → pod → tier: fake-GPU annotations, kubelet mappings, shared GPUs, failed reads."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from polca.control.selectors import Selector
from polca.control.tiers import PodFacts, Tier, TierRule, TierSet
from polca_node.observed import PodInfo
from polca_node.podresources import PodResourcesClient
from polca_node.tiering import (
    DEFAULT_FAKE_GPU_ANNOTATION as FAKE_GPUS,
)
from polca_node.tiering import (
    OwnerConflict,
    PodResourcesMapper,
    assign_fake_gpus,
    check_owners,
    fake_gpu_owners,
    gpu_pod_facts,
    gpu_tiers,
)
from polca_testbed.fake_kubelet import FakeKubelet

TIERS = TierSet(
    tiers=(
        Tier("low", (TierRule(pod_selector=Selector(match_labels={"kind": "train"})),)),
        Tier("high"),
    ),
    default_tier="high",
)


def pod(name: str, gpus: int | str | None, created: str = "2025-01-01T00:00:00Z",
        phase: str = "Pending", labels: dict[str, str] | None = None) -> PodInfo:  # fmt: skip
    annotations = {} if gpus is None else {FAKE_GPUS: str(gpus)}
    return PodInfo("ns", name, labels=labels or {}, annotations=annotations, phase=phase,
                   created=created)  # fmt: skip


class TestFakeGpuAnnotations:
    def test_oldest_pods_first_lowest_indices(self) -> None:
        pods = [pod("b", 2, "2025-01-02T00:00:00Z"), pod("a", 1, "2025-01-03T00:00:00Z"),
                pod("c", 3, "2025-01-01T00:00:00Z"), pod("none", None)]  # fmt: skip
        assigned = assign_fake_gpus(pods, FAKE_GPUS, 8)
        assert assigned == {("ns", "c"): (0, 1, 2), ("ns", "b"): (3, 4), ("ns", "a"): (5,)}

    def test_same_input_same_answer(self) -> None:
        pods = [pod(f"p{i}", 1 + i % 2) for i in range(5)]
        assert assign_fake_gpus(pods, FAKE_GPUS, 8) == assign_fake_gpus(
            list(reversed(pods)), FAKE_GPUS, 8
        )

    def test_pods_keep_their_gpus_when_others_leave(self) -> None:
        first = assign_fake_gpus([pod("a", 2, "1"), pod("b", 2, "2")], FAKE_GPUS, 4)
        assert first[("ns", "b")] == (2, 3)
        later = assign_fake_gpus([pod("b", 2, "2"), pod("c", 1, "3")], FAKE_GPUS, 4, first)
        assert later == {("ns", "b"): (2, 3), ("ns", "c"): (0,)}

    def test_pods_that_do_not_fit_get_nothing(self) -> None:
        assigned = assign_fake_gpus([pod("big", 3, "1"), pod("too-big", 2, "2")], FAKE_GPUS, 4)
        assert assigned == {("ns", "big"): (0, 1, 2)}

    @pytest.mark.parametrize("value", ["two", "-1", "0"])
    def test_bad_or_empty_requests_are_ignored(self, value: str) -> None:
        assert assign_fake_gpus([pod("x", value)], FAKE_GPUS, 4) == {}

    def test_finished_pods_release_their_gpus(self) -> None:
        before = assign_fake_gpus([pod("done", 2, phase="Running")], FAKE_GPUS, 2)
        after = assign_fake_gpus([pod("done", 2, phase="Succeeded")], FAKE_GPUS, 2, before)
        assert after == {}

    def test_owners_by_gpu(self) -> None:
        assert fake_gpu_owners({("ns", "a"): (0, 2)}) == {0: (("ns", "a"),), 2: (("ns", "a"),)}


class TestTiers:
    def test_idle_for_gpus_without_pods(self) -> None:
        tiers = gpu_tiers(TIERS, range(2), {0: (PodFacts("ns", "t", {"kind": "train"}),)})
        assert tiers[0].tier == "low"
        assert tiers[1].tier == "idle"
        assert tiers[1].pod is None

    def test_shared_gpu_takes_the_tier_throttled_last(self) -> None:
        train, serve = PodFacts("ns", "t", {"kind": "train"}), PodFacts("ns", "s")
        tiers = gpu_tiers(TIERS, [0], {0: (train, serve)})
        assert tiers[0].tier == "high"
        assert tiers[0].pod == serve

    def test_pods_known_only_to_the_kubelet_get_the_default_tier(self) -> None:
        facts = gpu_pod_facts({0: (("ns", "unseen"),)}, {})
        assert facts[0] == (PodFacts("ns", "unseen"),)
        assert gpu_tiers(TIERS, [0], facts)[0].tier == "high"

    def test_watched_labels_are_used(self) -> None:
        known = {("ns", "t"): PodInfo("ns", "t", labels={"kind": "train"})}
        facts = gpu_pod_facts({1: (("ns", "t"),)}, known)
        assert gpu_tiers(TIERS, [1], facts)[1].tier == "low"


@pytest.fixture
def kubelet() -> Iterator[FakeKubelet]:
    directory = Path(tempfile.mkdtemp(prefix="polca-tier-", dir="/tmp"))  # short socket path
    with FakeKubelet(directory / "kubelet.sock") as server:
        yield server
    shutil.rmtree(directory, ignore_errors=True)


def running(name: str, gpus_requested: int = 1, phase: str = "Running") -> PodInfo:
    return PodInfo("ns", name, phase=phase, gpus_requested=gpus_requested)


GPUS4 = range(4)


class TestOwnerCheck:
    """Issue 12, finding 4: the kubelet's answer is checked against the pod watch."""

    def test_agreeing_sources_are_taken_as_they_are(self) -> None:
        pods = {("ns", "a"): running("a"), ("ns", "web"): running("web", 0)}
        check = check_owners({0: (("ns", "a"),)}, pods, {}, GPUS4)
        assert check.owners == {0: (("ns", "a"),)}
        assert check.conflict is None
        assert check.remembered == {("ns", "a"): (0,)}

    def test_an_empty_answer_while_a_pod_still_runs_keeps_its_gpus(self) -> None:
        pods = {("ns", "a"): running("a", 2), ("ns", "b"): running("b", 1)}
        first = check_owners(
            {0: (("ns", "a"),), 1: (("ns", "a"),), 2: (("ns", "b"),)}, pods, {}, GPUS4
        )
        empty = check_owners({}, pods, first.remembered, GPUS4)
        assert empty.conflict == OwnerConflict(frozenset({0, 1, 2}), (("ns", "a"), ("ns", "b")))
        # Each GPU keeps the pod that held it, so its tier stays what it was.
        assert empty.owners == {0: (("ns", "a"),), 1: (("ns", "a"),), 2: (("ns", "b"),)}
        assert empty.remembered == first.remembered  # still remembered while they run
        # They agree again: the conflict is gone.
        again = check_owners({0: (("ns", "a"),), 1: (("ns", "a"),), 2: (("ns", "b"),)}, pods,
                             empty.remembered, GPUS4)  # fmt: skip
        assert again.conflict is None

    def test_a_running_pod_asking_for_gpus_never_listed_may_hold_any_free_gpu(self) -> None:
        # After a daemon restart nothing is remembered: the pod's request is the evidence.
        pods = {("ns", "a"): running("a", 1), ("ns", "b"): running("b", 1)}
        check = check_owners({0: (("ns", "b"),)}, pods, {}, GPUS4)
        assert check.conflict is not None
        assert check.conflict.gpus == frozenset({1, 2, 3})
        assert check.conflict.pods == (("ns", "a"),)
        assert check.owners[3] == (("ns", "a"),)
        assert check.owners[0] == (("ns", "b"),)

    @pytest.mark.parametrize(
        "pod",
        [running("a", 1, phase="Pending"), running("a", 1, phase="Succeeded"), running("a", 0)],
        ids=["pending-not-admitted-yet", "finished", "asks-for-no-gpu"],
    )
    def test_pods_that_hold_no_gpu_are_no_conflict(self, pod: PodInfo) -> None:
        assert check_owners({}, {pod.key: pod}, {}, GPUS4).conflict is None

    def test_finished_or_deleted_pods_are_forgotten(self) -> None:
        remembered = {("ns", "a"): (0,), ("ns", "gone"): (1,)}
        pods = {("ns", "a"): running("a", phase="Succeeded")}
        check = check_owners({}, pods, remembered, GPUS4)
        assert check.conflict is None
        assert check.remembered == {}

    def test_a_gpu_the_kubelet_gives_to_another_pod_is_not_held(self) -> None:
        pods = {("ns", "a"): running("a"), ("ns", "b"): running("b")}
        check = check_owners({0: (("ns", "b"),)}, pods, {("ns", "a"): (0,)}, GPUS4)
        assert check.owners[0] == (("ns", "b"),)
        assert check.conflict is None or 0 not in check.conflict.gpus


class TestPodResourcesMapper:
    def test_maps_uuids_and_keeps_the_last_good_mapping_on_failure(
        self, kubelet: FakeKubelet
    ) -> None:
        uuids = {"GPU-aaa": 0, "GPU-bbb": 1, "MIG-ccc": 1}
        mapper = PodResourcesMapper(PodResourcesClient(kubelet.socket_path, timeout_s=2), uuids)
        try:
            assert not mapper.synced
            kubelet.assign("ns", "llm", "server", ["GPU-aaa::3"])
            kubelet.assign("ns", "llm", "sidecar", ["GPU-aaa::4"])
            kubelet.assign("ns", "tiny", "c", ["MIG-ccc"], resource_name="nvidia.com/mig-1g.10gb")
            assert mapper.refresh() is True
            assert mapper.owners == {0: (("ns", "llm"),), 1: (("ns", "tiny"),)}
            assert mapper.refresh() is False  # unchanged

            kubelet.fail_with(grpc.StatusCode.UNAVAILABLE)
            kubelet.clear()
            assert mapper.refresh() is False
            assert mapper.owners == {0: (("ns", "llm"),), 1: (("ns", "tiny"),)}
            assert mapper.last_error is not None
            assert mapper.last_error.reason == "KubeletUnavailable"

            kubelet.fail_with(None)
            assert mapper.refresh() is True
            assert mapper.owners == {}
            assert mapper.last_error is None
        finally:
            mapper.close()

    def test_never_synced_while_the_kubelet_is_down(self, kubelet: FakeKubelet) -> None:
        kubelet.fail_with(grpc.StatusCode.UNAVAILABLE)
        mapper = PodResourcesMapper(PodResourcesClient(kubelet.socket_path, timeout_s=2), {})
        try:
            mapper.refresh()
            assert not mapper.synced
            assert mapper.owners is None
        finally:
            mapper.close()
