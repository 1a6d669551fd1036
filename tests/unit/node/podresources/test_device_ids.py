"""Device ids as the NVIDIA device plugin hands them out, resolved to physical GPUs."""

from __future__ import annotations

import pytest

from polca_node.podresources.devices import (
    DeviceKind,
    is_gpu_resource,
    parse_device_id,
    resolve_gpu_index,
)

GPU0 = "GPU-5c89852c-d268-c3f3-1b07-005d5ae1dc3f"
GPU1 = "GPU-0f2a1c33-9a4e-4f1d-8b1a-2c3d4e5f6a7b"
MIG = "MIG-3a5c3ab1-0d16-5f0c-9dd5-d2b4a7a3b0b5"
INDEX_BY_UUID = {GPU0: 0, GPU1: 1, MIG: 1}


class TestParse:
    def test_plain_gpu_uuid(self) -> None:
        device = parse_device_id(GPU0)
        assert device.kind is DeviceKind.GPU_UUID
        assert device.gpu_uuid == GPU0
        assert device.base == GPU0
        assert device.replica is None

    def test_time_sliced_replica(self) -> None:
        device = parse_device_id(f"{GPU1}::3")
        assert device.kind is DeviceKind.GPU_UUID
        assert device.base == GPU1
        assert device.gpu_uuid == GPU1
        assert device.replica == 3
        assert device.raw == f"{GPU1}::3"

    def test_mig_uuid(self) -> None:
        device = parse_device_id(MIG)
        assert device.kind is DeviceKind.MIG_UUID
        assert device.mig_uuid == MIG
        assert device.gpu_uuid is None

    def test_shared_mig_device(self) -> None:
        device = parse_device_id(f"{MIG}::0")
        assert (device.kind, device.base, device.replica) == (DeviceKind.MIG_UUID, MIG, 0)

    def test_legacy_mig_id_names_its_gpu(self) -> None:
        device = parse_device_id(f"MIG-{GPU0}/7/0")
        assert device.kind is DeviceKind.MIG_UUID
        assert device.gpu_uuid == GPU0

    def test_index_strategy(self) -> None:
        assert parse_device_id("3").gpu_index == 3
        assert parse_device_id("3").kind is DeviceKind.GPU_INDEX
        mig = parse_device_id("2:1::4")
        assert (mig.kind, mig.gpu_index, mig.replica) == (DeviceKind.MIG_INDEX, 2, 4)

    @pytest.mark.parametrize("raw", ["", "nvidia0", "GPU0", "abc::x"])
    def test_unknown_ids_do_not_raise(self, raw: str) -> None:
        device = parse_device_id(raw)
        assert device.kind is DeviceKind.UNKNOWN
        assert device.base == raw
        assert device.replica is None


class TestResolve:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            (GPU0, 0),
            (f"{GPU1}::2", 1),
            (MIG, 1),
            (f"MIG-{GPU0}/1/0", 0),
            ("1", 1),
            ("1:0", 1),
            ("GPU-unknown", None),
            ("MIG-unknown", None),
            ("weird", None),
        ],
    )
    def test_resolve(self, raw: str, expected: int | None) -> None:
        assert resolve_gpu_index(parse_device_id(raw), INDEX_BY_UUID) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nvidia.com/gpu", True),
        ("nvidia.com/gpu.shared", True),
        ("nvidia.com/mig-3g.20gb", True),
        ("nvidia.com/gpus", False),
        ("amd.com/gpu", False),
        ("cpu", False),
    ],
)
def test_gpu_resource_names(name: str, expected: bool) -> None:
    assert is_gpu_resource(name) is expected
