"""Pre-trade risk with working orders: worst case per side, never netted (issue 8, item 12)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from strategylab.strategy._strategy import OrderRequest, OrderType, Side
from strategylab.testing import FakeClock
from strategylab.trading._risk import (
    Exposure,
    RiskEngine,
    RiskLimit,
    RiskLimits,
    RiskRejection,
    exposure,
)


@dataclass(slots=True)
class Working:
    """A working order as the engine's book holds it."""

    request: OrderRequest
    filled: float = 0.0
    done: bool = False

    @property
    def remaining_signed(self) -> float:
        return 0.0 if self.done else (self.request.qty - self.filled) * self.request.side.sign


class Book:
    """One account at an exchange: filled positions per (strategy, symbol) and working orders.

    Every order goes through :func:`exposure` and :meth:`RiskEngine.check` the way the live engine
    sends it; fills move the position the way the exchange's fills do.
    """

    def __init__(self, risk: RiskEngine) -> None:
        self.risk = risk
        self.positions: dict[tuple[str, str], float] = {}
        self.orders: list[Working] = []

    def submit(self, request: OrderRequest, mark: float = 100.0) -> RiskRejection | None:
        position, working_buy, working_sell = exposure(request.symbol, self.positions, self.orders)
        rejection = self.risk.check(request, position, mark, working_buy, working_sell)
        if rejection is None:
            self.orders.append(Working(request))
        return rejection

    def fill(self, order: Working, qty: float | None = None, strategy: str = "s") -> None:
        qty = order.request.qty - order.filled if qty is None else qty
        order.filled += qty
        key = (strategy, order.request.symbol)
        self.positions[key] = self.positions.get(key, 0.0) + qty * order.request.side.sign

    def position(self, symbol: str = "A") -> float:
        return exposure(symbol, self.positions, ()).position


def book(**limits: float) -> Book:
    config: dict[str, float | None] = {"stale_after": None, **limits}
    return Book(RiskEngine(RiskLimits(**config), clock=FakeClock()))  # type: ignore[arg-type]


def market(side: Side, qty: float, symbol: str = "A") -> OrderRequest:
    return OrderRequest(symbol=symbol, side=side, qty=qty)


def limit(side: Side, qty: float, price: float, symbol: str = "A") -> OrderRequest:
    return OrderRequest(symbol=symbol, side=side, qty=qty, type=OrderType.LIMIT, price=price)


@pytest.mark.timeout(5)
def test_resting_sell_does_not_make_room_for_a_second_buy() -> None:
    """max_position 10, a far resting SELL 10, two market BUY 10: the second is refused."""
    b = book(max_position=10.0)
    assert b.submit(limit(Side.SELL, 10, 1_000.0)) is None
    assert b.submit(market(Side.BUY, 10)) is None
    refused = b.submit(market(Side.BUY, 10))
    assert refused is not None
    assert refused.limit is RiskLimit.POSITION
    assert (refused.value, refused.threshold) == (20.0, 10.0)
    for order in b.orders[1:]:  # every admitted buy fills; the resting sell never does
        b.fill(order)
    assert b.position() == 10.0


@pytest.mark.timeout(5)
def test_reduce_only_resting_buy_does_not_make_room_for_a_second_sell() -> None:
    """Reduce-only, long 10 with a resting BUY 10: one SELL 10 passes, a second is refused."""
    b = book(max_position=100.0)
    assert b.submit(market(Side.BUY, 10)) is None
    b.fill(b.orders[0])
    assert b.submit(limit(Side.BUY, 10, 1.0)) is None
    b.risk.reduce_only("operator")
    assert b.submit(market(Side.SELL, 10)) is None
    refused = b.submit(market(Side.SELL, 10))
    assert refused is not None
    assert refused.limit is RiskLimit.REDUCE_ONLY
    assert refused.value == -10.0
    b.fill(b.orders[2])
    assert b.position() == 0.0


