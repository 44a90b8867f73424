"""A strategy started on an order book written with other parameters is refused or migrated at
start, before anything trades; never restored into a state it does not understand."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest

from strategylab.errors import ConfigurationError
from strategylab.exchange import Exchange, ExchangeConfig
from strategylab.fault_tolerance import AuditLog
from strategylab.market import Tick
from strategylab.strategy import JSONValue, MovingAverageCrossover, Strategy, StrategyContext
from strategylab.trading import EngineConfig, OrderClient, StrategyEngine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


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


def rising(start: int, n: int) -> list[Tick]:
    """``n`` ticks of A whose mid rises by 1 each (a crossover goes long)."""
    return [Tick("A", s, s, 99.0 + s, 101.0 + s, 1.0, 1.0) for s in range(start, start + n)]


def crossover(**params: int) -> Callable[[], Strategy]:
    return lambda: MovingAverageCrossover("A", qty=1.0, name="ma", **params)


def engine(exchange_url: str, book: Path, *factories: Callable[[], Strategy]) -> StrategyEngine:
    return StrategyEngine(
        factories,
        client=OrderClient(exchange_url),
        db=book,
        config=EngineConfig(fill_poll_interval=0.05),
    )


def recorded(book: Path) -> dict[str, str]:
    with sqlite3.connect(book) as db:
        rows = db.execute("SELECT key, value FROM meta WHERE key LIKE 'parameters:%'").fetchall()
    return {str(k): str(v) for k, v in rows}


async def trade_once(exchange: Exchange, book: Path, factory: Callable[[], Strategy]) -> int:
    """Run ``factory``'s strategy on ``book`` over 30 rising ticks; the orders at the exchange."""
    first = engine(exchange.url, book, factory)
    await first.start()
    try:
        await first.put(rising(1, 30))
        await wait_until(lambda: first.status().orders_sent >= 1)
        await first.resolve_ambiguous()
    finally:
        await first.aclose()
    return len(exchange.book.orders())


@pytest.mark.parametrize("changed", [{"fast": 7}, {"slow": 30}], ids=["fast", "slow"])
async def test_changed_parameters_are_refused_before_any_order(
    exchange: Exchange, tmp_path: Path, changed: dict[str, int]
) -> None:
    """A book written with fast=5, slow=20 refuses a start with other parameters: one
    ConfigurationError naming --param, the book's path and its parameters; no order, no change."""
    book = tmp_path / "book.db"
    sent = await trade_once(exchange, book, crossover(fast=5, slow=20))
    assert sent >= 1
    before = recorded(book)
    assert '"fast": 5' in before["parameters:ma"]

    second = engine(exchange.url, book, crossover(**{"fast": 5, "slow": 20, **changed}))
    try:
        with pytest.raises(ConfigurationError) as caught:
            await second.start()
        await second.put(rising(31, 30))
    finally:
        await second.aclose()
    error = caught.value
    assert error.key == "--param"
    ((name, value),) = changed.items()
    assert error.value == f"{name}={value}"
    assert f"strategy ma's order book {book} was written with --symbols A and --param " in (
        error.reason
    )
    assert "fast=5 qty=1.0 slow=20" in error.reason
    assert f"; now --param {name}={value}: " in error.reason
    assert error.reason.endswith("start with those, or use a new --book")
    assert not second.trading
    assert len(exchange.book.orders()) == sent
    assert recorded(book) == before


async def test_the_same_parameters_start_and_continue(exchange: Exchange, tmp_path: Path) -> None:
    """Started again with the parameters its book recorded, a strategy resumes its state."""
    book = tmp_path / "book.db"
    await trade_once(exchange, book, crossover(fast=5, slow=20))
    again = engine(exchange.url, book, crossover(fast=5, slow=20))
    await again.start()
    try:
        assert again.trading
        runner = again.runners["ma"]
        assert runner.running
        assert runner.strategy.state()["count"] == 30
    finally:
        await again.aclose()


class Counter(Strategy):
    """Counts ticks; its ``step`` parameter changes nothing in the count, so it can migrate."""

    migrations: list[tuple[Mapping[str, JSONValue], Mapping[str, JSONValue]]] = []  # noqa: RUF012

    def __init__(self, step: int) -> None:
        super().__init__("counter", ("A",))
        self.step = step
        self.count = 0
        self.migrated_from: JSONValue = None

    def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
        self.count += 1

    def state(self) -> dict[str, JSONValue]:
        return {"count": self.count, "migrated_from": self.migrated_from}

    def restore(self, state: Mapping[str, JSONValue]) -> None:
        count = state["count"]
        assert isinstance(count, int)
        self.count = count
        self.migrated_from = state.get("migrated_from")

    def parameters(self) -> dict[str, JSONValue]:
        return {"step": self.step}

    def migrate_state(
        self,
        old_parameters: Mapping[str, JSONValue],
        new_parameters: Mapping[str, JSONValue],
        state: Mapping[str, JSONValue],
    ) -> dict[str, JSONValue] | None:
        Counter.migrations.append((old_parameters, new_parameters))
        return {"count": state["count"], "migrated_from": old_parameters["step"]}


async def test_a_strategy_with_a_migration_hook_is_migrated_and_audited(
    exchange: Exchange, tmp_path: Path
) -> None:
    """A strategy that can migrate starts on the converted state, the book records the new
    parameters, and the audit log says what was migrated."""
    book = tmp_path / "book.db"
    Counter.migrations.clear()
    first = engine(exchange.url, book, lambda: Counter(step=1))
    await first.start()
    try:
        await first.put(rising(1, 4))
        first.persist_states()
    finally:
        await first.aclose()

    with AuditLog(tmp_path / "audit.jsonl", fsync=False) as audit:
        second = StrategyEngine(
            [lambda: Counter(step=2)], client=OrderClient(exchange.url), db=book, audit=audit
        )
        await second.start()
        try:
            strategy = second.runners["counter"].strategy
            assert isinstance(strategy, Counter)
            assert (strategy.count, strategy.migrated_from) == (4, 1)
        finally:
            await second.aclose()
    assert Counter.migrations == [({"step": 1}, {"step": 2})]
    assert recorded(book) == {"parameters:counter": '{"step": 2}'}
    records = [r for r in AuditLog.read(tmp_path / "audit.jsonl") if r.kind.startswith("strategy")]
    assert [(r.kind, r.data["old"], r.data["new"]) for r in records] == [
        ("strategy_parameters_migrated", '{"step": 1}', '{"step": 2}')
    ]


async def test_a_migration_that_raises_refuses_the_start(
    exchange: Exchange, tmp_path: Path
) -> None:
    """A migrate_state that raises refuses the start (naming --param and the cause), and the
    book keeps its state and parameters."""

    class Broken(Counter):
        def migrate_state(
            self,
            old_parameters: Mapping[str, JSONValue],
            new_parameters: Mapping[str, JSONValue],
            state: Mapping[str, JSONValue],
        ) -> dict[str, JSONValue] | None:
            raise KeyError("count")

    book = tmp_path / "book.db"
    first = engine(exchange.url, book, lambda: Broken(step=1))
    await first.start()
    try:
        await first.put(rising(1, 3))
    finally:
        await first.aclose()
    second = engine(exchange.url, book, lambda: Broken(step=2))
    try:
        with pytest.raises(ConfigurationError, match=r"--param=.*KeyError\('count'\)"):
            await second.start()
        assert second.store.load_state("counter") == {"count": 3, "migrated_from": None}
    finally:
        await second.aclose()
    assert recorded(book) == {"parameters:counter": '{"step": 1}'}
