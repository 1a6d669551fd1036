"""The PodResources answers the daemon reads, decoded from protobuf's wire format by hand.

The protobuf runtime and the generated messages would cost the daemon ~4 MB of its 50 MB
budget (README, "Benchmarks") for four small messages. The field numbers are those of
`api.proto` (kubelet's), checked against the generated `api_pb2` by the tests, which also
decode what `api_pb2` encodes. Fields we do not read (cpu_ids, memory, topology,
dynamic_resources, ...) are skipped whatever their wire type, as protobuf parsers do.

Wire format (protobuf.dev/programming-guides/encoding): a message is a sequence of
(key, value); key = field_number << 3 | wire_type; wire types 0 varint, 1 64-bit,
2 length-delimited (strings, bytes, sub-messages, packed repeated), 5 32-bit; 3 and 4 are
the deprecated groups, which proto3 never uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "ContainerDevices",
    "ContainerResources",
    "DecodeError",
    "PodResources",
    "decode_allocatable_response",
    "decode_list_response",
]

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10
_T = TypeVar("_T")


class DecodeError(ValueError):
    """The bytes are no valid protobuf message."""


@dataclass(frozen=True, slots=True)
class ContainerDevices:
    resource_name: str
    device_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ContainerResources:
    name: str
    devices: tuple[ContainerDevices, ...]


@dataclass(frozen=True, slots=True)
class PodResources:
    name: str
    namespace: str
    containers: tuple[ContainerResources, ...]


def decode_list_response(data: bytes) -> tuple[PodResources, ...]:
    """ListPodResourcesResponse: pod_resources = 1."""
    return tuple(_pod(_nested(value)) for number, value in _fields(data) if number == 1)


def decode_allocatable_response(data: bytes) -> tuple[ContainerDevices, ...]:
    """AllocatableResourcesResponse: devices = 1."""
    return tuple(_devices(_nested(value)) for number, value in _fields(data) if number == 1)


def _pod(data: bytes) -> PodResources:
    """PodResources: name = 1, namespace = 2, containers = 3."""
    name = namespace = ""
    containers: list[ContainerResources] = []
    for number, value in _fields(data):
        if number == 1:
            name = _text(value)
        elif number == 2:
            namespace = _text(value)
        elif number == 3:
            containers.append(_container(_nested(value)))
    return PodResources(name, namespace, tuple(containers))


def _container(data: bytes) -> ContainerResources:
    """ContainerResources: name = 1, devices = 2 (repeated)."""
    name, devices = _name_and_list(data, lambda value: _devices(_nested(value)))
    return ContainerResources(name, tuple(devices))


def _devices(data: bytes) -> ContainerDevices:
    """ContainerDevices: resource_name = 1, device_ids = 2 (repeated)."""
    resource_name, device_ids = _name_and_list(data, _text)
    return ContainerDevices(resource_name, tuple(device_ids))


def _name_and_list(data: bytes, item: Callable[[bytes | None], _T]) -> tuple[str, list[_T]]:
    """A message of a string (field 1) and a repeated field (2), as both of those are."""
    name = ""
    items: list[_T] = []
    for number, value in _fields(data):
        if number == 1:
            name = _text(value)
        elif number == 2:
            items.append(item(value))
    return name, items


def _nested(value: bytes | None) -> bytes:
    if value is None:
        raise DecodeError("a message or string field with a numeric wire type")
    return value


def _text(value: bytes | None) -> str:
    try:
        return _nested(value).decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(f"a string field that is not UTF-8: {exc}") from None


def _fields(data: bytes) -> Iterator[tuple[int, bytes | None]]:
    """(field number, bytes of a length-delimited value, or None for a number) in order."""
    position, end = 0, len(data)
    while position < end:
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire_type == _VARINT:
            _, position = _varint(data, position)
            yield number, None
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _varint(data, position)
            if position + length > end:
                raise DecodeError(f"field {number}: {length} bytes, {end - position} left")
            yield number, data[position : position + length]
            position += length
        elif wire_type in (_FIXED64, _FIXED32):
            position += 8 if wire_type == _FIXED64 else 4
            if position > end:
                raise DecodeError(f"field {number}: cut short")
            yield number, None
        else:
            raise DecodeError(f"field {number}: wire type {wire_type}")


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 7 * _MAX_VARINT_BYTES, 7):
        if position >= len(data):
            raise DecodeError("a number cut short")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
    raise DecodeError("a number longer than 10 bytes")
