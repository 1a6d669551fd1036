"""Deleting a policy waits until its nodes have let go, then records the restore."""

from __future__ import annotations

from polca_operator.fakes import StaticView
from polca_operator.indexes import NodeReport
from polca_operator.restore import restore_verdict


def view(holding: dict[str, set[str]]) -> StaticView:
    return StaticView(
        node_reports={n: NodeReport(policies=frozenset(p)) for n, p in holding.items()}
    )


def test_waits_while_nodes_still_list_the_policy() -> None:
    verdict = restore_verdict(
        "row-a", view({"n1": {"row-a"}, "n2": {"hall"}}), waited_s=3, wait_s=120
    )
    assert verdict.outcome == "wait"
    assert verdict.holding == ("n1",)
    assert "n1" in verdict.message


def test_restored_when_no_node_lists_it() -> None:
    verdict = restore_verdict("row-a", view({"n1": {"hall"}, "n2": set()}), waited_s=0, wait_s=120)
    assert verdict.outcome == "restored"
    assert "every node has left it" in verdict.message


def test_gives_up_after_the_wait_naming_the_nodes() -> None:
    holding = {f"n{i:02d}": {"row-a"} for i in range(12)}
    verdict = restore_verdict("row-a", view(holding), waited_s=121, wait_s=120)
    assert verdict.outcome == "gave-up"
    assert "while 12 nodes still report it" in verdict.message
    assert verdict.message.count(", ") >= 9
    assert "and 2 more" in verdict.message


def test_an_infinite_wait_never_gives_up() -> None:
    verdict = restore_verdict("row-a", view({"n1": {"row-a"}}), waited_s=1e9, wait_s=float("inf"))
    assert verdict.outcome == "wait"
