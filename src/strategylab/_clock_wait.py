"""Waiting with a deadline on an injected clock.

:func:`asyncio.timeout` follows the event loop's timer, which a :class:`~strategylab.clock.Clock`
cannot drive. Where a deadline is policy (a poll interval that an event may cut short, a job's time
limit) rather than a bound on one I/O call, it is measured on the injected clock, so that a test on
:class:`~strategylab.testing.FakeClock` moves it by moving the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from strategylab._tasks import cancel_and_wait
from strategylab.clock import Clock, SystemClock

__all__ = ["wait_within"]

_T = TypeVar("_T")


async def wait_within(clock: Clock, awaitable: Awaitable[_T], seconds: float) -> _T:
    """Await ``awaitable`` for at most ``seconds`` on ``clock``.

    Its result or exception when it finishes in time; otherwise it is cancelled (and waited for)
    and :class:`TimeoutError` is raised. On the system clock this is ``asyncio.timeout``, with no
    extra task; on another clock the deadline is a task in ``clock.asleep`` raced against the work.
    Cancelling the caller cancels both.
    """
    if isinstance(clock, SystemClock):
        async with asyncio.timeout(seconds):
            return await awaitable
    work = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.asleep(seconds))
    try:
        await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
        finished = work.done()
    finally:
        await cancel_and_wait((timer, work))
    if not finished:
        raise TimeoutError(f"not done within {seconds:g}s")
    return work.result()
