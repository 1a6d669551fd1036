"""The PodResources client against the fake kubelet, over a real unix socket."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from polca_node.podresources.client import (
    ContainerRef,
    PodResourcesClient,
    owners_by_device,
    owners_by_gpu_index,
)
from polca_node.podresources.devices import DeviceKind
from polca_node.podresources.errors import (
    KubeletTimeoutError,
    KubeletUnavailableError,
    KubeletUnsupportedError,
    PodResourcesError,
)
from polca_testbed.fake_kubelet import FakeKubelet
from polca_testbed.scripted_h2_server import Reply, ScriptedH2Server

GPU0 = "GPU-00000000-0000-4000-8000-000000000000"
GPU1 = "GPU-11111111-1111-4111-8111-111111111111"
GPU2 = "GPU-22222222-2222-4222-8222-222222222222"
MIG = "MIG-33333333-3333-4333-8333-333333333333"
INDEX_BY_UUID = {GPU0: 0, GPU1: 1, GPU2: 2, MIG: 2}


class TestList:
    def test_empty_node(self, client: PodResourcesClient) -> None:
        assert client.list_gpu_assignments() == ()

    def test_gpu_owners(self, kubelet: FakeKubelet, client: PodResourcesClient) -> None:
        kubelet.set_pod(
            "prod",
            "llm-0",
            {
                "server": {"nvidia.com/gpu": [GPU0, GPU1], "example.com/nic": ["nic0"]},
                "sidecar": {},
            },
        )
        assignments = client.list_gpu_assignments()
        assert {a.device.raw for a in assignments} == {GPU0, GPU1}
        assert {a.owner for a in assignments} == {ContainerRef("prod", "llm-0", "server")}
        assert {a.resource_name for a in assignments} == {"nvidia.com/gpu"}
        assert all(a.device.kind is DeviceKind.GPU_UUID for a in assignments)

    def test_time_sliced_gpu_has_several_owners(
        self, kubelet: FakeKubelet, client: PodResourcesClient
    ) -> None:
        kubelet.assign("batch", "train-a", "main", [f"{GPU2}::0"])
        kubelet.assign(
            "batch", "train-b", "main", [f"{GPU2}::1"], resource_name="nvidia.com/gpu.shared"
        )
        owners = owners_by_device(client.list_gpu_assignments())
        assert owners == {
            GPU2: (
                ContainerRef("batch", "train-a", "main"),
                ContainerRef("batch", "train-b", "main"),
            )
        }

    def test_by_gpu_index_with_mig_and_unknown_devices(
        self, kubelet: FakeKubelet, client: PodResourcesClient
    ) -> None:
        kubelet.assign("prod", "llm-0", "server", [GPU0])
        kubelet.assign("prod", "small", "c", [MIG], resource_name="nvidia.com/mig-1g.10gb")
        kubelet.assign("prod", "ghost", "c", ["GPU-not-on-this-node"])
        by_index, unresolved = owners_by_gpu_index(client.list_gpu_assignments(), INDEX_BY_UUID)
        assert by_index == {
            0: (ContainerRef("prod", "llm-0", "server"),),
            2: (ContainerRef("prod", "small", "c"),),
        }
        assert [a.device.raw for a in unresolved] == ["GPU-not-on-this-node"]

    def test_assignments_change_at_runtime(
        self, kubelet: FakeKubelet, client: PodResourcesClient
    ) -> None:
        kubelet.assign("prod", "llm-0", "server", [GPU0])
        assert len(client.list_gpu_assignments()) == 1
        kubelet.assign("prod", "llm-0", "server", [GPU0, GPU1])
        assert len(client.list_gpu_assignments()) == 2
        kubelet.remove_pod("prod", "llm-0")
        assert client.list_gpu_assignments() == ()
        assert kubelet.calls["List"] == 3

    def test_many_pods(self, kubelet: FakeKubelet, client: PodResourcesClient) -> None:
        uuids = {index: f"GPU-{index:08d}-0000-4000-8000-000000000000" for index in range(256)}
        for index, uuid in uuids.items():
            kubelet.assign(f"ns-{index % 7}", f"pod-{index}", "server", [uuid])
        by_index, unresolved = owners_by_gpu_index(
            client.list_gpu_assignments(), {uuid: index for index, uuid in uuids.items()}
        )
        assert unresolved == ()
        assert by_index == {
            index: (ContainerRef(f"ns-{index % 7}", f"pod-{index}", "server"),) for index in uuids
        }

    def test_answer_over_one_mib(self, kubelet: FakeKubelet, client: PodResourcesClient) -> None:
        # 4000 pods × 8 ids of 40 bytes: ~1.5 MB, many DATA frames and window updates.
        for pod in range(4000):
            ids = [f"GPU-{pod:08d}-{gpu:04d}-4000-8000-000000000000" for gpu in range(8)]
            kubelet.assign("batch", f"train-{pod}", "main", ids)
        assert kubelet.list_response().ByteSize() > 1024 * 1024
        assignments = client.list_gpu_assignments()
        assert len(assignments) == 32_000
        assert assignments[-1].device.raw == "GPU-00003999-0007-4000-8000-000000000000"
        assert assignments[-1].owner == ContainerRef("batch", "train-3999", "main")

    def test_custom_resource_filter(self, kubelet: FakeKubelet, socket_path: Path) -> None:
        kubelet.assign("prod", "p", "c", [GPU0])
        kubelet.assign("prod", "q", "c", ["card0"], resource_name="example.com/accel")
        with PodResourcesClient(
            socket_path, resource_filter=lambda name: name == "example.com/accel"
        ) as client:
            assert [a.device.raw for a in client.list_gpu_assignments()] == ["card0"]


class TestAllocatable:
    def test_gpu_devices_only(self, kubelet: FakeKubelet, client: PodResourcesClient) -> None:
        kubelet.set_allocatable([GPU0, GPU1])
        kubelet.set_allocatable(["nic0"], resource_name="example.com/nic")
        assert [d.raw for d in client.allocatable_gpu_devices()] == [GPU0, GPU1]

    def test_unsupported_by_old_kubelet(
        self, kubelet: FakeKubelet, client: PodResourcesClient
    ) -> None:
        kubelet.fail_with(grpc.StatusCode.UNIMPLEMENTED, method="GetAllocatableResources")
        with pytest.raises(KubeletUnsupportedError) as caught:
            client.allocatable_gpu_devices()
        assert caught.value.method == "GetAllocatableResources"
        assert caught.value.status == "UNIMPLEMENTED"
        assert client.list_gpu_assignments() == ()  # List still answers


class TestErrors:
    def test_no_kubelet(self, socket_path: Path) -> None:
        with PodResourcesClient(socket_path, timeout_s=2.0) as client:
            with pytest.raises(KubeletUnavailableError) as caught:
                client.list_gpu_assignments()
        assert caught.value.reason == "KubeletUnavailable"
        assert "List" in str(caught.value)

    def test_slow_kubelet_times_out(self, kubelet: FakeKubelet, socket_path: Path) -> None:
        kubelet.delay_s = 5.0
        with PodResourcesClient(socket_path, timeout_s=0.2) as client:
            with pytest.raises(KubeletTimeoutError):
                client.list_gpu_assignments()

    def test_other_failures_keep_the_status(
        self, kubelet: FakeKubelet, client: PodResourcesClient
    ) -> None:
        kubelet.fail_with(grpc.StatusCode.INTERNAL)
        with pytest.raises(PodResourcesError) as caught:
            client.list_gpu_assignments()
        assert type(caught.value) is PodResourcesError
        assert caught.value.status == "INTERNAL"
        kubelet.fail_with(None)
        assert client.list_gpu_assignments() == ()

    def test_status_in_trailers_after_headers(
        self, kubelet: FakeKubelet, client: PodResourcesClient
    ) -> None:
        kubelet.fail_after_headers = True
        kubelet.fail_with(grpc.StatusCode.UNAVAILABLE)
        with pytest.raises(KubeletUnavailableError) as caught:
            client.list_gpu_assignments()
        assert caught.value.status == "UNAVAILABLE"
        assert "fake kubelet told to fail List" in str(caught.value)

    def test_after_a_timeout_the_next_call_answers(
        self, kubelet: FakeKubelet, client: PodResourcesClient
    ) -> None:
        kubelet.delay_s = 5.0
        client.timeout_s = 0.2
        with pytest.raises(KubeletTimeoutError):
            client.list_gpu_assignments()
        kubelet.delay_s = 0.0
        assert client.list_gpu_assignments() == ()

    def test_restart_between_calls_loses_no_call(self, socket_path: Path) -> None:
        with PodResourcesClient(socket_path, timeout_s=2.0) as client:
            with FakeKubelet(socket_path) as kubelet:
                kubelet.assign("prod", "p", "c", [GPU0])
                assert len(client.list_gpu_assignments()) == 1
            with FakeKubelet(socket_path) as kubelet:
                kubelet.assign("prod", "p", "c", [GPU0, GPU1])
                assert len(client.list_gpu_assignments()) == 2

    def test_unreadable_answer(self, socket_path: Path) -> None:
        with (
            ScriptedH2Server(socket_path, lambda _: Reply(messages=(b"\x0a\x05\x0a",))),
            PodResourcesClient(socket_path, timeout_s=2.0) as client,
            pytest.raises(PodResourcesError) as caught,
        ):
            client.list_gpu_assignments()
        assert type(caught.value) is PodResourcesError
        assert caught.value.status == "INTERNAL"

    def test_client_recovers_after_kubelet_restart(
        self, kubelet: FakeKubelet, client: PodResourcesClient
    ) -> None:
        kubelet.assign("prod", "p", "c", [GPU0])
        assert len(client.list_gpu_assignments()) == 1
        kubelet.stop()
        with pytest.raises(KubeletUnavailableError):
            client.list_gpu_assignments()
        kubelet.start()
        assert len(client.list_gpu_assignments()) == 1  # the next call connects afresh
