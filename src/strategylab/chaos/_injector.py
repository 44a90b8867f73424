"""The injector contract: a real fault that is switched on, observed, and always switched off.

An :class:`Injector` is one fault of one kind (``network``, ``database``, ``memory``, ``cpu``,
``disk``, ``corruption``, ``timeout``, ``security``, ``process``, ``api``, ``orders``) at one
:class:`~strategylab.chaos.Severity`. :meth:`Injector.inject` switches it on for real (a toxic in
the fault proxy, a process holding a lock, ballast in a process, a signal), :meth:`Injector.heal`
switches it off and is idempotent. :func:`injected` guarantees the heal: on a normal exit, on an
exception in the scenario, on cancellation and on Ctrl-C (the heal runs shielded from the
cancellation and is awaited to its end). :class:`HealGuard` keeps every injector that is on, so
that a run torn down from outside (SIGTERM, an error in the suite) heals what is still in force.

A capability that needs root or a kernel feature is probed by :meth:`Injector.capability` before
the fault is used: it answers ``None`` when the fault can run, or the reason it cannot; the lab
reports such a fault as SKIPPED with that reason and never simulates it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from strategylab.errors import StrategyLabError

from ._severity import Severity

__all__ = ["FaultSkippedError", "HealGuard", "Injector", "InjectorError", "injected"]


class InjectorError(StrategyLabError):
    """An injector could not switch its fault on or off (the message names the fault and why)."""


class FaultSkippedError(InjectorError):
    """The fault cannot run on this machine (``reason`` says which capability is missing)."""

    def __init__(self, fault: str, reason: str) -> None:
        super().__init__(f"{fault}: skipped: {reason}")
        self.fault = fault
        self.reason = reason


class Injector(abc.ABC):
    """One real fault. Subclasses set :attr:`kind` and implement :meth:`inject`/:meth:`heal`.

    ``name`` is a stable dotted identifier (``network.partition``, ``process.kill_node``) used in
    reports and in ``--seed`` determinism; ``severity`` scales magnitude and duration.
    """

    kind: ClassVar[str] = "generic"

    def __init__(self, name: str, severity: Severity = Severity.MEDIUM) -> None:
        self.name = name
        self.severity = severity
        self.active = False

    def capability(self) -> str | None:
        """``None`` when this fault can run here; otherwise why not (e.g. ``"needs root for a
        tmpfs mount"``). Cheap and side-effect free; called before :meth:`inject`."""
        return None

    @abc.abstractmethod
    async def _inject(self) -> None:
        """Switch the fault on (subclass hook)."""

    @abc.abstractmethod
    async def _heal(self) -> None:
        """Switch the fault off (subclass hook); only called after a successful inject."""

    async def inject(self) -> None:
        """Switch the fault on. Raises :class:`FaultSkippedError` when :meth:`capability`
        says it cannot run, :class:`InjectorError` when switching it on failed."""
        reason = self.capability()
        if reason is not None:
            raise FaultSkippedError(self.name, reason)
        await self._inject()
        self.active = True

    async def heal(self) -> None:
        """Switch the fault off; a second call (or a call before inject) does nothing."""
        if not self.active:
            return
        try:
            await self._heal()
        finally:
            self.active = False

    def describe(self) -> dict[str, Any]:
        """What the report says of this fault: its name, kind, severity and parameters."""
        return {"name": self.name, "kind": self.kind, "severity": self.severity.value}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.severity.value}>"


class HealGuard:
    """Every injector that is on; :meth:`heal_all` switches them off (newest first)."""

    def __init__(self) -> None:
        self._active: list[Injector] = []

    def add(self, injector: Injector) -> None:
        self._active.append(injector)

    def discard(self, injector: Injector) -> None:
        with contextlib.suppress(ValueError):
            self._active.remove(injector)

    @property
    def active(self) -> tuple[Injector, ...]:
        return tuple(self._active)

    async def heal_all(self) -> list[tuple[str, BaseException]]:
        """Heal every active injector; the failures are returned, never raised."""
        failures: list[tuple[str, BaseException]] = []
        while self._active:
            injector = self._active.pop()
            try:
                await injector.heal()
            except Exception as exc:  # each heal is tried; the failures are reported
                failures.append((injector.name, exc))
        return failures


_GLOBAL_GUARD = HealGuard()


@contextlib.asynccontextmanager
async def injected(injector: Injector, guard: HealGuard | None = None) -> AsyncIterator[Injector]:
    """Inject ``injector`` for the body of the ``async with``; heal it however the body ends.

    The heal is shielded from cancellation and awaited to its end, so a Ctrl-C or a timeout in
    the scenario still leaves nothing in force. Raises what :meth:`Injector.inject` raises.
    """
    guard = guard if guard is not None else _GLOBAL_GUARD
    guard.add(injector)
    try:
        await injector.inject()
        yield injector
    finally:
        heal = asyncio.ensure_future(injector.heal())
        try:
            await asyncio.shield(heal)
        except asyncio.CancelledError:
            await heal
            raise
        finally:
            guard.discard(injector)
