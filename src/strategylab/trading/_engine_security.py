"""The engine's security side: forged market data holds trading (the security hold), and past
the threshold pulls the kill switch: risk halted, every open order of this engine
cancelled at the exchange, states persisted, an audit record."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from ._engine_base import _CANCEL_ROUNDS, _LOOKUP_ERRORS, _log
from ._engine_resolve import _EngineResolver
from ._orders import ExchangeOrder, OrderRefusedError


class _EngineSecurity(_EngineResolver):
    """The security hold and the kill switch on top of the resolver."""

    @property
    def security_violations(self) -> int:
        """Forged frames seen (each one held trading)."""
        return self._security.violations

    @property
    def security_hold_until(self) -> float | None:
        """Monotonic time before which the security hold cannot lift (None: no hold)."""
        security = self._security
        return None if security.held_since is None else security.hold_until

    @property
    def feed_health(self) -> Callable[[], Awaitable[bool]] | None:
        """Asked before the security hold lifts (:func:`run_engine` sets its feed's ``health``);
        None: not asked."""
        return self._security.feed_health

    @feed_health.setter
    def feed_health(self, probe: Callable[[], Awaitable[bool]] | None) -> None:
        self._security.feed_health = probe

    @property
    def killed(self) -> asyncio.Event:
        """Set once the kill switch's emergency shutdown has run (see :meth:`kill_switch`)."""
        return self._security.killed

    @property
    def kill_report(self) -> dict[str, object]:
        """What the kill switch did: ``reason``, ``cancelled``, ``left_open``, ``complete``."""
        return dict(self._security.report)

    def on_security_violation(self, error: BaseException) -> None:
        """A forged frame (the feed's ``on_violation``): hold trading at once, audit it.

        Every new order is refused until the hold lifts (see :mod:`strategylab.trading._security`);
        another violation restarts the hold. Synchronous, so nothing is sent between the forged
        frame and the halt.
        """
        self._security.on_violation(error)

    async def kill_switch(self, error: BaseException) -> None:
        """Forged frames past the threshold (the feed's ``kill_switch``): emergency shutdown.

        Risk HALTED (a manual halt: no hold's expiry lifts it), strategies no longer called,
        every open order of this engine cancelled at the exchange within ``close_deadline``,
        strategy states persisted, an audit record; then :attr:`killed` is set (the process
        exits with :data:`EXIT_KILL_SWITCH`). Runs in a task the engine owns, so cancelling the
        caller cannot stop it half-way; a second call waits for the first.
        """
        self.trading = False
        await self._security.kill_switch(error)

    async def _shutdown(self) -> tuple[int, list[str], bool]:
        result = await self.cancel_everything(self.config.close_deadline)
        self._flush_states(force=True)
        return result

    async def cancel_everything(self, deadline: float) -> tuple[int, list[str], bool]:
        """Cancel every open order of this engine at the exchange within ``deadline`` seconds.

        Orders still in flight are marked so that they are cancelled as soon as they come back
        open (and the sends are waited for); orders open at the exchange under this engine's ids
        are cancelled whether the book still tracks them or not. Returns (orders cancelled,
        client ids still open at the exchange at the last look, whether the exchange confirmed
        that none is left).
        """
        self.risk.check_cancel()
        prefix = f"{self.store.engine_id}-"
        cancelled = 0
        left: list[str] = []
        for order in self._live.values():
            order.cancel_requested = True
        try:
            async with asyncio.timeout(deadline):
                for attempt in range(_CANCEL_ROUNDS):
                    pending = [t for t in self._tasks if not t.done()]
                    if pending:  # sends in flight: an order they open is cancelled by _apply
                        await asyncio.wait(pending)
                    found = [
                        o
                        for o in await self.client.orders("open")
                        if o.client_order_id.startswith(prefix)
                    ]
                    left = [o.client_order_id for o in found]
                    if not found:
                        return cancelled, left, True
                    if attempt < _CANCEL_ROUNDS - 1:
                        cancelled += await self._cancel_listed(found)
        except TimeoutError:
            _log.error("kill switch: cancels not confirmed within %.1fs", deadline)
        except (*_LOOKUP_ERRORS, OrderRefusedError) as exc:
            _log.error("kill switch: cannot list open orders at the exchange: %r", exc)
        return cancelled, left, False

    async def _cancel_listed(self, found: Sequence[ExchangeOrder]) -> int:
        """Cancel ``found`` (open at the exchange) concurrently; how many are now cancelled."""
        results = await asyncio.gather(
            *(self.client.cancel(o.id) for o in found), return_exceptions=True
        )
        cancelled = 0
        for order, result in zip(found, results, strict=True):
            if isinstance(result, ExchangeOrder):
                if result.status == "cancelled":
                    cancelled += 1
                self._ambiguous.pop(order.client_order_id, None)
                self._apply(order.client_order_id, result)
            elif isinstance(result, Exception):
                _log.warning("kill switch: cancel of %s: %r", order.id, result)
        return cancelled
