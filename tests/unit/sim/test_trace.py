"""The trace reader: formats it accepts and the errors it gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polca.sim.trace import TraceError, parse_trace, read_trace

SHARED_TRACE = (
    Path(__file__).resolve().parents[4] / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
)

GOOD = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
    "2023-11-16 18:15:46.6805900,374,44\r\n"
    "2023-11-16 18:15:50.9951690,396,109\r\n"
    "2023-11-16 18:15:51.2224670,879,55\r\n"
)


def test_crlf_and_seven_digit_fractions() -> None:
    trace = parse_trace(GOOD)
    assert len(trace) == 3
    assert trace.arrival_s == pytest.approx([0.0, 4.314579, 4.541877])
    assert trace.context_tokens.tolist() == [374, 396, 879]
    assert trace.generated_tokens.tolist() == [44, 109, 55]


def test_lf_bom_blank_lines_and_no_trailing_newline() -> None:
    text = "\ufeff" + GOOD.replace("\r\n", "\n").rstrip("\n") + "\n\n"
    assert len(parse_trace(text)) == 3


def test_seconds_timestamps_without_header_and_unsorted_rows() -> None:
    trace = parse_trace("10.5,100,5\n3.0,200,6\n")
    assert trace.arrival_s.tolist() == [0.0, 7.5]
    assert trace.context_tokens.tolist() == [200, 100]


def test_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(GOOD.encode())
    assert len(read_trace(path)) == 3


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("yesterday,1,2", "bad TIMESTAMP"),
        ("2023-11-16 18:15:52.1,abc,2", "ContextTokens must be an integer"),
        ("2023-11-16 18:15:52.1,5,0", "GeneratedTokens must be within 1-"),
        ("2023-11-16 18:15:52.1,5", "expected 3 fields"),
    ],
)
def test_bad_row_names_its_line(row: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes((GOOD + row + "\r\n").encode())
    with pytest.raises(TraceError, match=message) as info:
        read_trace(path)
    assert f"{path}:5:" in str(info.value)


def test_wrong_header_rejected() -> None:
    with pytest.raises(TraceError, match=r":1: header"):
        parse_trace("TIMESTAMP,Prompt,Output\n1,2,3\n")


def test_empty_file_rejected() -> None:
    with pytest.raises(TraceError, match="no requests"):
        parse_trace("TIMESTAMP,ContextTokens,GeneratedTokens\r\n")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TraceError, match="UTF-8"):
        read_trace(path)


@pytest.mark.skipif(not SHARED_TRACE.exists(), reason="shared conv trace not present")
def test_reads_the_azure_conv_trace() -> None:
    trace = read_trace(SHARED_TRACE)
    assert len(trace) == 19366
    assert np.all(np.diff(trace.arrival_s) >= 0)
    assert 3400 < trace.duration_s < 3600
