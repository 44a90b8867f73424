"""The exchange's order book: market and limit orders against the simulator's own quotes.

Small on purpose (the strategy engine of issue 4 trades against it): a market order fills in full
at once at the current ask (buy) or bid (sell); a limit order fills in full at the quote as soon as
the quote crosses its price, and rests until then or until it is cancelled. A ``client_order_id``
names an order for ever: submitting it again returns the existing order, never a second one.

Order-lifecycle races, switched on by the exchange's admin faults (each order drawn with the
fault's ``rate`` from the seeded generator, so a run is deterministic under ``--seed``), do what
real venues do:

- ``partial_fills``: an order that executes is split into 2..4 equal parts; the first executes
  now, each later one at the first crossing quote of a later batch of ticks (a market order
  crosses every quote). Between parts the order is ``open`` with ``0 < filled_qty < qty`` and
  ``avg_fill_price`` the average of its fills (the venue's "partially filled"; the wire keeps
  four statuses, so a partial fill is ``open`` with a ``filled_qty``).
- ``resting_fills``: a limit order rests even when marketable (a thin book ahead of it in the
  queue) and fills in 2..4 parts as later quotes walk through its price, one part a batch.
- ``fill_cancel_race``: a cancel meets an execution already in flight at the matching engine.
  The execution lands first, at the order's limit price (a market order's at the quote): its
  next part if the order is split, else all that remains. If that filled the order the cancel
  is answered too late (409, :class:`CancelTooLateError`; the fill stands, as a venue answers
  "unknown order / already filled"); otherwise the remainder is cancelled and the order is
  ``cancelled`` with ``filled_qty > 0`` (the fills stand).

A cancel of a partly filled order (no race) cancels the remainder and keeps its fills. Whatever
races, ``GET /api/orders?status=open`` lists exactly the orders with a remainder working and
``GET /api/positions`` is the sum of every fill recorded: the truth reconciliation reads.

Bulk lookup (``POST /api/orders/lookup``, :meth:`OrderBook.lookup_route`): a body
``{"client_order_ids": [cid, ...]}`` of at most :data:`MAX_LOOKUP` ids answers
``{"orders": [order, ...], "unknown": [cid, ...]}`` in one round trip, so a restarted engine
resolves every order it had in flight at once instead of one request per order.

Every field of a body is checked before anything changes (:class:`OrderRequestError` names it):
only the known keys; ``client_order_id`` printable text of 1..128 characters (no NUL, control,
format or lone surrogate character: it is stored, echoed and logged); ``qty`` and ``price``
finite numbers within :data:`MIN_AMOUNT`..:data:`MAX_AMOUNT`. A new order and its fill are built
first and recorded only when complete, so a failure half-way leaves the book as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

import msgspec
from aiohttp import web

from strategylab._http_guard import read_json
from strategylab._validate import shown
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError, PicklableErrorMixin
from strategylab.market import (
    MAX_LOOKUP,
    ORDER_STATUSES,
    ExchangeFill,
    ExchangeOrder,
    ExchangePosition,
    LookupResult,
    OrderStatus,
    Tick,
    WireOrderType,
    WireSide,
)

from ._faults import FaultBoard, FaultKind
from ._request import request_number, request_object

# The wire types live with the protocol (the client side never imports the simulator); the book
# keeps its historical names for them.
Order = ExchangeOrder
Fill = ExchangeFill
Position = ExchangePosition
Side = WireSide
OrderType = WireOrderType
Status = OrderStatus
STATUSES = ORDER_STATUSES

__all__ = [
    "MAX_AMOUNT",
    "MAX_LOOKUP",
    "MIN_AMOUNT",
    "RACE_COUNTERS",
    "CancelTooLateError",
    "Fill",
    "LookupResult",
    "Order",
    "OrderBook",
    "OrderRequestError",
    "OrderStateError",
    "Position",
]

RACE_COUNTERS = ("partial_fills", "resting_fills", "cancel_too_late", "remainder_cancelled")
"""The names of :attr:`OrderBook.races`."""

_MAX_CLIENT_ID = 128
MAX_AMOUNT = 1e9
"""The largest ``qty`` or ``price`` an order may carry (the feed's own bound on a price)."""
MIN_AMOUNT = 1e-9
"""The smallest ``qty`` or ``price``: below it a number is noise (or a subnormal), not an amount."""
_ORDER_KEYS = frozenset({"client_order_id", "symbol", "side", "type", "qty", "price"})
_LOOKUP_KEYS = frozenset({"client_order_ids"})
_T = TypeVar("_T", bound=str)
_SIDES: tuple[Side, ...] = ("buy", "sell")
_TYPES: tuple[OrderType, ...] = ("market", "limit")


class OrderRequestError(PicklableErrorMixin, ValueError):
    """An order request is malformed; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class OrderStateError(ValueError):
    """The order exists but cannot do what was asked (e.g. cancel a filled order)."""


def _object(body: object, keys: frozenset[str]) -> Mapping[str, object]:
    """``body`` as a JSON object with no key outside ``keys``; :class:`OrderRequestError`."""
    return request_object(body, keys, OrderRequestError)


def _amount(body: Mapping[str, object], field: str) -> float:
    """A required ``qty`` or ``price`` within :data:`MIN_AMOUNT`..:data:`MAX_AMOUNT`."""
    return request_number(body, field, OrderRequestError, low=MIN_AMOUNT, high=MAX_AMOUNT)


def _client_id(value: object, field: str) -> str:
    """A valid client order id: printable text (no control, format, NUL or lone surrogate
    character) of 1..128 characters."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= _MAX_CLIENT_ID
        or not value.isprintable()
    ):
        raise OrderRequestError(
            field, f"must be printable text of 1..{_MAX_CLIENT_ID} chars, got {shown(value)}"
        )
    return value


