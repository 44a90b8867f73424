"""Reconciliation: make the engine's book agree with the exchange before it trades.

Speed: the exchange is read once, concurrently (every order, the book's in-flight and open orders
by client order id in bulk, fills, positions), so reconciling costs a few round trips however many
orders were in flight, not one lookup per order.

Order of work: in-flight orders are resolved by client order id (found: take the exchange's status;
unknown: never accepted, voided, not resent, because the decision behind it is stale); open orders
take the exchange's status; orders carrying this book's id prefix that the book does not know are
cancelled if open; exchange fills of the book's orders that it has not recorded are recorded (which
moves positions); positions are reset to the sum of their fills; finally the account's positions at
the exchange are compared with the book's totals per symbol. Every difference is one
:class:`ReconciliationItem`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from strategylab.strategy import Side

from ._orders import ExchangeFill, ExchangeOrder, ExchangePosition, OrderClient
from ._positions import OPEN_STATUSES, PositionStore

__all__ = ["ReconciliationItem", "reconcile"]

_log = logging.getLogger("strategylab.market.engine")
_EPS = 1e-9


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconciliationItem:
    """One difference between the book and the exchange, and what was done about it."""

    what: str
    """``inflight_order``, ``open_order``, ``unknown_order``, ``fill``, ``position`` or
    ``exchange_position``."""
    key: str
    """The client order id, fill id, ``strategy/symbol`` or symbol concerned."""
    expected: str
    """What the book held."""
    found: str
    """What the exchange (or the fills) say."""
    action: str

    def to_dict(self) -> dict[str, str]:
        """For JSON."""
        return {
            "what": self.what,
            "key": self.key,
            "expected": self.expected,
            "found": self.found,
            "action": self.action,
        }


async def reconcile(client: OrderClient, store: PositionStore) -> list[ReconciliationItem]:  # noqa: C901, PLR0912, PLR0915
    """Fix every difference between ``store`` and the exchange; returns what was fixed.

    Raises the client's errors (:class:`~strategylab.trading._orders.OrderApiError`, aiohttp's,
    ``TimeoutError``) when the exchange cannot be read: nothing trades unreconciled.
    """
    items: list[ReconciliationItem] = []
    book_open = store.orders(OPEN_STATUSES)
    listed, by_cid, fills, at_exchange_list = await _read(client, [o.cid for o in book_open])
    exchange_orders = {o.client_order_id: o for o in listed}
    for order in book_open:
        if order.status == "inflight":
            found = by_cid.get(order.cid)
            if found is None:
                store.update_order(order.cid, status="void", reason="never accepted (404)")
                items.append(
                    ReconciliationItem(
                        what="inflight_order",
                        key=order.cid,
                        expected="inflight",
                        found="not at the exchange (client id unknown)",
                        action="voided; not resent (the decision behind it is stale)",
                    )
                )
            else:
                store.update_order(order.cid, status=found.status, order_id=found.id)
                items.append(
                    ReconciliationItem(
                        what="inflight_order",
                        key=order.cid,
                        expected="inflight",
                        found=f"{found.status} as {found.id}",
                        action=f"adopted: marked {found.status}",
                    )
                )
            continue
        ex = by_cid.get(order.cid)
        if ex is None:
            store.update_order(order.cid, status="void", reason="not at the exchange")
            items.append(
                ReconciliationItem(
                    what="open_order",
                    key=order.cid,
                    expected="open",
                    found="absent",
                    action="voided",
                )
            )
        elif ex.status != "open":
            store.update_order(order.cid, status=ex.status, order_id=ex.id)
            items.append(
                ReconciliationItem(
                    what="open_order",
                    key=order.cid,
                    expected="open",
                    found=ex.status,
                    action=f"marked {ex.status}",
                )
            )
    prefix = store.engine_id + "-"
    for cid, ex in exchange_orders.items():
        if not cid.startswith(prefix):
            continue
        known = store.order(cid)
        if known is not None and not (known.status == "void" and ex.status == "open"):
            continue
        # Unknown to the book, or voided as never accepted and then accepted after all (it was
        # still on its way when an earlier run reconciled): the decision behind it is stale.
        action = "reported"
        if ex.status == "open":
            await client.cancel(ex.id)
            action = (
                "cancelled (unknown to the book)"
                if known is None
                else "cancelled (voided earlier, arrived late)"
            )
        items.append(
            ReconciliationItem(
                what="unknown_order",
                key=cid,
                expected="absent" if known is None else "void",
                found=ex.status,
                action=action,
            )
        )
    for fill in fills:
        if store.has_fill(fill.id):
            continue
        owner = store.order(fill.client_order_id)
        if owner is None:
            continue  # not this book's order
        order = owner
        # Filled only once its fills cover it: a part of a split order leaves it as it was.
        complete = owner.filled_qty + fill.qty >= owner.qty - _EPS
        store.record_fill(
            fill_id=fill.id,
            cid=fill.client_order_id,
            strategy=order.strategy,
            symbol=fill.symbol,
            side=Side(fill.side),
            qty=fill.qty,
            price=fill.price,
            ts=fill.ts,
            order_status="filled" if complete else None,
        )
        items.append(
            ReconciliationItem(
                what="fill",
                key=fill.id,
                expected="not recorded",
                found=f"{fill.side} {fill.qty:g} {fill.symbol} @ {fill.price:g} for {order.cid}",
                action="recorded; position moved",
            )
        )
    derived = store.positions_from_fills()
    persisted = {(p.strategy, p.symbol): p.qty for p in store.positions()}
    for key in sorted(set(derived) | set(persisted)):
        want, have = derived.get(key, 0.0), persisted.get(key, 0.0)
        if abs(want - have) > _EPS:
            store.set_position(key[0], key[1], want)
            items.append(
                ReconciliationItem(
                    what="position",
                    key=f"{key[0]}/{key[1]}",
                    expected=f"{have:g}",
                    found=f"{want:g} (sum of fills)",
                    action="set to the sum of fills",
                )
            )
    totals: dict[str, float] = {}
    for (_strategy, symbol), qty in derived.items():
        totals[symbol] = totals.get(symbol, 0.0) + qty
    at_exchange = {p.symbol: p.qty for p in at_exchange_list}
    for symbol in sorted(set(totals) | set(at_exchange)):
        ours, theirs = totals.get(symbol, 0.0), at_exchange.get(symbol, 0.0)
        if abs(ours - theirs) > _EPS:
            items.append(
                ReconciliationItem(
                    what="exchange_position",
                    key=symbol,
                    expected=f"{ours:g}",
                    found=f"{theirs:g}",
                    action="reported: the account holds fills this book did not place",
                )
            )
    for item in items:
        _log.warning("reconciled %s %s: expected %s, found %s: %s", *_fields(item))
    return items


def _fields(item: ReconciliationItem) -> tuple[str, str, str, str, str]:
    return item.what, item.key, item.expected, item.found, item.action


async def _read(
    client: OrderClient, cids: list[str]
) -> tuple[
    list[ExchangeOrder], dict[str, ExchangeOrder | None], list[ExchangeFill], list[ExchangePosition]
]:
    """Every read reconciliation needs, concurrently; the first failure cancels the rest."""
    orders = asyncio.ensure_future(client.orders())
    found = asyncio.ensure_future(client.lookup_many(cids))
    fills = asyncio.ensure_future(client.fills())
    positions = asyncio.ensure_future(client.positions())
    tasks = (orders, found, fills, positions)
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return orders.result(), found.result(), fills.result(), positions.result()
