"""Reconnect/rewrite backoff: the first retry at once, then capped exponential full jitter.

The formula is :class:`~strategylab.fault_tolerance.RetryPolicy`'s (:meth:`~RetryPolicy.delay`),
not a copy of it: retry ``n`` (``n >= 2``) sleeps ``uniform(0, min(floor * 2**(n-2), cap))``
seconds. The first retry is immediate because most drops are one-off resets that a fresh
connection fixes at once. The bare formula ignores :func:`~strategylab.fault_tolerance.set_testing`:
a feed that reconnects forever is not a retry a user's test suite means to speed up, and its waits
are governed by its injected clock.
"""

from __future__ import annotations

import random

from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import RetryPolicy

__all__ = ["Backoff"]


class Backoff:
    """The delays between successive attempts of an operation that retries until it succeeds.

    :meth:`next_delay` gives the delay before the next attempt; :meth:`reset` starts over after a
    success. ``rng`` seeds the jitter; ``jitter=False`` gives exact (capped) delays.
    """

    __slots__ = ("_failures", "_policy")

    def __init__(
        self,
        floor: float = 0.05,
        cap: float = 5.0,
        *,
        rng: random.Random | None = None,
        jitter: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not floor > 0:
            raise ConfigurationError("floor", floor, "must be > 0")
        if not cap >= floor:
            raise ConfigurationError("cap", cap, f"must be >= floor ({floor})")
        # Only the formula is used (delay/backoff), never decide(): no attempt limit, no test mode.
        self._policy = RetryPolicy(
            base_delay=floor,
            multiplier=2.0,
            max_delay=cap,
            jitter=(rng if rng is not None else random.Random()) if jitter else None,
            clock=clock,
        )
        self._failures = 0

    @property
    def failures(self) -> int:
        """Consecutive failures since the last :meth:`reset`."""
        return self._failures

    def next_delay(self) -> float:
        """Record one more failure; the seconds to wait before the next attempt."""
        self._failures += 1
        if self._failures == 1:
            return 0.0
        return self._policy.delay(self._failures - 2)

    def ceiling(self) -> float:
        """The upper bound of the delay :meth:`next_delay` would draw next (before jitter)."""
        if self._failures == 0:
            return 0.0
        return self._policy.backoff(self._failures - 1)

    def reset(self) -> None:
        """The operation succeeded: the next failure retries at once again."""
        self._failures = 0