def _choice(value: object, field: str, choices: tuple[_T, ...]) -> _T:
    for choice in choices:
        if isinstance(value, str) and value == choice:
            return choice
    raise OrderRequestError(field, f"must be one of {', '.join(choices)}, got {shown(value)}")


def parse_lookup(body: object) -> list[str]:
    """The client order ids of a bulk-lookup body; :class:`OrderRequestError` naming the field."""
    cids = _object(body, _LOOKUP_KEYS).get("client_order_ids")
    if not isinstance(cids, list):
        raise OrderRequestError("client_order_ids", f"must be a list of strings, got {shown(cids)}")
    if len(cids) > MAX_LOOKUP:
        raise OrderRequestError(
            "client_order_ids", f"at most {MAX_LOOKUP} ids per request, got {len(cids)}"
        )
    return [_client_id(cid, "client_order_ids") for cid in cids]


class CancelTooLateError(PicklableErrorMixin, OrderStateError):
    """A cancel lost the race to an execution: the order filled while the cancel was in flight.

    ``order`` is the order as it now stands (``filled``); its fill is recorded and stands.
    """

    def __init__(self, order: Order) -> None:
        super().__init__(
            f"order {order.id} is filled, not open (too late to cancel: it filled while the "
            "cancel was in flight)"
        )
        self.order = order


_EPS = 1e-9


