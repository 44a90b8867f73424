"""The bulkhead: a limit on how many calls run at once, with a bounded FIFO queue in front of it."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
from collections import deque
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from strategylab import _validate
from strategylab.errors import BulkheadFullError, ConfigurationError

from ._typing import DecoratorMixin, refuse_coroutine_function, refuse_generator

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

__all__ = ["Bulkhead", "BulkheadStatistics"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadStatistics:
    """A snapshot of a bulkhead's counters, taken under its lock so the figures agree."""

    running: int
    """Calls holding a slot now."""
    waiting: int
    """Calls queued for a slot now."""
    admitted: int
    """Calls that got a slot since the bulkhead was made (at once or after waiting)."""
    rejected: int
    """Calls refused: the queue was full, or a waiter's ``max_wait`` ran out."""

    def __post_init__(self) -> None:
        for field in ("running", "waiting", "admitted", "rejected"):
            value = getattr(self, field)
            if type(value) is not int or value < 0:
                raise ValueError(f"{field}={value!r}: must be a non-negative int")


class _ThreadWaiter:
    """A blocked thread; woken by releasing a lock it holds and then blocks on again."""

    __slots__ = ("granted", "lock")

    def __init__(self) -> None:
        self.granted = False
        self.lock = threading.Lock()
        self.lock.acquire()

    def wake(self) -> bool:
        self.lock.release()
        return True


