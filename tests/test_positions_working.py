"""The durable book as the risk engine's input: working quantities per side, from a real file."""

from __future__ import annotations

from pathlib import Path

import pytest

from strategylab.strategy._strategy import OrderRequest, OrderType, Side
from strategylab.trading._positions import PositionStore
from strategylab.trading._risk import Exposure, exposure


def book_exposure(store: PositionStore, symbol: str) -> Exposure:
    positions = {(p.strategy, p.symbol): p.qty for p in store.positions()}
    return exposure(symbol, positions, store.orders())


@pytest.mark.timeout(10)
def test_filled_order_counts_as_working_until_its_fill_is_recorded(tmp_path: Path) -> None:
    """The exchange said filled but the fill is not recorded: its quantity is still working."""
    store = PositionStore(tmp_path / "book.db")
    try:
        buy = store.record_inflight("s", OrderRequest(symbol="A", side=Side.BUY, qty=5), None)
        resting = OrderRequest(symbol="A", side=Side.SELL, qty=3, type=OrderType.LIMIT, price=500.0)
        sell = store.record_inflight("s", resting, None)
        assert book_exposure(store, "A") == Exposure(0.0, 5.0, 3.0)
        store.update_order(buy, status="filled", order_id="O1")
        assert book_exposure(store, "A") == Exposure(0.0, 5.0, 3.0)
        assert store.record_fill(
            fill_id="F1",
            cid=buy,
            strategy="s",
            symbol="A",
            side=Side.BUY,
            qty=5.0,
            price=100.0,
            ts=1,
            order_status="filled",
        )
        assert book_exposure(store, "A") == Exposure(5.0, 0.0, 3.0)
        store.update_order(sell, status="cancelled")
        assert book_exposure(store, "A") == Exposure(5.0, 0.0, 0.0)
    finally:
        store.close()


@pytest.mark.timeout(10)
def test_working_quantities_survive_reopening_the_file(tmp_path: Path) -> None:
    """A reopened book gives the same per-side working quantities, partial fills included."""
    path = tmp_path / "book.db"
    store = PositionStore(path)
    cid = store.record_inflight("s", OrderRequest(symbol="A", side=Side.SELL, qty=4), None)
    store.record_fill(
        fill_id="F1",
        cid=cid,
        strategy="s",
        symbol="A",
        side=Side.SELL,
        qty=1.5,
        price=100.0,
        ts=1,
        order_status="open",
    )
    store.close()
    reopened = PositionStore(path)
    try:
        assert book_exposure(reopened, "A") == Exposure(-1.5, 0.0, 2.5)
    finally:
        reopened.close()
