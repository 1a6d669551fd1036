"""Which daemon metrics endpoints the operator agrees to scrape."""

from __future__ import annotations

import pytest

from polca_operator.endpoints import NodeAddresses, endpoint_problem, node_addresses

NODE = NodeAddresses(frozenset({"10.0.0.7", "gpu-7.example"}), ("10.244.7.0/24",))
PORTS = frozenset({9402})


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.7:9402/metrics",
        "https://10.0.0.7:9402/metrics",
        "http://gpu-7.example:9402/metrics",
        "http://10.244.7.31:9402/metrics",
    ],
)
def test_the_nodes_own_endpoints_are_accepted(url: str) -> None:
    assert endpoint_problem(url, NODE, PORTS) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254:9402/latest/meta-data/", "is not the node's"),
        ("http://169.254.169.254/latest/meta-data/", "is not the node's"),
        ("http://10.0.0.8:9402/metrics", "is not the node's"),
        ("http://10.244.8.3:9402/metrics", "is not the node's"),
        ("http://10.0.0.7:6443/api", "port 6443 is not the daemon's (9402)"),
        ("http://10.0.0.7/metrics", "port 80 is not the daemon's"),
        ("file:///etc/passwd", "scheme 'file' is not http or https"),
        ("gopher://10.0.0.7:9402/", "scheme 'gopher'"),
        ("http://user:pw@10.0.0.7:9402/metrics", "carries credentials"),
        ("http://10.0.0.7:99999/metrics", "not a URL"),
        ("metrics", "scheme '(none)'"),
    ],
)
def test_anything_else_is_refused_with_the_reason(url: str, why: str) -> None:
    problem = endpoint_problem(url, NODE, PORTS)
    assert problem is not None
    assert why in problem


def test_any_port_for_test_rigs() -> None:
    assert endpoint_problem("http://10.0.0.7:31234/metrics", NODE, None) is None
    assert endpoint_problem("http://10.0.0.9:31234/metrics", NODE, None) is not None


def test_a_node_without_addresses_accepts_nothing() -> None:
    assert endpoint_problem("http://10.0.0.7:9402/metrics", NodeAddresses(), PORTS) is not None


def test_node_addresses_are_read_defensively() -> None:
    spec = {"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24", "fd00::/64", 5]}
    status = {"addresses": [{"type": "InternalIP", "address": "10.0.0.7"}, {"type": "x"}, "odd"]}
    assert node_addresses(spec, status) == NodeAddresses(
        frozenset({"10.0.0.7"}), ("10.244.7.0/24", "fd00::/64")
    )
    assert node_addresses({}, {}) == NodeAddresses()
    assert node_addresses({"podCIDRs": None}, {"addresses": None}) == NodeAddresses()
