"""The security hold and the kill switch that forged market data pulls.

A forged frame (missing or wrong signature) holds trading at once through a *security hold* on the
risk engine (:data:`SECURITY_HOLD`): every new order is refused, cancels still pass, and the
violation is audited. The hold lifts by itself, so that a peer without the key cannot stop trading
for good with one frame, but only once ``hold`` seconds have passed without another violation AND
authenticated ticks have been delivered since the last one (so on a fresh connection) AND the feed
reports itself healthy; a hold never lifts a halt put in place by an operator or an emergency.

The kill switch (too many forged frames) halts risk for good and runs the owner's emergency
shutdown once, in a task this guard owns, so cancelling the caller cannot stop it half-way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from strategylab.clock import Clock
from strategylab.fault_tolerance import AuditSink

from ._risk import RiskEngine

__all__ = ["SECURITY_HOLD", "SecurityGuard"]

_log = logging.getLogger("strategylab.market.engine")

SECURITY_HOLD: Final = "security"
"""The risk engine's hold key for forged market data."""

Shutdown = Callable[[], Awaitable[tuple[int, list[str], bool]]]
"""The owner's emergency shutdown: (orders cancelled, client ids left open, confirmed none left)."""


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).isoformat(timespec="seconds")


class SecurityGuard:
    """One engine's security hold and kill switch (see the module docstring)."""

    __slots__ = (
        "_audit",
        "_clock",
        "_hold",
        "_name",
        "_record",
        "_risk",
        "_shutdown",
        "authenticated",
        "feed_health",
        "held_since",
        "hold_task",
        "hold_until",
        "kill_task",
        "killed",
        "report",
        "ticks",
        "violations",
    )

    def __init__(
        self,
        *,
        risk: RiskEngine,
        clock: Clock,
        hold: float,
        name: str,
        record: Callable[[str, dict[str, object]], None],
        shutdown: Shutdown,
        audit: AuditSink | None,
    ) -> None:
        self._risk = risk
        self._clock = clock
        self._hold = hold
        self._name = name
        self._record = record
        self._shutdown = shutdown
        self._audit = audit
        self.violations = 0
        self.feed_health: Callable[[], Awaitable[bool]] | None = None
        self.held_since: float | None = None
        """Monotonic time of the last forged frame while the hold is in force (None: no hold)."""
        self.hold_until = 0.0
        self.ticks = 0
        """Authenticated ticks delivered since the last forged frame."""
        self.authenticated = asyncio.Event()
        self.hold_task: asyncio.Task[None] | None = None
        self.kill_task: asyncio.Task[None] | None = None
        self.killed = asyncio.Event()
        self.report: dict[str, object] = {}

    def delivered(self, ticks: int) -> None:
        """``ticks`` authenticated ticks reached the strategies (only those reach a sink)."""
        if self.held_since is not None:
            self.ticks += ticks
            self.authenticated.set()

    def on_violation(self, error: BaseException) -> None:
        """A forged frame: hold trading at once (synchronously), audit it, arm the lift."""
        clock = self._clock
        now = clock.monotonic()
        self.violations += 1
        self.held_since = now
        self.hold_until = now + self._hold
        self.ticks = 0
        self.authenticated.clear()
        until = _iso(clock.time() + self._hold)
        self._risk.hold(SECURITY_HOLD, f"security: forged frame: {error} (hold until {until})")
        _log.error("security violation: %s; trading held until %s", error, until)
        self._record(
            "security_violation",
            {"reason": str(error), "violations": self.violations, "hold_until": until},
        )
        self.arm()

    def arm(self) -> None:
        """Start the task that lifts the hold, unless it runs already."""
        if self.hold_task is None or self.hold_task.done():
            self.hold_task = asyncio.get_running_loop().create_task(
                self._lift(), name=f"{self._name}.security-hold"
            )

    async def _lift(self) -> None:
        """Lift the security hold once it expired, authenticated data flowed since the last
        violation and the feed is healthy; every violation meanwhile restarts the wait."""
        clock = self._clock
        noted = False
        while True:
            wait = self.hold_until - clock.monotonic()
            if wait > 0:
                noted = False
                await clock.asleep(wait)
                continue
            if self.ticks > 0 and await self._feed_healthy():
                if self.hold_until <= clock.monotonic():  # no violation while asking
                    break
                continue
            if not noted:
                noted = True
                self._risk.hold(
                    SECURITY_HOLD,
                    "security: forged frame "
                    f"{clock.monotonic() - (self.held_since or 0.0):.0f}s ago (hold "
                    "expired; waiting for authenticated data on a fresh connection)",
                )
            self.authenticated.clear()
            await self.authenticated.wait()
        held_for = clock.monotonic() - (self.held_since or 0.0)
        self.held_since = None
        self._risk.release(SECURITY_HOLD)
        _log.warning("security hold lifted after %.1fs: authenticated data flows", held_for)
        self._record(
            "security_hold_released",
            {"held_seconds": round(held_for, 3), "ticks_since": self.ticks},
        )

    async def _feed_healthy(self) -> bool:
        probe = self.feed_health
        if probe is None:
            return True
        try:
            return await probe()
        except Exception:  # a failing probe is an unhealthy feed, never a lifted hold
            _log.exception("feed health probe failed")
            return False

    async def kill_switch(self, error: BaseException) -> None:
        """Risk HALTED for good, then the owner's emergency shutdown, once; a second call waits
        for the first. :attr:`killed` is set when it has run."""
        if self.kill_task is None:
            self._risk.halt(f"security kill switch: {error}")
            _log.critical("KILL SWITCH: %s", error)
            self.report = {"reason": str(error)}
            self.kill_task = asyncio.get_running_loop().create_task(
                self._emergency(str(error)), name=f"{self._name}.kill-switch"
            )
        await asyncio.shield(self.kill_task)

    async def _emergency(self, reason: str) -> None:
        try:
            cancelled, left_open, complete = await self._shutdown()
            self.report = {
                "reason": reason,
                "cancelled": cancelled,
                "left_open": left_open,
                "complete": complete,
            }
            if self._audit is not None:
                try:
                    await self._audit.aappend("kill_switch", dict(self.report))
                except Exception:
                    _log.exception("could not audit the kill switch")
        finally:
            self.killed.set()
