"""The hand decoder of the PodResources answers against protobuf's own encoder (`api_pb2`,
whose field numbers test_podresources_wire.py checks against kubelet's)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polca_node.podresources import api_pb2
from polca_node.podresources.messages import (
    ContainerDevices,
    ContainerResources,
    DecodeError,
    PodResources,
    decode_allocatable_response,
    decode_list_response,
)

_text = st.text(max_size=40)
_devices = st.builds(
    ContainerDevices, _text, st.lists(_text, max_size=8).map(tuple)
)  # fmt: skip
_containers = st.builds(ContainerResources, _text, st.lists(_devices, max_size=3).map(tuple))
_pods = st.builds(PodResources, _text, _text, st.lists(_containers, max_size=3).map(tuple))


def _pb_devices(devices: ContainerDevices) -> Any:
    return api_pb2.ContainerDevices(
        resource_name=devices.resource_name, device_ids=list(devices.device_ids)
    )


def _pb_list(pods: list[PodResources]) -> bytes:
    message = api_pb2.ListPodResourcesResponse(
        pod_resources=[
            api_pb2.PodResources(
                name=pod.name,
                namespace=pod.namespace,
                containers=[
                    api_pb2.ContainerResources(
                        name=container.name, devices=[_pb_devices(d) for d in container.devices]
                    )
                    for container in pod.containers
                ],
            )
            for pod in pods
        ]
    )
    return bytes(message.SerializeToString())


@given(st.lists(_pods, max_size=6))
def test_list_answers_decode_as_protobuf_encodes_them(pods: list[PodResources]) -> None:
    assert decode_list_response(_pb_list(pods)) == tuple(pods)


@given(st.lists(_devices, max_size=6))
def test_allocatable_answers_decode_as_protobuf_encodes_them(
    devices: list[ContainerDevices],
) -> None:
    message = api_pb2.AllocatableResourcesResponse(devices=[_pb_devices(d) for d in devices])
    assert decode_allocatable_response(message.SerializeToString()) == tuple(devices)


def test_fields_we_do_not_read_are_skipped() -> None:
    # What a newer kubelet adds to ContainerResources: cpu_ids (3, packed varints), memory
    # (4, a message), plus numbers of every other wire type.
    ours = api_pb2.ContainerResources(
        name="server",
        devices=[api_pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=["GPU-a"])],
    ).SerializeToString()
    others = (
        bytes([3 << 3 | 2, 3, 1, 0x96, 0x01])  # packed int64s 1, 150
        + bytes([4 << 3 | 2, 2, 0x08, 0x01])  # a nested message
        + bytes([5 << 3 | 0, 0xFF, 0x01])  # a varint
        + bytes([6 << 3 | 1]) + bytes(8)  # 64-bit
        + bytes([7 << 3 | 5]) + bytes(4)  # 32-bit
    )  # fmt: skip
    pod = api_pb2.PodResources(name="p", namespace="n").SerializeToString()
    container = ours + others
    answer = bytes([1 << 3 | 2, len(pod) + 2 + len(container)]) + pod
    answer += bytes([3 << 3 | 2, len(container)]) + container
    (decoded,) = decode_list_response(answer)
    assert decoded == PodResources(
        "p", "n", (ContainerResources("server", (ContainerDevices("nvidia.com/gpu", ("GPU-a",)),)),)
    )


@pytest.mark.parametrize(
    "data",
    [
        bytes([1 << 3 | 2, 5, 0x0A]),  # a pod of 5 bytes with 1 there
        bytes([1 << 3 | 2]),  # no length
        bytes([0x80] * 11),  # a varint of more than 10 bytes
        bytes([1 << 3 | 3]),  # a group (wire type 3)
        bytes([0 << 3 | 2, 0]),  # field number 0
        bytes([1 << 3 | 0, 1]),  # a pod as a number
        bytes([1 << 3 | 2, 3, 1 << 3 | 2, 1, 0xFF]),  # a name that is not UTF-8
        bytes([9 << 3 | 1, 0, 0]),  # a 64-bit field cut short
    ],
)
def test_broken_answers_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_list_response(data)


def test_empty_answer_is_no_pods() -> None:
    assert decode_list_response(b"") == ()
