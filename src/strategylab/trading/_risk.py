"""The risk engine: a pure, synchronous check in front of every order.

States (:class:`RiskState`):

- ``ACTIVE``: every order within the limits passes.
- ``REDUCING``: only orders that reduce a position and cannot take it across zero, whatever
  subset of the working orders fills, pass. Entered automatically when market data for a watched
  symbol is stale (no tick within ``stale_after`` seconds on the injected clock) and left
  automatically when every watched symbol is fresh again; or entered by hand with
  :meth:`RiskEngine.reduce_only`.
- ``HALTED``: no order passes (cancels are always allowed: :meth:`RiskEngine.check_cancel`).
  Entered by hand or in an emergency with :meth:`RiskEngine.halt`, which only
  :meth:`RiskEngine.resume` leaves; or by a *hold* (:meth:`RiskEngine.hold`), a halt that belongs
  to one source (the engine's security hold after a forged frame is one) and that only
  :meth:`RiskEngine.release` of that source lifts. Holds and the manual state are independent:
  releasing a hold never lifts an operator's halt, and :meth:`RiskEngine.resume` never lifts a
  hold. Fresh data leaves neither.

Limits, checked in this order after the state: maximum order notional (``qty × price``, the limit
price or else the mark), maximum absolute position per symbol, order-rate throttle (a token bucket
of ``burst`` orders refilled at ``max_orders_per_second`` on the injected clock). A refused order
gets a :class:`RiskRejection` naming the limit and the values.

Worst case per side. A working order (resting limit, or market order in flight) may fill or may
never fill, so it must never make room for another order. The check therefore never nets working
orders against each other: a buy of ``q`` passes the position limit only if the filled position
plus *every* working buy plus ``q`` stays within ``max_position`` (working sells are assumed not
to fill), and a sell likewise on the short side. Whatever subset of the working orders then fills,
in whatever order, the filled position stays between ``position - working_sell`` and ``position +
working_buy``, so it never breaks the limit. Reduce-only uses the same bounds with zero as the
limit: long ``P``, a sell of ``q`` passes only if ``working_sell + q <= P``; no buy passes; flat,
nothing passes (but cancels).

The check is the hot path of both live trading and backtests: one clock read, a few comparisons,
no allocation when the order passes. Staleness is evaluated lazily against the earliest deadline,
so a check does not walk the symbols. :func:`exposure` builds the check's inputs from a book of
positions and working orders.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from strategylab import _validate
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import StrategyLabError
from strategylab.strategy import OrderRequest, Side

__all__ = [
    "Exposure",
    "RiskEngine",
    "RiskLimit",
    "RiskLimits",
    "RiskRejectedError",
    "RiskRejection",
    "RiskState",
    "WorkingOrder",
    "exposure",
]

_log = logging.getLogger("strategylab.market.risk")
_BUY = Side.BUY


class RiskState(enum.Enum):
    """What the risk engine lets through."""

    ACTIVE = "active"
    REDUCING = "reducing"
    HALTED = "halted"


class RiskLimit(enum.Enum):
    """Which rule refused an order."""

    HALTED = "halted"
    REDUCE_ONLY = "reduce_only"
    ORDER_RATE = "order_rate"
    ORDER_NOTIONAL = "order_notional"
    POSITION = "position"
    NO_MARK_PRICE = "no_mark_price"


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskRejection:
    """Why an order was refused: the limit, the value that broke it and the limit's value."""

    limit: RiskLimit
    symbol: str
    value: float
    threshold: float
    reason: str


class RiskRejectedError(StrategyLabError):
    """An order was refused by the risk engine; ``rejection`` says why."""

    def __init__(self, rejection: RiskRejection) -> None:
        super().__init__(f"{rejection.symbol}: {rejection.limit.value}: {rejection.reason}")
        self.rejection = rejection


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskLimits:
    """The limits; validated on construction (errors name the field).

    ``stale_after`` None switches the stale-data rule off.
    """

    max_order_notional: float = 1_000_000.0
    max_position: float = 1_000.0
    max_orders_per_second: float = 50.0
    burst: int = 20
    stale_after: float | None = 5.0

    def __post_init__(self) -> None:
        for key in ("max_order_notional", "max_position", "max_orders_per_second"):
            _validate.number(key, getattr(self, key), minimum=0, exclusive_minimum=True)
        _validate.integer("burst", self.burst, minimum=1)
        if self.stale_after is not None:
            _validate.seconds("stale_after", self.stale_after)


