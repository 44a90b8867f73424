"""The dashboard in a real headless browser (Debian's chromium driven by Playwright).

The page loads from a real :class:`StatusService` over real components, shows live data from
``/events``, and shows a component going unhealthy and recovering; it shows the node's resume
after an unclean shutdown and rejected configurations (from ``/status`` and from events); a node
with a trader child shows its panel (process, trading, risk, positions, restarts, last exit), each
kill-switch step by name, and a node without breakers says so. With
``STRATEGYLAB_DASHBOARD_SCREENSHOT`` set, a full-page screenshot goes to that path.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from browser_support import chromium
from service_support import LabSource, serving
from strategylab.fault_tolerance import (
    ChildSnapshot,
    ChildStatus,
    DataLayout,
    ErrorType,
    HealthCheckFailedError,
    KillStep,
    KillSwitch,
    RestartOutcome,
    RestartRecord,
    RestartStrategy,
    RestartType,
    StateSnapshot,
    SupervisorSnapshot,
    SupervisorState,
    TriggerSource,
)
from strategylab.service import StatusService
from strategylab.testing import FakeClock

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WAIT_MS = 10_000
SYMBOLS = {
    "BTC-USD": 64250.0,
    "ETH-USD": 3120.0,
    "SOL-USD": 148.2,
    "XRP-USD": 0.52,
    "ADA-USD": 0.38,
}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium(WAIT_MS) as launched:
        yield launched


def _prices(step: int) -> dict[str, float]:
    return {
        symbol: round(price * (1 + 0.002 * math.sin(step / 3 + i) + 0.0004 * step), 6)
        for i, (symbol, price) in enumerate(SYMBOLS.items())
    }


async def _until(condition: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - a socket-level condition, no event to await
            await asyncio.sleep(0.01)


async def _page_until(page: Page, expression: str, arg: object = None) -> None:
    """Poll ``expression`` (JavaScript, given ``arg`` when a function) in the page until it is
    truthy. Not ``page.wait_for_function``: its in-page polling evaluates the string, which the
    dashboard's Content-Security-Policy (``script-src 'self'``) refuses unless it holds at the
    first try; ``page.evaluate`` runs through the DevTools protocol, outside the page's CSP."""
    async with asyncio.timeout(WAIT_MS / 1000):
        while not await page.evaluate(expression, arg):  # noqa: ASYNC110 - a page condition
            await asyncio.sleep(0.02)


# What the node puts under /status's extra (see strategylab.node's NodeView): a resume after an
# unclean shutdown, and a configuration file whose last reload was rejected.
RESUMED: dict[str, Any] = {
    "reason": "emergency: store unreachable",
    "snapshot_time": "2023-11-14T22:13:20+00:00",
    "last_seq": {"BTC-USD": 1200},
    "store_last_seq": {"BTC-USD": 1200, "ETH-USD": 980},
    "resume_from": {"BTC-USD": 1201, "ETH-USD": 981},
    "behind": {},
    "marker": "/data/node-a/UNCLEAN",
    "marker_time": "2023-11-14T22:13:20+00:00",
    "snapshot_sha256": "ab" * 32,
    "warnings": ["the store's last sequence was read after a crash"],
    "cleared": True,
}
CONFIG_REJECTED: dict[str, Any] = {
    "path": "/etc/strategylab/node.toml",
    "version": 1,
    "last_error": "ingest.batch_size = 0: must be an integer >= 1",
    "last_reload": 1_700_000_000.0,
    "last_attempt": 1_700_000_000.0,
    "attempts": 2,
    "rejections": 1,
}


async def _lived_in(source: LabSource) -> None:
    """Some history: a recovery in the audit trail, a breaker forced open, a feature shed."""
    await source.manager.handle(ConnectionError("store connection reset"), component="store")
    await source.manager.handle(
        HealthCheckFailedError("feed", "feed", "no heartbeat for 3s", ErrorType.NETWORK_TIMEOUT),
        component="feed",
    )
    source.breakers.get("backup-exchange").force_open()
    await source.degradation.shed_feature("backtests")
    source.ticks_per_s = 4210.0
    source.queued = 37


