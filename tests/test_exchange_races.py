"""Order-lifecycle races in a real exchange process: partial fills, resting orders that fill
later, and a fill that races a cancel, each seen at the order API and gone after the heal; and a
real trader against the racing exchange whose book ends equal to the exchange's."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from strategylab.chaos import FillCancelRace, PartialFills, RestingFills
from strategylab.chaos._injector import InjectorError, injected
from strategylab.chaos._severity import Severity
from strategylab.market import Tick
from strategylab.strategy import (
    JSONValue,
    OrderRequest,
    OrderType,
    Side,
    Strategy,
    StrategyContext,
)
from strategylab.trading._positions import PositionStore

TOKEN = "race-token"  # noqa: S105 - a test token
pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


class RaceTrader(Strategy):
    """Test strategy (run by the trader process): every ``every`` ticks one step of a cycle of
    four, ``steps`` steps in all: a market order (alternating buy and sell of 3), a marketable
    limit buy of 2, a limit buy of 1 far below the market (it rests whatever the races do, so
    the cancel that follows always meets a working order, however slow the machine), a cancel
    of everything open."""

    def __init__(self, name: str, symbols: tuple[str, ...], *, every: int = 4, steps: int = 40):
        super().__init__(name, symbols)
        self.every, self.steps = every, steps
        self.ticks = 0
        self.done = 0

    def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
        self.ticks += 1
        if self.done >= self.steps or self.ticks % self.every:
            return
        step = self.done % 4
        if step == 0:
            side = Side.BUY if (self.done // 4) % 2 == 0 else Side.SELL
            ctx.submit(OrderRequest(symbol=tick.symbol, side=side, qty=3.0))
        elif step == 1:
            price = round(tick.ask * 1.02, 2)
            ctx.submit(
                OrderRequest(
                    symbol=tick.symbol, side=Side.BUY, qty=2.0, type=OrderType.LIMIT, price=price
                )
            )
        elif step == 2:
            price = round(tick.bid * 0.5, 2)
            ctx.submit(
                OrderRequest(
                    symbol=tick.symbol, side=Side.BUY, qty=1.0, type=OrderType.LIMIT, price=price
                )
            )
        else:
            ctx.cancel_all(tick.symbol)
        self.done += 1

    def state(self) -> dict[str, JSONValue]:
        return {"ticks": self.ticks, "done": self.done}

    def restore(self, state: Mapping[str, JSONValue]) -> None:
        ticks, done = state.get("ticks", 0), state.get("done", 0)
        self.ticks = ticks if isinstance(ticks, int) else 0
        self.done = done if isinstance(done, int) else 0


class Api:
    """A small client of the exchange's order and admin API."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url, self.session = url, session

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"} if path.startswith("/admin") else {}
        async with self.session.request(
            method, self.url + path, json=body, headers=headers
        ) as response:
            return response.status, await response.json()

    async def get(self, path: str) -> Any:
        status, body = await self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    async def submit(self, cid: str, **fields: Any) -> tuple[int, dict[str, Any]]:
        body = {"client_order_id": cid, "symbol": "A", "side": "buy", "qty": 4.0, **fields}
        return await self.call("POST", "/api/orders", body)

    async def order(self, order_id: str) -> dict[str, Any]:
        return dict(await self.get(f"/api/orders/{order_id}"))

    async def fills_of(self, order_id: str) -> list[dict[str, Any]]:
        return [f for f in await self.get("/api/fills") if f["order_id"] == order_id]

    async def until_filled(self, order_id: str, limit: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(limit):
            # An exchange in another process: its order API is all there is to watch.
            while (order := await self.order(order_id))["status"] != "filled":  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        return order

    async def quoted(self) -> None:
        """Wait until the book has a quote (a market order is rejected before the first)."""
        async with asyncio.timeout(10):
            while (await self.get("/api/status"))["ticks_emitted"] == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)  # the first batch reaches the book after it is counted


