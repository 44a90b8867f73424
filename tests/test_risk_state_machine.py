"""Every risk limit against an exchange book, driven by Hypothesis over orders, fills and cancels.

The machine keeps an account at an exchange: filled positions per (strategy, symbol) and the
working orders (market orders in flight, resting limits). Orders reach it only through
:func:`exposure` and :meth:`RiskEngine.check`, as in the live engine. Fills (full or partial, of
any working order, in any order) and cancels are chosen by Hypothesis. The invariants hold for
*every* future fill sequence, not only the one drawn: the furthest the filled position can still
go on each side (filled plus every working order on that side) stays within ``max_position``, and
once an order was admitted reduce-only, that side's bound does not cross zero while the engine
stays REDUCING.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from strategylab.strategy._strategy import OrderRequest, OrderType, Side
from strategylab.testing import FakeClock
from strategylab.trading._risk import (
    RiskEngine,
    RiskLimit,
    RiskLimits,
    RiskRejection,
    RiskState,
    exposure,
)

MAX_POSITION = 10.0
MAX_NOTIONAL = 1_000.0
RATE = 4.0
"""Orders per second; clock steps are multiples of 1/RATE so the bucket's arithmetic is exact."""
BURST = 3
STALE_AFTER = 2.0
SYMBOLS = ("A", "B")
STRATEGIES = ("s1", "s2")


@dataclass(slots=True)
class Working:
    """A working order at the exchange."""

    strategy: str
    request: OrderRequest
    remaining: float

    @property
    def remaining_signed(self) -> float:
        return self.remaining * self.request.side.sign


