"""The exchange's order book: market and limit orders against the simulator's own quotes.

Small on purpose (the strategy engine of issue 4 trades against it): a market order fills in full
at once at the current ask (buy) or bid (sell); a limit order fills in full at the quote as soon as
the quote crosses its price, and rests until then or until it is cancelled. A ``client_order_id``
names an order for ever: submitting it again returns the existing order, never a second one.

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
    "Fill",
    "LookupResult",
    "Order",
    "OrderBook",
    "OrderRequestError",
    "OrderStateError",
    "Position",
]

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


class OrderBook:
    """Orders, fills and positions of the whole exchange (one account)."""

    def __init__(self, symbols: Iterable[str], *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._symbols = frozenset(symbols)
        self._clock = clock
        self._orders: dict[str, Order] = {}
        self._by_client: dict[str, str] = {}
        self._open: dict[str, dict[str, Order]] = {s: {} for s in self._symbols}
        self._open_count = 0
        self._fills: list[Fill] = []
        self._positions: dict[str, Position] = {}
        self._quotes: dict[str, tuple[float, float]] = {}

    def _now(self) -> int:
        return int(self._clock.time() * 1e9)

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
        fill: Fill | None = None
        position: Position | None = None
        quote = self._quotes.get(symbol)
        if quote is not None:
            fill_price = self._crossing(order, quote[0], quote[1])
            if fill_price is not None:
                order, fill, position = self._fill(order, fill_price, now)
        elif kind == "market":
            order = msgspec.structs.replace(order, status="rejected", reason="no quote yet")
        # Everything is built: record it (dict and list stores only, nothing that can fail).
        if fill is not None and position is not None:
            self._fills.append(fill)
            self._positions[fill.symbol] = position
        self._orders[order.id] = order
        self._by_client[cid] = order.id
        if order.status == "open":
            self._open[symbol][order.id] = order
            self._open_count += 1
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

    def _fill(self, order: Order, price: float, ts: int) -> tuple[Order, Fill, Position]:
        """``order`` filled in full at ``price``, its fill and the position after it: built,
        not recorded (the caller records all three together)."""
        fill = Fill(
            id=f"F{len(self._fills) + 1:08d}",
            order_id=order.id,
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            qty=order.qty,
            price=price,
            ts=ts,
        )
        filled = msgspec.structs.replace(
            order, status="filled", filled_qty=order.qty, avg_fill_price=price, updated_ns=ts
        )
        return filled, fill, self._applied(fill)

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
            if new_qty == 0.0:
                avg = 0.0
            elif (new_qty > 0.0) != (qty > 0.0):
                avg = fill.price  # flipped: the remainder opened at this price
            qty = new_qty
        return Position(symbol=fill.symbol, qty=qty, avg_price=avg, realized_pnl=pnl)

    def cancel(self, order_id: str) -> Order:
        """Cancel an open order. ``KeyError`` if unknown, :class:`OrderStateError` if not open."""
        order = self._orders[order_id]
        if order.status != "open":
            raise OrderStateError(f"order {order_id} is {order.status}, not open")
        order = msgspec.structs.replace(order, status="cancelled", updated_ns=self._now())
        self._orders[order_id] = order
        del self._open[order.symbol][order_id]
        self._open_count -= 1
        return order

    def on_ticks(self, ticks: list[Tick]) -> None:
        """Take a batch of true quotes: remember the last per symbol, fill crossed limit orders."""
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
        for tick in ticks:
            quotes[tick.symbol] = (tick.bid, tick.ask)
            resting = self._open[tick.symbol]
            if not resting:
                continue
            for order in list(resting.values()):
                price = self._crossing(order, tick.bid, tick.ask)
                if price is not None:
                    filled, fill, position = self._fill(order, price, tick.ts)
                    self._fills.append(fill)
                    self._positions[fill.symbol] = position
                    self._orders[order.id] = filled
                    del resting[order.id]
                    self._open_count -= 1

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
