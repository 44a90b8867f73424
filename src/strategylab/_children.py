"""Child processes that never outlive the program that started them.

A command that starts helper processes (the demo's exchange, node and trader; ``demo-core``'s quote
service) must not leave them running when it ends, however it ends: a clean exit, SIGTERM, Ctrl-C,
or SIGKILL, which runs no clean-up code at all. :class:`ChildGuard` gives each child two things.

- Its own process group (``process_group=0``): a Ctrl-C at the terminal reaches only the parent,
  which stops its children one by one in the order it chooses, instead of every process at once.
- A tie to the parent's life. On Linux, ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` in the child between
  ``fork`` and ``exec``: the kernel sends SIGTERM when the parent dies. Elsewhere, a *watchdog*:
  a small process (``python -m strategylab._children watchdog``, in its own session) that reads a
  pipe whose only writer is the parent. The parent writes ``+PID`` when it starts a child and
  ``-PID`` when it has reaped it; end of file on the pipe means the parent is gone, however it
  died, and the watchdog sends SIGTERM to every child still listed, then SIGKILL after ``grace``
  seconds. It identifies a process by PID and creation time (psutil), so a PID reused by an
  unrelated process is never signalled.

:class:`ChildProcesses` starts asyncio children under a guard and stops them newest first
(SIGTERM, then SIGKILL after a deadline), recording each exit status; :func:`cancel_on_signals`
turns the first SIGTERM, SIGINT or SIGHUP into a cancellation of the running task, so that the
command's own ``finally`` blocks stop its children in order and it can say what was interrupted,
and a second signal into :meth:`ChildProcesses.kill`; :func:`run_interruptible` puts the two
together for a command's main coroutine (exit status 128 + N after signal N).

``STRATEGYLAB_CHILD_GUARD=watchdog`` makes Linux use the watchdog too (how the tests exercise the
path other platforms take); the default, ``auto``, uses ``PR_SET_PDEATHSIG`` where it exists.

Limits, stated rather than hidden: ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the
child ends, so children must be started from a thread that lives as long as the program (asyncio
starts them from the event loop's thread, the main thread here). A child that ignores SIGTERM is
stopped by SIGKILL only under the watchdog. The preexec hook runs between ``fork`` and ``exec``
and does no more than the ``subprocess`` documentation allows there: one ``prctl`` call (looked
up in the parent), a ``getppid`` and, if the parent is already gone, a ``kill`` of itself. The
process group is set with ``process_group=``, not in the hook.

Bottom layer: the standard library only (the watchdog process imports psutil).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any, Final, Literal, Self

if TYPE_CHECKING:
    import psutil

__all__ = [
    "GUARD_ENV",
    "SIGNAL_EXIT_BASE",
    "ChildGuard",
    "ChildProcesses",
    "GuardMode",
    "cancel_on_signals",
    "parent_death_hook",
    "run_interruptible",
    "watchdog_main",
]

GUARD_ENV: Final = "STRATEGYLAB_CHILD_GUARD"
"""Environment variable choosing how children are tied to the parent: ``auto`` or ``watchdog``."""

GuardMode = Literal["auto", "watchdog"]

SIGNAL_EXIT_BASE: Final = 128
"""A command interrupted by signal N exits with 128 + N, as a shell reports it."""

_PR_SET_PDEATHSIG: Final = 1
_WATCHDOG_WAIT: Final = 10.0
"""Seconds :meth:`ChildGuard.close` waits for the watchdog to exit before leaving it."""


def parent_death_hook(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks the kernel to send ``sig`` to the child when this process dies.

    None where the platform has no ``PR_SET_PDEATHSIG`` (anything but Linux). The C function is
    looked up here, in the parent, so the child only calls it; if the parent died between the
    ``fork`` and the ``prctl`` (the child was already reparented), the child signals itself.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    number = int(sig)

    def hook() -> None:
        if prctl(_PR_SET_PDEATHSIG, number, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os.kill(os.getpid(), number)

    return hook


def _mode_from_env() -> GuardMode:
    value = os.environ.get(GUARD_ENV, "auto").strip().lower() or "auto"
    if value not in {"auto", "watchdog"}:
        raise ValueError(f"{GUARD_ENV}={value!r}: expected 'auto' or 'watchdog'")
    return "watchdog" if value == "watchdog" else "auto"


class ChildGuard:
    """Ties child processes to this process's life; see the module docstring.

    Use as a context manager around everything that starts children. Pass :meth:`popen_kwargs`
    to ``subprocess.Popen`` or ``asyncio.create_subprocess_exec``, then :meth:`adopt` the new
    PID; :meth:`release` it once the child has been reaped. ``mode`` defaults to
    ``$STRATEGYLAB_CHILD_GUARD`` (``auto``); ``grace`` is how long the watchdog waits between
    SIGTERM and SIGKILL.
    """

    def __init__(self, *, mode: GuardMode | None = None, grace: float = 5.0) -> None:
        if grace <= 0:
            raise ValueError(f"grace={grace!r}: must be > 0 (seconds)")
        chosen = _mode_from_env() if mode is None else mode
        if chosen not in {"auto", "watchdog"}:
            raise ValueError(f"mode={chosen!r}: expected 'auto' or 'watchdog'")
        self._grace = grace
        self._hook = parent_death_hook() if chosen == "auto" else None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._pipe: IO[bytes] | None = None
        if self._hook is None:
            self._start_watchdog()

    @property
    def mechanism(self) -> str:
        """``"pdeathsig"`` or ``"watchdog"``: how the children are tied to this process."""
        return "pdeathsig" if self._hook is not None else "watchdog"

    @property
    def watchdog_pid(self) -> int | None:
        """The watchdog's PID, or None when the kernel's parent-death signal is used instead."""
        return None if self._watchdog is None else self._watchdog.pid

    def popen_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Popen``/``create_subprocess_exec``: own process group, the
        parent-death hook where there is one, and no terminal on stdin."""
        kwargs: dict[str, Any] = {"process_group": 0, "stdin": subprocess.DEVNULL}
        if self._hook is not None:
            kwargs["preexec_fn"] = self._hook
        return kwargs

    def adopt(self, pid: int) -> None:
        """Put the child ``pid`` under the watchdog (a no-op under ``PR_SET_PDEATHSIG``)."""
        self._tell(f"+{pid}\n")

    def release(self, pid: int) -> None:
        """The child ``pid`` has been reaped: the watchdog forgets it (its PID may be reused)."""
        self._tell(f"-{pid}\n")

    def close(self) -> None:
        """Close the pipe (the watchdog then stops whatever is still listed, and exits); reap it."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            # A watchdog that died already: nothing left to tell it.
            with contextlib.suppress(OSError):
                pipe.close()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            # Still stopping children that ignore SIGTERM: it exits on its own.
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(timeout=_WATCHDOG_WAIT + self._grace)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _start_watchdog(self) -> None:
        read, write = os.pipe()  # both ends non-inheritable: children never hold the write end
        try:
            self._watchdog = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [
                    sys.executable,
                    "-m",
                    "strategylab._children",
                    "watchdog",
                    str(os.getpid()),
                    str(self._grace),
                ],
                stdin=read,
                stdout=subprocess.DEVNULL,
                # Its own session: a Ctrl-C or a hang-up for the parent's terminal is not for it.
                start_new_session=True,
            )
        finally:
            os.close(read)
        self._pipe = os.fdopen(write, "wb", buffering=0)

    def _tell(self, line: str) -> None:
        if self._pipe is None:
            return
        try:
            self._pipe.write(line.encode("ascii"))
        except OSError:
            # The watchdog is gone (killed by someone else): nothing to tell, and the kernel's
            # own clean-up is all that is left. Not a reason to fail the command.
            self._pipe = None


class ChildProcesses:
    """The children of one asyncio command, started under a :class:`ChildGuard`.

    :meth:`aclose` stops whatever is still running newest first (the reverse of the start order:
    the process started first is usually what the others depend on), SIGTERM then SIGKILL after
    ``stop_timeout`` seconds, and records each exit status in :attr:`stopped`. :meth:`kill` is the
    impatient path (a second Ctrl-C): SIGKILL to every running child at once.
    """

    def __init__(self, guard: ChildGuard, *, stop_timeout: float = 10.0) -> None:
        if stop_timeout <= 0:
            raise ValueError(f"stop_timeout={stop_timeout!r}: must be > 0 (seconds)")
        self._guard = guard
        self._stop_timeout = stop_timeout
        self._running: list[tuple[str, asyncio.subprocess.Process]] = []
        self.stopped: list[tuple[str, int]] = []
        """``(name, exit status)`` of each child stopped, in the order they stopped."""

    @property
    def running(self) -> list[tuple[str, int]]:
        """``(name, pid)`` of each child not yet stopped, in start order."""
        return [(name, p.pid) for name, p in self._running if p.returncode is None]

    async def start(self, name: str, *argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
        """``asyncio.create_subprocess_exec(*argv, **kwargs)`` in its own process group, tied to
        this process's life; ``name`` is how :attr:`stopped` and :attr:`running` call it."""
        process = await asyncio.create_subprocess_exec(
            *argv, **(self._guard.popen_kwargs() | kwargs)
        )
        self._guard.adopt(process.pid)
        self._running.append((name, process))
        return process

    async def stop(
        self, process: asyncio.subprocess.Process, sig: signal.Signals = signal.SIGTERM
    ) -> int:
        """Send ``sig`` (unless it has exited), wait ``stop_timeout`` s, then SIGKILL; reap it."""
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
        try:
            async with asyncio.timeout(self._stop_timeout):
                code = await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            code = await process.wait()
        self._forget(process, code)
        return code

    async def aclose(self) -> None:
        """Stop every child still running, newest first."""
        for _name, process in reversed(list(self._running)):
            await self.stop(process)

    def kill(self) -> None:
        """SIGKILL every running child now (they are reaped by :meth:`stop` or :meth:`aclose`)."""
        for _name, process in self._running:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()

    def _forget(self, process: asyncio.subprocess.Process, code: int) -> None:
        for i, (name, known) in enumerate(self._running):
            if known is process:
                del self._running[i]
                self.stopped.append((name, code))
                self._guard.release(process.pid)
                return