class RiskMachine(RuleBasedStateMachine):
    """An account at an exchange with the risk engine in front of it."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        limits = RiskLimits(
            max_order_notional=MAX_NOTIONAL,
            max_position=MAX_POSITION,
            max_orders_per_second=RATE,
            burst=BURST,
            stale_after=STALE_AFTER,
        )
        self.risk = RiskEngine(limits, symbols=SYMBOLS, clock=self.clock)
        self.positions: dict[tuple[str, str], float] = {}
        self.orders: list[Working] = []
        self.tokens = float(BURST)
        self.refilled_at = 0.0
        self.quotes: dict[str, float] = {}
        # Sides admitted reduce-only per symbol since the engine last entered REDUCING.
        self.reducing: dict[str, set[Side]] = {s: set() for s in SYMBOLS}
        self.admitted = 0

    # ------------------------------------------------------------------ the reference rules

    def bounds(self, symbol: str) -> tuple[float, float]:
        """(lowest, highest) filled position reachable whatever subset of working orders fills."""
        position, working_buy, working_sell = exposure(symbol, self.positions, self.orders)
        return position - working_sell, position + working_buy

    def expected(
        self, request: OrderRequest, state: RiskState, mark: float | None
    ) -> RiskLimit | None:
        """The rule that must refuse ``request``, written as plainly as possible."""
        low, high = self.bounds(request.symbol)
        buy = request.side is Side.BUY
        after = high + request.qty if buy else low - request.qty
        price = request.price if request.price is not None else mark
        limit: RiskLimit | None = None
        if state is RiskState.HALTED:
            limit = RiskLimit.HALTED
        elif state is RiskState.REDUCING and (after > 0.0 if buy else after < 0.0):
            limit = RiskLimit.REDUCE_ONLY
        elif price is None:
            limit = RiskLimit.NO_MARK_PRICE
        elif request.qty * price > MAX_NOTIONAL:
            limit = RiskLimit.ORDER_NOTIONAL
        elif after > MAX_POSITION if buy else after < -MAX_POSITION:
            limit = RiskLimit.POSITION
        else:
            tokens = min(
                float(BURST), self.tokens + (self.clock.monotonic() - self.refilled_at) * RATE
            )
            self.tokens, self.refilled_at = tokens, self.clock.monotonic()
            if tokens < 1.0:
                limit = RiskLimit.ORDER_RATE
            else:
                self.tokens -= 1.0
        return limit

    # ------------------------------------------------------------------ rules

    @initialize(
        held=st.lists(st.integers(-int(MAX_POSITION), int(MAX_POSITION)), min_size=2, max_size=2),
        quoted=st.booleans(),
    )
    def reconciled(self, held: list[int], *, quoted: bool) -> None:
        """Start from positions within the limit (as reconciliation finds them), maybe quoted."""
        for symbol, qty in zip(SYMBOLS, held, strict=True):
            self.positions[STRATEGIES[0], symbol] = float(qty)
            if quoted:
                self.quotes[symbol] = 100.0
                self.risk.on_tick(symbol)

    @rule(
        strategy=st.sampled_from(STRATEGIES),
        symbol=st.sampled_from(SYMBOLS),
        side=st.sampled_from(Side),
        qty=st.integers(1, 12),
        price=st.none() | st.sampled_from([1.0, 50.0, 99.0, 101.0, 250.0]),
    )
    def submit(self, strategy: str, symbol: str, side: Side, qty: int, price: float | None) -> None:
        """Send an order (market if no price, else limit) through exposure() and check()."""
        kind = OrderType.MARKET if price is None else OrderType.LIMIT
        request = OrderRequest(symbol=symbol, side=side, qty=float(qty), type=kind, price=price)
        state = self.risk.state
        mark = self.quotes.get(symbol)
        want = self.expected(request, state, mark)
        position, working_buy, working_sell = exposure(symbol, self.positions, self.orders)
        rejection: RiskRejection | None = self.risk.check(
            request, position, mark, working_buy, working_sell
        )
        assert (None if rejection is None else rejection.limit) is want, (rejection, want)
        event(f"{state.value}: {'admitted' if want is None else want.value}")
        if rejection is None:
            self.admitted += 1
            self.orders.append(Working(strategy, request, float(qty)))
            if state is RiskState.REDUCING:
                self.reducing[symbol].add(side)
        else:
            assert rejection.symbol == symbol
            assert rejection.reason

    @precondition(lambda self: bool(self.orders))
    @rule(data=st.data(), full=st.booleans())
    def fill(self, data: st.DataObject, *, full: bool) -> None:
        """The exchange fills a working order, wholly or in part."""
        order = data.draw(st.sampled_from(self.orders))
        qty = order.remaining if full else float(data.draw(st.integers(1, int(order.remaining))))
        order.remaining -= qty
        key = (order.strategy, order.request.symbol)
        self.positions[key] = self.positions.get(key, 0.0) + qty * order.request.side.sign
        if order.remaining == 0.0:
            self.orders.remove(order)

    @precondition(lambda self: bool(self.orders))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """A working order is cancelled (or the exchange refused it): it can no longer fill."""
        self.risk.check_cancel()
        self.orders.remove(data.draw(st.sampled_from(self.orders)))

    @rule(symbol=st.sampled_from(SYMBOLS), mid=st.sampled_from([20.0, 100.0, 400.0]))
    def tick(self, symbol: str, mid: float) -> None:
        """Fresh market data: the symbol has a mark and is no longer stale."""
        self.quotes[symbol] = mid
        self.risk.on_tick(symbol)
        self.track_state()

    @rule(steps=st.integers(1, 6))
    def advance(self, steps: int) -> None:
        """Time passes (the throttle refills; data may go stale)."""
        self.clock.advance(steps / RATE)
        self.track_state()

    @rule(action=st.sampled_from(["reduce_only", "halt", "resume"]))
    def operator(self, action: str) -> None:
        """An operator changes the risk state by hand."""
        if action == "resume":
            self.risk.resume()
        else:
            getattr(self.risk, action)("operator")
        self.track_state()

    def track_state(self) -> None:
        if self.risk.state is not RiskState.REDUCING:
            for sides in self.reducing.values():
                sides.clear()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def worst_case_within_max_position(self) -> None:
        """Whatever subset of the working orders fills, no symbol's position breaks the limit."""
        for symbol in SYMBOLS:
            low, high = self.bounds(symbol)
            assert low >= -MAX_POSITION, (symbol, low)
            assert high <= MAX_POSITION, (symbol, high)

    @invariant()
    def reduce_only_never_crosses_zero(self) -> None:
        """After a reduce-only sell the position stays >= 0 whatever fills (a buy: <= 0)."""
        self.track_state()
        for symbol, sides in self.reducing.items():
            low, high = self.bounds(symbol)
            if Side.SELL in sides:
                assert low >= 0.0, (symbol, low)
            if Side.BUY in sides:
                assert high <= 0.0, (symbol, high)


RiskMachine.TestCase.settings = settings(max_examples=400, stateful_step_count=50, deadline=None)
TestRiskStateMachine = RiskMachine.TestCase
