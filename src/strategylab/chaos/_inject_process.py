"""Process faults: a signal to a real process (a crash by SIGKILL, a freeze by SIGSTOP).

The target is given as a pid getter, ``Callable[[], int | None]`` (``lambda: child.pid``), read at
inject, so that an injector built before a process restarts hits the process running then. The
signal is sent through a *pidfd* (``pidfd_open(2)``, Linux 5.3+): the pid is pinned when the fault
starts, so a pid reused by another process after the target died is never signalled, and the
target's exit is awaited on the pidfd (readable when the process ends) rather than polled.

Refused with :class:`InjectorError`: a pid <= 1, this process and its parent (the lab never kills
itself or whatever started it), a pid getter that answers ``None`` or a process already gone.
A kernel without pidfds makes :meth:`~Injector.capability` answer why; the fault is then skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, Final

from strategylab import _validate
from strategylab.errors import ConfigurationError

from ._injector import Injector, InjectorError
from ._severity import Severity

__all__ = ["KillProcess", "PauseProcess", "ProcessExit", "process_state"]

PidGetter = Callable[[], int | None]

_STATE_WAIT: Final = 2.0
"""Seconds a stop or continue may take to show in ``/proc/PID/stat``."""


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from ``/proc/PID/stat`` (``R``, ``S``, ``T``, ``Z``...),
    ``None`` when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may hold spaces or ')': the state follows the last.
    return stat.rpartition(")")[2].split()[0]


def _pidfd_problem() -> str | None:
    if not hasattr(os, "pidfd_open") or not hasattr(signal, "pidfd_send_signal"):
        return "needs pidfd_open(2) (Linux 5.3+ and Python built with it)"
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError as exc:
        return f"pidfd_open(2) is not available here: {exc.strerror or exc}"
    os.close(fd)
    return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProcessExit:
    """How a killed process ended, as far as the lab could see.

    ``returncode`` follows :attr:`asyncio.subprocess.Process.returncode` (``-N`` for signal N)
    and is known only when ``exit_status`` was given to the injector (the lab is not the
    process's parent, and only the parent can read the status); ``gone`` says whether the
    process ended within the wait, ``waited`` how long that took (seconds, monotonic).
    """

    pid: int
    signal: int
    gone: bool
    waited: float
    returncode: int | None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values (the signal by name)."""
        return {
            "pid": self.pid,
            "signal": signal.Signals(self.signal).name,
            "gone": self.gone,
            "waited_s": round(self.waited, 6),
            "returncode": self.returncode,
        }


class _SignalInjector(Injector):
    """Shared by the process faults: resolve, check and pin the target, then signal it."""

    kind: ClassVar[str] = "process"

    def __init__(self, pid: PidGetter, *, name: str, severity: Severity) -> None:
        if not callable(pid):
            raise ConfigurationError("pid", _validate.shown(pid), "must be a callable -> pid")
        if not isinstance(severity, Severity):
            raise ConfigurationError("severity", severity, "must be a chaos.Severity")
        super().__init__(name, severity)
        self._get_pid = pid
        self.pid: int | None = None
        self._pidfd: int | None = None

    def capability(self) -> str | None:
        return _pidfd_problem()

    def _target(self) -> tuple[int, int]:
        """The target pid, checked, and a pidfd pinning it."""
        pid = self._get_pid()
        if pid is None:
            raise InjectorError(f"{self.name}: no process to signal (the pid getter gave None)")
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise InjectorError(f"{self.name}: pid {pid!r} is not an integer")
        if pid <= 1:
            raise InjectorError(f"{self.name}: refusing to signal pid {pid} (init or a group)")
        if pid in (os.getpid(), os.getppid()):
            raise InjectorError(f"{self.name}: refusing to signal pid {pid}: the lab or its parent")
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise InjectorError(f"{self.name}: no process with pid {pid}") from None
        except OSError as exc:
            raise InjectorError(f"{self.name}: cannot open pid {pid}: {exc}") from exc
        return pid, pidfd

    def _send(self, signum: int) -> bool:
        """Signal the pinned process; False when it has ended already."""
        assert self._pidfd is not None  # noqa: S101 - pinned at inject
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            return False
        except PermissionError as exc:
            raise InjectorError(
                f"{self.name}: not allowed to signal pid {self.pid}: {exc.strerror}"
            ) from exc
        return True

    def _release(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _send_or_refuse(self, signum: int) -> None:
        """Signal the pinned process; :class:`InjectorError` when it has ended already."""
        if not self._send(signum):
            raise InjectorError(f"{self.name}: pid {self.pid} ended before the signal")

    async def _wait_exit(self, limit: float) -> bool:
        """Wait (at most ``limit`` s) until the pinned process has ended; True if it has."""
        assert self._pidfd is not None  # noqa: S101
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()
        fd = self._pidfd
        loop.add_reader(fd, ended.set)
        try:
            async with asyncio.timeout(limit):
                await ended.wait()
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)
        return True

    async def _wait_state(self, wanted: Callable[[str | None], bool]) -> str | None:
        """Watch ``/proc/PID/stat`` until ``wanted(state)``, at most :data:`_STATE_WAIT` s.

        A stop is delivered when the target is next scheduled; the kernel offers no event for
        a process that is not our child, so the state file is read every millisecond."""
        assert self.pid is not None  # noqa: S101
        deadline = time.monotonic() + _STATE_WAIT
        state = process_state(self.pid)
        while not wanted(state) and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
            state = process_state(self.pid)
        return state

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pid": self.pid}


class KillProcess(_SignalInjector):
    """Kill a process with ``signal`` (default SIGKILL: a crash nothing can catch).

    Inject sends the signal. Heal has nothing to undo (restarting is the system's job, and what
    the lab measures); it waits at most ``exit_timeout`` seconds for the process to end and
    records :attr:`exit` (:class:`ProcessExit`); a process still alive then raises
    :class:`InjectorError`. ``exit_status`` (``child.wait``: awaited, bounded by
    ``exit_timeout``) lets the record carry the return code when the caller owns the process
    (its parent is the only one who can read it). Severity does not change the fault (a
    kill is a kill); it sizes the scenario's hold before heal.
    """

    def __init__(
        self,
        pid: PidGetter,
        *,
        signal: int = signal.SIGKILL,
        exit_status: Callable[[], Awaitable[int]] | None = None,
        exit_timeout: float = 10.0,
        severity: Severity = Severity.MEDIUM,
        name: str = "process.kill",
    ) -> None:
        super().__init__(pid, name=name, severity=severity)
        try:
            self.signal = _signal_of(signal)
        except (TypeError, ValueError):
            raise ConfigurationError("signal", signal, "is not a signal number") from None
        if exit_status is not None and not callable(exit_status):
            raise ConfigurationError("exit_status", exit_status, "must be a callable or None")
        self._exit_status = exit_status
        self.exit_timeout = _validate.seconds("exit_timeout", exit_timeout)
        self.exit: ProcessExit | None = None
        self._sent_at = 0.0

    async def _inject(self) -> None:
        self.exit = None
        self.pid, self._pidfd = self._target()
        self._sent_at = time.monotonic()
        try:
            self._send_or_refuse(self.signal)
        except BaseException:
            self._release()
            raise

    async def _heal(self) -> None:
        assert self.pid is not None  # noqa: S101
        try:
            gone = await self._wait_exit(self.exit_timeout)
            returncode = None
            if gone and self._exit_status is not None:
                # The owner reaps the child in its own time; give it the same bounded wait.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.exit_timeout):
                        returncode = await self._exit_status()
            self.exit = ProcessExit(
                pid=self.pid,
                signal=self.signal,
                gone=gone,
                waited=time.monotonic() - self._sent_at,
                returncode=returncode,
            )
        finally:
            self._release()
        if not gone:
            raise InjectorError(
                f"{self.name}: pid {self.pid} still alive {self.exit_timeout:g}s after "
                f"{signal.Signals(self.signal).name}"
            )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "signal": signal.Signals(self.signal).name,
            "exit": None if self.exit is None else self.exit.to_dict(),
        }