class _TaskWaiter:
    """A suspended asyncio task; woken by resolving a future on its own event loop."""

    __slots__ = ("future", "granted", "loop", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.granted = False
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.thread = threading.get_ident()

    def wake(self) -> bool:
        try:
            if threading.get_ident() == self.thread:
                _resolve(self.future)
            else:
                self.loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:
            # Its loop is closed: nobody is left to take the slot.
            return False
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Bulkhead(DecoratorMixin):
    """At most ``max_concurrent`` calls run at once; up to ``max_waiting`` more wait (FIFO).

    A call beyond that raises :class:`~strategylab.errors.BulkheadFullError` at once, without being
    called; so does a waiter that has not got a slot within ``max_wait`` seconds (if set). A slot is
    always given back, whatever the call raises.

    **Threads and tasks share one bulkhead.** The state is one counter and one FIFO queue of waiters
    behind a single :class:`threading.Lock`, held only for a few instructions and never across a
    wait or a call. A waiting thread blocks on its own lock; a waiting task awaits its own future on
    its own event loop (woken thread-safely when the slot is freed from another thread). A freed
    slot is handed straight to the first waiter, so a newcomer cannot overtake the queue. A sync
    call made on an event loop's thread blocks that loop while it waits: from async code use
    ``acall``/``awrap``.

    **Cheap when uncontended.** With a free slot, a call takes the lock, bumps two counters and
    goes: no allocation, and no future unless the task really has to wait.

    **Cancellation.** A waiting task that is cancelled (or whose ``max_wait`` runs out) leaves the
    queue; if a slot had been handed to it in the same instant, it passes the slot on. Neither a
    place in the queue nor a slot ever leaks.

    ``max_wait`` is measured by the waiting primitive itself (the thread's lock, the event loop's
    timer), so it follows real time, not an injected clock.
    """

    __slots__ = (
        "_admitted",
        "_lock",
        "_max_concurrent",
        "_max_wait",
        "_max_waiting",
        "_name",
        "_rejected",
        "_running",
        "_waiters",
    )

    def __init__(
        self,
        max_concurrent: int,
        max_waiting: int = 0,
        *,
        name: str = "bulkhead",
        max_wait: float | None = None,
    ) -> None:
        self._max_concurrent = _validate.integer(
            "max_concurrent", max_concurrent, minimum=1, type_error=True
        )
        self._max_waiting = _validate.integer(
            "max_waiting", max_waiting, minimum=0, type_error=True
        )
        if not isinstance(name, str):
            raise TypeError(f"name={name!r}: must be a str")
        if not name:
            raise ConfigurationError("name", name, "must not be empty")
        self._name = name
        self._max_wait = (
            None if max_wait is None else _validate.seconds("max_wait", max_wait, type_error=True)
        )
        self._lock = threading.Lock()
        self._waiters: deque[_ThreadWaiter | _TaskWaiter] = deque()
        self._running = 0
        self._admitted = 0
        self._rejected = 0

    @property
    def name(self) -> str:
        """The name reported in :class:`~strategylab.errors.BulkheadFullError`."""
        return self._name

    @property
    def max_concurrent(self) -> int:
        """How many calls may run at once."""
        return self._max_concurrent

    @property
    def max_waiting(self) -> int:
        """How many calls may wait for a slot."""
        return self._max_waiting

    @property
    def max_wait(self) -> float | None:
        """The longest a call waits for a slot, in seconds; ``None`` waits as long as it takes."""
        return self._max_wait

    def statistics(self) -> BulkheadStatistics:
        """A consistent snapshot of the counters."""
        with self._lock:
            return BulkheadStatistics(
                running=self._running,
                waiting=len(self._waiters),
                admitted=self._admitted,
                rejected=self._rejected,
            )

    def __repr__(self) -> str:
        return (
            f"Bulkhead(name={self._name!r}, max_concurrent={self._max_concurrent}, "
            f"max_waiting={self._max_waiting}, running={self._running}, "
            f"waiting={len(self._waiters)})"
        )

    # -- the state machine: every transition happens under self._lock -------------------------

    def _enter_fast(self) -> bool:
        """Take a free slot if there is one; no allocation, no exception possible."""
        lock = self._lock
        lock.acquire()
        if self._running < self._max_concurrent:
            self._running += 1
            self._admitted += 1
            lock.release()
            return True
        lock.release()
        return False

    def _try_enter(self) -> bool:
        """Take a free slot (True), or say the caller must queue (False), or reject."""
        # Caller holds the lock. Because a freed slot goes straight to the first waiter, a free
        # slot implies an empty queue, so taking it cannot overtake anyone.
        if self._running < self._max_concurrent:
            self._running += 1
            self._admitted += 1
            return True
        if len(self._waiters) >= self._max_waiting:
            self._rejected += 1
            raise self._full()
        return False

    def _release(self) -> None:
        """Give a slot back: to the first live waiter, or to the pool."""
        # acquire()/release() rather than `with`: half the cost, and nothing here can raise.
        lock = self._lock
        lock.acquire()
        if not self._waiters:
            self._running -= 1
            lock.release()
            return
        lock.release()
        self._hand_over()

    def _hand_over(self) -> None:
        with self._lock:
            waiters = self._waiters
            while waiters:
                waiter = waiters.popleft()
                waiter.granted = True
                if waiter.wake():
                    self._admitted += 1
                    return
            self._running -= 1

    def _abandon(self, waiter: _ThreadWaiter | _TaskWaiter, *, timed_out: bool) -> bool:
        """A waiter gives up; True if a slot reached it first, which it now holds."""
        with self._lock:
            if waiter.granted:
                return True
            self._waiters.remove(waiter)
            if timed_out:
                self._rejected += 1
            return False

    def _full(self) -> BulkheadFullError:
        # A new instance per rejection: a stored one would grow its traceback on every raise.
        return BulkheadFullError(self._name, self._max_concurrent, self._max_waiting)

    # -- sync driver ----------------------------------------------------------------------------

    def _acquire(self) -> None:
        if self._enter_fast():
            return
        with self._lock:
            if self._try_enter():
                return
            waiter = _ThreadWaiter()
            self._waiters.append(waiter)
        try:
            got = waiter.lock.acquire(timeout=-1 if self._max_wait is None else self._max_wait)
        except BaseException:
            # KeyboardInterrupt in the waiting main thread: give the place (or slot) back.
            if self._abandon(waiter, timed_out=False):
                self._release()
            raise
        if got or self._abandon(waiter, timed_out=True):
            return
        raise self._full()

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` in a slot, waiting for one if the queue has room."""
        self._acquire()
        try:
            return fn(*args, **kwargs)
        finally:
            self._release()

    def wrap(self, fn: Callable[P, R], /) -> Callable[P, R]:
        """Return a wrapper that runs every call of ``fn`` in a slot.

        Raises :class:`TypeError` for a generator function, whose body would run outside the slot.
        """
        refuse_generator(fn, "Bulkhead")
        refuse_coroutine_function(fn, "Bulkhead")
        # The fast paths of _acquire and _release are inlined: two fewer Python calls is a quarter
        # of the uncontended overhead. Anything but the uncontended case goes to the methods.
        lock = self._lock
        waiters = self._waiters
        max_concurrent = self._max_concurrent
        acquire = self._acquire
        hand_over = self._hand_over

        @functools.wraps(fn)
        def bulkhead_wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            lock.acquire()
            if self._running < max_concurrent:
                self._running += 1
                self._admitted += 1
                lock.release()
            else:
                lock.release()
                acquire()
            try:
                return fn(*args, **kwargs)
            finally:
                lock.acquire()
                if waiters:
                    lock.release()
                    hand_over()
                else:
                    self._running -= 1
                    lock.release()

        return bulkhead_wrapper

    # -- async driver ---------------------------------------------------------------------------

    async def _await_slot(self) -> None:
        """The async slow path; callers try :meth:`_enter_fast` first, so no coroutine is made
        for an uncontended call."""
        with self._lock:
            if self._try_enter():
                return
            waiter = _TaskWaiter(asyncio.get_running_loop())
            self._waiters.append(waiter)
        timed_out = False
        try:
            if self._max_wait is None:
                await waiter.future
            else:
                async with asyncio.timeout(self._max_wait):
                    await waiter.future
        except TimeoutError:
            timed_out = True
        except BaseException:
            # Cancelled while queued: leave the queue, or pass on a slot handed over meanwhile.
            if self._abandon(waiter, timed_out=False):
                self._release()
            raise
        if timed_out and not self._abandon(waiter, timed_out=True):
            raise self._full()

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` in a slot, waiting for one if the queue has room."""
        if not self._enter_fast():
            await self._await_slot()
        try:
            return await fn(*args, **kwargs)
        finally:
            self._release()

    def awrap(self, fn: Callable[P, Awaitable[R]], /) -> Callable[P, Coroutine[object, None, R]]:
        """Return a wrapper that runs every call of the async ``fn`` in a slot.

        Raises :class:`TypeError` for a generator or async generator function, whose body would
        run outside the slot.
        """
        refuse_generator(fn, "Bulkhead")
        # Fast paths inlined as in wrap; awaiting a slow-path coroutine only when there is no slot.
        lock = self._lock
        waiters = self._waiters
        max_concurrent = self._max_concurrent
        await_slot = self._await_slot
        hand_over = self._hand_over

        @functools.wraps(fn)
        async def bulkhead_wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            lock.acquire()
            if self._running < max_concurrent:
                self._running += 1
                self._admitted += 1
                lock.release()
            else:
                lock.release()
                await await_slot()
            try:
                return await fn(*args, **kwargs)
            finally:
                lock.acquire()
                if waiters:
                    lock.release()
                    hand_over()
                else:
                    self._running -= 1
                    lock.release()

        return bulkhead_wrapper
