"""The Pod Security level the install guide gives the namespace is the one the daemon needs.

Pod Security's `baseline` level forbids hostPath volumes and adding capabilities beyond a small
set (SYS_ADMIN is not in it), so a daemon with either is admitted only by `privileged`: the
level README.md and docs/install.md put on the namespace (tests/unit/test_docs.py). The real
API server's admission says the same in tests/integration/test_chart.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Capabilities Pod Security `baseline` lets a container add (Kubernetes' Pod Security Standards).
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip


def baseline_violations(pod: dict[str, Any]) -> list[str]:
    found = [f"hostPath volume {v['name']}" for v in pod.get("volumes", []) if "hostPath" in v]
    for container in pod["containers"]:
        added = set((container.get("securityContext") or {}).get("capabilities", {}).get("add", []))
        found += [f"capability {c}" for c in sorted(added - BASELINE_CAPABILITIES)]
        if (container.get("securityContext") or {}).get("privileged"):
            found.append("privileged container")
    return found


def test_the_nvml_daemon_needs_the_privileged_level(
    render: Callable[..., list[dict[str, Any]]],
) -> None:
    objects = render()
    daemonset = next(o for o in objects if o["kind"] == "DaemonSet")
    violations = baseline_violations(daemonset["spec"]["template"]["spec"])
    assert "capability SYS_ADMIN" in violations
    assert any(v.startswith("hostPath volume") for v in violations)
    operator = next(o for o in objects if o["kind"] == "Deployment")
    assert baseline_violations(operator["spec"]["template"]["spec"]) == []