@pytest.mark.timeout(5)
def test_in_flight_market_orders_count_on_their_own_side() -> None:
    """Unfilled market buys count toward the long side until their fills are seen."""
    risk = RiskEngine(RiskLimits(max_position=10.0, stale_after=None), clock=FakeClock())
    assert risk.check(market(Side.BUY, 4), 0.0, 1.0, working_buy=6.0) is None
    refused = risk.check(market(Side.BUY, 5), 0.0, 1.0, working_buy=6.0)
    assert refused is not None
    assert refused.value == 11.0


@pytest.mark.timeout(5)
def test_short_side_is_checked_against_working_sells_not_buys() -> None:
    """A sell's worst case is filled minus every working sell; working buys never offset it."""
    risk = RiskEngine(RiskLimits(max_position=10.0, stale_after=None), clock=FakeClock())
    refused = risk.check(market(Side.SELL, 6), -2.0, 1.0, working_buy=50.0, working_sell=3.0)
    assert refused is not None
    assert refused.limit is RiskLimit.POSITION
    assert refused.value == -11.0
    assert risk.check(market(Side.SELL, 5), -2.0, 1.0, working_buy=0.0, working_sell=3.0) is None


@pytest.mark.timeout(5)
def test_position_beyond_the_limit_may_still_be_reduced() -> None:
    """Filled 20 above max_position 15: a sell passes, a buy is refused."""
    risk = RiskEngine(RiskLimits(max_position=15.0, stale_after=None), clock=FakeClock())
    assert risk.check(market(Side.SELL, 5), 20.0, 1.0, working_sell=5.0) is None
    refused = risk.check(market(Side.BUY, 1), 20.0, 1.0)
    assert refused is not None
    assert refused.limit is RiskLimit.POSITION


@pytest.mark.parametrize(
    ("side", "qty", "held", "passes"),
    [
        # held: (filled position, working buys, working sells)
        (Side.SELL, 6.0, (10.0, 0.0, 4.0), True),  # lands exactly on zero
        (Side.SELL, 7.0, (10.0, 0.0, 4.0), False),  # working sells + this cross zero
        (Side.SELL, 11.0, (10.0, 30.0, 0.0), False),  # working buys never make room
        (Side.BUY, 1.0, (10.0, 0.0, 0.0), False),  # a buy on a long grows it
        (Side.BUY, 5.0, (-8.0, 3.0, 0.0), True),
        (Side.BUY, 6.0, (-8.0, 3.0, 0.0), False),
        (Side.SELL, 1.0, (-8.0, 0.0, 0.0), False),
        (Side.BUY, 1.0, (0.0, 0.0, 0.0), False),  # flat: nothing but cancels
        (Side.SELL, 1.0, (0.0, 0.0, 0.0), False),
    ],
)
@pytest.mark.timeout(5)
def test_reduce_only_admits_only_what_cannot_cross_zero(
    side: Side, qty: float, held: tuple[float, float, float], *, passes: bool
) -> None:
    """REDUCING: whatever subset of working orders fills, the position does not cross zero."""
    risk = RiskEngine(RiskLimits(max_position=100.0, stale_after=None), clock=FakeClock())
    risk.reduce_only("test")
    position, working_buy, working_sell = held
    rejection = risk.check(market(side, qty), position, 1.0, working_buy, working_sell)
    assert (rejection is None) is passes
    if rejection is not None:
        assert rejection.limit is RiskLimit.REDUCE_ONLY


@pytest.mark.timeout(5)
def test_cancels_pass_in_every_state() -> None:
    """check_cancel never refuses, even HALTED and flat in REDUCING."""
    risk = RiskEngine(RiskLimits(stale_after=None), clock=FakeClock())
    risk.reduce_only("test")
    assert risk.check_cancel() is None  # type: ignore[func-returns-value]
    risk.halt("test")
    assert risk.check_cancel() is None  # type: ignore[func-returns-value]
    assert risk.rejections == 0


