"""The event-driven backtest engine on real SQLite files: fills, metrics, checkpoints, resume."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType, RetryPolicy
from strategylab.market import SQLiteTickStore, Tick
from strategylab.research._backtest import BacktestConfig, BacktestEngine, BacktestError
from strategylab.research._data import ArraySource, TickArrays, TickSource
from strategylab.research._result import YEAR_NS, BacktestResult, equity_metrics
from strategylab.research._spec import BacktestSpec, run_backtest
from strategylab.strategy._builtin import MeanReversion, MovingAverageCrossover
from strategylab.strategy._strategy import (
    Fill,
    OrderRequest,
    OrderType,
    Side,
    Strategy,
    StrategyContext,
)

T0 = 1_700_000_000_000_000_000


def walk(n: int, symbol: str = "AAA", step_ns: int = 1_000_000) -> list[Tick]:
    """A deterministic zig-zag walk in cents with a one-cent half spread."""
    out, cents = [], 10_000
    for i in range(n):
        cents += (1, -1, 2, -2, 3, -1, -3, 1)[(i * 7 + i // 97) % 8] * (1 + (i // 500) % 3)
        mid = cents / 100
        out.append(Tick(symbol, i + 1, T0 + i * step_ns, mid - 0.01, mid + 0.01, 5.0, 6.0))
    return out


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteTickStore]:
    s = SQLiteTickStore(tmp_path / "ticks.db", synchronous="NORMAL")
    await s.open()
    try:
        yield s
    finally:
        await s.aclose()


class Scripted(Strategy):
    """Submits the given order on the tick with the given seq; records fills and ``now_ns``."""

    def __init__(self, script: dict[int, OrderRequest], symbol: str = "AAA") -> None:
        super().__init__("scripted", (symbol,))
        self.script = script
        self.fills: list[Fill] = []
        self.clock: list[int] = []

    def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
        self.clock.append(ctx.now_ns)
        if (request := self.script.get(tick.seq)) is not None:
            ctx.submit(request)

    def on_fill(self, fill: Fill, ctx: StrategyContext) -> None:
        self.fills.append(fill)


class Generic:
    """Wraps a store so that the engine uses the generic ``read`` path, not the SQLite fast one."""

    def __init__(self, inner: SQLiteTickStore) -> None:
        self.inner = inner

    async def last_seqs(self) -> dict[str, int]:
        return await self.inner.last_seqs()

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        return await self.inner.read(symbol, from_seq, to_seq)


class FlakyStore(Generic):
    """The real store, whose ``read`` raises OSError once, on its ``fail_at``-th call."""

    def __init__(self, inner: SQLiteTickStore, fail_at: int) -> None:
        super().__init__(inner)
        self.fail_at = fail_at
        self.reads = 0

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        self.reads += 1
        if self.reads == self.fail_at or self.fail_at < 0:
            raise OSError(f"injected read failure at read #{self.reads}")
        return await super().read(symbol, from_seq, to_seq)


def buy(qty: float = 1.0) -> OrderRequest:
    return OrderRequest(symbol="AAA", side=Side.BUY, qty=qty)


def sell(qty: float = 1.0) -> OrderRequest:
    return OrderRequest(symbol="AAA", side=Side.SELL, qty=qty)


async def run(strategy: Strategy, store: TickSource, **config: Any) -> BacktestResult:
    engine = BacktestEngine(strategy, store, BacktestConfig(**config))
    async with asyncio.timeout(20):
        return await engine.run()


@pytest.mark.timeout(10)
async def test_market_orders_fill_at_the_quote_with_slippage_and_fee(
    store: SQLiteTickStore,
) -> None:
    """Buy at ask*(1+s), sell at bid*(1-s), fee in bps of notional; cash and PnL add up."""
    await store.write(
        [
            Tick("AAA", 1, T0, 99.0, 101.0, 1, 1),
            Tick("AAA", 2, T0 + 10, 104.0, 106.0, 1, 1),
            Tick("AAA", 3, T0 + 20, 109.0, 111.0, 1, 1),
        ]
    )
    strategy = Scripted({1: buy(2.0), 3: sell(2.0)})
    result = await run(strategy, store, fee_bps=10.0, slippage_bps=100.0, sample_every=1)
    buy_px, sell_px = 101.0 * 1.01, 109.0 * 0.99
    assert [(f.side, f.qty, f.price, f.ts) for f in strategy.fills] == [
        (Side.BUY, 2.0, buy_px, T0),
        (Side.SELL, 2.0, sell_px, T0 + 20),
    ]
    fees = 2 * buy_px * 0.001 + 2 * sell_px * 0.001
    assert result.fees == pytest.approx(fees)
    assert result.total_pnl == pytest.approx(2 * (sell_px - buy_px) - fees)
    # marked to mid: after the buy at t1, equity = -2*buy_px - fee + 2*100
    assert result.equity[0] == pytest.approx(-2 * buy_px - 2 * buy_px * 0.001 + 200)
    assert result.equity[1] == pytest.approx(-2 * buy_px - 2 * buy_px * 0.001 + 210)
    assert strategy.clock == [T0, T0 + 10, T0 + 20]
    assert result.positions == {"AAA": 0.0}
    assert json.loads(json.dumps(result.to_dict()))["trades"][0]["side"] == "buy"


@pytest.mark.timeout(10)
async def test_limit_orders_rest_until_the_quote_crosses(store: SQLiteTickStore) -> None:
    """A buy limit below the ask rests, then fills at its limit on the tick whose ask reaches it."""
    await store.write(
        [
            Tick("AAA", 1, T0, 99.0, 101.0, 1, 1),
            Tick("AAA", 2, T0 + 1, 98.5, 100.5, 1, 1),
            Tick("AAA", 3, T0 + 2, 97.0, 99.0, 1, 1),
            Tick("AAA", 4, T0 + 3, 100.0, 102.0, 1, 1),
        ]
    )
    limit = OrderRequest(symbol="AAA", side=Side.BUY, qty=1, type=OrderType.LIMIT, price=99.5)
    marketable = OrderRequest(symbol="AAA", side=Side.SELL, qty=1, type=OrderType.LIMIT, price=95.0)
    strategy = Scripted({1: limit, 4: marketable})
    await run(strategy, store, fee_bps=0.0, slippage_bps=50.0)
    # resting fill at its limit on tick 3 (no slippage); marketable sell at the bid on tick 4
    assert [(f.side, f.price, f.ts) for f in strategy.fills] == [
        (Side.BUY, 99.5, T0 + 2),
        (Side.SELL, 100.0, T0 + 3),
    ]


@pytest.mark.timeout(5)
def test_metrics_of_a_known_equity_curve() -> None:
    """Drawdown is the largest fall from a peak; Sharpe: daily mean/std x sqrt(365.25)."""
    day = 86_400 * 1_000_000_000
    diffs = [10.0, -6.0, 8.0, -5.0, 8.0] * 6  # 30 daily periods: enough to annualise
    equity = [0.0]
    for d in diffs:
        equity.append(equity[-1] + d)
    metrics = equity_metrics([i * day for i in range(len(equity))], equity)
    assert metrics.max_drawdown == 6.0
    mean = sum(diffs) / len(diffs)
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    assert metrics.sharpe == pytest.approx(mean / std * math.sqrt(YEAR_NS / day))
    assert equity_metrics([0, 1, 2], [5.0, 5.0, 5.0]).sharpe is None
    assert equity_metrics([], []).max_drawdown == 0.0


@pytest.mark.timeout(20)
async def test_same_inputs_give_identical_results(store: SQLiteTickStore) -> None:
    """Two runs of the same strategy over the same data are equal, bit for bit."""
    await store.write(walk(5_000))
    first = await run(MeanReversion("AAA", window=20, entry_z=1.5), store, fee_bps=2.0)
    second = await run(MeanReversion("AAA", window=20, entry_z=1.5), store, fee_bps=2.0)
    assert first == second
    assert json.dumps(first.to_dict()) == json.dumps(second.to_dict())
    assert len(first.trades) > 10


@pytest.mark.timeout(20)
async def test_fast_sqlite_read_and_generic_read_agree(store: SQLiteTickStore) -> None:
    """Reading straight into arrays gives the same result as going through ``read``."""
    await store.write(walk(3_000))
    fast = await run(MovingAverageCrossover("AAA", 5, 30), store, chunk_size=700)
    generic = await run(MovingAverageCrossover("AAA", 5, 30), Generic(store), chunk_size=333)
    assert fast == generic
    assert fast.ticks == 3_000


@pytest.mark.timeout(20)
@pytest.mark.parametrize("with_manager", [False, True])
async def test_failure_resumes_from_checkpoint_and_equals_an_uninterrupted_run(
    tmp_path: Path, store: SQLiteTickStore, with_manager: bool
) -> None:
    """A read failing at chunk 7 is a BACKTEST_ENGINE_FAILURE; the retry resumes, same result."""
    data = walk(10_000)
    await store.write(data)
    config = BacktestConfig(
        chunk_size=500, checkpoint_every=1_000, checkpoint_dir=tmp_path / "ckpt", fee_bps=1.0
    )
    reference = await run(MeanReversion("AAA", window=30), store, chunk_size=10_000)

    flaky = FlakyStore(store, fail_at=7)
    manager = ErrorRecoveryManager(capture_state=False) if with_manager else None
    engine = BacktestEngine(
        MeanReversion("AAA", window=30),
        flaky,
        config,
        manager=manager,
        retry=RetryPolicy(max_attempts=2, base_delay=0.0, jitter=None),
    )
    async with asyncio.timeout(15):
        resumed = await engine.run()
    fresh = await run(MeanReversion("AAA", window=30), store, fee_bps=1.0)
    assert resumed == fresh
    assert reference.ticks == resumed.ticks == 10_000
    stats = engine.statistics()
    assert stats.failures == 1
    assert stats.attempts == 2
    assert stats.resumed_at_ticks == (3_000,)  # 6 chunks of 500 read, checkpoint every 1,000
    assert stats.checkpoints_written >= 9
    assert engine.checkpoint_path is not None
    assert not engine.checkpoint_path.exists()  # removed once the run completed
    if manager is not None:
        statistics = manager.statistics()
        assert statistics.error_type_distribution[ErrorType.BACKTEST_ENGINE_FAILURE] == 1
        assert statistics.successful_recoveries == 1


@pytest.mark.timeout(20)
async def test_a_failure_that_persists_is_reported_not_hidden(
    tmp_path: Path, store: SQLiteTickStore
) -> None:
    """When every retry fails too the engine raises BacktestError with the cause."""
    await store.write(walk(2_000))
    broken = FlakyStore(store, fail_at=-1)
    engine = BacktestEngine(
        MovingAverageCrossover("AAA", 5, 20),
        broken,
        BacktestConfig(checkpoint_dir=tmp_path),
        retry=RetryPolicy(max_attempts=2, base_delay=0.0, jitter=None),
    )
    with pytest.raises(BacktestError, match="injected read failure") as info:
        async with asyncio.timeout(10):
            await engine.run()
    assert isinstance(info.value.__cause__, OSError)
    assert engine.statistics().failures == 3
    assert not await engine.health()


@pytest.mark.timeout(20)
async def test_time_range_and_seq_range_select_the_ticks(store: SQLiteTickStore) -> None:
    """``start_ns <= ts < end_ns`` and ``from_seq..to_seq`` bound what the strategy sees."""
    await store.write(walk(1_000))
    strategy = Scripted({})
    result = await run(
        strategy, store, start_ns=T0 + 100_000_000, end_ns=T0 + 200_000_000, chunk_size=64
    )
    assert result.ticks == 100
    assert strategy.clock[0] == T0 + 100_000_000
    assert strategy.clock[-1] == T0 + 199_000_000
    by_seq = await run(Scripted({}), store, from_seq=11, to_seq=20)
    assert (by_seq.ticks, by_seq.first_ts) == (10, T0 + 10_000_000)


class Both(Strategy):
    """Records the order in which it sees the ticks of two symbols."""

    def __init__(self) -> None:
        super().__init__("both", ("BBB", "AAA"))
        self.seen: list[tuple[int, str, int]] = []

    def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
        self.seen.append((tick.ts, tick.symbol, tick.seq))


@pytest.mark.timeout(20)
async def test_two_symbols_are_merged_by_time_then_symbol_order(store: SQLiteTickStore) -> None:
    """Ticks of several symbols arrive in (ts, symbols order, seq) order, whatever the chunking."""
    a = [Tick("AAA", i + 1, T0 + (i // 3) * 10, 10, 11, 1, 1) for i in range(200)]
    b = [Tick("BBB", i + 1, T0 + (i // 2) * 15, 10, 11, 1, 1) for i in range(150)]
    await store.write(a + b)
    rank = {"BBB": 0, "AAA": 1}
    expected = sorted(
        ((t.ts, t.symbol, t.seq) for t in a + b), key=lambda x: (x[0], rank[x[1]], x[2])
    )
    for chunk in (1, 4, 7, 1000):
        strategy = Both()
        result = await run(strategy, store, chunk_size=chunk)
        assert strategy.seen == expected, chunk
        assert result.ticks == 350


@pytest.mark.timeout(20)
def test_run_backtest_on_a_sqlite_file(tmp_path: Path) -> None:
    """The optimiser's entry point runs a spec on a real file, both paths equal, and pickles."""
    import pickle  # noqa: PLC0415

    async def write() -> None:
        s = SQLiteTickStore(tmp_path / "t.db")
        await s.open()
        await s.write(walk(4_000))
        await s.aclose()

    asyncio.run(write())
    spec = BacktestSpec(
        db_path=str(tmp_path / "t.db"),
        strategy="ma_crossover",
        symbol="AAA",
        parameters={"fast": 10, "slow": 40, "qty": 2.0},
        fee_bps=1.0,
        slippage_bps=0.5,
        checkpoint_dir=str(tmp_path / "ck"),
        checkpoint_every=1_000,
    )
    assert pickle.loads(pickle.dumps(spec)) == spec  # noqa: S301 - our own bytes
    event = run_backtest(spec)
    vector = run_backtest(dataclasses.replace(spec, vectorized=True))
    assert event == vector
    assert pickle.loads(pickle.dumps(event)) == event  # noqa: S301 - our own bytes
    assert event.ticks == 4_000
    assert len(event.trades) > 5
    assert event.parameters == {"symbol": "AAA", "fast": 10, "slow": 40, "qty": 2.0}
    with pytest.raises(FileNotFoundError, match=r"nope\.db"):
        run_backtest(dataclasses.replace(spec, db_path=str(tmp_path / "nope.db")))


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"from_seq": 0}, "from_seq"),
        ({"fee_bps": -1.0}, "fee_bps"),
        ({"sample_every": 0}, "sample_every"),
        ({"start_ns": 5, "end_ns": 5}, "start_ns"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, int], field: str) -> None:
    """BacktestConfig refuses nonsense with an error naming the field."""
    with pytest.raises(ValueError, match=field):
        BacktestConfig(**kwargs)  # type: ignore[arg-type]


