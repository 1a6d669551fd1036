"""`polca-node` options: every option from the command line or the DaemonSet's environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from polca_node.main import build_parser, main, parse_options

ENV_VARS = (
    "POLCA_NODE_NAME", "POLCA_GPU_BACKEND", "POLCA_FAKE_PROFILE", "POLCA_FAKE_LOAD",
    "POLCA_FAKE_STATE", "POLCA_FAKE_GPU_ANNOTATION", "POLCA_PODRESOURCES_SOCKET",
    "POLCA_PODRESOURCES_INTERVAL_S", "POLCA_METRICS_HOST", "POLCA_METRICS_PORT",
    "POLCA_METRICS_ENDPOINT", "POLCA_POD_IP", "POLCA_GUARD_PERIOD_S",
    "POLCA_STATUS_HEARTBEAT_S", "POLCA_EVENT_NAMESPACE", "POLCA_LOG_LEVEL", "KUBECONFIG",
    "POLCA_STATE_DIR",
)  # fmt: skip


def test_defaults() -> None:
    options = parse_options(["--node-name", "n1"], environ={})
    assert options.node_name == "n1"
    assert options.gpu_backend == "nvml"
    assert options.fake_profile == "H100-SXM:8"
    assert options.podresources_socket == Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    assert options.metrics_port == 9402
    assert options.guard_period_s == 0.5
    assert options.heartbeat_s == 30.0
    assert options.fake_gpu_annotation is None
    assert options.kubeconfig is None
    assert options.log_level == "INFO"
    assert options.nvml_latency_metrics is False


@pytest.mark.parametrize(
    ("argv", "environ", "wanted"),
    [
        (["--nvml-latency-metrics"], {}, True),
        (["--nvml-latency-metrics", "false"], {"POLCA_NVML_LATENCY_METRICS": "true"}, False),
        ([], {"POLCA_NVML_LATENCY_METRICS": "true"}, True),  # as the chart renders it
        ([], {"POLCA_NVML_LATENCY_METRICS": "false"}, False),
    ],
)
def test_nvml_latency_metrics_are_opt_in(
    argv: list[str], environ: dict[str, str], wanted: bool
) -> None:
    options = parse_options(["--node-name", "n1", *argv], environ=environ)
    assert options.nvml_latency_metrics is wanted


def test_everything_from_the_environment() -> None:
    environ = {
        "POLCA_NODE_NAME": "gpu-7",
        "POLCA_GPU_BACKEND": "fake",
        "POLCA_FAKE_PROFILE": "A100-80GB:4",
        "POLCA_FAKE_LOAD": "constant:decode=0.5",
        "POLCA_FAKE_GPU_ANNOTATION": "polca.dev/fake-gpus",
        "POLCA_PODRESOURCES_SOCKET": "/run/kubelet.sock",
        "POLCA_METRICS_PORT": "9500",
        "POLCA_GUARD_PERIOD_S": "0.25",
        "POLCA_LOG_LEVEL": "debug",
        "POLCA_POD_IP": "10.0.0.9",
        "KUBECONFIG": "/etc/kubeconfig",
    }
    options = parse_options([], environ=environ)
    assert options.node_name == "gpu-7"
    assert options.gpu_backend == "fake"
    assert options.fake_profile == "A100-80GB:4"
    assert options.fake_load == "constant:decode=0.5"
    assert options.fake_gpu_annotation == "polca.dev/fake-gpus"
    assert options.podresources_socket == Path("/run/kubelet.sock")
    assert options.metrics_port == 9500
    assert options.guard_period_s == 0.25
    assert options.log_level == "DEBUG"
    assert options.pod_ip == "10.0.0.9"
    assert options.kubeconfig == Path("/etc/kubeconfig")


def test_command_line_wins_over_the_environment() -> None:
    options = parse_options(
        ["--node-name", "cli", "--metrics-port", "1234"],
        environ={"POLCA_NODE_NAME": "env", "POLCA_METRICS_PORT": "9999"},
    )
    assert (options.node_name, options.metrics_port) == ("cli", 1234)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--node-name"),
        (["--node-name", "n", "--guard-period-s", "2"], "guard-period-s"),
        (["--node-name", "n", "--fake-load", "idle"], "--gpu-backend fake"),
        (["--node-name", "n", "--gpu-backend", "cuda"], "invalid choice"),
        (["--node-name", "n", "--nvml-latency-metrics", "maybe"], "true or false"),
    ],
)
def test_bad_options_are_refused_with_the_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_options(argv, environ={})
    assert message in capsys.readouterr().err


def test_help_documents_every_option_and_its_environment_variable() -> None:
    text = " ".join(build_parser({}).format_help().split())
    for name in ENV_VARS:
        assert name in text, name
    options = set(re.findall(r"--[a-z][a-z-]+", text))
    assert {"--node-name", "--gpu-backend", "--fake-profile", "--fake-load",
            "--podresources-socket", "--metrics-port", "--kubeconfig"} <= options  # fmt: skip


def test_missing_credentials_end_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    missing = tmp_path / "no-such-kubeconfig"
    code = main(
        ["--node-name", "n1", "--gpu-backend", "fake", "--metrics-port", "0",
         "--kubeconfig", str(missing)]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot read kubeconfig {missing}" in err
    assert "--kubeconfig" in err