@pytest.mark.parametrize(
    ("position", "side"),
    [(math.nan, Side.BUY), (math.nan, Side.SELL), (math.inf, Side.BUY), (-math.inf, Side.SELL)],
)
@pytest.mark.timeout(5)
def test_unknown_position_is_refused(position: float, side: Side) -> None:
    """A NaN position, or an infinite one on the order's side, never passes the position rule."""
    risk = RiskEngine(RiskLimits(stale_after=None), clock=FakeClock())
    rejection = risk.check(market(side, 1), position, 1.0)
    assert rejection is not None
    assert rejection.limit is RiskLimit.POSITION


@pytest.mark.parametrize("side", list(Side))
@pytest.mark.timeout(5)
def test_unknown_position_is_refused_in_reduce_only(side: Side) -> None:
    """REDUCING with a NaN position: nothing passes."""
    risk = RiskEngine(RiskLimits(stale_after=None), clock=FakeClock())
    risk.reduce_only("test")
    rejection = risk.check(market(side, 1), math.nan, 1.0)
    assert rejection is not None
    assert rejection.limit is RiskLimit.REDUCE_ONLY


@pytest.mark.parametrize(
    ("working_buy", "working_sell", "named"),
    [(-1.0, 0.0, "working_buy=-1.0"), (0.0, -0.5, "working_sell=-0.5"), (math.nan, 0.0, "nan")],
)
@pytest.mark.timeout(5)
def test_negative_working_quantity_is_an_error_naming_it(
    working_buy: float, working_sell: float, named: str
) -> None:
    """A negative (or NaN) working quantity would make room; it raises, naming the argument."""
    risk = RiskEngine(RiskLimits(stale_after=None), clock=FakeClock())
    with pytest.raises(ValueError, match=named):
        risk.check(market(Side.BUY, 1), 0.0, 1.0, working_buy, working_sell)


@pytest.mark.timeout(5)
def test_exposure_sums_strategies_and_keeps_sides_apart() -> None:
    """exposure(): the account's filled position and per-side working quantities of one symbol."""
    a_buy, a_sell, b_buy = (
        limit(Side.BUY, 3, 1.0),
        limit(Side.SELL, 5, 9.0),
        market(Side.BUY, 7, "B"),
    )
    orders = [
        Working(a_buy, filled=1.0),
        Working(a_sell),
        Working(market(Side.SELL, 4)),
        Working(b_buy),
        Working(market(Side.BUY, 9), done=True),  # cancelled: adds nothing
    ]
    positions = {("s1", "A"): 2.0, ("s2", "A"): -6.0, ("s1", "B"): 50.0}
    assert exposure("A", positions, orders) == Exposure(-4.0, 2.0, 9.0)
    assert exposure("B", positions, orders) == Exposure(50.0, 7.0, 0.0)
    assert exposure("C", positions, orders) == Exposure(0.0, 0.0, 0.0)


@pytest.mark.timeout(5)
def test_other_strategy_position_counts_toward_the_limit() -> None:
    """Two strategies share the exchange's one position: the limit applies to their sum."""
    b = book(max_position=10.0)
    b.positions[("s1", "A")] = 8.0
    refused = b.submit(market(Side.BUY, 3))
    assert refused is not None
    assert refused.limit is RiskLimit.POSITION
    b.positions[("s2", "A")] = -5.0
    assert b.submit(market(Side.BUY, 3)) is None


@pytest.mark.timeout(5)
def test_refused_order_consumes_no_throttle_token() -> None:
    """A position refusal leaves the token bucket alone: the next fitting order passes."""
    clock = FakeClock()
    limits = RiskLimits(max_position=10.0, max_orders_per_second=1.0, burst=1, stale_after=None)
    b = Book(RiskEngine(limits, clock=clock))
    assert b.submit(limit(Side.SELL, 10, 1_000.0)) is None
    clock.advance(1.0)
    refused = b.submit(market(Side.BUY, 11))
    assert refused is not None
    assert refused.limit is RiskLimit.POSITION
    assert b.submit(market(Side.BUY, 10)) is None
    throttled = b.submit(market(Side.BUY, 1, "B"))
    assert throttled is not None
    assert throttled.limit is RiskLimit.ORDER_RATE
