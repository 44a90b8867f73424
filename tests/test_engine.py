"""The live engine in process: isolation, restart with state, disabling, ambiguity, risk."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest

from strategylab.clock import SYSTEM_CLOCK
from strategylab.exchange._faults import parse_fault
from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType, RecoveryStrategyKind
from strategylab.market import Exchange, ExchangeConfig, Tick
from strategylab.strategy._examples import TickTrader
from strategylab.strategy._strategy import JSONValue, OrderRequest, Side, Strategy, StrategyContext
from strategylab.trading._engine import EngineConfig, StrategyEngine
from strategylab.trading._orders import OrderClient
from strategylab.trading._risk import RiskEngine, RiskLimit, RiskLimits


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        # The observed state belongs to another component that offers no event to wait on.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = Exchange(ExchangeConfig(symbols=("A", "B"), tick_rate=500, data_dir=tmp_path / "ex"))
    await ex.start()
    await wait_until(lambda: ex.book.quote("A") is not None)
    yield ex
    await ex.stop()


def ticks(symbol: str, start: int, n: int) -> list[Tick]:
    return [Tick(symbol, s, s * 1000, 99.0, 101.0, 1.0, 1.0) for s in range(start, start + n)]


class Flaky(Strategy):
    """Counts ticks (persisted); raises while the shared budget ``raises`` lasts, at tick 3+."""

    def __init__(self, name: str, raises: list[int]) -> None:
        super().__init__(name, ("A",))
        self.raises = raises
        self.seen = 0
        self.restored: int | None = None

    def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
        del tick, ctx
        self.seen += 1
        if self.seen >= 3 and self.raises[0] > 0:
            self.raises[0] -= 1
            raise ZeroDivisionError("flaky strategy bug")

    def state(self) -> dict[str, JSONValue]:
        return {"seen": self.seen}

    def restore(self, state: Mapping[str, JSONValue]) -> None:
        seen = state.get("seen", 0)
        self.seen = self.restored = seen if isinstance(seen, int) else 0


def make_engine(
    ex: Exchange, db: Path, raises: list[int], manager: ErrorRecoveryManager | None
) -> tuple[StrategyEngine, list[Flaky]]:
    made: list[Flaky] = []

    def flaky() -> Strategy:
        made.append(Flaky("flaky", raises))
        return made[-1]

    engine = StrategyEngine(
        [flaky, lambda: TickTrader("trader", ("A",), every=2)],
        client=OrderClient(ex.url),
        db=db,
        manager=manager,
        config=EngineConfig(max_failures=3, failure_window=60.0, fill_poll_interval=0.02),
    )
    return engine, made


@pytest.mark.timeout(15)
async def test_raising_strategy_restarts_with_state_while_other_trades(
    exchange: Exchange, tmp_path: Path
) -> None:
    """One failure: that strategy is restarted from its persisted state; the other trades on."""
    manager = ErrorRecoveryManager(capture_state=False)
    engine, made = make_engine(exchange, tmp_path / "book.db", [1], manager)
    await engine.start()
    try:
        await engine.put(ticks("A", 1, 2))
        engine.persist_states()  # flaky has seen 2
        await engine.put(ticks("A", 3, 4))  # flaky raises on its 3rd tick
        await wait_until(lambda: engine.runners["flaky"].restarts == 1)
        await engine.put(ticks("A", 7, 4))
        await wait_until(lambda: engine.status().orders_filled >= 4)
    finally:
        await engine.aclose()
    assert len(made) == 2
    assert made[1].restored == 2
    assert made[1].seen == 2 + 4  # restored count plus the ticks after the restart
    trader = engine.runners["trader"].strategy
    assert isinstance(trader, TickTrader)
    assert trader.ticks == 10
    stats = manager.statistics()
    assert stats.error_type_distribution[ErrorType.STRATEGY_EXECUTION_ERROR] == 1
    assert stats.strategy_distribution[RecoveryStrategyKind.COMPONENT_RESTART] == 1


@pytest.mark.timeout(15)
async def test_strategy_that_keeps_raising_is_disabled(exchange: Exchange, tmp_path: Path) -> None:
    """max_failures failures within the window: the strategy is disabled and says so."""
    manager = ErrorRecoveryManager(capture_state=False)
    engine, _made = make_engine(exchange, tmp_path / "book.db", [100], manager)
    await engine.start()
    try:
        seq = 1
        for _ in range(6):
            await engine.put(ticks("A", seq, 3))
            seq += 3
            await wait_until(lambda: not engine._tasks)
        status = {s.name: s for s in engine.status().strategies}
        assert engine.store.strategy_health("flaky") == (3, False)
    finally:
        await engine.aclose()
    assert not status["flaky"].enabled
    assert status["flaky"].failures == 3
    assert status["flaky"].disabled_reason
    assert status["trader"].enabled
    assert status["trader"].running
    stats = manager.statistics()
    assert stats.strategy_distribution[RecoveryStrategyKind.GRACEFUL_DEGRADATION] == 1


@pytest.mark.timeout(15)
async def test_ambiguous_order_is_resolved_and_never_duplicated(
    exchange: Exchange, tmp_path: Path
) -> None:
    """503 after processing: the order stays in flight, then is resolved by client id, once."""
    engine, _made = make_engine(exchange, tmp_path / "book.db", [0], None)
    await engine.start()
    try:
        body = {"kind": "api_errors", "duration": 30.0, "status": 503, "phase": "after"}
        exchange.faults.set(parse_fault(body, SYSTEM_CLOCK.monotonic()))
        await engine.put(ticks("A", 1, 2))  # the trader sends one market order
        await wait_until(lambda: engine.ambiguous != frozenset(), limit=10.0)
        assert engine.status().inflight == 1
        exchange.faults.clear()
        await wait_until(lambda: not engine.ambiguous and engine.status().orders_filled == 1)
    finally:
        await engine.aclose()
    counts = Counter(o.client_order_id for o in exchange.book.orders())
    assert counts
    assert set(counts.values()) == {1}
    assert engine.position("trader", "A") == 1.0


@pytest.mark.timeout(10)
async def test_halted_engine_sends_nothing_and_names_the_reason(
    exchange: Exchange, tmp_path: Path
) -> None:
    """HALTED: a strategy's order is refused by the risk engine and never reaches the exchange."""
    risk = RiskEngine(RiskLimits(stale_after=None))
    engine = StrategyEngine(
        [lambda: TickTrader("trader", ("A",), every=1)],
        client=OrderClient(exchange.url),
        db=tmp_path / "book.db",
        risk=risk,
    )
    await engine.start()
    try:
        risk.halt("operator kill switch")
        await engine.put(ticks("A", 1, 1))
    finally:
        await engine.aclose()
    assert engine.status().orders_sent == 0
    assert len(engine.rejections) == 1
    cid, rejection = engine.rejections[0]
    assert engine.rejection(cid) is rejection
    assert rejection.limit is RiskLimit.HALTED
    assert "kill switch" in rejection.reason
    assert exchange.book.orders() == []


@pytest.mark.timeout(10)
async def test_position_limit_through_the_engine_counts_pending_orders(
    exchange: Exchange, tmp_path: Path
) -> None:
    """Orders in flight count toward max_position, so a burst cannot overshoot it."""

    class Greedy(Strategy):
        def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
            for _ in range(3):
                ctx.submit(OrderRequest(symbol=tick.symbol, side=Side.BUY, qty=1))

    engine = StrategyEngine(
        [lambda: Greedy("greedy", ("A",))],
        client=OrderClient(exchange.url),
        db=tmp_path / "book.db",
        risk=RiskEngine(RiskLimits(max_position=2.0, stale_after=None)),
    )
    await engine.start()
    try:
        await engine.put(ticks("A", 1, 1))
        await wait_until(lambda: engine.status().orders_filled == 2)
    finally:
        await engine.aclose()
    assert engine.status().orders_sent == 2
    assert [r.limit for _cid, r in engine.rejections] == [RiskLimit.POSITION]
