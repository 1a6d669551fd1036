"""The power stream's line format (`polca.power_stream`): written by the daemon, read by the
operator; a line that is not one is refused, never read as a power."""

from __future__ import annotations

import pytest

from polca.power_stream import MAX_LINE_BYTES, PowerLine, PowerLineError, format_line, parse_line


def test_a_line_round_trips() -> None:
    line = PowerLine(41, 5123.4, "instant", 0.002)
    raw = format_line(line)
    assert raw == b"seq=41 power_w=5123.4 source=instant age_s=0.002\n"
    assert parse_line(raw) == line


def test_an_empty_line_is_a_keepalive_and_unknown_keys_are_ignored() -> None:
    assert parse_line(b"\n") is None
    assert parse_line(b"\r\n") is None
    assert parse_line(b"seq=2 power_w=10 source=average gpus=8\n") == PowerLine(
        2, 10.0, "average", 0.0
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"seq=1 power_w=-5 source=instant\n",  # a negative power
        b"seq=1 power_w=nan source=instant\n",
        b"seq=1 power_w=inf source=instant\n",
        b"seq=0 power_w=5 source=instant\n",  # samples count from 1
        b"seq=1 power_w=5 source=guess\n",
        b"seq=1 power_w=5 source=instant age_s=-1\n",
        b"seq=1 source=instant\n",  # no power
        b"seq=x power_w=5 source=instant\n",
        b"power 5\n",
        b"seq=1 power_w=5 source=instant \xff\n",
        b"seq=1 power_w=5 source=instant pad=" + b"x" * MAX_LINE_BYTES + b"\n",
    ],
)
def test_anything_else_is_refused(raw: bytes) -> None:
    with pytest.raises(PowerLineError):
        parse_line(raw)
