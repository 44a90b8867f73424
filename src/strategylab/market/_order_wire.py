"""The order API's wire types: what the exchange's HTTP order API sends and the order client reads.

They live beside the market-data protocol, not in the simulator, so that the client side (the
order client, the engine, reconciliation) never imports the exchange simulator: ``ExchangeOrder``
(an order as the exchange knows it), ``ExchangeFill`` (one execution), ``ExchangePosition`` (net
position in one symbol), ``LookupResult`` (a bulk lookup's answer, at most :data:`MAX_LOOKUP` ids),
and :func:`parse_signing_key` (the market-data signing key as given on a command line).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from strategylab.errors import ConfigurationError

__all__ = [
    "MAX_LOOKUP",
    "ORDER_STATUSES",
    "ExchangeFill",
    "ExchangeOrder",
    "ExchangePosition",
    "LookupResult",
    "OrderStatus",
    "WireOrderType",
    "WireSide",
    "parse_signing_key",
]

WireSide = Literal["buy", "sell"]
WireOrderType = Literal["market", "limit"]
OrderStatus = Literal["open", "filled", "cancelled", "rejected"]
ORDER_STATUSES: frozenset[str] = frozenset({"open", "filled", "cancelled", "rejected"})
MAX_LOOKUP = 1000
"""Client order ids one bulk lookup may ask about."""


class ExchangeOrder(msgspec.Struct, frozen=True, kw_only=True):
    """An order as the exchange knows it."""

    id: str
    client_order_id: str
    symbol: str
    side: WireSide
    type: WireOrderType
    qty: float
    price: float | None
    status: OrderStatus
    filled_qty: float = 0.0
    avg_fill_price: float | None = None
    reason: str | None = None
    created_ns: int = 0
    updated_ns: int = 0


class ExchangeFill(msgspec.Struct, frozen=True, kw_only=True):
    """One execution."""

    id: str
    order_id: str
    client_order_id: str
    symbol: str
    side: WireSide
    qty: float
    price: float
    ts: int


class LookupResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a bulk lookup: the orders found, and the client ids the exchange never saw."""

    orders: list[ExchangeOrder]
    unknown: list[str]


class ExchangePosition(msgspec.Struct, frozen=True, kw_only=True):
    """Net position in one symbol: signed ``qty``, average entry price, realised P&L."""

    symbol: str
    qty: float
    avg_price: float
    realized_pnl: float


def parse_signing_key(text: str | None) -> bytes | None:
    """A signing key from the command line: hex when it is even-length hex, else UTF-8 text."""
    if text is None:
        return None
    if not text:
        raise ConfigurationError("signing_key", text, "must not be empty")
    try:
        return bytes.fromhex(text) if len(text) % 2 == 0 else text.encode()
    except ValueError:
        return text.encode()
