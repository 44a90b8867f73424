"""A backtest's result and the metrics computed from its equity curve.

The equity curve is sampled every ``sample_every`` ticks (counted over the whole run, all symbols)
and at the last tick, marked to the mid price. From it:

* ``total_pnl`` = final equity - initial cash;
* ``max_drawdown`` = the largest fall from a running peak of the sampled equity, in currency
  (the capital is not a parameter of a strategy, so a percentage would be arbitrary);
* ``sharpe`` = mean(ΔE) / std(ΔE, ddof=1) × sqrt(periods per year), over the differences ΔE of
  consecutive samples. On a constant capital base this equals the Sharpe ratio of returns (the
  capital cancels). Periods per year = 365.25 days / the mean simulated time between samples.
  0.0 when there are fewer than three samples, no time elapsed, or no variation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from strategylab.strategy import Fill, JSONValue, Side

__all__ = ["YEAR_NS", "BacktestResult", "EquityMetrics", "equity_metrics", "fill_from_dict"]

YEAR_NS: Final = 365.25 * 86_400 * 1_000_000_000
"""Nanoseconds in a year: the annualisation base of :func:`equity_metrics`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EquityMetrics:
    """What :func:`equity_metrics` derives from an equity curve."""

    sharpe: float
    max_drawdown: float


def equity_metrics(ts: Sequence[int], equity: Sequence[float]) -> EquityMetrics:
    """Sharpe and maximum drawdown of a sampled equity curve (see the module docstring)."""
    if len(ts) != len(equity):
        raise ValueError(f"ts has {len(ts)} samples, equity {len(equity)}: must be equal")
    values = np.asarray(equity, dtype=np.float64)
    if values.size == 0:
        return EquityMetrics(sharpe=0.0, max_drawdown=0.0)
    drawdown = float(np.max(np.maximum.accumulate(values) - values))
    sharpe = 0.0
    if values.size >= 3:
        span = int(ts[-1]) - int(ts[0])
        diffs = np.diff(values)
        std = float(np.std(diffs, ddof=1))
        if span > 0 and std > 0:
            periods = YEAR_NS / (span / (values.size - 1))
            sharpe = float(np.mean(diffs)) / std * math.sqrt(periods)
    return EquityMetrics(sharpe=sharpe, max_drawdown=drawdown)


def _fill_dict(fill: Fill) -> dict[str, JSONValue]:
    return {
        "order_id": fill.order_id,
        "client_order_id": fill.client_order_id,
        "symbol": fill.symbol,
        "side": fill.side.value,
        "qty": fill.qty,
        "price": fill.price,
        "fee": fill.fee,
        "ts": fill.ts,
    }


def fill_from_dict(data: Mapping[str, JSONValue]) -> Fill:
    """A :class:`Fill` from its JSON form (as in :meth:`BacktestResult.to_dict`)."""
    try:
        return Fill(
            order_id=str(data["order_id"]),
            client_order_id=str(data["client_order_id"]),
            symbol=str(data["symbol"]),
            side=Side(data["side"]),
            qty=float(data["qty"]),  # type: ignore[arg-type]
            price=float(data["price"]),  # type: ignore[arg-type]
            fee=float(data["fee"]),  # type: ignore[arg-type]
            ts=int(data["ts"]),  # type: ignore[arg-type]
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"fill {dict(data)!r}: {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestResult:
    """Everything a backtest produced; equal inputs give an equal result (``==``)."""

    strategy: str
    parameters: Mapping[str, JSONValue]
    symbols: tuple[str, ...]
    ticks: int
    """How many ticks the strategy saw."""
    trades: tuple[Fill, ...]
    equity_ts: tuple[int, ...]
    equity: tuple[float, ...]
    """The sampled equity curve: cash + positions marked to mid, at ``equity_ts``."""
    sample_every: int
    initial_cash: float
    final_cash: float
    positions: Mapping[str, float]
    total_pnl: float
    fees: float
    sharpe: float
    max_drawdown: float
    first_ts: int | None = None
    last_ts: int | None = None
    vectorized: bool = field(default=False, compare=False)
    """Which path produced it (not part of equality: both paths must agree)."""

    def to_dict(self) -> dict[str, JSONValue]:
        """A JSON-ready dictionary."""
        return {
            "strategy": self.strategy,
            "parameters": dict(self.parameters),
            "symbols": list(self.symbols),
            "ticks": self.ticks,
            "trades": [_fill_dict(f) for f in self.trades],
            "equity_ts": list(self.equity_ts),
            "equity": list(self.equity),
            "sample_every": self.sample_every,
            "initial_cash": self.initial_cash,
            "final_cash": self.final_cash,
            "positions": dict(self.positions),
            "total_pnl": self.total_pnl,
            "fees": self.fees,
            "sharpe": self.sharpe,
            "max_drawdown": self.max_drawdown,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "vectorized": self.vectorized,
        }

    def summary(self) -> dict[str, JSONValue]:
        """The headline figures (no trades, no curve): a row of a results table."""
        full = self.to_dict()
        for key in ("trades", "equity_ts", "equity"):
            del full[key]
        full["trades"] = len(self.trades)
        return full
