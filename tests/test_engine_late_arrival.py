"""An in-flight order still on its way when a restarted engine reconciles is not left resting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from strategylab.chaos import Proxy
from strategylab.market import Exchange, ExchangeConfig
from strategylab.strategy._examples import RestingBids
from strategylab.strategy._strategy import OrderRequest, OrderType, Side
from strategylab.trading._engine import StrategyEngine
from strategylab.trading._orders import OrderClient
from strategylab.trading._positions import PositionStore

BID = OrderRequest(symbol="A", side=Side.BUY, qty=1.0, type=OrderType.LIMIT, price=1.0)


async def wait_until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110 - state of another component, no event to wait on
            await asyncio.sleep(0.02)


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = Exchange(ExchangeConfig(symbols=("A",), tick_rate=200, data_dir=tmp_path / "ex"))
    await ex.start()
    yield ex
    await ex.stop()


def _book_with_inflight(db: Path, n: int = 1) -> list[str]:
    store = PositionStore(db)
    store.ensure_strategy("bids")
    cids = [f"{store.engine_id}-bids-{i}" for i in range(1, n + 1)]
    store.record_intents("bids", [(cid, BID) for cid in cids], {"placed": n}, next_order=n + 1)
    store.close()
    return cids


def _engine(ex: Exchange, db: Path) -> StrategyEngine:
    return StrategyEngine(
        [lambda: RestingBids("bids", ("A",), count=0)], client=OrderClient(ex.url), db=db
    )


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("latency_ms", "orders"), [(1500, 1), (2500, 3)])
async def test_order_arriving_after_reconciliation_is_cancelled(
    exchange: Exchange, tmp_path: Path, latency_ms: int, orders: int
) -> None:
    """The crashed run's submits reach the exchange after the restart voided them: cancelled."""
    db = tmp_path / "book.db"
    cids = _book_with_inflight(db, orders)
    async with Proxy("slow", upstream=f"127.0.0.1:{exchange.port}") as proxy:
        proxy.add_toxic("latency", stream="upstream", latency=latency_ms)
        old = OrderClient(f"http://127.0.0.1:{proxy.listen_port}", timeout=10, attempt_timeout=8)
        await old.start()
        sends = [asyncio.ensure_future(old.submit(cid, BID)) for cid in cids]
        await asyncio.sleep(0.3)
        engine = _engine(exchange, db)
        await engine.start()
        try:
            assert all(i.action.startswith("voided") for i in engine.reconciliation)
            # Watched: counted as working exposure until the exchange says.
            assert engine.status().inflight == orders
            await asyncio.gather(*sends, return_exceptions=True)
            await wait_until(
                lambda: all(exchange.book.by_client_id(c).status == "cancelled" for c in cids)
            )
            await wait_until(lambda: engine.status().inflight + engine.status().open_orders == 0)
            for cid in cids:
                assert engine.store.order(cid).status == "cancelled"  # type: ignore[union-attr]
        finally:
            await engine.aclose()
            await old.stop()


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_void_order_found_open_at_restart_is_cancelled(
    exchange: Exchange, tmp_path: Path
) -> None:
    """A later restart finds an order its book holds as void resting at the exchange: cancelled."""
    db = tmp_path / "book.db"
    (cid,) = _book_with_inflight(db)
    store = PositionStore(db)
    store.update_order(cid, status="void", reason="never accepted (404)")
    store.close()
    client = OrderClient(exchange.url)
    await client.start()
    try:
        await client.submit(cid, BID)
    finally:
        await client.stop()
    engine = _engine(exchange, db)
    await engine.start()
    try:
        (item,) = [i for i in engine.reconciliation if i.key == cid]
        assert item.action == "cancelled (voided earlier, arrived late)"
        assert exchange.book.by_client_id(cid).status == "cancelled"
    finally:
        await engine.aclose()
