"""The command line: environment defaults, peering settings, priorities, --help."""

from __future__ import annotations

from pathlib import Path

import kopf
import pytest

from polca_operator.handlers import CONTROL_DAEMON_ID, RESTORE_HANDLER_ID, OperatorConfig, register
from polca_operator.main import FINALIZER, build_settings, default_priority, main, parse_args


def test_environment_sets_the_defaults() -> None:
    env = {
        "POLCA_METRICS_PORT": "9555",
        "POLCA_PEERING": "polca",
        "POLCA_PROMETHEUS_URL": "http://prom:9090",
        "POLCA_LOG_LEVEL": "DEBUG",
    }
    args = parse_args([], env)
    assert (args.metrics_port, args.peering, args.prometheus_url, args.log_level) == (
        9555, "polca", "http://prom:9090", "debug",
    )  # fmt: skip
    assert parse_args(["--metrics-port", "1"], env).metrics_port == 1


def test_defaults_without_environment() -> None:
    args = parse_args([], {})
    assert (args.metrics_port, args.peering, args.prometheus_url, args.log_level) == (
        9401, None, None, "info",
    )  # fmt: skip


def test_peering_is_mandatory_when_named_and_standalone_otherwise() -> None:
    peered = build_settings(parse_args([], {"POLCA_PEERING": "polca"}))
    assert (peered.peering.name, peered.peering.mandatory, peered.peering.standalone) == (
        "polca", True, False,
    )  # fmt: skip
    assert peered.persistence.finalizer == FINALIZER
    assert peered.peering.lifetime == 15
    alone = build_settings(parse_args(["--standalone"], {"POLCA_PEERING": "polca"}))
    assert alone.peering.standalone


def test_older_replicas_get_higher_priorities() -> None:
    old = default_priority(now_s=1_700_000_000.0, jitter=999)
    new = default_priority(now_s=1_700_000_000.001, jitter=0)
    assert old > new > 0


def test_bad_log_level_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args([], {"POLCA_LOG_LEVEL": "loud"})


def test_daemon_metrics_port_is_one_port_or_any(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args([], {}).daemon_metrics_port == frozenset({9402})
    env = {"POLCA_DAEMON_METRICS_PORT": "9500"}
    assert parse_args([], env).daemon_metrics_port == frozenset({9500})
    assert parse_args(["--daemon-metrics-port", "any"], env).daemon_metrics_port is None
    for bad in ("abc", "0", "70000"):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(["--daemon-metrics-port", bad], {})
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"polca-operator: error: argument --daemon-metrics-port: '{bad}'")
        assert "port" in err
    with pytest.raises(SystemExit):
        parse_args([], {"POLCA_DAEMON_METRICS_PORT": "abc"})
    assert "POLCA_DAEMON_METRICS_PORT='abc': not a port number" in capsys.readouterr().err


def test_help_documents_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"], {})
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for word in ("POLCA_METRICS_PORT", "POLCA_PEERING", "POLCA_PROMETHEUS_URL", "--peering"):
        assert word in out


def test_register_adds_the_daemon_the_finalizer_handler_and_the_indexes() -> None:
    registry = kopf.OperatorRegistry()
    register(registry, OperatorConfig())
    ids = {h.id for h in registry._spawning.get_all_handlers()}
    ids |= {h.id for h in registry._changing.get_all_handlers()}
    ids |= {h.id for h in registry._indexing.get_all_handlers()}
    assert {
        CONTROL_DAEMON_ID,
        RESTORE_HANDLER_ID,
        "polca_node_labels",
        "polca_node_reports",
        "polca_node_addresses",
    } <= ids


def test_missing_credentials_end_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["--standalone", "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("polca-operator: no Kubernetes credentials")
    assert "KUBECONFIG" in err
