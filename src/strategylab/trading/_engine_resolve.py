"""The engine's resolver: a submit or a cancel whose outcome is unknown is asked about in the
background (one bulk lookup per round, backing off while the exchange fails) until the
exchange's word settles it (see :mod:`strategylab.trading._engine`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Coroutine
from typing import Any

from strategylab._clock_wait import wait_within
from strategylab.errors import CircuitOpenError

from ._engine_base import _LOOKUP_ERRORS, _log
from ._engine_orders import _EngineOrders
from ._orders import AmbiguousOrderError, ExchangeOrder, OrderRefusedError


class _EngineResolver(_EngineOrders):
    """Resolution of ambiguous outcomes on top of the order lifecycle."""

    async def _resolve_loop(self) -> None:
        wait = self.config.resolve_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await wait_within(self._clock, self._resolve_wake.wait(), wait)
            self._resolve_wake.clear()
            wait = await self._resolve_round()

    async def _resolve_round(self) -> float:
        """One round; the seconds to wait before the next (backing off while the API fails)."""
        try:
            await self.resolve_ambiguous(raise_errors=True)
        except CircuitOpenError as exc:
            self._resolve_failures += 1
            # The breaker admits a trial after retry_after: ask right then, not a backoff later.
            return max(min(self._resolve_backoff(), exc.retry_after), 0.01)
        except _LOOKUP_ERRORS:
            self._resolve_failures += 1
            return max(self._resolve_backoff(), self.client.rate_limited_for())
        self._resolve_failures = 0
        return max(self.config.resolve_interval, self.client.rate_limited_for())

    def _resolve_backoff(self) -> float:
        config = self.config
        exponent = min(self._resolve_failures, 16)
        return min(config.resolve_interval * 2.0**exponent, config.resolve_max_interval)

    async def resolve_ambiguous(self, *, raise_errors: bool = False) -> int:
        """Ask the exchange about every unresolved order once (one bulk lookup) and act on the
        answers; returns how many remain unresolved.

        With ``raise_errors`` a lookup that fails raises the client's error (an
        :class:`OrderApiError`, aiohttp's, ``TimeoutError``, :class:`CircuitOpenError`);
        otherwise it leaves them unresolved.
        """
        cids = sorted(self._ambiguous)
        if not cids:
            return 0
        try:
            found = await self.client.lookup_many(cids)
        except _LOOKUP_ERRORS:
            if raise_errors:
                raise
            return len(self._ambiguous)
        limit = asyncio.Semaphore(self.client.lookup_concurrency)
        actions = [
            self._bounded(limit, action)
            for cid in cids
            if (action := self._settle(cid, found.get(cid))) is not None
        ]
        if actions:
            await asyncio.gather(*actions)
        return len(self._ambiguous)

    def _settle(self, cid: str, order: ExchangeOrder | None) -> Coroutine[Any, Any, None] | None:
        """Take the exchange's answer about ``cid``; a request to send again, if one is needed."""
        request = self._ambiguous.get(cid)
        if request is None:
            return None  # resolved meanwhile (an answer arrived)
        if request == "late":
            return self._settle_late(cid, order)
        if request == "cancel" and order is not None and order.status == "open":
            # The cancel never happened: send it again (a repeated cancel is harmless).
            return self._cancel(cid, order.id)
        if order is not None:
            del self._ambiguous[cid]
            self._apply(cid, order)
            return None
        if request == "submit" and cid in self._live:
            # Never accepted: the same id can be sent again without risk of a second order.
            return self._resend(cid)
        del self._ambiguous[cid]
        if request == "cancel":
            self.store.update_order(cid, status="void", reason="unknown at the exchange")
            self._set_status(cid, "void")
        return None

    def _settle_late(
        self, cid: str, order: ExchangeOrder | None
    ) -> Coroutine[Any, Any, None] | None:
        """An order voided at reconciliation: cancel it if it arrived late, else wait it out."""
        if order is not None:
            del self._ambiguous[cid]
            self._late.pop(cid, None)
            self.store.update_order(cid, status=order.status, order_id=order.id)
            live = self._live.get(cid)
            if live is not None:
                live.order_id = order.id
                live.status = order.status
            if order.status == "open":
                _log.warning("%s arrived at the exchange after it was voided: cancelling it", cid)
                return self._cancel(cid, order.id)
            self._set_status(cid, order.status)
            return None
        if self._clock.monotonic() >= self._late.get(cid, 0.0):
            del self._ambiguous[cid]
            self._late.pop(cid, None)
            self._set_status(cid, "void")
        return None

    @staticmethod
    async def _bounded(limit: asyncio.Semaphore, action: Awaitable[None]) -> None:
        async with limit:
            await action

    async def _resend(self, cid: str) -> None:
        live = self._live.get(cid)
        if live is None:
            self._ambiguous.pop(cid, None)
            return
        self.resent += 1
        try:
            order = await self.client.submit(cid, live.request)
        except OrderRefusedError as exc:
            self._ambiguous.pop(cid, None)
            self.orders_refused += 1
            self.store.update_order(cid, status="rejected", reason=str(exc))
            self._set_status(cid, "rejected")
        except AmbiguousOrderError:
            return  # still unknown: asked again next round
        else:
            self._ambiguous.pop(cid, None)
            self._apply(cid, order)

    @property
    def ambiguous(self) -> frozenset[str]:
        """Client ids whose outcome (of a submit or a cancel) is not yet known."""
        return frozenset(self._ambiguous)
