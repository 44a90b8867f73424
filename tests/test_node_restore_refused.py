"""A manual restore while a degradation trigger reads over its mark is refused (409).

The node's :class:`NodeView` over a real :class:`DegradationController` whose ``memory`` trigger
(the node's marks: shed above 90 %, restore below 75 % of the budget) reads what the test sets.
Restoring a feature then would be answered ``changed: true`` and undone by the next evaluation;
the view refuses it with 409 naming the trigger and its reading instead. Also through a real
status service: ``POST /admin/features/live_chart/restore``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest

from service_support import LabSource, serving
from strategylab.fault_tolerance import DegradationController, Feature, rss_trigger
from strategylab.node import Node
from strategylab.node._shedding import MEMORY_RESTORE_AT, MEMORY_SHED_AT
from strategylab.node._view import NodeView
from strategylab.service import AdminActionError
from strategylab.testing import FakeClock

pytestmark = pytest.mark.timeout(30)

BUDGET = 50 * 1024 * 1024
TOKEN = "node-restore-refused-token-0123456789"  # noqa: S105 - a test token
REFUSAL = "trigger memory over its mark (92 % of the budget): the controller would shed it again"


class _Memory:
    """The memory trigger's reading: a fraction of the budget that the test sets."""

    def __init__(self) -> None:
        self.fraction = 0.5

    def read(self) -> float:
        return self.fraction * BUDGET


class _NodeSeam(SimpleNamespace):
    """What NodeView.restore uses of a node: its degradation controller, and record_admin (the
    audit of admin actions), recorded here."""

    def __init__(self, degradation: DegradationController) -> None:
        super().__init__(degradation=degradation)
        self.admin: list[tuple[str, str | None, str, dict[str, Any]]] = []

    async def record_admin(
        self, action: str, target: str | None, outcome: str, data: dict[str, Any]
    ) -> None:
        self.admin.append((action, target, outcome, data))


class _Node:
    """A controller with the node's features and memory marks, a view over it, the reading."""

    def __init__(self) -> None:
        self.chart: list[bool] = []
        self.memory = _Memory()
        self.controller = DegradationController(
            [
                Feature("live_chart", 10, lambda: self.chart.append(False), self._chart_on),
                Feature("events", 30, _noop, _noop),
            ],
            [
                rss_trigger(
                    BUDGET,
                    shed_at=MEMORY_SHED_AT,
                    restore_at=MEMORY_RESTORE_AT,
                    read=self.memory.read,
                )
            ],
            clock=FakeClock(autojump_threshold=None),
            hold=0.0,
        )
        self.seam = _NodeSeam(self.controller)
        self.view = NodeView(cast("Node", self.seam))

    def _chart_on(self) -> None:
        self.chart.append(True)

    async def shed_under_pressure(self) -> None:
        """Memory at 92 % of the budget: one evaluation sheds the chart."""
        self.memory.fraction = 0.92
        event = await self.controller.evaluate()
        assert event is not None
        assert (event.action, event.feature) == ("shed", "live_chart")

    def shed(self) -> tuple[str, ...]:
        return self.controller.snapshot().shed


def _noop() -> None:
    return None


@pytest.fixture
def node() -> _Node:
    return _Node()


async def test_restore_while_memory_is_over_its_mark_is_409_naming_the_trigger(
    node: _Node,
) -> None:
    """Memory at 92 % of the budget: 409 with the trigger and reading; the chart stays shed."""
    await node.shed_under_pressure()
    with pytest.raises(AdminActionError) as info:
        await node.view.restore("live_chart")
    assert info.value.status == 409
    assert info.value.message == REFUSAL
    assert node.shed() == ("live_chart",)
    assert node.chart == [False]  # its restore action never ran
    action, target, outcome, data = node.seam.admin[-1]
    assert (action, target, outcome) == ("restore", "live_chart", "rejected")
    assert data["status"] == 409
    assert data["error"] == REFUSAL


async def test_restore_once_the_reading_is_below_the_mark_works_and_stays(node: _Node) -> None:
    """Memory back inside the dead band (80 %): restored, changed true, and not shed again."""
    await node.shed_under_pressure()
    node.memory.fraction = 0.80
    assert await node.controller.evaluate() is None  # the dead band: no automatic change
    result = await node.view.restore("live_chart")
    assert result == {"feature": "live_chart", "shed": False, "changed": True}
    assert node.chart == [False, True]
    assert await node.controller.evaluate() is None
    assert node.shed() == ()
    assert node.seam.admin[-1][:3] == ("restore", "live_chart", "accepted")


async def test_restore_without_triggers_over_works_as_before(node: _Node) -> None:
    """A feature an operator shed, memory calm: the restore is accepted as before."""
    assert await node.view.shed("events") == {"feature": "events", "shed": True, "changed": True}
    result = await node.view.restore("events")
    assert result == {"feature": "events", "shed": False, "changed": True}
    assert node.shed() == ()


async def test_restore_of_a_feature_that_is_on_is_not_refused(node: _Node) -> None:
    """Over the mark, but the feature is on already: nothing to undo, changed false."""
    await node.shed_under_pressure()
    result = await node.view.restore("events")
    assert result == {"feature": "events", "shed": False, "changed": False}


async def test_restore_of_an_unknown_feature_is_still_404_under_pressure(node: _Node) -> None:
    """An unknown name is 404 whatever the triggers read."""
    await node.shed_under_pressure()
    with pytest.raises(AdminActionError) as info:
        await node.view.restore("no_such_feature")
    assert info.value.status == 404


# ---------------------------------------------------------------------- over HTTP


class _RestoringSource(LabSource):
    """The lab's status source whose restore is the node's: a NodeView over a controller."""

    view: NodeView

    async def restore(self, feature: str) -> Any:
        return await self.view.restore(feature)


@pytest.fixture
async def http_node(
    node: _Node, tmp_path: Path
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """A real status service whose restore route reaches ``node``'s view."""
    source = _RestoringSource(FakeClock(autojump_threshold=None), tmp_path / "audit.log")
    source.view = node.view
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        serving(source, clock=source.clock, admin_token=TOKEN) as service,
        aiohttp.ClientSession(timeout=timeout) as http,
    ):
        yield service.url, http


async def test_admin_restore_route_answers_409_with_the_reason(
    node: _Node, http_node: tuple[str, aiohttp.ClientSession]
) -> None:
    """POST /admin/features/live_chart/restore under pressure: 409 and the refusal; once the
    reading falls below the mark: 200 and changed true."""
    url, http = http_node
    auth = {"Authorization": f"Bearer {TOKEN}"}
    await node.shed_under_pressure()
    async with http.post(f"{url}/admin/features/live_chart/restore", headers=auth) as response:
        body = await response.json()
        assert response.status == 409, body
    assert REFUSAL in body["error"]
    assert node.shed() == ("live_chart",)
    node.memory.fraction = 0.70
    await node.controller.evaluate()  # calm, hold 0: the controller restores it by itself
    assert node.shed() == ()
    await node.shed_under_pressure()
    node.memory.fraction = 0.85
    await node.controller.evaluate()
    async with http.post(f"{url}/admin/features/live_chart/restore", headers=auth) as response:
        body = await response.json()
        assert response.status == 200, body
    assert body["result"]["changed"] is True