async def test_dashboard_shows_live_data_and_a_component_failing_and_recovering(
    browser: Browser, tmp_path: Path
) -> None:
    """Load, live prices, store unhealthy then healthy again, as the operator sees them."""
    clock = FakeClock(start=1_700_000_000.0, autojump_threshold=None)
    source = LabSource(clock, tmp_path / "audit.log", node="node-a")
    await source.probe_all()
    await _lived_in(source)
    source.tick(_prices(0))
    source.extra = {"resumed": RESUMED, "config": CONFIG_REJECTED}
    token = "dashboard-test-admin-token"  # noqa: S105 - a test token
    async with serving(source, clock=clock, admin_token=token) as service:
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        try:
            await _drive(page, service, source, clock)
        finally:
            await page.close()
        assert errors == []


async def _drive(page: Page, service: StatusService, source: LabSource, clock: FakeClock) -> None:
    await page.goto(service.url + "/")
    await _page_until(page, "document.getElementById('node-name').textContent === 'node-a'")
    badge = page.get_by_test_id("health-badge-store")
    assert await badge.get_attribute("data-state") == "healthy"
    await _until(lambda: service.event_clients == 1)

    # The resume after an unclean shutdown and the rejected configuration, from /status's extra.
    resumed = page.get_by_test_id("resumed")
    assert await resumed.is_visible()
    assert await page.get_by_test_id("resumed-reason").text_content() == RESUMED["reason"]
    assert "ETH-USD 981" in (await page.get_by_test_id("resumed-from").text_content() or "")
    assert await page.get_by_test_id("resumed-cleared").text_content() == "marker cleared"
    rejected = page.get_by_test_id("config-rejected-entry")
    assert await rejected.count() == 1
    assert CONFIG_REJECTED["last_error"] in (await rejected.first.text_content() or "")
    assert await page.get_by_test_id("config-badge").get_attribute("data-state") == "unhealthy"

    # A "config" event that was not accepted adds an entry at once, newest first.
    service.publish("config", {"accepted": False, "error": "node_name = '': must not be empty"})
    await _page_until(
        page, "document.querySelectorAll('[data-testid=config-rejected-entry]').length === 2"
    )
    assert "node_name" in (await rejected.first.text_content() or "")

    # An audited admin action (the node's "admin" event) lands in the recovery timeline.
    service.publish("admin", {"action": "shed", "target": "live_chart", "outcome": "accepted"})
    entry = page.get_by_test_id("timeline-entry").filter(has_text="admin shed")
    await entry.first.wait_for(timeout=10_000)
    assert "live_chart" in (await entry.first.text_content() or "")

    # Live data: prices arrive as events on the service clock and land in the chart.
    chart = page.get_by_test_id("price-chart")
    assert await chart.get_attribute("data-points") == "0"
    for step in range(1, 31):
        source.tick(_prices(step))
        clock.advance(0.5)
        await _page_until(
            page,
            "n => Number(document.getElementById('price-chart').dataset.points) >= n",
            arg=step * len(SYMBOLS),
        )
    assert await page.get_by_test_id("legend-BTC-USD").is_visible()

    # The periodic status event updates the figures without a reload.
    clock.advance(0.5)
    await _page_until(page, "document.getElementById('queue-depth').textContent === '37'")
    assert (
        await page.get_by_test_id("breaker-badge-backup-exchange").get_attribute("data-state")
        == "forced_open"
    )
    assert await page.get_by_test_id("stat-errors").text_content() == "2"
    assert await page.get_by_test_id("timeline-entry").count() >= 2

    # A component goes unhealthy, then recovers: the badge follows the health events.
    source.store_ok = False
    await source.monitor.probe("store")
    await page.wait_for_selector('[data-testid="health-badge-store"][data-state="unhealthy"]')
    source.store_ok = True
    await source.monitor.probe("store")
    await page.wait_for_selector('[data-testid="health-badge-store"][data-state="healthy"]')
    # The periodic status events since repeated /status's last_error: still the same 2 entries.
    assert await page.get_by_test_id("config-rejected-entry").count() == 2

    shot = os.environ.get("STRATEGYLAB_DASHBOARD_SCREENSHOT")
    if shot:
        # A last status event so that every table shows the same moment, then the picture.
        source.tick(_prices(31))
        clock.advance(0.5)
        await _page_until(
            page, "document.querySelectorAll('[data-testid=timeline-entry]').length >= 4"
        )
        await page.screenshot(path=shot, full_page=True)


