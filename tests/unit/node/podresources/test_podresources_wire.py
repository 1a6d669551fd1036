"""Our api.proto is kubelet's on the wire, and the checked-in stubs match it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from polca_node.podresources import api_pb2

REPO = Path(__file__).resolve().parents[4]
STUBS = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")

# Facts of kubelet's pkg/apis/podresources/v1/api.proto: message → {field: (number, label)}.
KUBELET_FIELDS = {
    "ListPodResourcesResponse": {"pod_resources": 1},
    "PodResources": {"name": 1, "namespace": 2, "containers": 3},
    "ContainerResources": {"name": 1, "devices": 2},
    "ContainerDevices": {"resource_name": 1, "device_ids": 2},
    "AllocatableResourcesResponse": {"devices": 1},
}


def test_service_and_method_names() -> None:
    service = api_pb2.DESCRIPTOR.services_by_name["PodResourcesLister"]
    assert service.full_name == "v1.PodResourcesLister"
    assert {m.name for m in service.methods} == {"List", "GetAllocatableResources"}
    assert service.methods_by_name["List"].input_type.full_name == "v1.ListPodResourcesRequest"


@pytest.mark.parametrize(("message", "fields"), KUBELET_FIELDS.items())
def test_field_numbers(message: str, fields: dict[str, int]) -> None:
    descriptor = api_pb2.DESCRIPTOR.message_types_by_name[message]
    assert descriptor.full_name == f"v1.{message}"
    assert {f.name: f.number for f in descriptor.fields} == fields


def test_fields_we_leave_out_are_skipped() -> None:
    # kubelet also sends ContainerResources.cpu_ids (field 3, packed int64): append it raw.
    ours = api_pb2.ContainerResources(
        name="server",
        devices=[api_pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=["GPU-a"])],
    ).SerializeToString()
    cpu_ids = bytes([3 << 3 | 2, 2, 1, 2])
    parsed = api_pb2.ContainerResources.FromString(ours + cpu_ids)
    assert parsed.name == "server"
    assert list(parsed.devices[0].device_ids) == ["GPU-a"]


def test_checked_in_stubs_match_the_proto(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    script = REPO / "tools" / "gen-protos.sh"
    subprocess.run([str(script), str(tmp_path / "node"), str(tmp_path / "testbed")],
                   check=True, cwd=REPO, env=env)  # fmt: skip
    for root, package in (("node-daemon", "polca_node/podresources"),
                          ("testbed", "polca_testbed/deviceplugin")):  # fmt: skip
        generated = tmp_path / root.split("-")[0] / package
        for name in STUBS:
            checked_in = REPO / root / package / name
            assert (generated / name).read_text() == checked_in.read_text(), (
                f"{checked_in} is stale: run tools/gen-protos.sh"
            )
