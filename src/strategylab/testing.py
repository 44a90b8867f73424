"""Helpers for testing code that uses Strategy Lab; public API, shipped with the package."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import threading
import time as _time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["FakeClock"]


class _Sleeper:
    """One task suspended in :meth:`FakeClock.asleep` until the clock reaches ``deadline``."""

    __slots__ = ("deadline", "future", "live", "loop", "seq", "woken")

    def __init__(
        self,
        deadline: float,
        seq: int,
        future: asyncio.Future[None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.deadline = deadline
        self.seq = seq
        self.future = future
        self.loop = loop
        self.live = True  # registered: not yet woken, not cancelled
        self.woken = False  # woken, and its task has not resumed yet

    def __lt__(self, other: _Sleeper) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class _LoopState:
    """The sleepers and the autojump callback of one event loop."""

    __slots__ = ("handle", "idle", "seen", "sleepers", "unresumed")

    def __init__(self) -> None:
        self.handle: asyncio.Handle | None = None
        self.idle = 0  # consecutive jumper passes without clock activity
        self.seen = -1  # the clock's activity counter at the last pass
        self.sleepers = 0  # live sleepers on this loop
        self.unresumed = 0  # woken sleepers whose task has not run yet


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class FakeClock:
    """A clock that only moves when told to, or when every task is waiting for it.

    Modelled on trio's ``MockClock`` (``trio/_core/_mock_clock.py``). Times are in seconds.

    - ``await asleep(s)`` registers a *sleeper* with the deadline ``now + s`` and suspends the task
      until the clock reaches it. Sleepers wake in deadline order, ties in registration order, and
      the clock never moves past a deadline by itself while that sleeper is registered: two tasks
      sleeping 5 s and 10 s together leave the clock at 10, not 15. ``asleep(0)`` (or less) only
      yields once to the event loop; ``asleep(math.inf)`` sleeps until cancelled. A cancelled
      sleeper is removed and never moves the clock.
    - ``advance(s)`` (alias ``jump``) moves the clock by ``s`` and wakes every sleeper whose
      deadline is reached, in deadline order.
    - ``sleep(s)``, the synchronous twin for sync code and threads, moves the clock by ``s`` at
      once and wakes the async sleepers it reaches (with ``call_soon_threadsafe`` from another
      thread).
    - Every requested delay, sync or async, is appended to :attr:`sleeps`.

    **Autojump.** With ``autojump_threshold`` set, when every task on a loop is blocked, the clock
    jumps to the next sleeper's deadline, so a test that awaits ``clock.asleep`` never waits.
    The default, ``0.0``, jumps as soon as the loop is idle; this departs from trio, whose default
    is ``inf``, so that a lone ``await clock.asleep(s)`` returns at once, ``s`` later. A positive
    threshold jumps only after that many *real* seconds without clock activity (a registration, a
    wake, a cancellation or a move); ``None`` or ``math.inf`` never jumps: only ``advance`` and
    ``sleep`` move time.

    asyncio has no public "the loop is idle" signal, so a jumper callback re-schedules itself with
    ``loop.call_soon`` and jumps only once :attr:`idle_passes` consecutive loop iterations passed
    with no clock activity and every woken sleeper has resumed. Its limits: a task waiting on real
    I/O, a thread or a subprocess counts as blocked (as in trio), and a task that keeps running
    for more than ``idle_passes`` iterations without touching the clock (a chain of
    ``asyncio.sleep(0)``) can be overtaken by a jump. The jumper runs only while the loop has
    sleepers; it jumps to the earliest deadline of any loop's sleepers.

    ``time()`` is ``start`` plus the elapsed fake time, like ``monotonic()``. The clock is
    thread-safe, and one clock may serve several event loops in turn (pytest-asyncio gives each
    test its own) or none at all.
    """

    idle_passes: int = 5
    """Loop iterations without clock activity after which autojump counts the loop as idle."""

    def __init__(self, start: float = 0.0, *, autojump_threshold: float | None = 0.0) -> None:
        start = float(start)
        if not math.isfinite(start):
            raise ValueError(f"start={start!r}: must be a finite number of seconds")
        self._now = start
        self._lock = threading.RLock()
        self._heap: list[_Sleeper] = []
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._seq = itertools.count()
        self._activity = 0
        self._activity_real = _time.monotonic()
        self._threshold = self._check_threshold(autojump_threshold)
        self._threshold_given = autojump_threshold
        self.sleeps: list[float] = []
        """Every delay requested through ``sleep`` or ``asleep``, in order, as given."""

    # ------------------------------------------------------------------ reading

    def monotonic(self) -> float:
        """The current fake time, in seconds."""
        return self._now

    def time(self) -> float:
        """The current fake time, read as seconds since the epoch (``start`` + elapsed)."""
        return self._now

    @property
    def autojump_threshold(self) -> float | None:
        """Real seconds of idleness before time jumps to the next deadline; None or inf: never."""
        return self._threshold_given

    @autojump_threshold.setter
    def autojump_threshold(self, value: float | None) -> None:
        threshold = self._check_threshold(value)
        with self._lock:
            self._threshold = threshold
            self._threshold_given = value
            self._touch()
            loops = [loop for loop, state in self._loops.items() if state.sleepers]
        for loop in loops:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._restart_jumper, loop)

    @property
    def pending_sleepers(self) -> int:
        """How many tasks are suspended in :meth:`asleep` right now."""
        with self._lock:
            return sum(state.sleepers for state in self._loops.values())

    def next_deadline(self) -> float | None:
        """The earliest deadline of a suspended :meth:`asleep`, in clock seconds; None if none."""
        with self._lock:
            self._drop_dead()
            return self._heap[0].deadline if self._heap else None

    # ------------------------------------------------------------------ moving

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (>= 0) and wake the sleepers it reaches."""
        seconds = self._check_delay("seconds", seconds)
        if seconds < 0:
            raise ValueError(f"seconds={seconds!r}: a clock cannot go backwards")
        self._move(seconds)

    jump = advance
    """trio's name for :meth:`advance`."""

    def sleep(self, seconds: float) -> None:
        """Record the delay, move the clock by it (if positive) at once, without blocking."""
        seconds = self._check_delay("seconds", seconds)
        with self._lock:
            self.sleeps.append(seconds)
        self._move(max(seconds, 0.0))

    async def asleep(self, seconds: float) -> None:
        """Record the delay and suspend the task until the clock reaches ``now + seconds``."""
        if math.isnan(seconds):
            raise ValueError(f"seconds={seconds!r}: must be a number")
        if seconds <= 0:
            with self._lock:
                self.sleeps.append(seconds)
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        with self._lock:
            self.sleeps.append(seconds)
            sleeper = _Sleeper(self._now + seconds, next(self._seq), loop.create_future(), loop)
            heapq.heappush(self._heap, sleeper)
            state = self._loops.get(loop)
            if state is None:
                self._drop_closed_loops()
                state = self._loops[loop] = _LoopState()
            state.sleepers += 1
            self._touch()
            if state.handle is None and self._threshold is not None:
                state.handle = loop.call_soon(self._tick, loop)
        try:
            await sleeper.future
        finally:
            with self._lock:
                state = self._loops.get(loop)
                if sleeper.live:  # cancelled while registered: unregister, do not move
                    sleeper.live = False
                    if state is not None:
                        state.sleepers -= 1
                elif sleeper.woken and state is not None:
                    state.unresumed -= 1
                sleeper.woken = False
                self._touch()

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _check_threshold(value: float | None) -> float | None:
        if value is None:
            return None
        threshold = float(value)
        if math.isnan(threshold) or threshold < 0:
            raise ValueError(f"autojump_threshold={value!r}: must be >= 0, inf or None")
        return None if math.isinf(threshold) else threshold

    @staticmethod
    def _check_delay(name: str, seconds: float) -> float:
        seconds = float(seconds)
        if not math.isfinite(seconds):
            raise ValueError(f"{name}={seconds!r}: must be a finite number of seconds")
        return seconds

    def _touch(self) -> None:
        """Note clock activity (caller holds the lock): it postpones autojump."""
        self._activity += 1
        self._activity_real = _time.monotonic()

    def _move(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            self._touch()
            due = self._pop_due()
        self._wake(due)

    def _pop_due(self) -> list[_Sleeper]:
        """Unregister the sleepers whose deadline is reached, in wake order (lock held)."""
        due: list[_Sleeper] = []
        heap = self._heap
        while heap and (not heap[0].live or heap[0].deadline <= self._now):
            sleeper = heapq.heappop(heap)
            if not sleeper.live:
                continue
            sleeper.live = False
            state = self._loops.get(sleeper.loop)
            if state is not None:
                state.sleepers -= 1
                if not sleeper.loop.is_closed():
                    sleeper.woken = True
                    state.unresumed += 1
            due.append(sleeper)
        return due

    def _wake(self, due: Iterable[_Sleeper]) -> None:
        """Resolve the sleepers' futures in order, each in its own loop's thread."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for sleeper in due:
            loop = sleeper.loop
            if loop is current:
                _resolve(sleeper.future)
            elif not loop.is_closed():
                # Closed in the meantime: nobody is left to wake.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_resolve, sleeper.future)

    def _drop_dead(self) -> None:
        """Pop unregistered sleepers and those of closed loops off the heap's top (lock held)."""
        heap = self._heap
        while heap and (not heap[0].live or heap[0].loop.is_closed()):
            sleeper = heapq.heappop(heap)
            if sleeper.live:
                sleeper.live = False
                state = self._loops.get(sleeper.loop)
                if state is not None:
                    state.sleepers -= 1

    def _drop_closed_loops(self) -> None:
        """Forget loops closed with tasks still asleep (a test that ended early; lock held)."""
        closed = [loop for loop in self._loops if loop.is_closed()]
        if not closed:
            return
        for loop in closed:
            del self._loops[loop]
        for sleeper in self._heap:
            if sleeper.loop.is_closed():
                sleeper.live = False
        self._heap = [s for s in self._heap if s.live]
        heapq.heapify(self._heap)

    def _restart_jumper(self, loop: asyncio.AbstractEventLoop) -> None:
        """Re-arm the jumper after the threshold changed (runs in ``loop``'s thread)."""
        with self._lock:
            state = self._loops.get(loop)
            if state is None:
                return
            if state.handle is not None:
                state.handle.cancel()
                state.handle = None
            if self._threshold is not None and state.sleepers:
                state.idle = 0
                state.handle = loop.call_soon(self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """One pass of the autojump callback on ``loop``; see the class docstring."""
        with self._lock:
            state = self._loops.get(loop)
            if state is None:
                return
            state.handle = None
            threshold = self._threshold
            if threshold is None or not state.sleepers:
                if not state.sleepers and not state.unresumed:
                    del self._loops[loop]
                return
            if self._activity != state.seen or state.unresumed:
                state.seen = self._activity
                state.idle = 0
                state.handle = loop.call_soon(self._tick, loop)
                return
            quiet = _time.monotonic() - self._activity_real
            if quiet < threshold:
                state.handle = loop.call_later(threshold - quiet, self._tick, loop)
                return
            state.idle += 1
            if state.idle < self.idle_passes:
                state.handle = loop.call_soon(self._tick, loop)
                return
            self._drop_dead()
            if not self._heap or math.isinf(self._heap[0].deadline):
                return  # nothing to jump to; the next registration re-arms the jumper
            self._now = max(self._now, self._heap[0].deadline)
            self._touch()
            due = self._pop_due()
            state.idle = 0
            if state.sleepers or state.unresumed:
                state.handle = loop.call_soon(self._tick, loop)
        self._wake(due)

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"FakeClock(now={self._now!r}, sleepers={self.pending_sleepers}, "
                f"sleeps={len(self.sleeps)}, autojump_threshold={self._threshold_given!r})"
            )
