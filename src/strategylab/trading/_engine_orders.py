"""The engine's orders: a strategy's context (positions, ``submit``, ``cancel_all``), the
intents a callback decides (risk-checked, recorded with the strategy's state in one
transaction, then sent), sends and cancels at the exchange, and the fills that come back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from strategylab.strategy import Fill, OrderRequest, OrderType, Side

from ._engine_base import _FINAL, _LOOKUP_ERRORS, _EngineBase, _log
from ._engine_config import _Live
from ._orders import AmbiguousOrderError, ExchangeOrder, OrderRefusedError
from ._reconcile import ReconciliationItem
from ._risk import RiskRejection, exposure
from ._runner import StrategyRunner


class _EngineOrders(_EngineBase):
    """Order intents and their lifecycle on top of the engine's state."""

    # ------------------------------------------------------------------ context

    @property
    def now_ns(self) -> int:
        """Exchange time of the last tick (the clock's before the first)."""
        return self._now_ns or int(self._clock.time() * 1e9)

    def position(self, strategy: str, symbol: str) -> float:
        """A strategy's filled position in ``symbol``."""
        return self._positions.get((strategy, symbol), 0.0)

    def working_position(self, strategy: str, symbol: str) -> float:
        """The filled position plus market orders still travelling: what a strategy sees.

        A market order fills at once at the exchange; until its fill comes back it is in flight.
        Counting it here keeps a strategy that trades toward a target from sending the same
        order again on every tick in between (a backtest fills at once, so it sees the same).
        Resting limit orders are not counted: they may never fill.
        """
        return self.position(strategy, symbol) + sum(
            o.remaining_signed
            for o in self._live.values()
            if o.strategy == strategy
            and o.request.symbol == symbol
            and o.request.type is OrderType.MARKET
        )

    def _pending(self, strategy: str, symbol: str) -> float:
        return sum(
            o.remaining_signed
            for o in self._live.values()
            if o.strategy == strategy and o.request.symbol == symbol
        )

    def submit_for(self, runner: StrategyRunner, request: OrderRequest) -> str:
        """Risk-check and name the order; returns its client order id.

        Inside a strategy callback the order is recorded (with the strategy's state) and sent
        when the callback returns (:meth:`commit_intents`); outside one, at once. A refused order
        gets an id ending in ``-rN`` that is never sent; its :class:`RiskRejection` is in
        :attr:`rejections`.
        """
        name, symbol = runner.name, request.symbol
        # Per side over the account, never netted: a working order may never fill (see check).
        position, working_buy, working_sell = exposure(symbol, self._positions, self._live.values())
        quote = self._quotes.get(symbol)
        mark = None if quote is None else (quote[1] if request.side is Side.BUY else quote[0])
        rejection = self.risk.check(request, position, mark, working_buy, working_sell)
        if rejection is not None:
            self._rejected_ids += 1
            cid = f"{self.store.engine_id}-{name}-r{self._rejected_ids}"
            self.rejections.append((cid, rejection))
            _log.info("risk refused %s %s: %s", name, request, rejection.reason)
            return cid
        if runner.next_order == 0:
            runner.next_order = self.store.next_order(name)
        cid = f"{self.store.engine_id}-{name}-{runner.next_order}"
        runner.next_order += 1
        # Working from now on (the risk check of the next order in this callback counts it).
        self._live[cid] = _Live(name, request, "inflight")
        runner.intents.append((cid, request))
        if not runner.in_callback:
            self.commit_intents(runner)
        return cid

    def commit_intents(self, runner: StrategyRunner) -> bool:
        """Record the runner's decided orders and its state in one transaction, then send them.

        False (nothing sent; the strategy is recovered as after a failure, from the state
        recorded with its last orders) when its ``state()`` raises or the book cannot be written.
        """
        intents, runner.intents = runner.intents, []
        if not intents:
            return True
        try:
            state = runner.strategy.state()
            self.store.record_intents(runner.name, intents, state, next_order=runner.next_order)
        except Exception as exc:  # the strategy's state() or the book (sqlite3.Error, OSError)
            for cid, _request in intents:
                self._live.pop(cid, None)
            _log.error("%s: %d order(s) not recorded, not sent: %r", runner.name, len(intents), exc)
            self._fail(runner, exc)
            return False
        runner.dirty = False
        for cid, request in intents:
            self.orders_sent += 1
            self._spawn(self._send(cid, request), f"send {cid}")
        return True

    def drop_intents(self, runner: StrategyRunner) -> None:
        """Forget the orders of a callback that raised: they were never recorded nor sent."""
        intents, runner.intents = runner.intents, []
        for cid, _request in intents:
            self._live.pop(cid, None)

    def cancel_all_for(self, strategy: str, symbol: str | None) -> None:
        """Cancel the strategy's open orders (cancels pass the risk engine in every state)."""
        self.risk.check_cancel()
        for cid, order in list(self._live.items()):
            if order.strategy != strategy or (
                symbol is not None and order.request.symbol != symbol
            ):
                continue
            order.cancel_requested = True
            if order.status == "open" and order.order_id is not None:
                self._spawn(self._cancel(cid, order.order_id), f"cancel {cid}")

    def rejection(self, cid: str) -> RiskRejection | None:
        """The risk engine's reason for refusing ``cid`` (None if it was not refused)."""
        for key, rejection in reversed(self.rejections):
            if key == cid:
                return rejection
        return None

    # ------------------------------------------------------------------ sends and cancels

    async def _send(self, cid: str, request: OrderRequest) -> None:
        try:
            order = await self.client.submit(cid, request)
        except OrderRefusedError as exc:
            self.orders_refused += 1
            self.store.update_order(cid, status="rejected", reason=str(exc))
            self._set_status(cid, "rejected")
            _log.warning("exchange refused %s: %s", cid, exc)
            return
        except AmbiguousOrderError as exc:
            self._unresolved(cid, "submit")
            _log.warning("%s; kept in flight until the exchange says", exc)
            return
        self._apply(cid, order)

    def _watch_late_arrivals(self, items: Sequence[ReconciliationItem]) -> None:
        """Keep watching in-flight orders that reconciliation voided as never accepted.

        The crashed run may have sent one a moment before it died: it can still be on its way and
        reach the exchange after reconciliation asked. Each such order counts as working exposure
        and is asked about in the background until the time a request of the client may take has
        passed twice over; if it turns up open it is cancelled (its decision is stale), if it
        turned up filled or cancelled its status is taken; if it never turns up it stays void.
        """
        until = self._clock.monotonic() + 2.0 * self.client.timeout
        for item in items:
            if item.what != "inflight_order" or not item.action.startswith("voided"):
                continue
            order = self.store.order(item.key)
            if order is None:
                continue
            self._live[item.key] = _Live(order.strategy, order.request, "inflight")
            self._late[item.key] = until
            self._ambiguous[item.key] = "late"
        if self._late:
            self._resolve_wake.set()

    def _unresolved(self, cid: str, request: str) -> None:
        if cid not in self._ambiguous:
            self.ambiguous_total += 1
        self._ambiguous[cid] = request
        self._resolve_wake.set()

    def _set_status(self, cid: str, status: str) -> None:
        live = self._live.get(cid)
        if live is None:
            return
        live.status = status
        if status in _FINAL and live.remaining_signed == 0.0:
            del self._live[cid]

    def _apply(self, cid: str, order: ExchangeOrder) -> None:
        """Take the exchange's word for an order."""
        self.store.update_order(cid, status=order.status, order_id=order.id, reason=order.reason)
        live = self._live.get(cid)
        if live is not None:
            live.order_id = order.id
            if live.cancel_requested and order.status == "open":
                self._spawn(self._cancel(cid, order.id), f"cancel {cid}")
        self._set_status(cid, order.status)

    async def _cancel(self, cid: str, order_id: str) -> None:
        try:
            order = await self.client.cancel(order_id)
        except OrderRefusedError as exc:
            _log.warning("exchange refused the cancel of %s: %s", cid, exc)
            return
        except _LOOKUP_ERRORS as exc:
            # Carried out or not: only the exchange knows. Working exposure until it says.
            self._unresolved(cid, "cancel")
            _log.warning("cancel of %s: outcome unknown (%r); asking the exchange", cid, exc)
            return
        if order is None:
            self._unresolved(cid, "cancel")  # 404 by exchange id: ask by client id
        else:
            self._ambiguous.pop(cid, None)
            self._apply(cid, order)

    # ------------------------------------------------------------------ fills

    async def _fill_loop(self) -> None:
        while True:
            try:
                await self.poll_fills()
            except _LOOKUP_ERRORS as exc:
                _log.info("fill poll failed: %r", exc)
            await self._clock.asleep(self.config.fill_poll_interval)

    async def poll_fills(self) -> int:
        """Record new fills of this engine's orders and deliver them; returns how many."""
        fills = await self.client.fills()
        new = 0
        for fill in fills[self._fill_cursor :]:
            if self.store.has_fill(fill.id):
                continue
            live = self._live.get(fill.client_order_id)
            strategy = live.strategy if live is not None else None
            if strategy is None:
                known = self.store.order(fill.client_order_id)
                if known is None:
                    continue  # another client's order
                strategy = known.strategy
            side = Side(fill.side)
            # A venue fills an order in parts: "filled" only once its fills cover it (a part
            # leaves it open, and a remainder cancelled leaves it cancelled).
            booked = self.store.order(fill.client_order_id)
            complete = booked is not None and booked.filled_qty + fill.qty >= booked.qty - 1e-9
            if not self.store.record_fill(
                fill_id=fill.id,
                cid=fill.client_order_id,
                strategy=strategy,
                symbol=fill.symbol,
                side=side,
                qty=fill.qty,
                price=fill.price,
                ts=fill.ts,
                order_status="filled" if complete else None,
            ):
                continue
            new += 1
            self.orders_filled += 1
            key = (strategy, fill.symbol)
            self._positions[key] = self._positions.get(key, 0.0) + fill.qty * side.sign
            if live is not None:
                live.filled += fill.qty
                if complete:
                    self._set_status(fill.client_order_id, "filled")
            runner = self.runners.get(strategy)
            if runner is not None and runner.running:
                self._deliver_fill(
                    runner,
                    Fill(
                        order_id=fill.order_id,
                        client_order_id=fill.client_order_id,
                        symbol=fill.symbol,
                        side=side,
                        qty=fill.qty,
                        price=fill.price,
                        fee=0.0,
                        ts=fill.ts,
                    ),
                )
        self._fill_cursor = len(fills)
        return new

    def _deliver_fill(self, runner: StrategyRunner, event: Fill) -> None:
        self._callback(runner, runner.strategy.on_fill, event)

    def _callback(
        self, runner: StrategyRunner, callback: Callable[[Any, Any], object], event: object
    ) -> None:
        """Run one strategy callback; commit the orders it decided with its state, or, if it
        raised, drop them and recover the strategy."""
        runner.in_callback = True
        try:
            callback(event, runner.ctx)
        except Exception as exc:
            runner.in_callback = False
            self.drop_intents(runner)
            self._fail(runner, exc)
        else:
            runner.in_callback = False
            runner.dirty = True
            if runner.intents:
                self.commit_intents(runner)
