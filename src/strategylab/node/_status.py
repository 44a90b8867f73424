"""The node's status lines on stdout: :class:`_StatusOutput` (a component the recovery manager
observes, so that a full disk under the status output is a DISK_SPACE_EXHAUSTED like any other)
and :func:`_print`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from strategylab.fault_tolerance import ErrorRecoveryManager

# The node's one logger, under the name it had before the split (filters and the log file name it).
_log = logging.getLogger("strategylab.node._node")


class _StatusOutput:
    """Where the status lines go (stdout), as a component the recovery manager can observe.

    A line is written with one ``os.write`` on the descriptor, not through Python's buffer: on a
    full disk (``ENOSPC``) the line is dropped whole (any partial write is cut off again) instead of
    staying in a buffer to come out later, torn or twice. The failure that starts such an outage is
    reported to the manager (DISK_SPACE_EXHAUSTED); ``health()`` is True once the volume has free
    space again (or, for a pipe or terminal, once a line went out).
    """

    name = "status"

    def __init__(self, manager: ErrorRecoveryManager | None) -> None:
        self._manager = manager
        self.ok = True
        self.dropped = 0
        self._reports: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop: the last lines still go out."""

    async def health(self) -> bool:
        """True when the last line went out or, for a file, its volume has free space again."""
        if self.ok:
            return True
        try:
            fd = sys.stdout.fileno()
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return os.fstatvfs(fd).f_bavail > 0
        except (AttributeError, OSError, ValueError):
            pass
        return False

    def write(self, event: str, data: Mapping[str, Any]) -> None:
        """Write one JSON line; a failed write is counted, reported once, and dropped."""
        line = json.dumps({"event": event, **data}, separators=(",", ":")) + "\n"
        try:
            _write_line(line)
        except OSError as exc:
            self.dropped += 1
            if self.ok and self._manager is not None:
                task = asyncio.get_running_loop().create_task(self._report(exc))
                self._reports.add(task)
                task.add_done_callback(self._reports.discard)
            self.ok = False
            return
        self.ok = True

    async def _report(self, exc: OSError) -> None:
        assert self._manager is not None  # noqa: S101 - checked by write()
        try:
            await self._manager.handle(exc, component=self.name)
        except Exception:
            _log.exception("status: the recovery manager failed on %r", exc)


def _write_line(line: str) -> None:
    out = sys.stdout
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        # Not a real descriptor (a test capturing output): the stream's own write.
        out.write(line)
        out.flush()
        return
    out.flush()
    data = line.encode("utf-8")
    start = os.lseek(fd, 0, os.SEEK_CUR) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        if start is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
        raise


def _print(event: str, data: Mapping[str, Any], out: _StatusOutput | None = None) -> None:
    if out is not None:
        out.write(event, data)
        return
    with contextlib.suppress(OSError):
        _write_line(json.dumps({"event": event, **data}, separators=(",", ":")) + "\n")
