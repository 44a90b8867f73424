"""Helpers for testing code that uses Strategy Lab; public API, shipped with the package."""

from __future__ import annotations

import asyncio
import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that only moves when told to.

    ``sleep`` and ``asleep`` advance the clock at once by the requested delay and record it in
    :attr:`sleeps`, so a test sees every backoff a retry chose without waiting for any of them.
    ``time()`` is ``start`` plus the elapsed fake time, like ``monotonic()``.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The current fake time."""
        return self._now

    def time(self) -> float:
        """The current fake time, read as seconds since the epoch."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (which must not be negative)."""
        if seconds < 0:
            raise ValueError(f"seconds={seconds!r}: a clock cannot go backwards")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Record the delay and advance the clock by it, without blocking."""
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(seconds, 0.0)

    async def asleep(self, seconds: float) -> None:
        """Record the delay, advance the clock, and yield once to the event loop."""
        self.sleep(seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, sleeps={len(self.sleeps)})"
