"""A strategy's decision and the orders it led to are saved together, or not at all."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from strategylab.market import Exchange, ExchangeConfig, Tick
from strategylab.strategy._examples import RestingBids
from strategylab.strategy._strategy import (
    JSONValue,
    OrderRequest,
    OrderType,
    Side,
    Strategy,
    StrategyContext,
)
from strategylab.trading._engine import EngineConfig, StrategyEngine
from strategylab.trading._orders import OrderClient
from strategylab.trading._positions import PositionStore


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        # The observed state belongs to another component that offers no event to wait on.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = Exchange(ExchangeConfig(symbols=("A",), tick_rate=200, data_dir=tmp_path / "ex"))
    await ex.start()
    await wait_until(lambda: ex.book.quote("A") is not None)
    yield ex
    await ex.stop()


def ticks(start: int, n: int) -> list[Tick]:
    return [Tick("A", s, s, 99.0, 101.0, 1.0, 1.0) for s in range(start, start + n)]


class SubmitThenRaise(Strategy):
    """Decides one resting bid per tick, counting them; raises after deciding on tick 2."""

    def __init__(self, name: str) -> None:
        super().__init__(name, ("A",))
        self.decided = 0
        self.restored: int | None = None

    def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
        ctx.submit(OrderRequest(symbol="A", side=Side.BUY, qty=1, type=OrderType.LIMIT, price=1.0))
        self.decided += 1
        if tick.seq == 2:
            raise RuntimeError("bug after deciding")

    def state(self) -> dict[str, JSONValue]:
        return {"decided": self.decided}

    def restore(self, state: Mapping[str, JSONValue]) -> None:
        decided = state.get("decided", 0)
        self.decided = self.restored = decided if isinstance(decided, int) else 0


@pytest.mark.integration
@pytest.mark.timeout(15)
async def test_state_is_recorded_with_the_order_it_led_to(
    exchange: Exchange, tmp_path: Path
) -> None:
    """The book holds the state after the decision as soon as it holds the order, with no
    periodic save in between."""
    engine = StrategyEngine(
        [lambda: RestingBids("bids", ("A",), every=2, count=1)],
        client=OrderClient(exchange.url),
        db=tmp_path / "book.db",
        config=EngineConfig(state_interval=3600.0),
    )
    await engine.start()
    try:
        await engine.put(ticks(1, 2))
        orders = engine.store.orders()
        state = engine.store.load_state("bids")
        await wait_until(lambda: engine.status().open_orders == 1)
    finally:
        await engine.aclose()
    assert [o.strategy for o in orders] == ["bids"]
    assert state == {"ticks": 2, "placed": 1}


@pytest.mark.integration
@pytest.mark.timeout(15)
async def test_callback_that_raises_sends_none_of_its_orders(
    exchange: Exchange, tmp_path: Path
) -> None:
    """Orders decided in a callback that then raised are neither recorded nor sent; the
    restarted strategy continues from the state recorded with its last orders."""
    made: list[SubmitThenRaise] = []

    def factory() -> Strategy:
        made.append(SubmitThenRaise("s"))
        return made[-1]

    engine = StrategyEngine([factory], client=OrderClient(exchange.url), db=tmp_path / "book.db")
    await engine.start()
    try:
        await engine.put(ticks(1, 1))  # decides and keeps order 1
        await engine.put(ticks(2, 1))  # decides order 2, then raises: order 2 is dropped
        await wait_until(lambda: engine.runners["s"].restarts == 1)
        await engine.put(ticks(3, 1))  # the restarted instance decides order 3
        await wait_until(lambda: engine.status().open_orders == 2)
        recorded = [o.cid for o in engine.store.orders()]
    finally:
        await engine.aclose()
    assert len(made) == 2
    assert made[1].restored == 1
    assert made[1].decided == 2
    at_exchange = sorted(o.client_order_id for o in exchange.book.orders())
    assert at_exchange == sorted(recorded)
    assert len(at_exchange) == 2
    assert engine.status().orders_sent == 2


async def spawn(port: int, db: Path, state_interval: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "trade", "--exchange-url", f"http://127.0.0.1:{port}"),
        *("--book", str(db), "--strategy", "bids=strategylab.strategy._examples:RestingBids"),
        *("--symbols", "A", "--param", "every=3", "--param", "count=3"),
        *("--status-interval", "0.05", "--state-interval", str(state_interval)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def next_event(proc: asyncio.subprocess.Process, event: str, limit: float = 10.0) -> Any:
    assert proc.stdout is not None
    async with asyncio.timeout(limit):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"engine exited ({await proc.wait()}) before {event!r}")
            data = json.loads(line)
            if data.get("event") == event:
                return data


def saved(db: Path) -> dict[str, JSONValue]:
    store = PositionStore(db)
    try:
        return store.load_state("bids")
    finally:
        store.close()


def ticks_seen(db: Path) -> int:
    seen = saved(db).get("ticks", 0)
    assert isinstance(seen, int)
    return seen


@pytest.mark.integration
@pytest.mark.timeout(40)
async def test_sigkill_before_the_periodic_save_does_not_repeat_decisions(
    exchange: Exchange, tmp_path: Path
) -> None:
    """A trader SIGKILLed after deciding its 3 bids, long before any periodic save, restarts
    from the state recorded with them and places no 4th."""
    db = tmp_path / "book.db"
    first = await spawn(exchange.port, db, state_interval=3600.0)
    try:
        await next_event(first, "trading")
        async with asyncio.timeout(10):
            while (await next_event(first, "status"))["open_orders"] < 3:
                pass
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert saved(db)["placed"] == 3

    second = await spawn(exchange.port, db, state_interval=0.05)
    try:
        await next_event(second, "trading")
        # Let the restarted strategy see ticks (its saved tick count proves it did).
        before = ticks_seen(db)
        await wait_until(lambda: ticks_seen(db) >= before + 30, 10.0)
    finally:
        second.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            code = await second.wait()
    assert code == 0
    ours = [o for o in exchange.book.orders() if o.client_order_id.split("-")[1] == "bids"]
    assert len(ours) == 3
    assert saved(db)["placed"] == 3