class PauseProcess(_SignalInjector):
    """Freeze a process with SIGSTOP; heal sends SIGCONT, always (also when inject's wait for
    the stop failed, so nothing is left frozen).

    Inject returns once ``/proc/PID/stat`` shows the process stopped (``T``); heal once it no
    longer does. A frozen process keeps its sockets and files open but answers nothing: its
    peers see a hang, not a crash. Severity sizes only the scenario's hold.
    """

    def __init__(
        self,
        pid: PidGetter,
        *,
        severity: Severity = Severity.MEDIUM,
        name: str = "process.pause",
    ) -> None:
        super().__init__(pid, name=name, severity=severity)
        self.stopped_state: str | None = None
        self.resumed_state: str | None = None

    async def _inject(self) -> None:
        self.pid, self._pidfd = self._target()
        try:
            self._send_or_refuse(signal.SIGSTOP)
            self.stopped_state = await self._wait_state(lambda s: s in (None, "T", "t", "Z"))
        except BaseException:
            self._resume_and_release()
            raise
        if self.stopped_state not in ("T", "t"):
            self._resume_and_release()
            raise InjectorError(
                f"{self.name}: pid {self.pid} did not stop (state {self.stopped_state!r})"
            )

    def _resume_and_release(self) -> None:
        try:
            with contextlib.suppress(InjectorError):
                self._send(signal.SIGCONT)
        finally:
            self._release()

    async def _heal(self) -> None:
        try:
            if self._send(signal.SIGCONT):
                self.resumed_state = await self._wait_state(lambda s: s not in ("T", "t"))
            else:
                self.resumed_state = None  # ended while frozen (killed by someone else)
        finally:
            self._release()
        if self.resumed_state in ("T", "t"):
            raise InjectorError(f"{self.name}: pid {self.pid} still stopped after SIGCONT")

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "stopped_state": self.stopped_state,
            "resumed_state": self.resumed_state,
        }


def _signal_of(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(value)
    return int(signal.Signals(value))