@contextlib.contextmanager
def cancel_on_signals(
    on_repeat: Callable[[], None] | None = None,
    signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
) -> Iterator[list[signal.Signals]]:
    """While inside, the first of ``signals`` cancels the current task; later ones call
    ``on_repeat`` (say, :meth:`ChildProcesses.kill`). Yields the list of signals received, so the
    caller can tell its own interruption from any other cancellation and say what happened.

    Must be entered from the event loop's thread, in the main thread (where signals arrive).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("cancel_on_signals() needs a running task")
    received: list[signal.Signals] = []

    def handle(sig: signal.Signals) -> None:
        received.append(sig)
        if len(received) == 1:
            task.cancel(f"interrupted by {sig.name}")
        elif on_repeat is not None:
            on_repeat()

    installed: list[signal.Signals] = []
    try:
        for sig in signals:
            loop.add_signal_handler(sig, handle, sig)
            installed.append(sig)
        yield received
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def run_interruptible(
    children: ChildProcesses,
    body: Callable[[], Awaitable[int]],
    on_interrupt: Callable[[Sequence[signal.Signals]], None],
) -> int:
    """Await ``body()`` (an exit status) while the first SIGINT, SIGTERM or SIGHUP cancels it and
    a second one kills ``children`` (:func:`cancel_on_signals`); ``children`` are stopped
    (:meth:`ChildProcesses.aclose`) however it ends, still under the signal handlers.

    When a signal cancelled it, ``on_interrupt(received)`` says what was interrupted (after
    ``body``'s own ``finally`` blocks ran) and the result is 128 + the first signal's number, the
    shell's convention. Any other cancellation, and any exception, propagates.
    """
    with cancel_on_signals(on_repeat=children.kill) as received:
        try:
            return await body()
        except asyncio.CancelledError:
            if not received:
                raise
            # Our own cancellation, from the signal handler: acknowledged, reported, and turned
            # into the conventional exit status.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            on_interrupt(received)
            return SIGNAL_EXIT_BASE + int(received[0])
        finally:
            await children.aclose()


def watchdog_main(argv: Sequence[str]) -> int:
    """The watchdog process: ``watchdog PARENT_PID GRACE``, reading ``+PID``/``-PID`` on stdin.

    ``PARENT_PID`` only names the parent in ``ps``; the end of stdin is what says it is gone.
    """
    import psutil  # noqa: PLC0415 - only the watchdog needs it

    grace = float(argv[2]) if len(argv) > 2 else 5.0
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # it must outlive the parent to do its job
    watched: dict[int, psutil.Process] = {}
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if line[:1] == b"+" and line[1:].isdigit():
            with contextlib.suppress(psutil.Error):
                watched[int(line[1:])] = psutil.Process(int(line[1:]))  # PID + creation time
        elif line[:1] == b"-" and line[1:].isdigit():
            watched.pop(int(line[1:]), None)
    # End of file: the parent closed the pipe or died. Stop what it left behind; psutil checks
    # each process's creation time before it signals, so a reused PID is left alone.
    alive = [p for p in watched.values() if _signalled(p, signal.SIGTERM)]
    _gone, alive = psutil.wait_procs(alive, timeout=grace)
    alive = [p for p in alive if _signalled(p, signal.SIGKILL)]
    psutil.wait_procs(alive, timeout=grace)
    return 0


def _signalled(process: psutil.Process, sig: signal.Signals) -> bool:
    """Send ``sig`` to a ``psutil.Process``; False when it is gone (or was never ours)."""
    import psutil  # noqa: PLC0415 - only the watchdog needs it

    try:
        process.send_signal(sig)
    except psutil.Error:
        return False
    return True


if __name__ == "__main__":
    if sys.argv[1:2] == ["watchdog"]:
        sys.exit(watchdog_main(sys.argv[1:]))
    sys.exit(f"usage: {sys.executable} -m strategylab._children watchdog PARENT_PID GRACE")
