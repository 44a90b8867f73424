"""An OS process as a :class:`~strategylab.fault_tolerance.Supervisor`'s child: its specification
(:class:`ProcessChild`), a TCP readiness check (:func:`tcp_ready`) and the incarnation that runs
it (``_ProcessRun``: spawned under a :class:`strategylab._children.ChildProcesses`, ready on a line
of its output and/or a check, stopped with a signal and then SIGKILL).

A long-running part of the library: the hot path never imports it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Literal

from strategylab import _validate
from strategylab._children import ChildProcesses
from strategylab._tasks import cancel_and_wait
from strategylab.errors import ConfigurationError

from ._supervisor_children import ReadyCheck, _Exit, _NotReadyError, _Run

__all__ = ["ProcessChild", "tcp_ready"]


def tcp_ready(host: str, port: int) -> ReadyCheck:
    """A check that is True when a TCP connection to ``host:port`` is accepted (then closed)."""
    _validate.integer("port", port, minimum=1, maximum=65535)

    async def check() -> bool:
        try:
            _reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    return check


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProcessChild:
    """An OS process to supervise: ``argv`` run with :func:`asyncio.create_subprocess_exec`.

    Readiness, which a start or restart waits for, is ``ready_line`` appearing in a line of the
    process's standard output (stdout is then piped, and drained after that line so the process
    never blocks on a full pipe; the last ``keep_lines`` lines are kept) and/or ``ready()``
    returning True (polled, e.g. :func:`tcp_ready`); with neither, a process that has been
    spawned is ready. Its health afterwards: still running and ``ready()`` (if given) True.
    ``stop_signal`` is sent first on a stop; SIGKILL follows after the child's ``shutdown``
    deadline. ``env`` replaces the environment when given; ``cwd`` is the working directory.
    """

    argv: Sequence[str]
    ready_line: str | None = None
    ready: ReadyCheck | None = None
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    keep_lines: int = 20

    def __post_init__(self) -> None:
        if isinstance(self.argv, str) or not isinstance(self.argv, Sequence) or not self.argv:
            raise ConfigurationError("argv", self.argv, "must be a non-empty sequence of str")
        if not all(isinstance(arg, str) for arg in self.argv):
            raise ConfigurationError("argv", self.argv, "every argument must be a str")
        object.__setattr__(self, "argv", tuple(self.argv))
        if self.ready_line is not None and (
            not isinstance(self.ready_line, str) or not self.ready_line
        ):
            raise ConfigurationError("ready_line", self.ready_line, "must be a non-empty str")
        if self.ready is not None and not callable(self.ready):
            raise ConfigurationError("ready", self.ready, "must be an async callable or None")
        if not isinstance(self.stop_signal, signal.Signals):
            raise ConfigurationError("stop_signal", self.stop_signal, "must be a signal.Signals")
        _validate.integer("keep_lines", self.keep_lines, minimum=0)


def _status_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"exit status {code} ({name})"
    return f"exit status {code}"


class _ProcessRun(_Run):
    kind: Literal["task", "component", "process"] = "process"

    def __init__(self, spec: ProcessChild, children: ChildProcesses) -> None:
        self._spec = spec
        self._children = children
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._line_seen = asyncio.Event()
        self.lines: collections.deque[str] = collections.deque(maxlen=spec.keep_lines)

    async def launch(self, name: str) -> None:
        spec = self._spec
        stdout = subprocess.PIPE if spec.ready_line is not None else None
        env = dict(spec.env) if spec.env is not None else None
        self._process = await self._children.start(
            name, *spec.argv, stdout=stdout, env=env, cwd=spec.cwd
        )
        self.pid = self._process.pid
        if spec.ready_line is None:
            self._line_seen.set()
        else:
            self._reader = asyncio.create_task(self._read(), name=f"{name}:stdout")

    async def _read(self) -> None:
        assert self._process is not None  # noqa: S101 - set by launch()
        stream = self._process.stdout
        assert stream is not None  # noqa: S101 - piped when ready_line is set
        wanted = self._spec.ready_line or ""
        while line := await stream.readline():
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            self.lines.append(text)
            if wanted in text:
                self._line_seen.set()

    async def wait(self) -> _Exit:
        assert self._process is not None  # noqa: S101 - set by launch()
        code = await self._process.wait()
        return _Exit(_status_reason(code), normal=code == 0, exit_status=code)

    async def healthy(self) -> bool:
        if self._process is None or self._process.returncode is not None:
            return False
        if not self._line_seen.is_set():
            return False
        return True if self._spec.ready is None else (await self._spec.ready()) is True

    async def until_ready(self, interval: float) -> None:
        assert self._process is not None  # noqa: S101 - set by launch()
        line = asyncio.ensure_future(self._line_seen.wait())
        exited = asyncio.ensure_future(self._process.wait())
        try:
            await asyncio.wait((line, exited), return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait((line, exited))
        if self._process.returncode is not None:
            raise _NotReadyError(_status_reason(self._process.returncode))
        await super().until_ready(interval)

    async def stop(self, deadline: float) -> bool:
        del deadline  # the ChildProcesses was built with it
        if self._process is not None:
            await self._children.stop(self._process, self._spec.stop_signal)
        await cancel_and_wait((self._reader,))
        return True