class Positions(Strategy):
    """Records what ``ctx.position`` says, for its own symbol and one never traded."""

    def __init__(self) -> None:
        super().__init__("positions", ("AAA",))
        self.seen: list[tuple[float, float]] = []

    def on_tick(self, tick: Tick, ctx: StrategyContext) -> None:
        self.seen.append((ctx.position("AAA"), ctx.position("ZZZ")))
        if tick.seq == 1:
            ctx.submit(buy(2.0))


@pytest.mark.timeout(10)
async def test_position_is_flat_for_a_symbol_never_traded(store: SQLiteTickStore) -> None:
    """``position`` (bound per run to the positions map's lookup) is 0.0 untraded, adds no key."""
    await store.write([Tick("AAA", i, T0 + i, 99.0, 101.0, 1, 1) for i in range(1, 4)])
    strategy = Positions()
    result = await run(strategy, store, sample_every=1)
    assert strategy.seen == [(0.0, 0.0), (2.0, 0.0), (2.0, 0.0)]
    assert dict(result.positions) == {"AAA": 2.0}
    again = Positions()  # a second run of a fresh engine starts flat again
    await run(again, store, sample_every=1)
    assert again.seen == strategy.seen


@pytest.mark.timeout(20)
def test_run_blocking_equals_run_on_an_event_loop(tmp_path: Path) -> None:
    """``run_blocking`` (the result boxed out of the loop) gives what ``asyncio.run`` does."""
    n = 5_000
    mids = 100 + np.cumsum(np.random.default_rng(5).normal(0, 0.05, n))
    arrays = TickArrays(
        "AAA",
        columns={
            "seq": np.arange(1, n + 1, dtype=np.int64),
            "ts": T0 + np.arange(n, dtype=np.int64),
            "bid": mids - 0.01,
            "ask": mids + 0.01,
            "bid_size": np.ones(n),
            "ask_size": np.ones(n),
        },
    )
    config = BacktestConfig(fee_bps=1.0, slippage_bps=0.5, sample_every=100)
    blocking = BacktestEngine(MeanReversion("AAA", 20), ArraySource(arrays), config).run_blocking()
    looped = asyncio.run(
        BacktestEngine(MeanReversion("AAA", 20), ArraySource(arrays), config).run()
    )
    assert len(blocking.trades) > 10
    assert blocking == looped