# ---------------------------------------------------------------------- a node with a trader

TRADER_PID = 4242
# What the node puts under extra["trader"] (TraderChild.summary): the engine's last status line.
TRADER: dict[str, Any] = {
    "pid": TRADER_PID,
    "book": "/data/node-a/book.db",
    "trading": True,
    "risk_state": "active",
    "positions": {"momentum": {"BTC-USD": 0.5, "ETH-USD": 0.0}, "mean_rev": {"SOL-USD": -12.0}},
    "open_orders": 3,
    "resumed": False,
    "started_with": ["reconciled", "trading"],
}


def _supervisor(
    clock: FakeClock, *, status: ChildStatus, pid: int | None, restarts: int
) -> SupervisorSnapshot:
    """The node supervisor's snapshot with its trader child, after ``restarts`` SIGKILLs."""
    history = tuple(
        RestartRecord(
            child_id="trader",
            reason="exit status -9 (SIGKILL)",
            exit_status=-9,
            time=clock.time(),
            outcome=RestartOutcome.RESTARTED,
            restarted=("trader",),
        )
        for _ in range(restarts)
    )
    child = ChildSnapshot(
        id="trader",
        kind="process",
        restart=RestartType.PERMANENT,
        status=status,
        restarts=restarts,
        pid=pid,
        last_reason="exit status -9 (SIGKILL)" if restarts else None,
        last_exit_status=-9 if restarts else None,
    )
    return SupervisorSnapshot(
        name="node",
        state=SupervisorState.RUNNING,
        strategy=RestartStrategy.ONE_FOR_ONE,
        intensity=3,
        period=10.0,
        children=(child,),
        restarts_total=restarts,
        restarts_in_window=restarts,
        history=history,
        escalations=0,
        stragglers=(),
    )


def _cancel_orders() -> None:
    raise RuntimeError("trader 4242: not confirmed cancelled at the exchange: c-17")


async def test_dashboard_shows_the_trader_and_each_kill_step_by_name(
    browser: Browser, tmp_path: Path
) -> None:
    """The trader panel from /status (supervisor child and extra.trader), following a restart;
    a real kill switch's steps in the timeline by name, outcome and duration; no breakers."""
    clock = FakeClock(start=1_700_000_000.0, autojump_threshold=None)
    source = LabSource(clock, tmp_path / "audit.log", node="node-t", breakers=())
    await source.probe_all()
    source.supervisor = _supervisor(clock, status=ChildStatus.RUNNING, pid=TRADER_PID, restarts=2)
    source.extra = {"trader": dict(TRADER)}
    async with serving(source, clock=clock) as service:
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        try:
            await _drive_trader(page, service, source, clock, tmp_path)
        finally:
            await page.close()
        assert errors == []


