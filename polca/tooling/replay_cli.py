"""``polca replay`` and ``polca capacity``: a cluster's own power history, from Prometheus,
through the controller the operator runs (:mod:`polca.tooling.replay`,
:mod:`polca.tooling.capacity`)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from polca.power.profiles import PROFILES, get_profile
from polca.tooling.capacity import DEFAULT_MAX_THROTTLED_SHARE, CapacityResult, Criteria, search
from polca.tooling.history import (
    History,
    HistoryError,
    Series,
    expressions,
    history_from_series,
)
from polca.tooling.manifests import ManifestError
from polca.tooling.policyfile import ManifestPolicy, PolicyInvalidError, read_policy
from polca.tooling.promhttp import PrometheusError, query_range, steps_between
from polca.tooling.replay import ReplayResult, ShedModel, replay

__all__ = ["register_capacity", "register_replay"]

EXIT_OK, EXIT_POLICY_INVALID, EXIT_BAD_INPUT = 0, 1, 2
EXIT_PROMETHEUS, EXIT_NO_DATA, EXIT_GAPS = 3, 4, 5
_EXIT_CODES = """\
Exit status: 0 done; 1 the policy does not validate; 2 bad arguments or unreadable file;
3 Prometheus unreachable or answered with an error; 4 no power history in the range (a query
returned nothing); 5 the history has gaps (results are printed; the controller held its
failsafe stage there; --allow-gaps exits 0).
"""
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_PROGRESS_MIN_STEPS = 20_000  # below this a history reads in about a second: no bar


def parse_duration_s(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 15s, 1m, 6h)")
    return float(match.group(1)) * _UNITS_S[match.group(2)]


def parse_time_s(text: str, now_s: float | None = None) -> float:
    """RFC 3339, Unix seconds, ``now`` or ``now-6h``."""
    now_s = time.time() if now_s is None else now_s
    text = text.strip()
    if text == "now":
        return now_s
    if text.startswith("now-"):
        return now_s - parse_duration_s(text[4:])
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)  # Python 3.11 reads a trailing Z
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (RFC 3339, Unix seconds, now or now-6h)"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _iso(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _shares(text: str) -> tuple[str, float]:
    tier, sep, value = text.partition("=")
    try:
        share = float(value)
    except ValueError:
        share = -1.0
    if not sep or not tier or not 0 <= share <= 1:
        raise argparse.ArgumentTypeError(
            f"expected TIER=SHARE with a share in [0, 1], got {text!r}"
        )
    return tier, share


def _parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    epilog: str,
) -> argparse.ArgumentParser:
    """A subcommand's parser with the options replay and capacity share."""
    p = subparsers.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--policy", required=True, metavar="FILE", help="the PowerPolicy manifest")
    p.add_argument("--name", help="the policy's name, when FILE holds several")
    p.add_argument(
        "--prometheus",
        metavar="URL",
        help="Prometheus base URL (default: the policy's spec.telemetry.prometheusURL)",
    )
    p.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="T",
        help="start: RFC 3339, Unix seconds, or now-7d",
    )
    p.add_argument("--to", dest="end", default="now", metavar="T", help="end (default now)")
    p.add_argument(
        "--step",
        type=parse_duration_s,
        default=15.0,
        metavar="D",
        help="resolution (default 15s; at most the scrape interval is meaningful)",
    )
    p.add_argument(
        "--node-regex",
        metavar="RE",
        help="the domain's nodes (Prometheus' node label; the nodeSelector's labels are not "
        "in Prometheus); default: every node with power in the range",
    )
    p.add_argument(
        "--gpu",
        choices=sorted(PROFILES),
        default="H100-SXM",
        help="GPU model for the throttling estimate (default %(default)s)",
    )
    p.add_argument(
        "--open-loop",
        action="store_true",
        help="do not estimate what throttling sheds: the history as recorded drives the "
        "controller (stages are then an upper bound)",
    )
    p.add_argument("--allow-gaps", action="store_true", help="exit 0 despite gaps")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--plot", type=Path, metavar="PNG", help="write a figure")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


_REPLAY_EPILOG = (
    """\
Examples:
  polca replay --policy row-a.yaml --prometheus http://prometheus:9090 --from now-7d
  polca replay --policy row-a.yaml --from 2026-11-01T00:00:00Z --to 2026-11-08T00:00:00Z \\
      --node-regex 'row-a-.*' --oversubscription 0.3 --plot row-a.png --json
Node power is what the policy's nodePower counts: the daemons' polca_gpu_power_watts, each GPU
once, summed per node, plus overheadWatts; or the policy's nodePower.query. The model and its
assumptions: docs/plan-your-row.md.
"""
    + _EXIT_CODES
)