async def _exchange(tmp_path: Path, seed: int = 3) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "exchange", "--port", "0", "--symbols", "A"),
        *("--tick-rate", "400", "--ticks-per-frame", "20", "--seed", str(seed)),
        *("--data-dir", str(tmp_path / "exchange"), "--admin-token", TOKEN),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(15):
        announce = json.loads(await proc.stdout.readline())
    return proc, f"http://127.0.0.1:{announce['port']}"


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[tuple[str, Api]]:
    proc, url = await _exchange(tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(url, session)
            await api.quoted()
            yield url, api
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await proc.wait() == 0


async def test_partial_fills_give_several_executions_then_stop_after_heal(
    exchange: tuple[str, Api],
) -> None:
    url, api = exchange
    race = PartialFills(url, TOKEN, Severity.CRITICAL)
    async with injected(race):
        assert await race.in_force()
        status, order = await api.submit("p-1")
        assert status == 201
        # The first part executed at once; the rest is working.
        assert order["status"] == "open"
        assert 0.0 < order["filled_qty"] < 4.0
        done = await api.until_filled(order["id"])
        fills = await api.fills_of(order["id"])
        assert 2 <= len(fills) <= 4
        assert sum(f["qty"] for f in fills) == pytest.approx(4.0)
        assert done["filled_qty"] == 4.0
        avg = sum(f["qty"] * f["price"] for f in fills) / 4.0
        assert done["avg_fill_price"] == pytest.approx(avg)
        assert (await race.races())["partial_fills"] >= 1
    assert not await race.in_force()
    status, order = await api.submit("p-2")
    assert (status, order["status"]) == (201, "filled")
    assert len(await api.fills_of(order["id"])) == 1
    (position,) = await api.get("/api/positions")
    assert position["qty"] == pytest.approx(8.0)


async def test_resting_limit_order_fills_later_in_parts_then_at_once_after_heal(
    exchange: tuple[str, Api],
) -> None:
    url, api = exchange
    race = RestingFills(url, TOKEN, Severity.CRITICAL)
    async with injected(race):
        status, order = await api.submit("r-1", type="limit", price=1e6)  # marketable
        assert (status, order["status"], order["filled_qty"]) == (201, "open", 0.0)
        done = await api.until_filled(order["id"])
        fills = await api.fills_of(order["id"])
        assert len(fills) >= 2
        assert all(f["ts"] > order["created_ns"] for f in fills)  # later, on later quotes
        assert done["filled_qty"] == 4.0
    assert not await race.in_force()
    status, order = await api.submit("r-2", type="limit", price=1e6)
    assert (status, order["status"]) == (201, "filled")


async def test_cancel_racing_a_fill_is_too_late_or_cancels_the_remainder(
    exchange: tuple[str, Api],
) -> None:
    url, api = exchange
    race = FillCancelRace(url, TOKEN, Severity.CRITICAL)
    async with injected(race):
        # A resting order far below the market: the execution in flight fills it at its price.
        _, order = await api.submit("c-1", type="limit", price=0.5)
        assert order["status"] == "open"
        status, answer = await api.call("DELETE", f"/api/orders/{order['id']}")
        assert status == 409
        assert "too late" in answer["error"]
        assert answer["order"]["status"] == "filled"
        (fill,) = await api.fills_of(order["id"])
        assert (fill["qty"], fill["price"]) == (4.0, 0.5)
        assert (await api.order(order["id"]))["status"] == "filled"
        # Split by resting fills: the racing execution is one part, the remainder is cancelled.
        async with injected(RestingFills(url, TOKEN, Severity.CRITICAL)):
            _, split = await api.submit("c-2", type="limit", price=0.5)
            status, cancelled = await api.call("DELETE", f"/api/orders/{split['id']}")
        assert status == 200
        assert cancelled["status"] == "cancelled"
        assert 0.0 < cancelled["filled_qty"] < 4.0
        (part,) = await api.fills_of(split["id"])
        assert part["qty"] == cancelled["filled_qty"]
        assert split["id"] not in {o["id"] for o in await api.get("/api/orders?status=open")}
        assert (await race.races())["cancel_too_late"] == 1
    assert not await race.in_force()
    _, order = await api.submit("c-3", type="limit", price=0.5)
    status, cancelled = await api.call("DELETE", f"/api/orders/{order['id']}")
    assert (status, cancelled["status"], cancelled["filled_qty"]) == (200, "cancelled", 0.0)
    (position,) = await api.get("/api/positions")
    assert position["qty"] == pytest.approx(4.0 + part["qty"])


async def test_injector_refused_without_the_token(exchange: tuple[str, Api]) -> None:
    url, _api = exchange
    race = PartialFills(url, "wrong-token")
    with pytest.raises(InjectorError, match="401"):
        await race.inject()
    assert not race.active
    with pytest.raises(ValueError, match="rate"):
        PartialFills(url, TOKEN, rate=1.5)
    with pytest.raises(ValueError, match="exchange_url"):
        PartialFills("localhost:1", TOKEN)


async def _events(proc: asyncio.subprocess.Process, event: str, limit: float) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(limit):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"trader exited ({await proc.wait()}) before {event!r}")
            data = json.loads(line)
            if data.get("event") == event:
                return dict(data)


