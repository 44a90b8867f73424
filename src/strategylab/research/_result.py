"""A backtest's result and the metrics computed from its equity curve.

The equity curve is sampled every ``sample_every`` ticks (counted over the whole run, all symbols)
and at the last tick, marked to the mid price. From it:

* ``total_pnl`` = final equity - initial cash;
* ``max_drawdown`` = the largest fall from a running peak of the sampled equity, in currency
  (the capital is not a parameter of a strategy, so a percentage would be arbitrary);
* ``sharpe`` = mean(r) / std(r, ddof=1) × sqrt(365.25), over the daily differences r of the equity
  (its value at the last sample at or before each whole day after the first sample). On a constant
  capital base this equals the annualised Sharpe ratio of daily returns (the capital cancels).

  **No annualised figure without enough periods.** ``sharpe`` is None, and ``sharpe_reason`` says
  why, unless the curve spans at least :data:`MIN_SHARPE_PERIODS` (30) whole days, or when the daily
  differences do not vary. Annualising by sqrt(periods per year) extrapolates the returns of the
  data to a year: from 20 s of ticks sampled every 0.2 s it multiplies the per-sample ratio by
  sqrt(1.6e8) ≈ 12,600 and printed figures like -12,183. Lo (2002), "The Statistics of Sharpe
  Ratios", Financial Analysts Journal 58(4): the estimate's standard error is about
  sqrt((1 + SR²/2) / T) for T return periods, and scaling by sqrt(q) assumes independent returns
  over the scaling horizon; with fewer than ~30 periods the error is as large as a typical ratio,
  and intraday samples are neither independent nor a day long. 30 is the usual small-sample floor
  (the same spirit as GIPS, which forbids annualising returns of periods under a year); daily is
  the period the ratio is conventionally quoted from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from strategylab.strategy import Fill, JSONValue, Side

__all__ = [
    "DAY_NS",
    "MIN_SHARPE_PERIODS",
    "YEAR_NS",
    "BacktestResult",
    "EquityMetrics",
    "equity_metrics",
    "fill_from_dict",
    "format_span",
    "sharpe_shortfall",
]

DAY_NS: Final = 86_400 * 1_000_000_000
"""Nanoseconds in a day: the return period the Sharpe ratio is computed over."""
YEAR_NS: Final = 365.25 * DAY_NS
"""Nanoseconds in a year: the annualisation base of :func:`equity_metrics`."""
MIN_SHARPE_PERIODS: Final = 30
"""Daily return periods needed before an annualised Sharpe ratio is given (module docstring)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EquityMetrics:
    """What :func:`equity_metrics` derives from an equity curve."""

    sharpe: float | None
    """The annualised Sharpe ratio; None when it would mislead (``sharpe_reason`` says why)."""
    max_drawdown: float
    sharpe_reason: str | None = None
    """Why ``sharpe`` is None, e.g. ``needs >= 30 periods of 1 day; data spans 20.0 s``."""


def format_span(span_ns: int) -> str:
    """A duration for a person: ``20.0 s``, ``12.5 min``, ``3.2 h``, ``4.0 days``."""
    seconds = span_ns / 1e9
    for unit, size in (("days", 86_400.0), ("h", 3_600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def sharpe_shortfall(span_ns: int) -> str | None:
    """Why data spanning ``span_ns`` is too short for an annualised Sharpe ratio; None if it is not.

    The rule: at least :data:`MIN_SHARPE_PERIODS` whole days (see the module docstring).
    """
    if span_ns // DAY_NS >= MIN_SHARPE_PERIODS:
        return None
    return f"needs >= {MIN_SHARPE_PERIODS} periods of 1 day; data spans {format_span(span_ns)}"


def equity_metrics(ts: Sequence[int], equity: Sequence[float]) -> EquityMetrics:
    """Sharpe and maximum drawdown of a sampled equity curve (see the module docstring)."""
    if len(ts) != len(equity):
        raise ValueError(f"ts has {len(ts)} samples, equity {len(equity)}: must be equal")
    values = np.asarray(equity, dtype=np.float64)
    if values.size == 0:
        return EquityMetrics(sharpe=None, max_drawdown=0.0, sharpe_reason=sharpe_shortfall(0))
    drawdown = float(np.max(np.maximum.accumulate(values) - values))
    span = int(ts[-1]) - int(ts[0])
    reason = sharpe_shortfall(span)
    if reason is not None:
        return EquityMetrics(sharpe=None, max_drawdown=drawdown, sharpe_reason=reason)
    # The equity at the close of each whole day: the last sample at or before that instant.
    closes = int(ts[0]) + DAY_NS * np.arange(span // DAY_NS + 1, dtype=np.int64)
    at = np.searchsorted(np.asarray(ts, dtype=np.int64), closes, side="right") - 1
    daily = np.diff(values[at])
    std = float(np.std(daily, ddof=1))
    if not std > 0:
        reason = "daily returns do not vary"
        return EquityMetrics(sharpe=None, max_drawdown=drawdown, sharpe_reason=reason)
    sharpe = float(np.mean(daily)) / std * math.sqrt(YEAR_NS / DAY_NS)
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
    sharpe: float | None
    """Annualised Sharpe ratio of daily returns; None without enough periods (``sharpe_reason``)."""
    max_drawdown: float
    first_ts: int | None = None
    last_ts: int | None = None
    vectorized: bool = field(default=False, compare=False)
    """Which path produced it (not part of equality: both paths must agree)."""

    @property
    def sharpe_reason(self) -> str | None:
        """Why :attr:`sharpe` is None (None when it is given)."""
        if self.sharpe is not None:
            return None
        return equity_metrics(self.equity_ts, self.equity).sharpe_reason

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
            "sharpe_reason": self.sharpe_reason,
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
