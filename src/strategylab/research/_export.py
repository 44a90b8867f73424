"""A backtest's trades and equity curve as files: CSV or Parquet, and a PNG plot.

The format follows the file's suffix: ``.csv`` (a header row, then one row per trade or sample;
floats written with ``repr``, so they read back bit for bit) or ``.parquet`` (pyarrow, imported
only then). :func:`write_plot` draws the equity curve and its drawdown to a ``.png`` with
matplotlib's Agg backend (imported only then; no display needed).

Every file is written atomically (:func:`strategylab._durable.write_atomic`): after a crash the
path holds the old bytes or the new ones, never a part. The directory must exist.

Columns, trades: ``order_id, client_order_id, symbol, side, qty, price, fee, ts`` (``ts`` in ns
since the epoch; ``side`` ``buy``/``sell``); equity: ``ts`` (ns), ``equity`` (cash + positions
marked to mid, in the quote currency), ``drawdown`` (the fall from the running peak, >= 0).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np

from strategylab._durable import write_atomic

from ._result import BacktestResult

__all__ = [
    "EQUITY_COLUMNS",
    "TABLE_SUFFIXES",
    "TRADE_COLUMNS",
    "write_equity",
    "write_plot",
    "write_trades",
]

TABLE_SUFFIXES: Final = (".csv", ".parquet")
"""The suffixes :func:`write_trades` and :func:`write_equity` accept."""
TRADE_COLUMNS: Final = (
    "order_id",
    "client_order_id",
    "symbol",
    "side",
    "qty",
    "price",
    "fee",
    "ts",
)
EQUITY_COLUMNS: Final = ("ts", "equity", "drawdown")

_Column = Sequence[str] | Sequence[float] | Sequence[int]


def _drawdown(equity: Sequence[float]) -> list[float]:
    values = np.asarray(equity, dtype=np.float64)
    if values.size == 0:
        return []
    return [float(v) for v in np.maximum.accumulate(values) - values]


def _trade_columns(result: BacktestResult) -> dict[str, _Column]:
    trades = result.trades
    return {
        "order_id": [t.order_id for t in trades],
        "client_order_id": [t.client_order_id for t in trades],
        "symbol": [t.symbol for t in trades],
        "side": [t.side.value for t in trades],
        "qty": [t.qty for t in trades],
        "price": [t.price for t in trades],
        "fee": [t.fee for t in trades],
        "ts": [t.ts for t in trades],
    }


def _equity_columns(result: BacktestResult) -> dict[str, _Column]:
    return {
        "ts": list(result.equity_ts),
        "equity": list(result.equity),
        "drawdown": _drawdown(result.equity),
    }


def _table_bytes(path: Path, columns: dict[str, _Column]) -> bytes:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(zip(*columns.values(), strict=True))
        return out.getvalue().encode()
    if suffix == ".parquet":
        import pyarrow as pa  # type: ignore[import-untyped]  # noqa: PLC0415 - only for Parquet
        import pyarrow.parquet as pq  # type: ignore[import-untyped]  # noqa: PLC0415

        types = {str: pa.string(), float: pa.float64(), int: pa.int64()}
        arrays = {}
        for name, values in columns.items():
            kind = _kind(name)
            arrays[name] = pa.array(list(values), type=types[kind])
        buffer = io.BytesIO()
        pq.write_table(pa.table(arrays), buffer)
        return buffer.getvalue()
    raise ValueError(f"{path}: suffix {path.suffix!r}: expected one of {', '.join(TABLE_SUFFIXES)}")


def _kind(column: str) -> type:
    if column == "ts":
        return int
    if column in {"order_id", "client_order_id", "symbol", "side"}:
        return str
    return float


def write_trades(result: BacktestResult, path: str | os.PathLike[str]) -> None:
    """Write ``result``'s trades to ``path`` (``.csv`` or ``.parquet``; columns: module
    docstring), atomically. Raises ``ValueError`` for another suffix, ``OSError`` as writing does.
    """
    target = Path(path)
    write_atomic(target, _table_bytes(target, _trade_columns(result)))


def write_equity(result: BacktestResult, path: str | os.PathLike[str]) -> None:
    """Write ``result``'s sampled equity curve and drawdown to ``path`` (``.csv`` or
    ``.parquet``), atomically. Raises ``ValueError`` for another suffix, ``OSError`` as writing
    does."""
    target = Path(path)
    write_atomic(target, _table_bytes(target, _equity_columns(result)))


def write_plot(result: BacktestResult, path: str | os.PathLike[str]) -> None:
    """Draw ``result``'s equity curve (top) and drawdown (bottom) against time to the PNG file
    ``path``, atomically. Raises ``ValueError`` for a suffix other than ``.png``."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"{target}: suffix {target.suffix!r}: expected .png")
    # Only when a plot is asked for; the Agg canvas directly: no display, no global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    times = np.asarray(result.equity_ts, dtype="datetime64[ns]")
    figure = Figure(figsize=(10, 6), layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot(times, result.equity, color="tab:blue", linewidth=1.0)
    top.set_ylabel("equity")
    top.set_title(f"{result.strategy} on {', '.join(result.symbols)}: {len(result.trades)} trades")
    top.grid(visible=True, alpha=0.3)
    drawdown = np.asarray(_drawdown(result.equity), dtype=np.float64)
    bottom.fill_between(times, -drawdown, 0.0, color="tab:red", alpha=0.4, linewidth=0)
    bottom.set_ylabel("drawdown")
    bottom.set_xlabel("time (UTC)")
    bottom.grid(visible=True, alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    write_atomic(target, buffer.getvalue())
