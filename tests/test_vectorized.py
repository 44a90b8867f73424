"""The vectorised path gives exactly the event-driven result, over random price paths."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategylab.market import Tick
from strategylab.research._backtest import BacktestConfig, BacktestEngine
from strategylab.research._data import ROW_DTYPE, TickArrays
from strategylab.research._result import BacktestResult
from strategylab.research._vectorized import (
    ma_crossover_targets,
    mean_reversion_targets,
    run_vectorized,
)
from strategylab.strategy._builtin import MeanReversion, MovingAverageCrossover
from strategylab.strategy._strategy import Strategy

T0 = 1_600_000_000_000_000_000


class MemoryStore:
    """Ticks of one symbol held in a list: the generic ``read`` path, without a disk."""

    def __init__(self, ticks: list[Tick]) -> None:
        self.ticks = ticks

    async def last_seqs(self) -> dict[str, int]:
        return {self.ticks[0].symbol: self.ticks[-1].seq} if self.ticks else {}

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        upper = to_seq if to_seq is not None else len(self.ticks)
        return [t for t in self.ticks[from_seq - 1 : upper] if t.symbol == symbol]


def make_ticks(mids: list[float], spreads: list[float]) -> list[Tick]:
    return [
        Tick("X", i + 1, T0 + i * 250_000_000, m - s, m + s, 1.0, 1.0)
        for i, (m, s) in enumerate(zip(mids, spreads, strict=True))
    ]


def arrays(ticks: list[Tick]) -> TickArrays:
    rows = np.array(
        [(t.seq, t.ts, t.bid, t.ask, t.bid_size, t.ask_size) for t in ticks], dtype=ROW_DTYPE
    )
    return TickArrays("X", rows)


def both(
    strategy: Strategy, fresh: Strategy, ticks: list[Tick], config: BacktestConfig
) -> tuple[BacktestResult, BacktestResult]:
    engine = BacktestEngine(strategy, MemoryStore(ticks), config)

    async def go() -> BacktestResult:
        async with asyncio.timeout(10):
            return await engine.run()

    return asyncio.run(go()), run_vectorized(fresh, arrays(ticks), config)


# Prices in cents (what exchanges quote) and arbitrary floats; walks with flat stretches, so that
# equal averages and zero variances, the edge cases of the rules, occur.
cent_paths = st.lists(st.sampled_from([-3, -1, 0, 0, 0, 1, 2]), min_size=1, max_size=400).map(
    lambda steps: [round(50 + 0.01 * v, 2) for v in np.cumsum(steps).tolist()]
)
float_paths = st.lists(
    st.floats(min_value=-0.7, max_value=0.7, allow_nan=False), min_size=1, max_size=400
).map(lambda steps: (100.0 + np.cumsum(steps)).tolist())
paths = st.one_of(cent_paths, float_paths)
costs = st.fixed_dictionaries(
    {
        "fee_bps": st.sampled_from([0.0, 0.5, 3.0]),
        "slippage_bps": st.sampled_from([0.0, 1.0, 7.5]),
        "sample_every": st.integers(1, 50),
        "chunk_size": st.integers(1, 120),
        "initial_cash": st.sampled_from([0.0, 1_000.0]),
    }
)
qtys = st.sampled_from([1.0, 0.1, 0.3, 2.5, 7.0])


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=paths,
    fast=st.integers(1, 12),
    extra=st.integers(1, 30),
    qty=qtys,
    cost=costs,
    data=st.data(),
)
def test_ma_crossover_vectorised_equals_event_driven(  # noqa: PLR0917
    path: list[float],
    fast: int,
    extra: int,
    qty: float,
    cost: dict[str, float],
    data: st.DataObject,
) -> None:
    """Same fills (sequence, prices, quantities), same equity curve and metrics, bit for bit."""
    spreads = data.draw(
        st.lists(st.sampled_from([0.0, 0.005, 0.01]), min_size=len(path), max_size=len(path))
    )
    ticks = make_ticks(path, spreads)
    config = BacktestConfig(**cost)  # type: ignore[arg-type]
    slow = fast + extra
    event, vector = both(
        MovingAverageCrossover("X", fast, slow, qty),
        MovingAverageCrossover("X", fast, slow, qty),
        ticks,
        config,
    )
    assert event.trades == vector.trades
    assert event == vector


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=paths,
    window=st.integers(2, 40),
    entry=st.sampled_from([0.5, 1.0, 1.5, 2.0]),
    exit_fraction=st.sampled_from([0.0, 0.25, 0.5, 0.9]),
    qty=qtys,
    cost=costs,
)
def test_mean_reversion_vectorised_equals_event_driven(  # noqa: PLR0917
    path: list[float],
    window: int,
    entry: float,
    exit_fraction: float,
    qty: float,
    cost: dict[str, float],
) -> None:
    """Same fills, equity curve and metrics, bit for bit, hysteresis included."""
    ticks = make_ticks(path, [0.01] * len(path))
    config = BacktestConfig(**cost)  # type: ignore[arg-type]
    exit_z = entry * exit_fraction
    event, vector = both(
        MeanReversion("X", window, entry, exit_z, qty),
        MeanReversion("X", window, entry, exit_z, qty),
        ticks,
        config,
    )
    assert event.trades == vector.trades
    assert event == vector


@pytest.mark.timeout(10)
def test_target_arrays_on_a_hand_made_path() -> None:
    """The numpy rules reproduce the hand-worked examples of the event-driven tests."""
    ma = ma_crossover_targets(np.array([10, 10, 10, 12, 13, 13, 9, 8.0]), 2, 4, 1.0)
    assert ma.tolist() == [0, 0, 0, 1, 1, 1, -1, -1]
    mr = mean_reversion_targets(np.array([10, 10.5, 10, 14, 10, 11, 10.5]), 4, 1.4, 0.5, 1.0)
    assert mr.tolist() == [0, 0, 0, -1, -1, 0, 0]


@pytest.mark.timeout(20)
def test_a_long_path_trades_and_still_agrees() -> None:
    """50,000 ticks of a seeded walk: many trades, equal results (no drift in the cumsums)."""
    rng = np.random.default_rng(5)
    mids = np.round(100 + np.cumsum(rng.normal(0, 0.02, 50_000)), 2).tolist()
    ticks = make_ticks(mids, [0.01] * len(mids))
    config = BacktestConfig(fee_bps=1.0, slippage_bps=0.5, sample_every=100, chunk_size=4096)
    for make in (lambda: MovingAverageCrossover("X", 10, 60), lambda: MeanReversion("X", 40)):
        event, vector = both(make(), make(), ticks, config)
        assert len(event.trades) > 100
        assert event == vector
