"""Time as a dependency.

Everything in Strategy Lab that waits or measures takes a ``clock=`` argument. Production code
uses :data:`SYSTEM_CLOCK`; tests use :class:`strategylab.testing.FakeClock`, which jumps instead
of waiting.
"""

from __future__ import annotations

import asyncio
import time as _time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time and a way to wait for it."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; for durations and deadlines."""
        ...

    def time(self) -> float:
        """Seconds since the Unix epoch; for timestamps."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.time` and real sleeps."""

    __slots__ = ()

    monotonic = staticmethod(_time.monotonic)
    time = staticmethod(_time.time)
    sleep = staticmethod(_time.sleep)

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Clock = SystemClock()