class RiskEngine:
    """Checks orders against :class:`RiskLimits` and the current :class:`RiskState`.

    ``symbols`` are watched for staleness from construction (a symbol with no tick yet is stale
    once ``stale_after`` has passed since construction); :meth:`watch` adds more later.
    """

    __slots__ = (
        "_burst",
        "_clock",
        "_deadline",
        "_halt_reason",
        "_holds",
        "_last_tick",
        "_limits",
        "_manual",
        "_max_notional",
        "_max_position",
        "_monotonic",
        "_rate",
        "_refilled_at",
        "_stale",
        "_stale_after",
        "_state",
        "_tokens",
        "rejections",
        "transitions",
    )

    def __init__(
        self,
        limits: RiskLimits | None = None,
        *,
        symbols: Iterable[str] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._limits = limits if limits is not None else RiskLimits()
        self._clock = clock
        self._monotonic = clock.monotonic
        self._max_notional = self._limits.max_order_notional
        self._max_position = self._limits.max_position
        self._rate = self._limits.max_orders_per_second
        self._burst = float(self._limits.burst)
        self._stale_after = self._limits.stale_after
        now = self._monotonic()
        self._tokens = self._burst
        self._refilled_at = now
        self._last_tick: dict[str, float] = dict.fromkeys(symbols, now)
        self._stale: frozenset[str] = frozenset()
        self._state = RiskState.ACTIVE
        self._manual: RiskState | None = None  # a state set by hand wins over the data rule
        self._halt_reason = ""
        self._holds: dict[str, str] = {}  # source -> reason; any hold means HALTED
        self._deadline = self._next_deadline()
        self.rejections = 0
        self.transitions: list[tuple[RiskState, RiskState, str]] = []

    # ------------------------------------------------------------------ state

    @property
    def limits(self) -> RiskLimits:
        """The configured limits."""
        return self._limits

    @property
    def state(self) -> RiskState:
        """The current state (staleness evaluated now)."""
        now = self._monotonic()
        if now >= self._deadline:
            self._refresh(now)
        return self._state

    @property
    def stale_symbols(self) -> frozenset[str]:
        """Watched symbols with no tick within ``stale_after`` (as of the last evaluation)."""
        _ = self.state
        return self._stale

    @property
    def reason(self) -> str:
        """Why the engine is not ACTIVE ('' when it is)."""
        state = self.state
        if state is RiskState.ACTIVE:
            return ""
        return self._why()

    @property
    def holds(self) -> dict[str, str]:
        """The holds in force: source → reason (a copy)."""
        return dict(self._holds)

    def watch(self, symbols: Iterable[str]) -> None:
        """Watch more symbols for staleness, counting from now."""
        now = self._monotonic()
        for symbol in symbols:
            self._last_tick.setdefault(symbol, now)
        self._deadline = self._next_deadline()

    def halt(self, reason: str) -> None:
        """Enter HALTED (manual or emergency); only :meth:`resume` leaves it."""
        self._manual = RiskState.HALTED
        self._halt_reason = reason or "halted"
        self._refresh(self._monotonic())

    def reduce_only(self, reason: str) -> None:
        """Enter REDUCING by hand (HALTED while a hold is in force); only :meth:`resume` leaves
        it."""
        self._manual = RiskState.REDUCING
        self._halt_reason = reason or "reduce only"
        self._refresh(self._monotonic())

    def resume(self) -> None:
        """Leave a manual state; holds stay, then the data rule decides (REDUCING while stale)."""
        self._manual = None
        self._halt_reason = ""
        self._refresh(self._monotonic())

    def hold(self, source: str, reason: str) -> None:
        """HALTED until :meth:`release` of ``source`` (a second hold of ``source`` replaces the
        reason); independent of :meth:`halt` and :meth:`resume`."""
        if not source:
            raise ValueError("source must be a non-empty str")
        self._holds[source] = reason or f"held by {source}"
        self._refresh(self._monotonic())

    def release(self, source: str) -> bool:
        """Lift the hold of ``source`` (True if there was one); other holds and a manual state
        stay in force."""
        if self._holds.pop(source, None) is None:
            return False
        self._refresh(self._monotonic())
        return True

    def on_tick(self, symbol: str) -> None:
        """Record fresh market data for ``symbol`` (call for every tick, or every batch)."""
        now = self._monotonic()
        self._last_tick[symbol] = now
        if self._stale and symbol in self._stale:
            self._refresh(now)

    def _next_deadline(self) -> float:
        if self._stale_after is None or not self._last_tick:
            return math.inf
        return min(self._last_tick.values()) + self._stale_after

    def _refresh(self, now: float) -> None:
        stale_after = self._stale_after
        if stale_after is None:
            self._stale = frozenset()
            self._deadline = math.inf
        else:
            self._stale = frozenset(s for s, t in self._last_tick.items() if now - t >= stale_after)
            fresh = [t for t in self._last_tick.values() if now - t < stale_after]
            # While something is stale, any tick of it refreshes through on_tick; otherwise the
            # next deadline is when the oldest fresh symbol goes stale.
            self._deadline = min(fresh) + stale_after if fresh else math.inf
        if self._manual is RiskState.HALTED or self._holds:
            target = RiskState.HALTED
        elif self._manual is not None or self._stale:
            target = RiskState.REDUCING
        else:
            self._set(RiskState.ACTIVE, "market data fresh")
            return
        self._set(target, self._why())

    def _why(self) -> str:
        """The reasons in force, strictest first: manual halt, holds, manual reduce, stale."""
        manual = self._manual
        parts = [self._halt_reason] if manual is RiskState.HALTED else []
        parts.extend(self._holds.values())
        if manual is RiskState.REDUCING:
            parts.append(self._halt_reason)
        if not parts and self._stale:
            parts.append("stale market data: " + ", ".join(sorted(self._stale)))
        return "; ".join(parts)

    def _set(self, state: RiskState, why: str) -> None:
        if state is not self._state:
            self.transitions.append((self._state, state, why))
            _log.warning("risk state %s -> %s: %s", self._state.value, state.value, why)
            self._state = state

    # ------------------------------------------------------------------ checks

    def check_cancel(self) -> None:
        """Cancels are allowed in every state (this exists so callers say so explicitly)."""

    def check(  # noqa: PLR0911 - one return per rule
        self,
        request: OrderRequest,
        position: float,
        mark_price: float | None,
        working_buy: float = 0.0,
        working_sell: float = 0.0,
    ) -> RiskRejection | None:
        """``None`` if ``request`` may be sent; else why not.

        ``position`` is the filled position in ``request.symbol`` (signed, units). ``working_buy``
        and ``working_sell`` are the unfilled quantities (units, both >= 0) of every order on each
        side that may still fill: resting limit orders and orders in flight, including one whose
        outcome is unknown. They are never netted: see the module docstring. ``mark_price``
        prices a market order's notional (the ask for a buy, the bid for a sell); a limit order
        is priced at its limit. Passing consumes one throttle token.

        Raises :class:`ValueError` if ``working_buy`` or ``working_sell`` is negative or NaN (a
        negative working quantity would make room that no order provides).
        """
        if not (working_buy >= 0.0 and working_sell >= 0.0):
            raise ValueError(
                f"working_buy={working_buy!r}, working_sell={working_sell!r}: "
                "working quantities must be >= 0"
            )
        now = self._monotonic()
        if now >= self._deadline:
            self._refresh(now)
        qty = request.qty
        buy = request.side is _BUY
        # The position if every working order on this side and this one fill, and nothing on the
        # other side does: the furthest the filled position can go in this order's direction.
        worst = position + working_buy + qty if buy else position - working_sell - qty
        state = self._state
        if state is not RiskState.ACTIVE:
            if state is RiskState.HALTED:
                return self._reject(RiskLimit.HALTED, request, 0.0, 0.0, self.reason)
            # Reducing: whatever fills, the position must not cross zero (written so that NaN
            # refuses). A buy needs a short position, a sell a long one, since qty > 0.
            if not (worst <= 0.0 if buy else worst >= 0.0):
                return self._reject(
                    RiskLimit.REDUCE_ONLY,
                    request,
                    worst,
                    0.0,
                    f"{self.reason}; only orders that reduce the position without crossing zero "
                    f"pass: position {position:g}, working "
                    f"{'buys' if buy else 'sells'} {working_buy if buy else working_sell:g}, "
                    f"this {request.side.value} {qty:g} could leave {worst:g}",
                )
        price = request.price if request.price is not None else mark_price
        if price is None:
            return self._reject(
                RiskLimit.NO_MARK_PRICE, request, 0.0, 0.0, "no quote yet to price a market order"
            )
        notional = qty * price
        if notional > self._max_notional:
            return self._reject(
                RiskLimit.ORDER_NOTIONAL,
                request,
                notional,
                self._max_notional,
                f"notional {notional:g} > max_order_notional {self._max_notional:g}",
            )
        limit = self._max_position
        if not (worst <= limit if buy else worst >= -limit):
            return self._reject(
                RiskLimit.POSITION,
                request,
                worst,
                limit,
                f"worst-case position {worst:g} (filled {position:g}, working "
                f"{'buys' if buy else 'sells'} {working_buy if buy else working_sell:g}, "
                f"this {request.side.value} {qty:g}) exceeds max_position {limit:g}",
            )
        tokens = self._tokens + (now - self._refilled_at) * self._rate
        tokens = min(tokens, self._burst)
        self._refilled_at = now
        if tokens < 1.0:
            self._tokens = tokens
            return self._reject(
                RiskLimit.ORDER_RATE,
                request,
                self._rate,
                self._rate,
                f"order rate above max_orders_per_second {self._rate:g} (burst {self._burst:g})",
            )
        self._tokens = tokens - 1.0
        return None

    def _reject(
        self, limit: RiskLimit, request: OrderRequest, value: float, threshold: float, reason: str
    ) -> RiskRejection:
        self.rejections += 1
        return RiskRejection(
            limit=limit, symbol=request.symbol, value=value, threshold=threshold, reason=reason
        )


class WorkingOrder(Protocol):
    """An order that may still fill, as :func:`exposure` reads it."""

    @property
    def request(self) -> OrderRequest:
        """The order as asked for (its symbol and side)."""
        ...

    @property
    def remaining_signed(self) -> float:
        """Quantity still to fill (units), signed by side; 0 once it can no longer fill."""
        ...


class Exposure(NamedTuple):
    """The inputs of :meth:`RiskEngine.check` for one symbol (units)."""

    position: float
    """Filled position, signed."""
    working_buy: float
    """Unfilled quantity of every working buy (>= 0)."""
    working_sell: float
    """Unfilled quantity of every working sell (>= 0)."""


def exposure(
    symbol: str,
    positions: Mapping[tuple[str, str], float],
    orders: Iterable[WorkingOrder],
) -> Exposure:
    """``symbol``'s filled position summed over every ``(owner, symbol)`` key of ``positions``,
    and its working orders' unfilled quantities per side, never netted.

    The exchange holds one position per symbol for the account, so the limit applies to the sum
    over strategies. ``orders`` may include orders of other symbols and finished ones (they add
    nothing).
    """
    position = 0.0
    for (_owner, held), qty in positions.items():
        if held == symbol:
            position += qty
    working_buy = working_sell = 0.0
    for order in orders:
        if order.request.symbol == symbol:
            remaining = order.remaining_signed
            if remaining > 0.0:
                working_buy += remaining
            elif remaining < 0.0:
                working_sell -= remaining
    return Exposure(position, working_buy, working_sell)
