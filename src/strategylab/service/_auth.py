"""The admin routes' authentication: the token rule and the limit on failed attempts per peer.

A token must have at least :data:`MIN_ADMIN_TOKEN` characters (a shorter one is refused when the
service is made). Failed authentications (a missing, malformed or wrong ``Authorization``) are
counted per peer address in a sliding window (:class:`FailureLimiter`): once a peer has failed
``limit`` times within ``window`` seconds, every admin request from it is answered 429 with
``Retry-After`` until the oldest of those failures leaves the window, **a request with the right
token included**: if the right token were let through, a peer that guesses would still learn,
at full speed, which guess was right, and the limit would not limit guessing. Other peers are
not affected. The limit follows the usual shape of a login throttle (OWASP's "Blocking Brute
Force Attacks": per source, a fixed number of failures per time window, then refuse for the rest
of the window).
"""

from __future__ import annotations

import collections
import math
from typing import Final

from strategylab.clock import Clock

__all__ = ["MIN_ADMIN_TOKEN", "FailureLimiter", "retry_after_header"]

MIN_ADMIN_TOKEN: Final = 16
"""Characters an admin token must have at least."""


class FailureLimiter:
    """Failed authentications per peer over a sliding window of ``window`` seconds.

    ``limit`` failures within the window limit the peer; :meth:`retry_after` then gives the
    seconds (> 0) until the oldest of them leaves it. At most ``max_peers`` peers are tracked
    (memory stays bounded under a spray of addresses): past that, peers whose failures all left
    the window are forgotten, then the peer whose last failure is the oldest. Times come from
    ``clock.monotonic()``.
    """

    def __init__(
        self, clock: Clock, *, limit: int = 10, window: float = 60.0, max_peers: int = 4096
    ) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window
        self._max_peers = max_peers
        # peer -> failure times (monotonic), oldest first; peers in order of their last failure.
        self._failures: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    @property
    def limit(self) -> int:
        """Failures within the window that limit a peer."""
        return self._limit

    @property
    def window(self) -> float:
        """The window, in seconds."""
        return self._window

    def retry_after(self, peer: str) -> float | None:
        """Seconds until ``peer`` may try again (> 0) while it is limited, else None."""
        times = self._failures.get(peer)
        if times is None:
            return None
        self._forget_old(times, self._clock.monotonic())
        if not times:
            del self._failures[peer]
            return None
        if len(times) < self._limit:
            return None
        return times[-self._limit] + self._window - self._clock.monotonic()

    def failed(self, peer: str) -> bool:
        """Count one failure of ``peer`` now; True when this failure makes it limited."""
        now = self._clock.monotonic()
        times = self._failures.get(peer)
        if times is None:
            if len(self._failures) >= self._max_peers:
                self._make_room(now)
            times = self._failures[peer] = collections.deque(maxlen=self._limit)
        else:
            self._failures.move_to_end(peer)
        self._forget_old(times, now)
        times.append(now)
        return len(times) >= self._limit

    def _forget_old(self, times: collections.deque[float], now: float) -> None:
        while times and times[0] <= now - self._window:
            times.popleft()

    def _make_room(self, now: float) -> None:
        for peer in [p for p, times in self._failures.items() if times[-1] <= now - self._window]:
            del self._failures[peer]
        while len(self._failures) >= self._max_peers:
            self._failures.popitem(last=False)


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, rounded up, at least 1 (RFC 9110, section 10.2.3)."""
    return str(max(1, math.ceil(seconds)))
