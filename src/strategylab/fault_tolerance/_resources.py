"""Readers of real resource signals: resident memory, event-loop lag, process CPU.

These feed the degradation triggers and the health checks. Every value is measured, none is
estimated or made up:

- :func:`rss_bytes`: the process's resident set size now, from ``/proc/self/statm`` (Linux);
  elsewhere the peak RSS from :func:`resource.getrusage` (an upper bound, the best the platform
  offers without a third-party library);
- :class:`LoopLagSampler`: how late the event loop wakes a task that asked to sleep ``interval``
  seconds, measured on the injected clock by a sampler task: a loop kept busy by a blocking call
  or a flood of callbacks wakes it late;
- :class:`CpuMeter`: the share of one CPU that the process used between two readings (user +
  system time from :func:`os.times` over elapsed time), in percent; above 100 on several cores.

This module is a long-running part: the hot path never imports it.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
from collections.abc import Callable
from typing import Self

from strategylab import _validate
from strategylab._tasks import cancel_and_wait
from strategylab.clock import SYSTEM_CLOCK, Clock

__all__ = ["CpuMeter", "LoopLagSampler", "process_cpu_seconds", "rss_bytes"]

_STATM = "/proc/self/statm"
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """The process's resident set size in bytes, read now.

    From ``/proc/self/statm`` (its second field, in pages) where it exists; otherwise the peak
    RSS from ``getrusage`` (kilobytes on Linux, bytes on macOS). Raises :class:`OSError` when
    neither source can be read.
    """
    try:
        with open(_STATM, "rb") as f:  # noqa: PTH123 - one small read, no pathlib object needed
            fields = f.read().split()
        return int(fields[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        pass
    import resource  # noqa: PLC0415 - only where /proc is missing

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def process_cpu_seconds() -> float:
    """CPU seconds this process has used (user + system, not its children's) since it started."""
    times = os.times()
    return times.user + times.system


class CpuMeter:
    """The process's CPU use between readings, in percent of one CPU.

    Each :meth:`read` returns ``100 * (cpu seconds used) / (seconds elapsed)`` since the previous
    read (or since construction), then starts a new interval; ``0.0`` when no time has passed.
    ``cpu_seconds`` is the source of CPU time (default :func:`process_cpu_seconds`), ``clock`` the
    source of elapsed time (default: the system clock). :attr:`last` is the latest reading.

    A read less than ``min_interval`` seconds (default 0.5) after the previous one returns the
    previous reading and keeps the interval open: the kernel counts CPU time in ticks (10 ms
    here), so a short interval reads 0 % or several hundred per cent of one CPU at random.
    """

    __slots__ = ("_clock", "_cpu", "_cpu_at", "_last", "_min_interval", "_wall_at")

    def __init__(
        self,
        *,
        clock: Clock = SYSTEM_CLOCK,
        cpu_seconds: Callable[[], float] = process_cpu_seconds,
        min_interval: float = 0.5,
    ) -> None:
        self._clock = clock
        self._min_interval = min_interval
        self._cpu = cpu_seconds
        self._cpu_at = cpu_seconds()
        self._wall_at = clock.monotonic()
        self._last = 0.0

    @property
    def last(self) -> float:
        """The latest reading, in percent (0.0 before the first)."""
        return self._last

    def read(self) -> float:
        """Percent of one CPU used since the previous read; starts the next interval."""
        wall = self._clock.monotonic()
        elapsed = wall - self._wall_at
        if elapsed <= 0 or elapsed < self._min_interval:
            return self._last
        cpu = self._cpu()
        used = cpu - self._cpu_at
        self._cpu_at, self._wall_at = cpu, wall
        self._last = max(0.0, 100.0 * used / elapsed)
        return self._last


class LoopLagSampler:
    """Measures event-loop lag: how late a sleeping task is woken, in seconds.

    A sampler task sleeps ``interval`` seconds on ``clock`` again and again; each wake-up's delay
    beyond ``interval`` is one sample. :attr:`lag` is the latest sample, :attr:`max_lag` the largest
    of the last ``window`` samples. A busy loop (a blocking call, a burst of callbacks) wakes the
    sampler late, and the lag shows it. ``start()`` / ``await stop()``, or ``async with``.
    """

    __slots__ = ("_clock", "_interval", "_samples", "_task")

    def __init__(
        self, *, clock: Clock = SYSTEM_CLOCK, interval: float = 0.1, window: int = 50
    ) -> None:
        self._clock = clock
        self._interval = _validate.seconds("interval", interval)
        size = _validate.integer("window", window, minimum=1)
        self._samples: collections.deque[float] = collections.deque(maxlen=size)
        self._task: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float:
        """Seconds between samples."""
        return self._interval

    @property
    def lag(self) -> float:
        """The latest lag in seconds (0.0 before the first sample)."""
        return self._samples[-1] if self._samples else 0.0

    @property
    def max_lag(self) -> float:
        """The largest lag among the last ``window`` samples, in seconds."""
        return max(self._samples, default=0.0)

    @property
    def samples(self) -> int:
        """How many samples the window holds."""
        return len(self._samples)

    @property
    def running(self) -> bool:
        """True while the sampler task runs."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the sampler task (a no-op while it runs)."""
        if not self.running:
            self._task = asyncio.create_task(self._sample(), name="loop-lag-sampler")

    async def stop(self) -> None:
        """Cancel the sampler task and wait for it."""
        await cancel_and_wait((self._task,))
        self._task = None

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _sample(self) -> None:
        clock = self._clock
        interval = self._interval
        while True:
            before = clock.monotonic()
            await clock.asleep(interval)
            self._samples.append(max(0.0, clock.monotonic() - before - interval))
