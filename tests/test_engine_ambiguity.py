"""Ambiguous cancels and submits resolved in the background by asking the exchange."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from strategylab.clock import SYSTEM_CLOCK
from strategylab.errors import ConfigurationError
from strategylab.exchange._faults import parse_fault
from strategylab.market import Exchange, ExchangeConfig, Tick
from strategylab.strategy._examples import RestingBids
from strategylab.trading._engine import EngineConfig, StrategyEngine
from strategylab.trading._orders import OrderClient


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        # The observed state belongs to another component that offers no event to wait on.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = Exchange(ExchangeConfig(symbols=("A",), tick_rate=500, data_dir=tmp_path / "ex"))
    await ex.start()
    await wait_until(lambda: ex.book.quote("A") is not None)
    yield ex
    await ex.stop()


def fault(ex: Exchange, phase: str, status: int = 503) -> None:
    body = {"kind": "api_errors", "duration": 60.0, "status": status, "phase": phase}
    ex.faults.set(parse_fault(body, SYSTEM_CLOCK.monotonic()))


async def resting_engine(ex: Exchange, db: Path) -> StrategyEngine:
    """An engine whose strategy has one bid resting at the exchange."""
    engine = StrategyEngine(
        [lambda: RestingBids("bids", ("A",), every=1, count=1)],
        client=OrderClient(ex.url, timeout=2.0),
        db=db,
        config=EngineConfig(fill_poll_interval=0.05),
    )
    await engine.start()
    await engine.put([Tick("A", 10**9, 1, 99.0, 101.0, 1.0, 1.0)])
    await wait_until(lambda: engine.status().open_orders == 1)
    return engine


@pytest.mark.integration
@pytest.mark.timeout(30)
@pytest.mark.parametrize("phase", ["after", "before"])
async def test_ambiguous_cancel_is_resolved_without_another_cancel_or_restart(
    exchange: Exchange, tmp_path: Path, phase: str
) -> None:
    """503s past the retry budget on a cancel (carried out or not): once the API answers again
    the engine holds the order cancelled and no longer counts it, by itself."""
    engine = await resting_engine(exchange, tmp_path / "book.db")
    try:
        (cid,) = [o.cid for o in engine.store.orders(frozenset({"open"}))]
        fault(exchange, phase)
        engine.cancel_all_for("bids", None)
        await wait_until(lambda: engine.ambiguous == frozenset({cid}), limit=10.0)
        # Unresolved: still working exposure, in the engine and in the book.
        assert engine.status().open_orders == 1
        assert engine.status().unresolved == 1
        assert engine.store.order(cid).status == "open"  # type: ignore[union-attr]
        exchange.faults.clear()
        await wait_until(lambda: not engine.ambiguous and engine.status().open_orders == 0)
        store_order = engine.store.order(cid)
    finally:
        await engine.aclose()
    assert engine.status().unresolved == 0
    assert engine.status().ambiguous >= 1
    assert store_order is not None
    assert store_order.status == "cancelled"
    assert exchange.book.by_client_id(cid).status == "cancelled"


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_ambiguous_submit_past_the_retry_budget_is_resolved_once(
    exchange: Exchange, tmp_path: Path
) -> None:
    """A submit refused unprocessed (503 before) for longer than the retry budget is resent by
    the resolver once the API answers, and exists once at the exchange."""
    engine = StrategyEngine(
        [lambda: RestingBids("bids", ("A",), every=1, count=3)],
        client=OrderClient(exchange.url, timeout=2.0),
        db=tmp_path / "book.db",
    )
    await engine.start()
    try:
        fault(exchange, "before")
        await engine.put([Tick("A", 10**9 + n, n, 99.0, 101.0, 1.0, 1.0) for n in range(3)])
        await wait_until(lambda: len(engine.ambiguous) == 3, limit=10.0)
        assert exchange.book.orders() == []
        exchange.faults.clear()
        await wait_until(lambda: not engine.ambiguous and engine.status().open_orders == 3)
    finally:
        await engine.aclose()
    counts = Counter(o.client_order_id for o in exchange.book.orders())
    assert len(counts) == 3
    assert set(counts.values()) == {1}
    assert engine.status().resent >= 3


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"resolve_max_interval": 0.1, "resolve_interval": 0.2}, "resolve_max_interval"),
        ({"resolve_max_interval": float("inf")}, "resolve_max_interval"),
        ({"state_interval": 0}, "state_interval"),
    ],
)
def test_bad_engine_option_names_it(options: dict[str, Any], key: str) -> None:
    """EngineConfig refuses a bad interval, naming it."""
    with pytest.raises(ConfigurationError) as info:
        EngineConfig(**options)
    assert info.value.key == key
