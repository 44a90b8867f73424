"""The circuit breaker's counters and sliding windows: lock-free totals, and the outcomes of the
last N calls (count-based) or the last N seconds (time-based) with running sums.

A window stores one code per call: bit 0 set for a failure, bit 1 for a slow call
(:data:`._breaker_state._FAILURE`, :data:`._breaker_state._SLOW_BIT`). The windows are not
thread-safe: the breaker calls them under its lock.
"""

from __future__ import annotations

import itertools
import sys
from typing import Final

from ._breaker_state import _FAILURE

__all__: list[str] = []


_COUNTER_SPAN: Final = sys.maxsize
"""Increments an :class:`_AtomicCounter` can take: centuries at a hundred million a second."""


class _AtomicCounter:
    """A counter that threads can bump without a lock.

    An increment takes one item from an :func:`itertools.repeat` of ``None``: ``next(ticks)`` is one
    C call, atomic under the GIL, that (unlike ``next()`` on an :func:`itertools.count`) allocates
    no int. The value is the number of items taken, read atomically from ``__length_hint__``.
    """

    __slots__ = ("increment", "ticks")

    def __init__(self) -> None:
        self.ticks: Final = itertools.repeat(None, _COUNTER_SPAN)
        """Hot paths bind this and call ``next(ticks)``, a little cheaper than :attr:`increment`."""
        self.increment: Final = self.ticks.__next__

    @property
    def value(self) -> int:
        return _COUNTER_SPAN - self.ticks.__length_hint__()


class _CountWindow:
    """The outcomes of the last ``size`` calls in a ring buffer with running totals."""

    __slots__ = ("_buffer", "_calls", "_failures", "_index", "_size", "_slow")

    def __init__(self, size: int) -> None:
        self._size = size
        self._buffer = bytearray(size)
        self._index = 0
        self._calls = 0
        self._failures = 0
        self._slow = 0

    def record(self, now: float, code: int) -> None:  # noqa: ARG002 - same signature as _TimeWindow
        index = self._index
        if self._calls == self._size:
            old = self._buffer[index]
            self._failures -= old & _FAILURE
            self._slow -= old >> 1
        else:
            self._calls += 1
        self._buffer[index] = code
        self._failures += code & _FAILURE
        self._slow += code >> 1
        self._index = index + 1 if index + 1 < self._size else 0

    def totals(self, now: float) -> tuple[int, int, int]:  # noqa: ARG002
        return self._calls, self._failures, self._slow

    def clear(self) -> None:
        self._buffer = bytearray(self._size)
        self._index = self._calls = self._failures = self._slow = 0


class _TimeWindow:
    """The outcomes of the last ``size`` seconds, in one bucket per second with running totals."""

    __slots__ = (
        "_b_calls",
        "_b_failures",
        "_b_slow",
        "_calls",
        "_failures",
        "_head",
        "_size",
        "_slow",
    )

    def __init__(self, size: int) -> None:
        self._size = size
        self._b_calls = [0] * size
        self._b_failures = [0] * size
        self._b_slow = [0] * size
        self._calls = self._failures = self._slow = 0
        self._head: int | None = None
        """The newest second the buckets account for."""

    def _advance(self, now: float) -> int:
        second = int(now // 1)
        head = self._head
        if head is None or second - head >= self._size:
            self._reset_buckets()
        elif second > head:
            # Each bucket is cleared at most once per second that passes: amortised O(1).
            size = self._size
            for sec in range(head + 1, second + 1):
                i = sec % size
                self._calls -= self._b_calls[i]
                self._failures -= self._b_failures[i]
                self._slow -= self._b_slow[i]
                self._b_calls[i] = self._b_failures[i] = self._b_slow[i] = 0
        if head is None or second > head:
            self._head = second
            return second
        # A clock read before a concurrent, later record: count it in the newest bucket.
        return head

    def _reset_buckets(self) -> None:
        size = self._size
        self._b_calls = [0] * size
        self._b_failures = [0] * size
        self._b_slow = [0] * size
        self._calls = self._failures = self._slow = 0

    def record(self, now: float, code: int) -> None:
        i = self._advance(now) % self._size
        failed, slow = code & _FAILURE, code >> 1
        self._b_calls[i] += 1
        self._b_failures[i] += failed
        self._b_slow[i] += slow
        self._calls += 1
        self._failures += failed
        self._slow += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        self._advance(now)
        return self._calls, self._failures, self._slow

    def clear(self) -> None:
        self._reset_buckets()
        self._head = None