def register_replay(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _parser(
        subparsers,
        "replay",
        "replay a cluster's power history from Prometheus through the policy's controller",
        _REPLAY_EPILOG,
    )
    p.add_argument(
        "--oversubscription",
        type=float,
        default=0.3,
        metavar="FRAC",
        help="also replay a row with this many more servers, the history scaled to it "
        "(default %(default)s; 0: only the row as recorded)",
    )
    p.set_defaults(func=run_replay)


_CAPACITY_EPILOG = (
    """\
Examples:
  polca capacity --policy row-a.yaml --prometheus http://prometheus:9090 --from now-7d
  polca capacity --policy row-a.yaml --from now-1d --max-throttled high=0 --max-throttled low=0.2
A size is safe with zero brake-level moments and every tier's throttled share of GPU-hours
within its bound (default """
    + ", ".join(f"{t}={s:g}" for t, s in DEFAULT_MAX_THROTTLED_SHARE.items())
    + """); the answer is the largest size up to which every size is safe.
"""
    + _EXIT_CODES
)


def register_capacity(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _parser(
        subparsers,
        "capacity",
        "the largest safe row size from a cluster's own replayed power history",
        _CAPACITY_EPILOG,
    )
    p.add_argument(
        "--max-throttled",
        type=_shares,
        action="append",
        metavar="TIER=SHARE",
        help="bound on a tier's throttled share of its GPU-hours; repeatable; replaces the "
        "defaults",
    )
    p.add_argument(
        "--max-extra",
        type=int,
        default=None,
        metavar="K",
        help="try at most K more servers (default: as many as the row has)",
    )
    p.set_defaults(func=run_capacity)


# --- running ---------------------------------------------------------------------------------


class _ExitError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class _Loaded:
    manifest: ManifestPolicy
    history: History
    queries: dict[str, str]
    shed: ShedModel | None


@contextmanager
def _bar(enabled: bool, label: str, total: int) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda _done: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.update(task, completed=done)


def _load(args: argparse.Namespace) -> _Loaded:
    try:
        manifest = read_policy(args.policy, args.name)
    except PolicyInvalidError as exc:
        raise _ExitError(EXIT_POLICY_INVALID, str(exc)) from exc
    except ManifestError as exc:
        raise _ExitError(EXIT_BAD_INPUT, str(exc)) from exc
    spec = manifest.policy.spec
    url = args.prometheus or spec.telemetry.prometheus_url
    if not url:
        raise _ExitError(EXIT_BAD_INPUT, "no Prometheus URL: pass --prometheus")
    try:
        start_s, end_s = parse_time_s(args.start), parse_time_s(args.end)
        steps = steps_between(start_s, end_s, args.step)
        # A JSON string is a valid PromQL string literal, whatever the regex holds.
        matcher = f"node=~{json.dumps(args.node_regex)}" if args.node_regex else ""
        exprs = expressions(spec, args.step, matcher)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise _ExitError(EXIT_BAD_INPUT, str(exc)) from exc
    show = not args.no_progress and steps * 3 >= _PROGRESS_MIN_STEPS and sys.stderr.isatty()
    queries = {
        "node_power": exprs.node_power,
        "tier_power": exprs.tier_power,
        "tier_gpus": exprs.tier_gpus,
    }
    results: dict[str, list[Series]] = {}
    with _bar(show, "reading history", steps * len(queries)) as progress:
        for n, (key, expr) in enumerate(queries.items()):
            offset = n * steps

            def report(done: int, offset: int = offset) -> None:
                progress(offset + done)

            try:
                results[key] = query_range(
                    url, expr, start_s=start_s, steps=steps, step_s=args.step, progress=report
                )
            except PrometheusError as exc:
                raise _ExitError(EXIT_PROMETHEUS, str(exc)) from exc
    gpu_source = spec.node_power.source == "gpu"
    try:
        history = history_from_series(
            start_s=start_s,
            step_s=args.step,
            steps=steps,
            node_series=results["node_power"],
            node_label=exprs.node_label,
            tier_power=results["tier_power"],
            tier_gpus=results["tier_gpus"],
            overhead_w=spec.node_power.overhead_watts if gpu_source else 0.0,
            node_pattern=None if gpu_source else args.node_regex,
        )
    except HistoryError as exc:
        raise _ExitError(
            EXIT_NO_DATA,
            f"{exc}: {_iso(start_s)} to {_iso(end_s)} at {url}; query: {exprs.node_power}",
        ) from exc
    shed = None if args.open_loop else ShedModel.for_plan(manifest.plan, get_profile(args.gpu))
    return _Loaded(manifest, history, queries, shed)


def _with_exit(body: Callable[[argparse.Namespace], int], command: str) -> Callable[..., int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return body(args)
        except _ExitError as exc:
            print(f"polca {command}: {exc}", file=sys.stderr)
            return exc.code

    return run


def _history_json(loaded: _Loaded) -> dict[str, Any]:
    h = loaded.history
    return {
        "policy": loaded.manifest.source,
        "name": loaded.manifest.name,
        "budget_w": loaded.manifest.policy.spec.budget_watts,
        "from": _iso(h.start_s),
        "to": _iso(h.start_s + (h.steps - 1) * h.step_s),
        "step_s": h.step_s,
        "nodes": list(h.nodes),
        "gpus": {t: float(g.max()) for t, g in h.tier_gpus.items()},
        "gaps": [g.as_dict() for g in h.gaps()],
        "closed_loop": loaded.shed is not None,
        "queries": loaded.queries,
    }


def _gap_exit(loaded: _Loaded, args: argparse.Namespace) -> int:
    gaps = loaded.history.gaps()
    for gap in gaps[:10]:
        print(
            f"polca {args.command}: gap {_iso(gap.start_s)} to {_iso(gap.end_s)}: no fresh power "
            f"from {', '.join(gap.nodes) if gap.nodes != ('*',) else 'any node'} (the "
            "controller held its failsafe stage there, as the operator would)",
            file=sys.stderr,
        )
    if len(gaps) > 10:
        print(f"polca {args.command}: … {len(gaps) - 10} more gaps", file=sys.stderr)
    return EXIT_GAPS if gaps and not args.allow_gaps else EXIT_OK


def _row_line(label: str, servers: int, r: ReplayResult) -> str:
    stages = " / ".join(f"{s:.0f}" for s in r.stage_seconds().values())
    tiers = "  ".join(
        f"{t} {u.throttled_gpu_hours:.1f} GPU-h ({100 * u.throttled_share:.1f}%)"
        for t, u in sorted(r.tiers.items())
    )
    return (
        f"{label:<12}{servers:>8}{r.peak_pct:>9.1f}%{100 - r.peak_pct:>9.1f}%"
        f"{r.brake_moments:>9}{r.stage_changes:>9}   {stages}   {tiers}"
    )


def _header(loaded: _Loaded) -> str:
    h = loaded.history
    names = " / ".join(s.name for s in loaded.manifest.plan.stages)
    gaps = len(h.gaps())
    no_tiers = (
        ""
        if h.tier_gpus
        else " (no per-tier polca_gpu_power_watts: no throttling estimate, no tier figures)"
    )
    return (
        f"{loaded.manifest.source} {loaded.manifest.name}: budget "
        f"{loaded.manifest.policy.spec.budget_watts:g} W, {len(h.nodes)} nodes, "
        f"{_iso(h.start_s)} to {_iso(h.start_s + (h.steps - 1) * h.step_s)}, {h.steps} steps "
        f"of {h.step_s:g} s, {gaps} gaps, "
        f"{'closed loop (throttling estimated)' if loaded.shed else 'open loop'}{no_tiers}\n"
        f"{'row':<12}{'servers':>8}{'peak':>10}{'margin':>10}{'brakes':>9}{'changes':>9}"
        f"   seconds per stage ({names})   throttled per tier\n"
    )


def _replay(args: argparse.Namespace) -> int:
    if args.oversubscription < 0:
        raise _ExitError(EXIT_BAD_INPUT, "--oversubscription must not be negative")
    loaded = _load(args)
    plan, budget_w = loaded.manifest.plan, loaded.manifest.policy.spec.budget_watts
    base = len(loaded.history.nodes)
    rows = [("recorded", base)]
    extra = round(base * args.oversubscription)
    if extra:
        rows.append((f"+{extra} servers", base + extra))
    results = [
        (label, n, replay(plan, budget_w, loaded.history, scale=n / base, shed=loaded.shed))
        for label, n in rows
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "history": _history_json(loaded),
                    "rows": [
                        {"row": label, "servers": n, **r.summary()} for label, n, r in results
                    ],
                },
                indent=2,
            )
        )
    else:
        print(_header(loaded) + "\n".join(_row_line(lbl, n, r) for lbl, n, r in results))
    if args.plot is not None:
        from polca.tooling.plotting import plot_replays

        plot_replays([(f"{lbl}: {n} servers", r) for lbl, n, r in results], args.plot)
    return _gap_exit(loaded, args)


def _capacity(args: argparse.Namespace) -> int:
    loaded = _load(args)
    base = len(loaded.history.nodes)
    max_extra = base if args.max_extra is None else args.max_extra
    if max_extra < 0:
        raise _ExitError(EXIT_BAD_INPUT, "--max-extra must not be negative")
    shares = dict(args.max_throttled) if args.max_throttled else dict(DEFAULT_MAX_THROTTLED_SHARE)
    criteria = Criteria(max_throttled_share=shares)
    show = not args.no_progress and sys.stderr.isatty()
    searches = {}
    for independent in (False, True):
        label = "independent servers" if independent else "searching row sizes"
        with _bar(show, label, max_extra + 1) as progress:
            searches[independent] = search(
                loaded.manifest.plan,
                loaded.manifest.policy.spec.budget_watts,
                loaded.history,
                criteria=criteria,
                shed=loaded.shed,
                max_extra=max_extra,
                progress=lambda done, _total: progress(done),
                independent=independent,
            )
    result, optimistic = searches[False], searches[True]
    if args.json:
        other = optimistic.as_dict()
        print(json.dumps({
            "history": _history_json(loaded),
            **result.as_dict(),
            "independent_servers": {k: other[k] for k in (
                "largest_safe_servers", "extra_servers", "oversubscription", "margin_pct",
                "next_size_fails")},
        }, indent=2))  # fmt: skip
    else:
        print(_capacity_text(loaded, result, optimistic))
    if args.plot is not None and result.levels:
        from polca.tooling.plotting import plot_replays

        shown = [result.levels[0], result.largest_safe or result.levels[0], result.levels[-1]]
        unique = list({lvl.servers: lvl for lvl in shown}.values())
        plot_replays([(f"{lvl.servers} servers", lvl.result) for lvl in unique], args.plot)
    return _gap_exit(loaded, args)


def _capacity_text(loaded: _Loaded, result: CapacityResult, optimistic: CapacityResult) -> str:
    lines = [_header(loaded).rstrip("\n")]
    for level in result.levels:
        verdict = "safe" if level.safe else "UNSAFE: " + "; ".join(level.failures)
        lines.append(_row_line("", level.servers, level.result) + f"   {verdict}")
    best, nxt = result.largest_safe, result.first_unsafe
    bounds = ", ".join(
        f"{t} ≤ {100 * s:g}%" for t, s in result.criteria.max_throttled_share.items()
    )
    lines.append(f"criteria: zero brake-level moments; throttled share of GPU-hours {bounds}")
    if best is None:
        lines.append(f"the row as recorded ({result.base_servers} servers) already fails")
    else:
        extra = best.servers - result.base_servers
        lines.append(
            f"largest safe row: {best.servers} servers (+{extra}, "
            f"+{100 * extra / result.base_servers:.1f}%), peak {best.result.peak_pct:.1f}% of "
            f"budget (margin {100 - best.result.peak_pct:.1f} points)"
            + (
                f"; {nxt.servers} servers fail: {'; '.join(nxt.failures)}"
                if nxt
                else "; every size tried is safe (raise --max-extra)"
            )
        )
    lines.append(
        "assumption: added servers behave like the row's average server at every instant "
        "(peaks overstated: conservative); throttling's effect is the GPU power model's "
        "estimate; excursions shorter than a step are not seen"
    )
    other = optimistic.largest_safe
    lines.append(
        "uncertainty: if the added servers were as busy but not in step with the old ones "
        "(recorded nodes shifted by up to 30 min), the largest safe row would be "
        + (f"{other.servers} servers (margin {100 - other.result.peak_pct:.1f} points)"
           if other else "none")
        + (" or more (raise --max-extra)" if optimistic.first_unsafe is None else "")
    )  # fmt: skip
    return "\n".join(lines)


run_replay = _with_exit(_replay, "replay")
run_capacity = _with_exit(_capacity, "capacity")
