"""The incarnations a :class:`~strategylab.fault_tolerance.Supervisor` runs: one start of a child,
awaited until it ends, checked and stopped (a task or a component here; a process in
:mod:`._supervisor_process`), and how each ended (``_Exit``).

A long-running part of the library: the hot path never imports it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol, runtime_checkable

from ._component import Component

__all__ = ["ReadyCheck", "SupportsWait"]

# The supervisor's logger: a record keeps the name it had before this module was split off.
_log = logging.getLogger("strategylab.fault_tolerance._supervisor")


ReadyCheck = Callable[[], Awaitable[bool]]
"""An async readiness or health check: True when the child is observed working."""


@runtime_checkable
class SupportsWait(Protocol):
    """A component that can be awaited until it ends: ``wait()`` returns on a normal end and
    raises the failure that ended it. A supervised component with it is watched through it."""

    async def wait(self) -> None:
        """Return when the component has ended normally; raise what ended it otherwise."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class _Exit:
    reason: str
    normal: bool
    exit_status: int | None = None
    error: BaseException | None = None


# --------------------------------------------------------------------------------- incarnations


def _describe(exc: BaseException) -> str:
    return f"raised {type(exc).__name__}: {exc}" if str(exc) else f"raised {type(exc).__name__}"


class _Run:
    """One incarnation of a child: started, awaited until it ends, checked, stopped."""

    kind: Literal["task", "component", "process"]
    pid: int | None = None

    async def wait(self) -> _Exit:
        """Return how the child ended, when it ends by itself; never raises (but cancellation)."""
        raise NotImplementedError

    async def healthy(self) -> bool:
        raise NotImplementedError

    async def until_ready(self, interval: float) -> None:
        """Return once the child is observed healthy; raise _NotReadyError if it ended first."""
        # A poll: a readiness check observes another process or socket; there is no event to await.
        while not await self.healthy():  # noqa: ASYNC110
            await asyncio.sleep(interval)

    async def stop(self, deadline: float) -> bool:
        """Stop within ``deadline`` seconds; False when it overran."""
        raise NotImplementedError


class _TaskRun(_Run):
    kind: Literal["task", "component", "process"] = "task"

    def __init__(self, task: asyncio.Task[None], health: ReadyCheck | None) -> None:
        self._task = task
        self._health = health

    async def wait(self) -> _Exit:
        await asyncio.wait((self._task,))
        if self._task.cancelled():
            return _Exit("cancelled", normal=False)
        exc = self._task.exception()
        if exc is None:
            return _Exit("returned", normal=True)
        return _Exit(_describe(exc), normal=False, error=exc)

    async def healthy(self) -> bool:
        if self._task.done():
            return False
        return True if self._health is None else (await self._health()) is True

    async def until_ready(self, interval: float) -> None:
        # One pass of the loop first: the body runs up to its first real wait, so a body that
        # fails at once is a failed start, not a crash of a running child.
        await asyncio.sleep(0)
        if self._task.done():
            ended = await self.wait()
            raise _NotReadyError(ended.reason)
        await super().until_ready(interval)

    async def stop(self, deadline: float) -> bool:
        task = self._task
        task.cancel()
        await asyncio.wait((task,), timeout=deadline)
        if not task.done():
            return False
        if not task.cancelled():
            task.exception()  # retrieved: ending on its own while being stopped is no news
        return True


class _ComponentRun(_Run):
    kind: Literal["task", "component", "process"] = "component"

    def __init__(self, component: Component) -> None:
        self._component = component

    async def wait(self) -> _Exit:
        component = self._component
        if not isinstance(component, SupportsWait):
            # Nothing to await: such a component is watched by its health checks only.
            await asyncio.get_running_loop().create_future()
            return _Exit("returned", normal=True)  # pragma: no cover - the future never resolves
        try:
            await component.wait()
        except Exception as exc:
            return _Exit(_describe(exc), normal=False, error=exc)
        return _Exit("returned", normal=True)

    async def healthy(self) -> bool:
        return (await self._component.health()) is True

    async def stop(self, deadline: float) -> bool:
        try:
            async with asyncio.timeout(deadline):
                await self._component.stop()
        except TimeoutError:
            return False
        except Exception:
            _log.exception("component %s: stop() raised", self._component.name)
        return True


class _NotReadyError(Exception):
    """A child ended before it was observed ready."""
