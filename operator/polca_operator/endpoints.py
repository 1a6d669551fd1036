"""Which metrics endpoints a daemon may ask the operator to read (its power stream beside them).

A daemon writes its endpoint into its NodePowerState status, and anyone who can write that
status could otherwise point the operator at any URL (a cloud metadata address, an internal
service). The operator scrapes only its own daemons' shape of URL: http(s), no credentials, a
host that is one of the node's addresses or inside the node's pod CIDRs (the daemon publishes
its pod IP), and the daemon's port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from polca.power_stream import STREAM_PATH

__all__ = ["NodeAddresses", "endpoint_problem", "node_addresses", "stream_url"]


@dataclass(frozen=True, slots=True)
class NodeAddresses:
    """A Node's addresses (status.addresses) and pod CIDRs (spec.podCIDRs), as strings."""

    hosts: frozenset[str] = frozenset()
    pod_cidrs: tuple[str, ...] = ()


def node_addresses(spec: Mapping[str, Any], status: Mapping[str, Any]) -> NodeAddresses:
    """Read defensively: an odd Node is a node without addresses, not a crash."""
    hosts = frozenset(
        str(a["address"])
        for a in status.get("addresses") or ()
        if isinstance(a, Mapping) and isinstance(a.get("address"), str)
    )
    cidrs: list[str] = [c for c in spec.get("podCIDRs") or () if isinstance(c, str)]
    single = spec.get("podCIDR")
    if isinstance(single, str) and single not in cidrs:
        cidrs.append(single)
    return NodeAddresses(hosts, tuple(cidrs))


def _in_cidrs(host: str, cidrs: Iterable[str]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    for cidr in cidrs:
        try:
            if address in ipaddress.ip_network(cidr, strict=False):
                return True
        except ValueError:
            continue
    return False


def endpoint_problem(url: str, node: NodeAddresses, ports: Collection[int] | None) -> str | None:
    """Why `url` is not a daemon endpoint of `node` (None: it may be scraped).

    `ports` None accepts any port (test rigs run one daemon per port on loopback).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme or '(none)'!r} is not http or https"
    if parts.username is not None or parts.password is not None:
        return "the URL carries credentials"
    host = parts.hostname or ""
    if host not in node.hosts and not _in_cidrs(host, node.pod_cidrs):
        known = ", ".join(sorted(node.hosts) + list(node.pod_cidrs)) or "none"
        return f"host {host or '(none)'} is not the node's (addresses and pod CIDRs: {known})"
    effective = port if port is not None else (443 if parts.scheme == "https" else 80)
    if ports is not None and effective not in ports:
        return f"port {effective} is not the daemon's ({', '.join(map(str, sorted(ports)))})"
    return None


def stream_url(metrics_url: str) -> str:
    """The daemon's power stream beside its published metrics endpoint (same scheme, host and
    port, so what `endpoint_problem` accepted for one holds for the other)."""
    parts = urlsplit(metrics_url)
    return urlunsplit((parts.scheme, parts.netloc, STREAM_PATH, "", ""))
