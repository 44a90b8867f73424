"""Reconnect/rewrite backoff: the first retry at once, then capped exponential full jitter.

:class:`Backoff` is the bare schedule (the ingestor's write retries use it, reset by a committed
batch). :class:`FeedBackoff` wraps it for the feed's reconnects: it is reset only by a connection
that has proven itself, never by a mere "subscribed", and it honours the waits a server asks for
(close codes 1012/1013, ``Retry-After``).

The formula is :class:`~strategylab.fault_tolerance.RetryPolicy`'s (:meth:`~RetryPolicy.delay`),
not a copy of it: retry ``n`` (``n >= 2``) sleeps ``uniform(0, min(floor * 2**(n-2), cap))``
seconds. The first retry is immediate because most drops are one-off resets that a fresh
connection fixes at once. The bare formula ignores :func:`~strategylab.fault_tolerance.set_testing`:
a feed that reconnects forever is not a retry a user's test suite means to speed up, and its waits
are governed by its injected clock.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Final

from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import RetryPolicy

__all__ = ["RETRY_LATER_CODES", "Backoff", "FeedBackoff"]


class Backoff:
    """The delays between successive attempts of an operation that retries until it succeeds.

    :meth:`next_delay` gives the delay before the next attempt; :meth:`reset` starts over after a
    success. ``rng`` seeds the jitter; ``jitter=False`` gives exact (capped) delays.
    """

    __slots__ = ("_failures", "_floor", "_low", "_policy", "_rng")

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
        self._floor = floor
        self._rng = (rng if rng is not None else random.Random()) if jitter else None
        # Only the formula is used (delay/backoff), never decide(): no attempt limit, no test mode.
        self._policy = RetryPolicy(
            base_delay=floor, multiplier=2.0, max_delay=cap, jitter=self._rng, clock=clock
        )
        self._low: RetryPolicy | None = None  # the same formula under a lower cap (cached)
        self._failures = 0

    @property
    def failures(self) -> int:
        """Consecutive failures since the last :meth:`reset`."""
        return self._failures

    def next_delay(self, *, cap: float | None = None) -> float:
        """Record one more failure; the seconds to wait before the next attempt.

        ``cap`` (seconds, >= the floor) lowers the cap for this one delay: the same formula and
        full jitter, ``uniform(0, min(floor * 2**(n-2), cap))``; a ``cap`` above the configured
        one changes nothing. The failure count grows as usual, so a later delay without ``cap``
        is as long as if every one had been drawn under the configured cap."""
        self._failures += 1
        if self._failures == 1:
            return 0.0
        policy = self._policy
        if cap is not None and cap < policy.max_delay:
            low = self._low
            if low is None or low.max_delay != cap:
                if not cap >= self._floor:
                    raise ConfigurationError("cap", cap, f"must be >= floor ({self._floor})")
                low = self._low = dataclasses.replace(policy, max_delay=cap)
            policy = low
        return policy.delay(self._failures - 2)

    def ceiling(self) -> float:
        """The upper bound of the delay :meth:`next_delay` would draw next (before jitter)."""
        if self._failures == 0:
            return 0.0
        return self._policy.backoff(self._failures - 1)

    def reset(self) -> None:
        """The operation succeeded: the next failure retries at once again."""
        self._failures = 0


CLOSE_SERVICE_RESTART: Final = 1012
CLOSE_TRY_AGAIN_LATER: Final = 1013
RETRY_LATER_CODES: Final = frozenset({CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN_LATER})
"""WebSocket close codes (RFC 6455 §7.4, IANA registry) with which a server asks for a wait."""


class FeedBackoff:
    """A feed's reconnect delays: reset only by a connection that has proven itself.

    A server that accepts, answers "subscribed" and closes at once, every time, must not earn an
    immediate reconnect each time. So the underlying :class:`Backoff` starts over only when the
    current connection has *proven* itself:

    * it delivered data that the sink acknowledged as stored (:meth:`stored`), or
    * it stayed alive for ``proven_after`` seconds: frames kept arriving that long after the
      subscription was answered (:meth:`alive`, times on the injected ``clock``).

    :meth:`next_delay` also honours a wait the server asked for: at least ``retry_later_floor``
    seconds after a close with code 1012 (Service Restart) or 1013 (Try Again Later), and at least
    a ``Retry-After`` hint (seconds, as :func:`~strategylab.fault_tolerance.retry_after_hint`
    reads it from an HTTP 429/503 handshake answer), capped at ``max_server_wait`` so that an
    absurd header cannot park the feed for ever.

    ``outage_cap`` (seconds, within ``floor..cap``; None: none) is the lower cap that
    :meth:`next_delay` applies with ``fast=True``: the feed asks for it during the first seconds
    of a silent outage, so that the backoff grown while the network was down does not delay the
    first attempt after it heals (see :class:`~strategylab.market.FeedConfig`).

    Raises :class:`~strategylab.errors.ConfigurationError` naming a bad argument.
    """

    __slots__ = (
        "_backoff",
        "_clock",
        "_healthy_since",
        "_max_server_wait",
        "_outage_cap",
        "_proven",
        "_proven_after",
        "_retry_later_floor",
    )

    def __init__(
        self,
        floor: float = 0.05,
        cap: float = 5.0,
        *,
        proven_after: float = 5.0,
        retry_later_floor: float = 1.0,
        max_server_wait: float = 60.0,
        outage_cap: float | None = None,
        rng: random.Random | None = None,
        jitter: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if outage_cap is not None and not (
            isinstance(outage_cap, int | float) and floor <= outage_cap <= cap
        ):
            raise ConfigurationError(
                "outage_cap", outage_cap, f"must be None or within floor..cap ({floor}..{cap})"
            )
        self._outage_cap = outage_cap
        for key, value in (
            ("proven_after", proven_after),
            ("retry_later_floor", retry_later_floor),
            ("max_server_wait", max_server_wait),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigurationError(key, value, "must be a finite number of seconds >= 0")
        self._backoff = Backoff(floor, cap, rng=rng, jitter=jitter, clock=clock)
        self._clock = clock
        self._proven_after = float(proven_after)
        self._retry_later_floor = float(retry_later_floor)
        self._max_server_wait = float(max_server_wait)
        self._healthy_since: float | None = None
        self._proven = False

    @property
    def failures(self) -> int:
        """Connections (or attempts) that ended since the last proven connection."""
        return self._backoff.failures

    @property
    def proven(self) -> bool:
        """Whether the current connection has proven itself (the backoff was reset)."""
        return self._proven

    def healthy(self) -> None:
        """The current connection was answered "subscribed": its proving period starts now.

        Only the first call per connection counts.
        """
        if self._healthy_since is None:
            self._healthy_since = self._clock.monotonic()

    def alive(self, last_frame_at: float) -> bool:
        """A frame arrived at ``last_frame_at`` (``clock.monotonic()`` seconds).

        Returns True when this proves the connection (alive ``proven_after`` seconds after it
        became healthy); the backoff is then reset.
        """
        since = self._healthy_since
        if self._proven or since is None or last_frame_at - since < self._proven_after:
            return False
        return self._prove()

    def stored(self) -> bool:
        """Data delivered on the current connection was stored: the connection is proven.

        Returns True when this call proved it (the first time per connection).
        """
        if self._proven or self._healthy_since is None:
            return False
        return self._prove()

    def _prove(self) -> bool:
        self._proven = True
        self._backoff.reset()
        return True

    def next_delay(
        self,
        *,
        close_code: int | None = None,
        retry_after: float | None = None,
        fast: bool = False,
    ) -> float:
        """The connection ended (or the attempt failed): seconds to wait before the next one.

        ``close_code`` is the code the server closed with, if any; ``retry_after`` the seconds a
        ``Retry-After`` answer asked for (``math.inf`` is capped like any other hint). ``fast``
        draws the backoff under ``outage_cap`` (when one is set); a wait the server asked for
        is honoured all the same.
        """
        self._healthy_since = None
        self._proven = False
        delay = self._backoff.next_delay(cap=self._outage_cap if fast else None)
        asked = self.server_wait(close_code=close_code, retry_after=retry_after)
        return max(delay, asked)

    def server_wait(
        self, *, close_code: int | None = None, retry_after: float | None = None
    ) -> float:
        """The least wait the server asked for (0.0 when it asked for none)."""
        asked = 0.0
        if close_code in RETRY_LATER_CODES:
            asked = self._retry_later_floor
        if retry_after is not None and retry_after >= 0:
            asked = max(asked, min(retry_after, self._max_server_wait))
        return asked
