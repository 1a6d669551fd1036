"""The chaos suite's watch can fail: a cap lifted for real on a running node (the node leaves
its policy, so its daemon restores the defaults) is found, with the sample and the logs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from polca_testbed.limits_watch import LimitsWatch
from polca_testbed.nodes import SimNodes
from polca_testbed.polling import eventually
from polca_testbed.scenarios import DOMAIN_LABEL, CappedNode

pytestmark = pytest.mark.timeout(60)


def test_the_watch_finds_a_lifted_cap(
    sim: SimNodes, capped_node: Callable[..., CappedNode]
) -> None:
    capped = capped_node()
    node = capped.node
    with LimitsWatch([node]) as watch:
        watch.demand(node, capped.decision.demand, why="a demand the test breaks on purpose")
        sim.label_node(node.name, {DOMAIN_LABEL: None})
        eventually("the defaults restored", lambda: node.clock_ceilings_mhz() == [None] * 4, 30)
    with pytest.raises(AssertionError, match="was lifted") as failure:
        watch.assert_held()
    message = str(failure.value)
    demanded = capped.decision.demand[0].clock_ceiling_mhz
    assert f"{node.name} GPU 0: clock ceiling MHz unlocked above the demanded {demanded}" in message
    assert str(node.directory) in message  # where its daemon's log is
