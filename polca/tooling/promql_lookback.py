"""Bound the lookback of every instant selector in a PromQL expression. Pure, no parser library.

Why: Prometheus answers an instant selector with the series' latest sample up to 5 minutes old
(the lookback delta), and ``timestamp()`` gives that sample's own time only when its argument is
a bare vector selector. Of anything else (``label_replace(...)``, ``sum by (node) (...)``,
arithmetic) every result carries the *evaluation* time, so ``time() - timestamp(expr)`` is
always 0 and a Prometheus that stopped receiving samples (restarted without its targets, a
stuck scrape loop, an exporter's explicit timestamps) passes 5-minute-old power off as new.

:func:`bound_lookback` rewrites each instant selector ``sel`` into
``last_over_time(sel[<window>])``: each raw series then counts only when it has a sample within
the window, whatever functions, aggregations and operators surround it, so a node whose inputs
went silent drops out of the answer. Range selectors (``rate(x[5m])``) and subqueries keep the
range their author gave them. The per-request ``lookback_delta`` parameter of the HTTP API does
the same, but only from Prometheus 2.43 and is silently ignored before.

    >>> bound_lookback('label_replace(ipmi_watts, "node", "$1", "instance", "(.*)")', 15)
    'label_replace(last_over_time(ipmi_watts[15000ms]), "node", "$1", "instance", "(.*)")'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PromQLSyntaxError", "bound_lookback", "is_plain_selector"]


class PromQLSyntaxError(ValueError):
    """The expression cannot be tokenised (an unterminated string, unbalanced brackets)."""


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "ident", "string", "number", "punct"
    text: str
    start: int
    end: int


_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:ms|[smhdwy]))+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<punct>!=|=~|!~|==|<=|>=|[{}()\[\],=<>+\-*/%^@:])
    """,
    re.VERBOSE,
)

# Words that are never a metric name in expression position.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "atan2", "inf", "nan", "smoothed", "anchored"}  # range modifiers
)
# Followed by a parenthesised list of label names, which are not selectors.
_LABEL_LIST_WORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)
_CLOSING = {"(": ")", "[": "]", "{": "}"}


def _tokens(expr: str) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise PromQLSyntaxError(f"unexpected {expr[pos : pos + 10]!r} at offset {pos}")
        kind = match.lastgroup or ""
        if kind != "space":
            out.append(_Token(kind, match.group(), match.start(), match.end()))
        pos = match.end()
    _check_brackets(out)
    return out


def _check_brackets(tokens: list[_Token]) -> None:
    open_: list[str] = []
    for t in tokens:
        if t.kind != "punct":
            continue
        if t.text in _CLOSING:
            open_.append(t.text)
        elif t.text in _CLOSING.values() and (not open_ or _CLOSING[open_.pop()] != t.text):
            raise PromQLSyntaxError(f"unbalanced {t.text!r} at offset {t.start}")
    if open_:
        raise PromQLSyntaxError(f"unclosed {open_[-1]!r}")


def _skip_group(tokens: list[_Token], i: int) -> int:
    """The index after the bracket group opening at `i`."""
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j].kind == "punct" and tokens[j].text in _CLOSING:
            depth += 1
        elif tokens[j].kind == "punct" and tokens[j].text in _CLOSING.values():
            depth -= 1
            if depth == 0:
                return j + 1
    return len(tokens)  # unreachable: brackets are checked


def _is(tokens: list[_Token], i: int, text: str) -> bool:
    return i < len(tokens) and tokens[i].kind == "punct" and tokens[i].text == text


def _selector_end(tokens: list[_Token], i: int) -> int:
    """The index after the selector starting at `i` (a name, a `{...}`, or both)."""
    if tokens[i].kind == "ident":
        i += 1
    return _skip_group(tokens, i) if _is(tokens, i, "{") else i


def _modifiers_end(tokens: list[_Token], i: int) -> int:
    """The index after `offset <duration>` and `@ <time>` modifiers following a selector."""
    while i < len(tokens):
        if tokens[i].kind == "ident" and tokens[i].text.lower() == "offset":
            i += 2 if not _is(tokens, i + 1, "-") else 3  # `offset 5m` or `offset -5m`
        elif _is(tokens, i, "@"):
            i += 1
            if _is(tokens, i, "-") or _is(tokens, i, "+"):
                i += 1
            # `@ start()` / `@ end()` or a number
            i += 3 if _is(tokens, i + 1, "(") else 1
        else:
            return i
    return i


def _instant_selectors(tokens: list[_Token]) -> list[tuple[int, int]]:
    """(first, end) token spans of the instant selectors, modifiers included."""
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if _is(tokens, i, "["):  # a subquery's range and step: durations only
            i = _skip_group(tokens, i)
            continue
        if t.kind == "ident" and t.text.lower() in _LABEL_LIST_WORDS:
            i += 1
            if _is(tokens, i, "("):
                i = _skip_group(tokens, i)
            continue
        starts_selector = _is(tokens, i, "{") or (
            t.kind == "ident"
            and t.text.lower() not in _KEYWORDS
            and not _is(tokens, i + 1, "(")
            and not (
                t.text.lower() in _AGGREGATIONS
                and i + 1 < len(tokens)
                and tokens[i + 1].text.lower() in {"by", "without"}
            )
        )
        if not starts_selector:
            i += 1
            continue
        end = _selector_end(tokens, i)
        if _is(tokens, end, "["):
            i = _skip_group(tokens, end)  # a range selector: its author's window stands
            continue
        end = _modifiers_end(tokens, end)
        spans.append((i, end))
        i = end
    return spans


def _duration(window_s: float) -> str:
    if window_s <= 0:
        raise ValueError(f"window must be positive, not {window_s}")
    return f"{max(1, round(window_s * 1000))}ms"


def bound_lookback(expr: str, window_s: float) -> str:
    """`expr` with every instant selector limited to samples of the last `window_s` seconds."""
    tokens = _tokens(expr)
    window = _duration(window_s)
    out: list[str] = []
    pos = 0
    for first, end in _instant_selectors(tokens):
        start = tokens[first].start
        selector_end = tokens[_selector_end(tokens, first) - 1].end
        stop = tokens[end - 1].end
        out += [expr[pos:start], "last_over_time(", expr[start:selector_end], f"[{window}]"]
        out += [expr[selector_end:stop], ")"]
        pos = stop
    out.append(expr[pos:])
    return "".join(out)


def is_plain_selector(expr: str) -> bool:
    """True for a bare selector (``name``, ``name{...}``, ``{...}``), which keeps sample times."""
    tokens = _tokens(expr)
    while len(tokens) > 2 and _is(tokens, 0, "(") and _skip_group(tokens, 0) == len(tokens):
        tokens = tokens[1:-1]
    spans = _instant_selectors(tokens)
    return bool(tokens) and spans == [(0, len(tokens))] and _selector_end(tokens, 0) == len(tokens)
