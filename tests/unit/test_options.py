"""The shared option rules (`polca.options`), and every entry point refusing bad flags, bad
environment values and bad files with one line and exit status 2 (issue 12, finding 8).

The command tests run the real console scripts as subprocesses: what an operator sees.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import pytest

from polca.options import (
    EnvValue,
    OptionParser,
    boolean,
    env_default,
    log_level,
    package_version,
    port,
    seconds,
    seconds_or_inf,
)

BIN = Path(sys.executable).parent
COMMAND_TIMEOUT_S = 60


# -- the rules -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0", "-1", "inf", "nan", "abc", ""])
def test_seconds_refuse_what_would_spin_or_never_end(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        seconds(text)


def test_seconds_accept_positive_finite_numbers() -> None:
    assert seconds("0.25") == 0.25
    assert seconds_or_inf("inf") == float("inf")
    with pytest.raises(argparse.ArgumentTypeError):
        seconds_or_inf("0")


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("65535", 65535), ("0", 0)])
def test_ports(text: str, value: int) -> None:
    assert port(text) == value


@pytest.mark.parametrize("text", ["65536", "-1", "abc", "80.5"])
def test_bad_ports(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="port"):
        port(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("True", True), ("yes", True), ("1", True), ("on", True),
     ("false", False), ("FALSE", False), ("no", False), ("0", False), (" off ", False)],
)  # fmt: skip
def test_switches(text: str, value: bool) -> None:
    assert boolean(text) is value


def test_bad_switches() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="true or false"):
        boolean("enabled")


@pytest.mark.parametrize("text", ["debug", "Info", "WARNING", " error "])
def test_log_levels_in_any_case(text: str) -> None:
    assert log_level(text) == text.strip().upper()


def test_an_environment_value_is_named_when_refused() -> None:
    default = env_default({"POLCA_X_S": " abc "}, "POLCA_X_S", 1.0)
    assert isinstance(default, EnvValue)
    with pytest.raises(argparse.ArgumentTypeError, match=r"POLCA_X_S='abc': not a number"):
        seconds(default)
    assert env_default({"POLCA_X_S": "  "}, "POLCA_X_S", 1.0) == 1.0


def _parser(environ: Mapping[str, str]) -> OptionParser:
    parser = OptionParser(prog="prog")
    parser.add_argument("--period-s", type=seconds, default=env_default(environ, "P_S", 5.0))
    return parser


def test_the_flag_wins_and_a_bad_environment_value_is_then_never_read() -> None:
    assert _parser({"P_S": "abc"}).parse_args(["--period-s", "2"]).period_s == 2.0
    assert _parser({"P_S": "3"}).parse_args([]).period_s == 3.0
    assert _parser({}).parse_args([]).period_s == 5.0


def test_errors_are_one_line_with_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parser({"P_S": "-1"}).parse_args([])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("prog: error: argument --period-s: P_S='-1': must be a finite number")


# -- the real commands -----------------------------------------------------------------------


def run_command(
    argv: list[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("POLCA_")}
    environ.pop("KUBECONFIG", None)
    environ.pop("KUBERNETES_SERVICE_HOST", None)
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def assert_refused(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit status 2, one line on stderr naming what is wrong, and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# No --metrics-port: the environment must be what is read. Every case stops before binding.
NODE = ["polca-node", "--node-name", "n1", "--gpu-backend", "fake"]


@pytest.mark.parametrize(
    ("flags", "env", "fragments"),
    [
        (["--podresources-interval-s", "0"], {}, ["--podresources-interval-s", "'0'", "> 0"]),
        (["--podresources-interval-s", "-1"], {}, ["--podresources-interval-s", "'-1'"]),
        (["--status-heartbeat-s", "0"], {}, ["--status-heartbeat-s", "'0'"]),
        ([], {"POLCA_GUARD_PERIOD_S": "abc"}, ["POLCA_GUARD_PERIOD_S='abc'", "not a number"]),
        ([], {"POLCA_METRICS_PORT": "abc"}, ["POLCA_METRICS_PORT='abc'", "not a port"]),
        ([], {"POLCA_STATUS_HEARTBEAT_S": "inf"}, ["POLCA_STATUS_HEARTBEAT_S='inf'"]),
        ([], {"POLCA_LOG_LEVEL": "loud"}, ["POLCA_LOG_LEVEL='loud'", "DEBUG, INFO"]),
        (["--metrics-port", "70000"], {}, ["--metrics-port", "1-65535"]),
    ],
)
def test_polca_node_refuses_bad_values(
    flags: list[str], env: dict[str, str], fragments: list[str]
) -> None:
    result = run_command([*NODE, *flags], env)
    assert_refused(result, "polca-node: error:", *fragments)


def test_polca_node_refuses_a_binary_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_bytes(bytes(range(256)) * 4)
    result = run_command([*NODE, "--kubeconfig", str(kubeconfig)])
    assert_refused(result, f"polca-node: kubeconfig {kubeconfig}", "not a YAML kubeconfig")


def test_polca_node_refuses_a_kubeconfig_without_its_parts(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    result = run_command([*NODE, "--kubeconfig", str(kubeconfig)])
    assert_refused(result, "is not usable", "current-context")


def test_polca_node_accepts_a_lower_case_log_level() -> None:
    # Parsing passes (then it stops at the missing credentials, exit 2, with that reason).
    result = run_command([*NODE, "--kubeconfig", "/nonexistent"], {"POLCA_LOG_LEVEL": "Warning"})
    assert_refused(result, "cannot read kubeconfig /nonexistent")


@pytest.mark.parametrize(
    ("flags", "env", "fragments"),
    [
        ([], {"POLCA_METRICS_PORT": "abc"}, ["POLCA_METRICS_PORT='abc'", "not a port"]),
        ([], {"POLCA_LOG_LEVEL": "loud"}, ["POLCA_LOG_LEVEL='loud'"]),
        (["--telemetry-timeout", "0"], {}, ["--telemetry-timeout", "> 0"]),
        (["--peering-lifetime", "0"], {}, ["--peering-lifetime", "≥ 1"]),
    ],
)
def test_polca_operator_refuses_bad_values(
    flags: list[str], env: dict[str, str], fragments: list[str]
) -> None:
    result = run_command(["polca-operator", "--standalone", *flags], env)
    assert_refused(result, "polca-operator: error:", *fragments)


def test_polca_operator_refuses_a_binary_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_bytes(bytes(range(256)) * 4)
    result = run_command(["polca-operator", "--standalone"], {"KUBECONFIG": str(kubeconfig)})
    assert_refused(result, "polca-operator: the kubeconfig is not usable")


# -- polca simulate --------------------------------------------------------------------------

SIM = ["polca", "simulate", "--servers", "2", "--no-progress"]


@pytest.fixture
def one_instant_trace(tmp_path: Path) -> Path:
    path = tmp_path / "burst.csv"
    rows = "".join(f"2023-11-16 18:15:52,{100 + i},{10 + i}\n" for i in range(50))
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + rows)
    return path


def test_simulate_refuses_a_trace_at_one_instant(one_instant_trace: Path) -> None:
    result = run_command([*SIM, "--trace", str(one_instant_trace), "--load-scale", "1"])
    assert_refused(result, "polca simulate:", "share one timestamp")


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--duration", "inf"], ["--duration", "'inf'", "finite"]),
        (["--duration", "0"], ["--duration", "'0'"]),
        (["--dt", "-0.1"], ["--dt"]),
        (["--load-scale", "nan"], ["--load-scale", "finite"]),
        (["--servers", "0"], ["--servers", "≥ 1"]),
    ],
)
def test_simulate_refuses_bad_numbers(flags: list[str], fragments: list[str]) -> None:
    assert_refused(run_command([*SIM, *flags]), "polca simulate: error:", *fragments)


def test_simulate_refuses_a_run_too_big_to_hold_before_allocating_it() -> None:
    # 1e9 × the trace's rate once tried to allocate 283 GiB; now it stops at once.
    result = run_command([*SIM, "--duration", "60", "--load-scale", "1e9"])
    assert_refused(result, "polca simulate:", "requests", "--load-scale")


def test_simulate_refuses_more_steps_than_it_can_record() -> None:
    result = run_command([*SIM, "--duration", "1e9"])
    assert_refused(result, "polca simulate:", "steps", "--duration")


@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        (["polca", "--version"], "polca"),
        (["polca", "simulate", "--version"], "polca simulate"),
        (["polca-operator", "--version"], "polca-operator"),
        (["polca-node", "--version"], "polca-node"),  # answered before --node-name is required
    ],
)
def test_every_command_prints_the_installed_version(argv: list[str], prog: str) -> None:
    result = run_command(argv)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{prog} {metadata.version('polca')}\n"


def test_the_version_is_the_installed_distributions() -> None:
    assert package_version() == metadata.version("polca") != "unknown"
