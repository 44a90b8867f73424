"""``frame_ticks`` / ``backtest_frame``: a pandas DataFrame or an Arrow table as the backtest's
ticks, by the same rules as ``strategylab import``."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa  # type: ignore[import-untyped]
import pytest
from backtesting.test import GOOG  # type: ignore[import-untyped]

from strategylab.research import ColumnMap, TickDataError, backtest_frame, frame_ticks


def test_bars_become_one_quote_at_the_close_per_bar() -> None:
    """bid = ask = Close exactly, at the bar's time, sizes = Volume, seq 1.. in order."""
    ticks = frame_ticks(GOOG, symbol="GOOG")
    assert len(ticks) == len(GOOG)
    assert ticks.rows["seq"].tolist() == list(range(1, len(GOOG) + 1))
    assert np.array_equal(ticks.rows["bid"], GOOG["Close"].to_numpy())
    assert np.array_equal(ticks.mid, GOOG["Close"].to_numpy())
    assert np.array_equal(ticks.rows["bid_size"], GOOG["Volume"].to_numpy(dtype=float))
    assert int(ticks.ts[0]) == pd.Timestamp("2004-08-19", tz="UTC").value


def test_half_spread_widens_bars_around_the_close() -> None:
    """half_spread h: bid = Close - h, ask = Close + h."""
    ticks = frame_ticks(GOOG.iloc[:5], symbol="G", columns=ColumnMap(half_spread=0.25))
    assert np.array_equal(ticks.rows["ask"] - ticks.rows["bid"], np.full(5, 0.5))


def test_an_arrow_table_of_quotes_with_a_zoned_index() -> None:
    """A tz-aware pandas index (Europe/Berlin) and an Arrow table give the same UTC ticks."""
    index = pd.DatetimeIndex(["2024-06-01 10:00", "2024-06-01 10:00:01"], tz="Europe/Berlin")
    frame = pd.DataFrame({"Bid": [1.0, 1.1], "Ask": [1.2, 1.3]}, index=index)
    from_pandas = frame_ticks(frame, symbol="Q")
    table = pa.table({"time": index.tz_convert("UTC"), "bid": [1.0, 1.1], "ask": [1.2, 1.3]})
    from_arrow = frame_ticks(table, symbol="Q")
    assert np.array_equal(from_pandas.rows, from_arrow.rows)
    assert int(from_arrow.ts[0]) == pd.Timestamp("2024-06-01 08:00", tz="UTC").value


def test_trades_with_epoch_seconds() -> None:
    """Trades (price, size): bid = ask = price; float epoch seconds rounded to the ns."""
    table = pa.table({"ts": [1.5, 2.25], "price": [10.0, 10.5], "size": [3.0, 4.0]})
    ticks = frame_ticks(table, symbol="T", columns=ColumnMap(ts_unit="s"))
    assert ticks.rows["ts"].tolist() == [1_500_000_000, 2_250_000_000]
    assert ticks.rows["ask"].tolist() == [10.0, 10.5]
    assert ticks.rows["ask_size"].tolist() == [3.0, 4.0]


def test_a_bad_value_names_its_row_and_column() -> None:
    """A crossed quote in the third row: TickDataError with row 3 and the bid column."""
    table = pa.table({"ts": [1, 2, 3], "bid": [1.0, 1.0, 2.0], "ask": [1.5, 1.5, 1.5]})
    with pytest.raises(TickDataError) as caught:
        frame_ticks(table, symbol="Q", columns=ColumnMap(ts_unit="ns"))
    assert (caught.value.row, caught.value.column) == (3, "bid")
    assert "row 3, column 'bid': bid 2.0 > ask 1.5" in str(caught.value)


def test_not_a_frame_is_a_type_error() -> None:
    """A list is neither a DataFrame nor an Arrow table."""
    with pytest.raises(TypeError, match="data: a list is not a pandas DataFrame"):
        frame_ticks([1, 2], symbol="Q")


def test_bad_column_map_values_name_the_field() -> None:
    """tz, ts_unit, half_spread and kind are checked when the map is built."""
    with pytest.raises(ValueError, match="tz='Nowhere/City'"):
        ColumnMap(tz="Nowhere/City")
    with pytest.raises(ValueError, match="half_spread=-1"):
        ColumnMap(half_spread=-1)
    with pytest.raises(ValueError, match="kind='ohlc'"):
        ColumnMap(kind="ohlc")  # type: ignore[arg-type]


async def test_backtest_frame_works_inside_a_running_event_loop() -> None:
    """From a notebook's running loop: the event-driven run goes to a thread, same result."""
    inside = backtest_frame(GOOG, "ma_crossover", {"fast": 10, "slow": 20}, symbol="GOOG")
    outside = await asyncio.to_thread(
        backtest_frame, GOOG, "ma_crossover", {"fast": 10, "slow": 20}, symbol="GOOG"
    )
    assert inside == outside
    assert len(inside.trades) > 10


def test_event_driven_equals_vectorized_on_a_frame() -> None:
    """The two paths agree on a frame as they do on a store."""
    parameters = {"fast": 5, "slow": 50}
    event = backtest_frame(GOOG, "ma_crossover", parameters, symbol="GOOG", slippage_bps=2.0)
    vector = backtest_frame(
        GOOG, "ma_crossover", parameters, symbol="GOOG", slippage_bps=2.0, vectorized=True
    )
    assert event == vector


def test_a_text_value_in_a_number_column_names_the_column() -> None:
    index = pd.date_range("2024-01-01", periods=20, freq="h", tz="UTC", name="ts")
    frame = pd.DataFrame({"bid": [1.0] * 19 + ["x"], "ask": [1.1] * 20}, index=index)
    with pytest.raises(TickDataError) as info:
        backtest_frame(frame, "ma_crossover", {"fast": 2, "slow": 5}, symbol="X")
    assert info.value.column == "bid"
    assert "'x'" in str(info.value)


def test_a_series_is_not_a_frame() -> None:
    series = pd.Series([1.0, 2.0], name="bid")
    with pytest.raises(TypeError, match="Series is not a table"):
        backtest_frame(series, "ma_crossover", {"fast": 2, "slow": 5}, symbol="X")
