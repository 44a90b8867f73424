"""Small helpers for owning asyncio tasks: cancel with a wait, and supervise with restarts.

No task a component depends on may die unobserved. :class:`SupervisedTask` is the owner of one
such task: it runs the body, and when the body raises it hands the exception to ``on_failure``
(which reports it to the recovery manager), counts the task as *down*, waits a backoff delay on the
injected clock and runs the body again. The body is written to resume from durable state (the
ingestor's writer resumes from the head of its queue), so a restart loses nothing. A body that
returns normally ends the supervision; cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from strategylab.clock import SYSTEM_CLOCK, Clock

__all__ = ["SupervisedTask", "cancel_and_wait", "log_failure"]

_log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel every task and wait until each has finished.

    Unlike ``suppress(CancelledError): await task``, a cancellation aimed at the *caller* while it
    waits still propagates; the tasks' own outcomes are left to their done-callbacks.
    """
    pending = [task for task in tasks if task is not None and not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)


def log_failure(task: asyncio.Task[Any]) -> None:
    """A done-callback: log (one line) the exception of a task nobody else may await."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        _log.error("task %s failed: %r", task.get_name(), exc)


class SupervisedTask:
    """One owned task whose body is restarted, after a backoff delay, whenever it raises.

    ``body`` is called afresh for every run. ``on_failure(exc)`` is called once per failed run
    (it must not raise; an exception from it is logged). ``delay(n)`` gives the seconds to wait
    before restart ``n`` (1, 2, ...; consecutive failures, reset when a run has stayed up for
    ``stable_after`` seconds). While a failed run waits for its restart, :attr:`down` is True.
    """

    def __init__(
        self,
        body: Callable[[], Awaitable[None]],
        *,
        name: str,
        on_failure: Callable[[Exception], object],
        delay: Callable[[int], float],
        clock: Clock = SYSTEM_CLOCK,
        stable_after: float = 5.0,
    ) -> None:
        self._body = body
        self._name = name
        self._on_failure = on_failure
        self._delay = delay
        self._clock = clock
        self._stable_after = stable_after
        self._task: asyncio.Task[None] | None = None
        self._down = False
        self._restarts = 0
        self._consecutive = 0
        self._last_error: Exception | None = None

    @property
    def name(self) -> str:
        """The task's name."""
        return self._name

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The supervising task (None before :meth:`start`)."""
        return self._task

    @property
    def running(self) -> bool:
        """True while the supervising task exists and has not finished."""
        return self._task is not None and not self._task.done()

    @property
    def down(self) -> bool:
        """True while a failed run waits for its restart."""
        return self._down

    @property
    def restarts(self) -> int:
        """Runs restarted after a failure, in total."""
        return self._restarts

    @property
    def last_error(self) -> Exception | None:
        """The exception that ended the last failed run (None if none failed)."""
        return self._last_error

    def start(self) -> asyncio.Task[None]:
        """Start supervising (a no-op while already running); returns the supervising task."""
        if self._task is None or self._task.done():
            self._down = False
            self._task = asyncio.create_task(self._supervise(), name=self._name)
        return self._task

    async def stop(self) -> None:
        """Cancel the task and wait for it to finish."""
        await cancel_and_wait((self._task,))
        self._down = False

    async def _supervise(self) -> None:
        while True:
            started = self._clock.monotonic()
            try:
                await self._body()
            except Exception as exc:
                if self._clock.monotonic() - started >= self._stable_after:
                    self._consecutive = 0
                self._consecutive += 1
                self._last_error = exc
                self._down = True
                _log.warning("%s died (%r); restart %d", self._name, exc, self._consecutive)
                try:
                    self._on_failure(exc)
                except Exception:
                    _log.exception("%s: on_failure raised", self._name)
                await self._clock.asleep(self._delay(self._consecutive))
                self._restarts += 1
                self._down = False
                continue
            return
