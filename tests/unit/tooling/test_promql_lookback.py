"""Bounding the lookback of a PromQL expression's instant selectors (no Prometheus needed)."""

from __future__ import annotations

import pytest

from polca.tooling.promql_lookback import PromQLSyntaxError, bound_lookback, is_plain_selector


def last(selector: str, window: str = "15000ms") -> str:
    return f"last_over_time({selector}[{window}])"


@pytest.mark.parametrize(
    ("expr", "bounded"),
    [
        ("x", last("x")),
        ('x{job="a",node=~"n.*"}', last('x{job="a",node=~"n.*"}')),
        ('{__name__="x"}', last('{__name__="x"}')),
        (
            'label_replace(ipmi_watts, "node", "$1", "instance", "([^:]+)(:.*)?")',
            f'label_replace({last("ipmi_watts")}, "node", "$1", "instance", "([^:]+)(:.*)?")',
        ),
        ("sum by (node, gpu) (dcgm)", f"sum by (node, gpu) ({last('dcgm')})"),
        ("SUM(dcgm) BY (Hostname)", f"SUM({last('dcgm')}) BY (Hostname)"),
        (
            "a * on (node) group_left (rack) b > bool 5",
            f"{last('a')} * on (node) group_left (rack) {last('b')} > bool 5",
        ),
        ("x offset 1m", "last_over_time(x[15000ms] offset 1m)"),
        ("x @ end()", "last_over_time(x[15000ms] @ end())"),
        ('count_values("w", x)', f'count_values("w", {last("x")})'),
        ("topk(3, x) + Inf", f"topk(3, {last('x')}) + Inf"),
        # Range selectors and subqueries keep their author's range; their insides are bounded.
        ("rate(e_total[1m])", "rate(e_total[1m])"),
        ("rate(e_total[1m] anchored)", "rate(e_total[1m] anchored)"),
        ("max_over_time((a + b)[5m:1m])", f"max_over_time(({last('a')} + {last('b')})[5m:1m])"),
        ("# watts\nx", f"# watts\n{last('x')}"),
    ],
)
def test_every_instant_selector_is_bounded(expr: str, bounded: str) -> None:
    assert bound_lookback(expr, 15) == bounded


def test_window_is_in_milliseconds() -> None:
    assert bound_lookback("x", 2.5) == last("x", "2500ms")
    with pytest.raises(ValueError, match="positive"):
        bound_lookback("x", 0)


@pytest.mark.parametrize("expr", ["x", 'x{a="b"}', "(x)", '{__name__="x"}'])
def test_plain_selectors(expr: str) -> None:
    assert is_plain_selector(expr)


@pytest.mark.parametrize(
    "expr", ["sum(x)", "x offset 1m", "x * 2", "rate(x[1m])", 'label_replace(x, "a", "", "b", "")']
)
def test_not_plain_selectors(expr: str) -> None:
    assert not is_plain_selector(expr)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ('x{a="b"', "unclosed"),
        ("sum(x))", "unbalanced"),
        ('x{a="b}', "unexpected"),
        ("x ; y", "unexpected"),
    ],
)
def test_bad_expressions_are_refused(expr: str, message: str) -> None:
    with pytest.raises(PromQLSyntaxError, match=message):
        bound_lookback(expr, 15)
