"""The chart's alerts under `promtool test rules`: each fires when it should and only then.

The rules are rendered from the chart (so the test sees what users install) and run through
Prometheus's own rule unit-test runner, with input series written like the operator's and the
daemons' metrics.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


@pytest.fixture(scope="module")
def rules(render: Render) -> dict[str, Manifest]:
    objects = render(set_values={"monitoring.prometheusRule.enabled": "true"})
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def expected(rule: Manifest, **labels: str) -> dict[str, Any]:
    """The alert promtool must see: the rule's labels plus `labels`, annotations expanded."""

    def expand(text: str) -> str:
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)

    return {
        "exp_labels": {**rule["labels"], **labels},
        "exp_annotations": {k: expand(v) for k, v in rule["annotations"].items()},
    }


def promtool_test(tmp_path: Path, rules: dict[str, Manifest], tests: list[Manifest]) -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make prometheus` installs Debian's prometheus"
    (tmp_path / "rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "polca", "rules": list(rules.values())}]})
    )
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": "15s", "tests": tests}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_every_alert_links_its_runbook_section(rules: dict[str, Manifest]) -> None:
    runbook = (Path(__file__).resolve().parents[3] / "docs" / "runbook.md").read_text()
    sections = {line[3:].strip().lower() for line in runbook.splitlines() if line[:3] == "## "}
    for name, rule in rules.items():
        url = rule["annotations"]["runbook_url"]
        assert url.endswith(f"docs/runbook.md#{name.lower()}"), url
        assert name.lower() in sections, f"docs/runbook.md has no section {name}"


def test_telemetry_stale_fires_when_telemetry_is_lost_entirely(
    rules: dict[str, Manifest], tmp_path: Path
) -> None:
    stale = rules["PolcaTelemetryStale"]
    promtool_test(
        tmp_path,
        {"PolcaTelemetryStale": stale},
        [
            {
                "interval": "15s",
                "input_series": [
                    # No sample at all: the operator publishes NaN as the age.
                    # (promtool 2.42 has no "NaNxN" shorthand: the samples are written out.)
                    {
                        "series": 'polca_telemetry_age_seconds{policy="lost"}',
                        "values": " ".join(["NaN"] * 21),
                    },
                    {"series": 'polca_telemetry_age_seconds{policy="old"}', "values": "60x20"},
                    {"series": 'polca_telemetry_age_seconds{policy="fresh"}', "values": "1x20"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "2m",
                        "alertname": "PolcaTelemetryStale",
                        "exp_alerts": [
                            expected(stale, policy="lost"),
                            expected(stale, policy="old"),
                        ],
                    }
                ],
            }
        ],
    )


def test_gpu_write_failures_fire_on_the_first_failure(
    rules: dict[str, Manifest], tmp_path: Path
) -> None:
    failures = rules["PolcaGpuWriteFailures"]
    series = 'polca_gpu_write_failures_total{node="n1",gpu="%s",knob="clock",reason="NoPermission"}'
    promtool_test(
        tmp_path,
        {"PolcaGpuWriteFailures": failures},
        [
            {
                "interval": "15s",
                "input_series": [
                    # GPU 0 fails once at 10 min: the labelled counter is born at 1.
                    {"series": series % "0", "values": "_x40 1x40"},
                    # GPU 1 failed long ago and never since.
                    {"series": series % "1", "values": "3x80"},
                ],
                "alert_rule_test": [
                    {"eval_time": "9m", "alertname": "PolcaGpuWriteFailures", "exp_alerts": []},
                    {
                        "eval_time": "11m",
                        "alertname": "PolcaGpuWriteFailures",
                        "exp_alerts": [expected(failures, node="n1", gpu="0")],
                    },
                    {"eval_time": "17m", "alertname": "PolcaGpuWriteFailures", "exp_alerts": []},
                ],
            }
        ],
    )


def test_heartbeat_missing_keeps_firing_after_the_daemon_is_gone(
    rules: dict[str, Manifest], tmp_path: Path
) -> None:
    missing = rules["PolcaNodeHeartbeatMissing"]
    # Timestamps as Unix seconds from 0, one sample per 15 s: "0+15x20" is a live heartbeat.
    promtool_test(
        tmp_path,
        {"PolcaNodeHeartbeatMissing": missing},
        [
            {
                "interval": "15s",
                "input_series": [
                    # n1's daemon dies at 5 min: its own series ends with its scrape target...
                    {
                        "series": 'polca_node_heartbeat_timestamp_seconds{node="n1"}',
                        "values": "0+15x20",
                    },
                    # ...while the operator keeps exporting its NodePowerState's last heartbeat.
                    {
                        "series": 'polca_node_report_heartbeat_timestamp_seconds{node="n1"}',
                        "values": "0+15x20 300x200",
                    },
                    # n2 lives.
                    {
                        "series": 'polca_node_heartbeat_timestamp_seconds{node="n2"}',
                        "values": "0+15x220",
                    },
                    {
                        "series": 'polca_node_report_heartbeat_timestamp_seconds{node="n2"}',
                        "values": "0+15x220",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "5m",
                        "alertname": "PolcaNodeHeartbeatMissing",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "8m",
                        "alertname": "PolcaNodeHeartbeatMissing",
                        "exp_alerts": [expected(missing, node="n1")],
                    },
                    # Past the daemon series' 15 min window: still firing.
                    {
                        "eval_time": "50m",
                        "alertname": "PolcaNodeHeartbeatMissing",
                        "exp_alerts": [expected(missing, node="n1")],
                    },
                ],
            }
        ],
    )


@pytest.mark.parametrize(
    ("alert", "gauge"),
    [
        ("PolcaPolicyUnreadable", "polca_unreadable_policies"),
        ("PolcaGpuOwnersUnknown", "polca_unconfirmed_gpus"),
    ],
)
def test_held_for_unknown_inputs_fires_after_a_minute(
    rules: dict[str, Manifest], tmp_path: Path, alert: str, gauge: str
) -> None:
    rule = rules[alert]
    promtool_test(
        tmp_path,
        {alert: rule},
        [
            {
                "interval": "15s",
                "input_series": [
                    # n1 holds from 2 min on; n2 only for a 30 s blip; n3 never.
                    {"series": f'{gauge}{{node="n1"}}', "values": "0x7 1x20"},
                    {"series": f'{gauge}{{node="n2"}}', "values": "0x7 2x1 0x18"},
                    {"series": f'{gauge}{{node="n3"}}', "values": "0x27"},
                ],
                "alert_rule_test": [
                    {"eval_time": "2m30s", "alertname": alert, "exp_alerts": []},
                    {
                        "eval_time": "4m",
                        "alertname": alert,
                        "exp_alerts": [expected(rule, node="n1")],
                    },
                ],
            }
        ],
    )
