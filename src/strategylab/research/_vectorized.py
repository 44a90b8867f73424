"""The vectorised path: the two built-in strategies as numpy array programs.

Same rules, same numbers: the rolling statistics come from ``numpy.cumsum`` (a left-to-right sum,
exactly what the event-driven strategies accumulate tick by tick), every comparison and every
fill price is the same IEEE operation on the same operands, and the cash is accounted trade by
trade in the same order as :class:`BacktestEngine` does. So the result is not merely close to the
event-driven one: it is equal (``==``), trades, equity curve and metrics included.

Only the signal is vectorised; the accounting loops over *trades*, which are few next to ticks.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from strategylab.strategy import MeanReversion, MovingAverageCrossover, Side, Strategy

from ._backtest import BacktestConfig, new_fill
from ._data import TickArrays
from ._result import BacktestResult, equity_metrics

__all__ = ["ma_crossover_targets", "mean_reversion_targets", "run_vectorized"]

Floats = npt.NDArray[np.float64]


def _cumulative(values: Floats) -> Floats:
    """``out[t]`` = values[0] + ... + values[t-1] (left to right), ``out[0]`` = 0."""
    out = np.empty(values.size + 1, dtype=np.float64)
    out[0] = 0.0
    np.cumsum(values, out=out[1:])
    return out


def ma_crossover_targets(mid: Floats, fast: int, slow: int, qty: float) -> Floats:
    """Target position after each tick under :class:`MovingAverageCrossover`'s rules."""
    n = mid.size
    targets = np.zeros(n, dtype=np.float64)
    if n < slow:
        return targets
    cum = _cumulative(mid)
    now = cum[slow:]  # C_t for t = slow..n
    fast_ma = now - cum[slow - fast : n + 1 - fast]
    fast_ma /= fast
    slow_ma = now - cum[: n + 1 - slow]
    slow_ma /= slow
    tail = targets[slow - 1 :]
    tail[fast_ma > slow_ma] = qty
    tail[fast_ma < slow_ma] = -qty
    return targets


def mean_reversion_targets(
    mid: Floats, window: int, entry_z: float, exit_z: float, qty: float
) -> Floats:
    """Target position after each tick under :class:`MeanReversion`'s rules (with hysteresis)."""
    n = mid.size
    if n < window:
        return np.zeros(n, dtype=np.float64)
    x = mid - mid[0]
    sums = _cumulative(x)
    squares = _cumulative(x * x)
    t = np.arange(window, n + 1)
    s = sums[t] - sums[t - window]
    q = squares[t] - squares[t - window]
    mean = s / window
    var = (q - s * mean) / (window - 1)
    valid = var > 0
    z = np.full(t.size, np.nan)
    z[valid] = (x[t - 1][valid] - mean[valid]) / np.sqrt(var[valid])
    signal = np.full(n, np.nan)
    tail = signal[window - 1 :]
    tail[np.abs(z) < exit_z] = 0.0
    tail[z < -entry_z] = qty
    tail[z > entry_z] = -qty  # the precedence of the event-driven if/elif chain, reversed
    index = np.where(np.isnan(signal), -1, np.arange(n))
    np.maximum.accumulate(index, out=index)
    return np.where(index >= 0, signal[np.maximum(index, 0)], 0.0)


def _targets(strategy: Strategy, mid: Floats) -> Floats:
    if isinstance(strategy, MovingAverageCrossover):
        return ma_crossover_targets(mid, strategy.fast, strategy.slow, strategy.qty)
    if isinstance(strategy, MeanReversion):
        return mean_reversion_targets(
            mid, strategy.window, strategy.entry_z, strategy.exit_z, strategy.qty
        )
    raise TypeError(
        f"strategy={type(strategy).__name__}: the vectorised path knows only the built-ins"
    )


def run_vectorized(
    strategy: Strategy, ticks: TickArrays, config: BacktestConfig | None = None
) -> BacktestResult:
    """Backtest a fresh built-in ``strategy`` over ``ticks`` (one symbol) with numpy.

    ``config``'s time range, costs and sampling apply as in :class:`BacktestEngine`; ``ticks``
    should already be the seq range wanted. Equal to the event-driven result (``==``).
    """
    cfg = config or BacktestConfig()
    if ticks.symbol != strategy.symbols[0] or len(strategy.symbols) != 1:
        raise ValueError(f"ticks of {ticks.symbol!r} for a strategy on {strategy.symbols}")
    window = ticks.window(cfg.start_ns, cfg.end_ns)
    bid, ask, ts = window.bid, window.ask, window.ts
    mid = (bid + ask) / 2
    targets = _targets(strategy, mid)
    delta = np.diff(targets, prepend=0.0)  # targets[t] - targets[t-1], the engine's order qty
    traded = np.flatnonzero(delta)

    # Each trade's price, notional and fee are the engine's IEEE operations, elementwise; the cash
    # is the engine's left-to-right sum (cash - notional == cash + -notional exactly), which
    # ``cumsum`` (a sequential accumulate) reproduces bit for bit.
    d = delta[traded]
    buy = d > 0
    qty = np.abs(d)
    price = np.where(buy, ask[traded] * (1 + cfg.slippage_bps / 10_000), 0.0)
    price[~buy] = bid[traded][~buy] * (1 - cfg.slippage_bps / 10_000)
    notional = qty * price
    fee = notional * (cfg.fee_bps / 10_000)
    steps = np.empty(2 * len(traded) + 1, dtype=np.float64)
    steps[0] = cfg.initial_cash
    steps[1::2] = np.where(buy, -notional, notional)
    steps[2::2] = -fee
    np.cumsum(steps, out=steps)
    cash_after = steps[0::2]  # the cash before any trade, then after each
    cash = float(cash_after[-1])
    fees = float(np.cumsum(fee)[-1]) if len(fee) else 0.0
    symbol, prefix = ticks.symbol, strategy.name
    trades = [
        new_fill(f"bt-{k}", f"{prefix}-{k}", symbol, Side.BUY if b else Side.SELL, q, p, f, t)
        for k, b, q, p, f, t in zip(
            range(1, len(traded) + 1),
            buy.tolist(),
            qty.tolist(),
            price.tolist(),
            fee.tolist(),
            ts[traded].tolist(),
            strict=True,
        )
    ]

    n = mid.size
    sampled = np.arange(cfg.sample_every - 1, n, cfg.sample_every)
    if n and n % cfg.sample_every:
        sampled = np.append(sampled, n - 1)
    cash_at = cash_after[np.searchsorted(traded, sampled, side="right")]
    equity = cash_at + targets[sampled] * mid[sampled]
    equity_ts = ts[sampled].tolist()
    equity_list = equity.tolist()
    metrics = equity_metrics(equity_ts, equity_list)
    final = equity_list[-1] if equity_list else cash
    return BacktestResult(
        strategy=strategy.name,
        parameters=strategy.parameters(),
        symbols=strategy.symbols,
        ticks=n,
        trades=tuple(trades),
        equity_ts=tuple(equity_ts),
        equity=tuple(equity_list),
        sample_every=cfg.sample_every,
        initial_cash=cfg.initial_cash,
        final_cash=cash,
        positions={ticks.symbol: float(targets[-1]) if n else 0.0},
        total_pnl=final - cfg.initial_cash,
        fees=fees,
        sharpe=metrics.sharpe,
        max_drawdown=metrics.max_drawdown,
        first_ts=int(ts[0]) if n else None,
        last_ts=int(ts[-1]) if n else None,
        vectorized=True,
    )
