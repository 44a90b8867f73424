"""Bars imported from the backtesting package's sample data (GOOG daily, EURUSD hourly), as CSV
and Parquet: our MA crossover trades what backtesting.py trades on the same bars.

backtesting.py is run with ``trade_on_close=True`` (a market order fills at the close of the bar
that decided it), no commission, no spread, and a strategy written to match ours: it computes
the two simple moving averages of the closes independently (pandas rolling means) and, from the
first bar with ``slow`` closes on, holds +qty when fast > slow, -qty when fast < slow and 0 when
equal, trading the difference (a cross-down reverses a long into a short: ours is a reversal
strategy, not flat-on-cross). Its warm-up is computed inside ``next`` rather than with
``self.I``, because backtesting.py would otherwise skip the bar at which the slow average first
exists (it starts one bar after the longest indicator's warm-up). An order decided on the last
bar cannot fill in backtesting.py (there is no later bar to fill it); such fills are left out of
the comparison, and the test says so when it happens.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest
from backtesting import Backtest, Strategy  # type: ignore[import-untyped]
from backtesting.test import EURUSD, GOOG  # type: ignore[import-untyped]

from strategylab.research import (
    BacktestResult,
    BacktestSpec,
    backtest_frame,
    import_ticks,
    run_backtest,
)
from strategylab.strategy import Side

CASES = [
    pytest.param(GOOG, "GOOG", 10, 20, id="GOOG-daily-10-20"),
    pytest.param(GOOG, "GOOG", 5, 50, id="GOOG-daily-5-50"),
    pytest.param(EURUSD, "EURUSD", 10, 30, id="EURUSD-hourly-10-30"),
]


class TargetCross(Strategy):  # type: ignore[misc]
    """Ours, in backtesting.py: hold +qty above, -qty below, 0 on equal averages."""

    fast = 10
    slow = 20
    qty = 1

    def init(self) -> None:
        close = pd.Series(np.asarray(self.data.Close, dtype=np.float64))
        self.fast_ma = close.rolling(self.fast).mean().to_numpy()
        self.slow_ma = close.rolling(self.slow).mean().to_numpy()

    def next(self) -> None:
        i = len(self.data) - 1
        if i < self.slow - 1:
            return
        fast, slow = self.fast_ma[i], self.slow_ma[i]
        target = self.qty if fast > slow else -self.qty if fast < slow else 0
        delta = target - self.position.size
        if delta > 0:
            self.buy(size=delta)
        elif delta < 0:
            self.sell(size=-delta)


def _theirs(bars: pd.DataFrame, fast: int, slow: int) -> list[tuple[int, float, float]]:
    """backtesting.py's position changes as (bar, signed size, price), summed per bar."""
    test = Backtest(bars, TargetCross, cash=1e9, commission=0.0, trade_on_close=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notes on open trades and on price/cash ratios
        stats = test.run(fast=fast, slow=slow)
    events: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for trade in stats["_trades"].itertuples():
        events[int(trade.EntryBar)].append((float(trade.Size), float(trade.EntryPrice)))
        events[int(trade.ExitBar)].append((-float(trade.Size), float(trade.ExitPrice)))
    for trade in stats["_strategy"].trades:  # still open at the end
        events[int(trade.entry_bar)].append((float(trade.size), float(trade.entry_price)))
    out = []
    for bar in sorted(events):
        prices = {price for _, price in events[bar]}
        assert len(prices) == 1, f"bar {bar}: fills at several prices {prices}"
        size = sum(size for size, _ in events[bar])
        if size:
            out.append((bar, size, prices.pop()))
    return out


def _ours(result: BacktestResult, bars: pd.DataFrame) -> list[tuple[int, float, float]]:
    """Our fills as (bar, signed qty, price); the bar found by the fill's time."""
    times = pd.DatetimeIndex(bars.index).tz_localize("UTC").as_unit("ns").asi8
    out = []
    for fill in result.trades:
        bar = int(np.searchsorted(times, fill.ts))
        assert times[bar] == fill.ts
        out.append((bar, fill.qty if fill.side is Side.BUY else -fill.qty, fill.price))
    return out


def _write(bars: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".csv":
        bars.to_csv(path)
    else:
        bars.to_parquet(path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize(("bars", "symbol", "fast", "slow"), CASES)
def test_imported_bars_trade_as_backtesting_py(  # noqa: PLR0917 - pytest parameters
    tmp_path: Path, bars: pd.DataFrame, symbol: str, fast: int, slow: int, suffix: str
) -> None:
    """Same entry and exit bars, sizes and prices as backtesting.py on the same bars."""
    source = tmp_path / f"{symbol}{suffix}"
    _write(bars, source)
    db = tmp_path / "ticks.db"
    report = import_ticks(source, db_path=db, symbol=symbol)
    assert (report.kind, report.rows, report.written) == ("bars", len(bars), len(bars))
    result = run_backtest(
        BacktestSpec(
            db_path=str(db),
            strategy="ma_crossover",
            symbol=symbol,
            parameters={"fast": fast, "slow": slow, "qty": 1.0},
        )
    )
    ours = _ours(result, bars)
    last_bar = len(bars) - 1
    comparable = [event for event in ours if event[0] < last_bar]
    theirs = _theirs(bars, fast, slow)
    assert len(comparable) > 10
    assert comparable == theirs
    assert len(ours) - len(comparable) <= 1  # at most one fill on the last bar


@pytest.mark.parametrize(("bars", "symbol", "fast", "slow"), CASES)
@pytest.mark.parametrize("vectorized", [False, True])
def test_frame_backtest_equals_the_imported_one(  # noqa: PLR0917 - pytest parameters
    tmp_path: Path, bars: pd.DataFrame, symbol: str, fast: int, slow: int, vectorized: bool
) -> None:
    """backtest_frame on the DataFrame == run_backtest on the same bars imported from CSV."""
    source = tmp_path / "bars.csv"
    bars.to_csv(source)
    db = tmp_path / "ticks.db"
    import_ticks(source, db_path=db, symbol=symbol)
    parameters: dict[str, Any] = {"fast": fast, "slow": slow}
    stored = run_backtest(
        BacktestSpec(
            db_path=str(db),
            strategy="ma_crossover",
            symbol=symbol,
            parameters=parameters,
            fee_bps=1.0,
            vectorized=vectorized,
        )
    )
    framed = backtest_frame(
        bars, "ma_crossover", parameters, symbol=symbol, fee_bps=1.0, vectorized=vectorized
    )
    assert framed == stored
    assert len(framed.trades) > 10
    assert framed.vectorized is vectorized