async def _drive_trader(
    page: Page, service: StatusService, source: LabSource, clock: FakeClock, tmp_path: Path
) -> None:
    await page.goto(service.url + "/")
    await _page_until(page, "document.getElementById('node-name').textContent === 'node-t'")
    await _until(lambda: service.event_clients == 1)

    # No breakers: said so, and no empty table.
    assert await page.get_by_test_id("breakers-empty").is_visible()
    empty = await page.get_by_test_id("breakers-empty").text_content()
    assert empty == "this node has no circuit breakers"
    assert not await page.get_by_test_id("breakers-table").is_visible()

    # The trader as /status shows it.
    assert await page.get_by_test_id("trader").is_visible()
    assert await page.get_by_test_id("trader-pid").text_content() == str(TRADER_PID)
    assert await page.get_by_test_id("trader-status").get_attribute("data-state") == "running"
    assert await page.get_by_test_id("trader-trading").get_attribute("data-state") == "trading"
    assert await page.get_by_test_id("trader-risk").text_content() == "ACTIVE"
    assert await page.get_by_test_id("trader-open-orders").text_content() == "3"
    assert await page.get_by_test_id("trader-restarts").text_content() == "2"
    last_exit = await page.get_by_test_id("trader-last-exit").text_content() or ""
    assert "exit status -9 (SIGKILL)" in last_exit
    assert "restarted" in last_exit
    rows = page.get_by_test_id("trader-position")
    assert await rows.count() == 2  # ETH-USD at 0 units is no position
    texts = [await rows.nth(i).text_content() or "" for i in range(2)]
    assert any("mean_rev" in t and "SOL-USD" in t and "-12" in t for t in texts), texts
    assert any("momentum" in t and "BTC-USD" in t and "0.5" in t for t in texts), texts
    assert "/data/node-a/book.db" in (await page.get_by_test_id("trader-book").text_content() or "")

    # A third SIGKILL: the supervisor restarts it, the engine does not trade yet.
    source.supervisor = _supervisor(clock, status=ChildStatus.RESTARTING, pid=None, restarts=3)
    source.extra = {"trader": {**TRADER, "pid": None, "trading": False, "risk_state": "halted"}}
    clock.advance(1.0)  # the periodic status event (status_interval 1 s)
    await page.wait_for_selector('[data-testid="trader-status"][data-state="restarting"]')
    assert await page.get_by_test_id("trader-pid").text_content() == "none"
    assert await page.get_by_test_id("trader-trading").get_attribute("data-state") == "not_trading"
    assert await page.get_by_test_id("trader-risk").text_content() == "HALTED"
    assert await page.get_by_test_id("trader-restarts").text_content() == "3"

    await _kill_steps(page, service, source, clock, tmp_path)


async def _kill_steps(
    page: Page, service: StatusService, source: LabSource, clock: FakeClock, tmp_path: Path
) -> None:
    # A real kill switch, auditing into the node's audit log: halt ok, cancel_orders failed.
    switch = KillSwitch(
        [KillStep("halt", lambda: None, 1.0), KillStep("cancel_orders", _cancel_orders, 1.0)],
        layout=DataLayout(tmp_path / "data"),
        snapshot_source=lambda: StateSnapshot.create(
            reason="test", positions={}, open_orders=[], last_sequence={}, clock=clock
        ),
        clock=clock,
        audit=source.audit,
    )
    report = await switch.trigger("operator: stop trading", TriggerSource.HTTP)
    source.kill_report = report.to_dict()
    clock.advance(1.0)  # the next status event carries the audit records
    steps = page.get_by_test_id("timeline-entry").filter(has_text="kill step")
    await _page_until(page, "document.querySelectorAll('[data-testid=timeline-entry]').length >= 5")
    halt = steps.filter(has_text="kill step halt")
    await halt.first.wait_for()
    assert await halt.count() == 1
    assert "halt · ok · 0 ms" in (await halt.first.text_content() or "")
    cancel = steps.filter(has_text="kill step cancel_orders")
    assert await cancel.count() == 1
    cancelled = await cancel.first.text_content() or ""
    assert "cancel_orders · failed" in cancelled
    assert "not confirmed cancelled" in cancelled
    for name in ("snapshot", "marker"):
        assert await steps.filter(has_text=f"kill step {name}").count() == 1
    assert await page.get_by_test_id("kill-switch").get_attribute("data-state") == "pulled"

    # The node's "finished" event repeats the steps: each is still listed once.
    service.publish("kill_switch", {"event": "finished", **report.to_dict()})
    finished = page.get_by_test_id("timeline-entry").filter(has_text="kill switch finished")
    await finished.first.wait_for()
    assert "failed: cancel_orders" in (await finished.first.text_content() or "")
    assert await steps.filter(has_text="kill step halt").count() == 1