async def _trader(url: str, book: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "trade", "--exchange-url", url, "--book", str(book)),
        *("--strategy", "races=test_exchange_races:RaceTrader", "--symbols", "A"),
        *("--status-interval", "0.2"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )


async def _settled(api: Api) -> bool:
    """Every order the test strategy places is at the exchange and none is working."""
    placed = len(await api.get("/api/orders"))
    return placed >= 30 and not await api.get("/api/orders?status=open")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(15):
        assert await proc.wait() == 0


async def test_trader_against_racing_exchange_books_the_exchanges_positions(
    exchange: tuple[str, Api], tmp_path: Path
) -> None:
    url, api = exchange
    book = tmp_path / "trader" / "book.sqlite"
    races = [
        PartialFills(url, TOKEN, Severity.MEDIUM),
        RestingFills(url, TOKEN, Severity.HIGH),
        FillCancelRace(url, TOKEN, Severity.CRITICAL),
    ]
    async with injected(races[0]), injected(races[1]), injected(races[2]):
        trader = await _trader(url, book)
        try:
            await _events(trader, "trading", 20)
            # Every step taken (40 steps: 10 market orders, 20 limit buys, 10 cancel rounds)
            # and nothing left working at the exchange.
            async with asyncio.timeout(40):
                while not await _settled(api):  # noqa: ASYNC110 - another process's API
                    await asyncio.sleep(0.1)
            counts = await races[0].races()
            await asyncio.sleep(1.0)  # ten fill polls of the trader
        finally:
            await _stop(trader)
    assert counts["partial_fills"] >= 1
    assert counts["resting_fills"] >= 1
    assert counts["cancel_too_late"] + counts["remainder_cancelled"] >= 1
    fills = await api.get("/api/fills")
    orders = {o["client_order_id"]: o for o in await api.get("/api/orders")}
    (position,) = await api.get("/api/positions")
    store = PositionStore(book)
    try:
        # Every execution booked once, every order's filled quantity as the exchange's.
        assert store.fill_count() == len(fills)
        for order in store.orders():
            if order.cid in orders:
                assert order.filled_qty == pytest.approx(orders[order.cid]["filled_qty"])
                assert order.status == orders[order.cid]["status"], order
        (mine,) = store.positions()
        assert mine.qty == pytest.approx(position["qty"])
        assert store.positions_from_fills()[("races", "A")] == pytest.approx(position["qty"])
    finally:
        store.close()
    # A restart reconciles and finds nothing to fix.
    again = await _trader(url, book)
    try:
        reconciled = await _events(again, "reconciled", 20)
        await _events(again, "trading", 20)
    finally:
        await _stop(again)
    assert reconciled["items"] == []
