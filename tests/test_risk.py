"""The risk engine: states, each limit, stale data, on a FakeClock."""

from __future__ import annotations

import pytest

from strategylab.errors import ConfigurationError
from strategylab.strategy._strategy import OrderRequest, OrderType, Side
from strategylab.testing import FakeClock
from strategylab.trading._risk import RiskEngine, RiskLimit, RiskLimits, RiskState

BUY = OrderRequest(symbol="A", side=Side.BUY, qty=10)
SELL = OrderRequest(symbol="A", side=Side.SELL, qty=10)


def state(risk: RiskEngine) -> RiskState:
    return risk.state


def engine(clock: FakeClock, **limits: float) -> RiskEngine:
    config = {"stale_after": 5.0, **limits}
    return RiskEngine(RiskLimits(**config), symbols=("A",), clock=clock)  # type: ignore[arg-type]


@pytest.mark.timeout(5)
def test_order_within_limits_passes() -> None:
    """An order inside every limit gets no rejection."""
    risk = engine(FakeClock())
    assert risk.check(BUY, 0.0, 100.0) is None
    assert state(risk) is RiskState.ACTIVE


@pytest.mark.timeout(5)
def test_notional_limit_names_values() -> None:
    """qty × price above max_order_notional is refused with both values."""
    risk = engine(FakeClock(), max_order_notional=500.0)
    rejection = risk.check(BUY, 0.0, 100.0)
    assert rejection is not None
    assert rejection.limit is RiskLimit.ORDER_NOTIONAL
    assert (rejection.value, rejection.threshold) == (1000.0, 500.0)


@pytest.mark.timeout(5)
def test_limit_order_priced_at_its_limit() -> None:
    """A limit order's notional uses its own price, not the mark."""
    risk = engine(FakeClock(), max_order_notional=500.0)
    cheap = OrderRequest(symbol="A", side=Side.BUY, qty=10, type=OrderType.LIMIT, price=40.0)
    assert risk.check(cheap, 0.0, 100.0) is None


@pytest.mark.timeout(5)
def test_position_limit_refuses_growth_but_not_reduction() -> None:
    """An order taking |position| past max_position is refused; one reducing it passes."""
    risk = engine(FakeClock(), max_position=15.0)
    grow = risk.check(BUY, 10.0, 1.0)
    assert grow is not None
    assert grow.limit is RiskLimit.POSITION
    assert grow.value == 20.0
    assert risk.check(SELL, 20.0, 1.0) is None


@pytest.mark.timeout(5)
def test_throttle_refuses_past_burst_and_refills_on_the_clock() -> None:
    """Past ``burst`` orders are refused until the bucket refills at the configured rate."""
    clock = FakeClock()
    risk = engine(clock, max_orders_per_second=2.0, burst=3)
    assert [risk.check(BUY, 0.0, 1.0) for _ in range(3)] == [None, None, None]
    refused = risk.check(BUY, 0.0, 1.0)
    assert refused is not None
    assert refused.limit is RiskLimit.ORDER_RATE
    clock.advance(0.5)  # one token at 2/s
    assert risk.check(BUY, 0.0, 1.0) is None
    assert risk.check(BUY, 0.0, 1.0) is not None


@pytest.mark.timeout(5)
def test_market_order_without_a_quote_is_refused() -> None:
    """A market order cannot be priced without a mark."""
    rejection = engine(FakeClock()).check(BUY, 0.0, None)
    assert rejection is not None
    assert rejection.limit is RiskLimit.NO_MARK_PRICE


@pytest.mark.timeout(5)
def test_stale_data_moves_to_reducing_and_fresh_data_back() -> None:
    """No tick within stale_after → REDUCING (only reducing orders); a tick → ACTIVE."""
    clock = FakeClock()
    risk = engine(clock)
    clock.advance(4.9)
    assert state(risk) is RiskState.ACTIVE
    clock.advance(0.2)
    assert state(risk) is RiskState.REDUCING
    assert risk.stale_symbols == {"A"}
    refused = risk.check(BUY, 0.0, 1.0)
    assert refused is not None
    assert refused.limit is RiskLimit.REDUCE_ONLY
    assert risk.check(SELL, 10.0, 1.0) is None  # closes a long: passes
    flip = OrderRequest(symbol="A", side=Side.SELL, qty=30)
    assert risk.check(flip, 10.0, 1.0) is not None  # would flip to short: refused
    risk.on_tick("A")
    assert state(risk) is RiskState.ACTIVE
    assert risk.check(BUY, 0.0, 1.0) is None


@pytest.mark.timeout(5)
def test_stale_detected_by_check_alone() -> None:
    """check() evaluates staleness itself; no separate refresh call is needed."""
    clock = FakeClock()
    risk = engine(clock)
    clock.advance(6.0)
    rejection = risk.check(BUY, 0.0, 1.0)
    assert rejection is not None
    assert rejection.limit is RiskLimit.REDUCE_ONLY


@pytest.mark.timeout(5)
def test_halted_refuses_everything_and_fresh_data_does_not_leave_it() -> None:
    """HALTED refuses even reducing orders; only resume() leaves it."""
    clock = FakeClock()
    risk = engine(clock)
    risk.halt("kill switch")
    assert risk.check(SELL, 10.0, 1.0) is not None
    risk.check_cancel()  # cancels are always allowed: no exception
    risk.on_tick("A")
    assert state(risk) is RiskState.HALTED
    risk.resume()
    assert state(risk) is RiskState.ACTIVE
    assert risk.check(BUY, 0.0, 1.0) is None


@pytest.mark.timeout(5)
def test_resume_while_stale_lands_in_reducing() -> None:
    """Leaving HALTED with stale data goes to REDUCING, not ACTIVE."""
    clock = FakeClock()
    risk = engine(clock)
    risk.halt("manual")
    clock.advance(10.0)
    risk.resume()
    assert state(risk) is RiskState.REDUCING


@pytest.mark.timeout(5)
def test_transitions_are_recorded_with_reasons() -> None:
    """Every state change is kept with its reason."""
    clock = FakeClock()
    risk = engine(clock)
    clock.advance(6.0)
    _ = risk.state
    risk.on_tick("A")
    assert [(a, b) for a, b, _why in risk.transitions] == [
        (RiskState.ACTIVE, RiskState.REDUCING),
        (RiskState.REDUCING, RiskState.ACTIVE),
    ]
    assert "stale" in risk.transitions[0][2]


@pytest.mark.timeout(5)
@pytest.mark.parametrize("field", ["max_order_notional", "max_position", "max_orders_per_second"])
def test_limits_validate(field: str) -> None:
    """A non-positive limit is a ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError, match=field):
        RiskLimits(**{field: 0.0})  # type: ignore[arg-type]