class OrderBook:
    """Orders, fills and positions of the whole exchange (one account).

    ``faults`` (the exchange's :class:`~._faults.FaultBoard`) switches the order-lifecycle races
    on: without it, or while they are off, every order executes in full at once (see the module
    docstring).
    """

    def __init__(
        self,
        symbols: Iterable[str],
        *,
        clock: Clock = SYSTEM_CLOCK,
        faults: FaultBoard | None = None,
    ) -> None:
        self._symbols = frozenset(symbols)
        self._clock = clock
        self._faults = faults
        self._orders: dict[str, Order] = {}
        self._by_client: dict[str, str] = {}
        self._open: dict[str, dict[str, Order]] = {s: {} for s in self._symbols}
        self._open_count = 0
        self._fills: list[Fill] = []
        self._positions: dict[str, Position] = {}
        self._quotes: dict[str, tuple[float, float]] = {}
        # Order id -> the quantities of its executions still to come (a race split it).
        self._slices: dict[str, list[float]] = {}
        self.races: dict[str, int] = dict.fromkeys(RACE_COUNTERS, 0)
        """How often each race happened: ``partial_fills`` and ``resting_fills`` (orders split
        into several executions), ``cancel_too_late`` and ``remainder_cancelled`` (cancels that
        met an execution in flight)."""

    def _now(self) -> int:
        return int(self._clock.time() * 1e9)

    def _strike(self, kind: FaultKind) -> bool:
        return self._faults is not None and self._faults.strike(kind) is not None

    def _split(self, qty: float) -> list[float]:
        if self._faults is None:  # only called after a strike, which needs the board
            return [qty]
        return self._faults.slices(qty)

    def _parse(self, body: object) -> tuple[str, str, Side, OrderType, float, float | None]:
        fields = _object(body, _ORDER_KEYS)
        cid = _client_id(fields.get("client_order_id"), "client_order_id")
        symbol = fields.get("symbol")
        if not isinstance(symbol, str) or symbol not in self._symbols:
            raise OrderRequestError("symbol", f"unknown symbol {shown(symbol)}")
        side = _choice(fields.get("side"), "side", _SIDES)
        kind = _choice(fields.get("type", "market"), "type", _TYPES)
        qty = _amount(fields, "qty")
        price: float | None = None
        if kind == "limit":
            price = _amount(fields, "price")
        elif fields.get("price") is not None:
            raise OrderRequestError("price", "must be absent for a market order")
        return cid, symbol, side, kind, qty, price

    def submit(self, body: object) -> tuple[Order, bool]:
        """Place an order from a request body; returns it and whether it is new.

        Raises :class:`OrderRequestError` naming the bad field, before anything changes. A known
        ``client_order_id`` returns the existing order (``False``) and places nothing.
        """
        cid, symbol, side, kind, qty, price = self._parse(body)
        existing = self._by_client.get(cid)
        if existing is not None:
            return self._orders[existing], False
        now = self._now()
        order = Order(
            id=f"O{len(self._orders) + 1:08d}",
            client_order_id=cid,
            symbol=symbol,
            side=side,
            type=kind,
            qty=qty,
            price=price,
            status="open",
            created_ns=now,
            updated_ns=now,
        )
        execution: tuple[Order, Fill, Position] | None = None
        slices: list[float] | None = None
        quote = self._quotes.get(symbol)
        if kind == "limit" and self._strike(FaultKind.RESTING_FILLS):
            # Rests even when marketable (a thin book ahead of it): fills later, in parts.
            slices = self._split(qty)
            self.races["resting_fills"] += 1
        elif quote is not None:
            fill_price = self._crossing(order, quote[0], quote[1])
            if fill_price is not None:
                first = qty
                if self._strike(FaultKind.PARTIAL_FILLS):
                    slices = self._split(qty)
                    first = slices.pop(0)
                    self.races["partial_fills"] += 1
                execution = self._execute(order, first, fill_price, now, last=not slices)
        elif kind == "market":
            order = msgspec.structs.replace(order, status="rejected", reason="no quote yet")
        # Everything is built: record it (dict and list stores only, nothing that can fail).
        self._by_client[cid] = order.id
        self._orders[order.id] = order
        if order.status == "open":
            self._open[symbol][order.id] = order
            self._open_count += 1
            if slices:
                self._slices[order.id] = slices
        if execution is not None:
            self._record(*execution)
            order = execution[0]
        return order, True

    @staticmethod
    def _crossing(order: Order, bid: float, ask: float) -> float | None:
        """The fill price if ``order`` executes against this quote now."""
        if order.side == "buy":
            if order.price is None or ask <= order.price:
                return ask
        elif order.price is None or bid >= order.price:
            return bid
        return None

    def _execute(
        self, order: Order, qty: float, price: float, ts: int, *, last: bool
    ) -> tuple[Order, Fill, Position]:
        """One execution of ``qty`` of ``order`` at ``price``: the order after it, its fill and
        the position after it; built, not recorded (:meth:`_record` records all three). The
        ``last`` execution fills exactly what remains, so the order ends ``filled`` at its
        ``qty`` whatever the rounding of its parts."""
        if last:
            qty = order.qty - order.filled_qty
        fill = Fill(
            id=f"F{len(self._fills) + 1:08d}",
            order_id=order.id,
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            qty=qty,
            price=price,
            ts=ts,
        )
        filled_qty = order.qty if last else order.filled_qty + qty
        paid = (order.avg_fill_price or 0.0) * order.filled_qty + price * qty
        executed = msgspec.structs.replace(
            order,
            status="filled" if last else "open",
            filled_qty=filled_qty,
            avg_fill_price=paid / filled_qty,
            updated_ns=ts,
        )
        return executed, fill, self._applied(fill)

    def _record(self, order: Order, fill: Fill, position: Position) -> None:
        """Record one execution built by :meth:`_execute` (stores only: nothing can fail)."""
        self._fills.append(fill)
        self._positions[fill.symbol] = position
        self._orders[order.id] = order
        resting = self._open[order.symbol]
        if order.status == "open":
            resting[order.id] = order
        elif resting.pop(order.id, None) is not None:
            self._open_count -= 1
            self._slices.pop(order.id, None)

    def _next_part(self, order: Order) -> tuple[float, bool]:
        """Take ``order``'s next execution off its schedule: its quantity and whether it is the
        last (all that remains, when no race split the order)."""
        slices = self._slices.get(order.id)
        if not slices:
            return order.qty - order.filled_qty, True
        qty = slices.pop(0)
        return qty, not slices

    def _applied(self, fill: Fill) -> Position:
        """The position of ``fill.symbol`` after ``fill``."""
        pos = self._positions.get(fill.symbol) or Position(
            symbol=fill.symbol, qty=0.0, avg_price=0.0, realized_pnl=0.0
        )
        delta = fill.qty if fill.side == "buy" else -fill.qty
        qty, avg, pnl = pos.qty, pos.avg_price, pos.realized_pnl
        if qty == 0.0 or (qty > 0.0) == (delta > 0.0):
            avg = (abs(qty) * avg + fill.qty * fill.price) / (abs(qty) + fill.qty)
            qty += delta
        else:
            closing = min(abs(qty), fill.qty)
            pnl += closing * (fill.price - avg) * (1.0 if qty > 0.0 else -1.0)
            new_qty = qty + delta
            if abs(new_qty) <= _EPS * max(abs(qty), 1.0):
                new_qty, avg = 0.0, 0.0  # closed (the parts of a split fill leave float dust)
            elif (new_qty > 0.0) != (qty > 0.0):
                avg = fill.price  # flipped: the remainder opened at this price
            qty = new_qty
        return Position(symbol=fill.symbol, qty=qty, avg_price=avg, realized_pnl=pnl)

    def _step(self, order: Order, price: float, ts: int) -> None:
        """Execute ``order``'s next part at ``price`` (a quote crossed it) and record it."""
        if order.id not in self._slices and self._strike(FaultKind.PARTIAL_FILLS):
            # Struck as the quote reaches a resting order: it fills in parts from here on.
            self._slices[order.id] = self._split(order.qty - order.filled_qty)
            self.races["partial_fills"] += 1
        qty, last = self._next_part(order)
        self._record(*self._execute(order, qty, price, ts, last=last))

    def cancel(self, order_id: str) -> Order:
        """Cancel an open order; returns it ``cancelled`` (its ``filled_qty`` kept when it was
        partly filled: the remainder is cancelled, the fills stand).

        Raises ``KeyError`` if unknown, :class:`OrderStateError` if not open. While the
        ``fill_cancel_race`` fault strikes, an execution in flight lands first (its next part,
        or all that remains, at its limit price or the current quote): if it filled the order,
        :class:`CancelTooLateError` (an :class:`OrderStateError`; the fill stands), else the
        remainder is cancelled.
        """
        order = self._orders[order_id]
        if order.status != "open":
            raise OrderStateError(f"order {order_id} is {order.status}, not open")
        now = self._now()
        price = self._race_price(order)
        if price is not None and self._strike(FaultKind.FILL_CANCEL_RACE):
            qty, last = self._next_part(order)
            executed, fill, position = self._execute(order, qty, price, now, last=last)
            self._record(executed, fill, position)
            if last:
                self.races["cancel_too_late"] += 1
                raise CancelTooLateError(executed)
            self.races["remainder_cancelled"] += 1
            order = executed
        order = msgspec.structs.replace(order, status="cancelled", updated_ns=now)
        self._orders[order_id] = order
        del self._open[order.symbol][order_id]
        self._open_count -= 1
        self._slices.pop(order_id, None)
        return order

    def _race_price(self, order: Order) -> float | None:
        """The price an execution racing a cancel of ``order`` takes: its limit price (a resting
        order trades at its own price), else the current quote; None with no quote."""
        if order.price is not None:
            return order.price
        quote = self._quotes.get(order.symbol)
        if quote is None:
            return None
        return quote[1] if order.side == "buy" else quote[0]

    def on_ticks(self, ticks: list[Tick]) -> None:
        """Take a batch of true quotes: remember the last per symbol, execute crossed open
        orders (an order split by a race executes one part per batch, at its first crossing)."""
        quotes = self._quotes
        if self._open_count == 0:
            # Only the last quote per symbol matters: walk back until every symbol is seen.
            seen: set[str] = set()
            want = len(self._symbols)
            for tick in reversed(ticks):
                if tick.symbol not in seen:
                    seen.add(tick.symbol)
                    quotes[tick.symbol] = (tick.bid, tick.ask)
                    if len(seen) == want:
                        break
            return
        stepped: set[str] = set()
        for tick in ticks:
            quotes[tick.symbol] = (tick.bid, tick.ask)
            resting = self._open[tick.symbol]
            if not resting:
                continue
            for order in list(resting.values()):
                if order.id in stepped:
                    continue
                price = self._crossing(order, tick.bid, tick.ask)
                if price is not None:
                    stepped.add(order.id)
                    self._step(order, price, tick.ts)

    def get(self, order_id: str) -> Order:
        """The order with exchange id ``order_id`` (``KeyError`` if unknown)."""
        return self._orders[order_id]

    def by_client_id(self, client_order_id: str) -> Order:
        """The order with this client id (``KeyError`` if unknown)."""
        return self._orders[self._by_client[client_order_id]]

    def lookup(self, client_order_ids: Iterable[str]) -> LookupResult:
        """The orders with these client ids (in the order asked), and the ids never seen."""
        found: list[Order] = []
        unknown: list[str] = []
        for cid in client_order_ids:
            order_id = self._by_client.get(cid)
            if order_id is None:
                unknown.append(cid)
            else:
                found.append(self._orders[order_id])
        return LookupResult(orders=found, unknown=unknown)

    async def lookup_route(self, request: web.Request) -> web.Response:
        """``POST /api/orders/lookup``: :meth:`lookup` over HTTP (400 names the bad field)."""
        try:
            cids = parse_lookup(await read_json(request))
        except ConfigurationError as exc:
            return _bad_request("body", str(exc))
        except OrderRequestError as exc:
            return _bad_request(exc.field, str(exc))
        return web.Response(
            body=msgspec.json.encode(self.lookup(cids)), content_type="application/json"
        )

    def orders(self, status: str | None = None) -> list[Order]:
        """Every order, or those with ``status``, oldest first."""
        return [o for o in self._orders.values() if status is None or o.status == status]

    def fills(self) -> list[Fill]:
        """Every fill, oldest first."""
        return list(self._fills)

    def positions(self) -> list[Position]:
        """Every position ever opened, by symbol."""
        return [self._positions[s] for s in sorted(self._positions)]

    def quote(self, symbol: str) -> tuple[float, float] | None:
        """The last true (bid, ask) of ``symbol``."""
        return self._quotes.get(symbol)


def _bad_request(field: str, message: str) -> web.Response:
    body = msgspec.json.encode({"error": message, "field": field})
    return web.Response(status=400, body=body, content_type="application/json")
