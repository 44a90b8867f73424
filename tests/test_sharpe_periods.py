"""No annualised Sharpe without enough periods: None and the reason, not -12,183 from 20 s."""

from __future__ import annotations

import math

import pytest

from strategylab.research._result import (
    DAY_NS,
    MIN_SHARPE_PERIODS,
    YEAR_NS,
    equity_metrics,
    sharpe_shortfall,
)

SECOND = 1_000_000_000


def _curve(periods: int, step_ns: int) -> tuple[list[int], list[float]]:
    """An equity curve of uneven gains and losses, one sample every ``step_ns``."""
    ts = [i * step_ns for i in range(periods + 1)]
    equity = [0.0]
    for i in range(periods):
        equity.append(equity[-1] + (3.0 if i % 5 == 0 else -1.0))
    return ts, equity


def test_twenty_seconds_of_ticks_give_no_sharpe() -> None:
    """20 s sampled every 0.2 s (100 periods) has no annualised Sharpe, and says why."""
    ts, equity = _curve(100, SECOND // 5)
    metrics = equity_metrics(ts, equity)
    assert metrics.sharpe is None
    assert metrics.sharpe_reason == "needs >= 30 periods of 1 day; data spans 20.0 s"


@pytest.mark.parametrize("days", [1, 29])
def test_fewer_than_thirty_days_give_no_sharpe(days: int) -> None:
    """Under MIN_SHARPE_PERIODS whole days of data, however densely sampled, gives None."""
    ts, equity = _curve(days * 24, DAY_NS // 24)
    metrics = equity_metrics(ts, equity)
    assert metrics.sharpe is None
    assert f"{days}.0 days" in (metrics.sharpe_reason or "")


def test_thirty_days_give_the_annualised_ratio_of_daily_returns() -> None:
    """At 30 days, Sharpe = mean/std of the daily changes x sqrt(365.25), from hourly samples."""
    ts, equity = _curve(MIN_SHARPE_PERIODS * 24, DAY_NS // 24)
    metrics = equity_metrics(ts, equity)
    daily = [equity[(d + 1) * 24] - equity[d * 24] for d in range(MIN_SHARPE_PERIODS)]
    mean = sum(daily) / len(daily)
    std = math.sqrt(sum((x - mean) ** 2 for x in daily) / (len(daily) - 1))
    assert std > 0
    assert metrics.sharpe == pytest.approx(mean / std * math.sqrt(YEAR_NS / DAY_NS))
    assert metrics.sharpe_reason is None


def test_flat_daily_returns_give_no_sharpe() -> None:
    """A curve whose daily changes never vary has no ratio (not 0, not infinity)."""
    ts = [d * DAY_NS for d in range(40)]
    metrics = equity_metrics(ts, [float(d) for d in range(40)])
    assert metrics.sharpe is None
    assert metrics.sharpe_reason == "daily returns do not vary"


@pytest.mark.parametrize(
    ("span_ns", "shown"),
    [(0, "0.0 s"), (90 * SECOND, "1.5 min"), (2 * 3_600 * SECOND, "2.0 h"), (DAY_NS, "1.0 days")],
)
def test_shortfall_names_the_span(span_ns: int, shown: str) -> None:
    """The reason gives the span in a readable unit and the periods needed."""
    assert sharpe_shortfall(span_ns) == f"needs >= 30 periods of 1 day; data spans {shown}"


def test_no_shortfall_at_thirty_days() -> None:
    """Exactly MIN_SHARPE_PERIODS days is enough."""
    assert sharpe_shortfall(MIN_SHARPE_PERIODS * DAY_NS) is None
