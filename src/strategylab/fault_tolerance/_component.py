"""What the recovery manager acts on: the :class:`Component` protocol and its optional capabilities.

A component is anything with a name that can be started, stopped and asked whether it is healthy.
Recovery strategies need more than that, and each extra ability is its own small protocol, detected
at run time (``isinstance`` against a ``runtime_checkable`` protocol, which is a ``getattr`` check):
a component that lacks the method makes that strategy *not applicable* and the manager moves on.

=========================  ========================================  ===========================
capability                 method                                    used by
=========================  ========================================  ===========================
:class:`Restartable`       ``async restart() -> object``             COMPONENT_RESTART
:class:`SupportsFailover`  ``async failover() -> bool``              FAILOVER
:class:`Degradable`        ``async degrade(level) -> bool``,         GRACEFUL_DEGRADATION
                           ``async restore() -> bool``
:class:`Scalable`          ``async scale(factor) -> bool``           RESOURCE_SCALING
:class:`Reloadable`        ``async reload() -> bool``                CACHE_CLEAR_RELOAD
=========================  ========================================  ===========================

Each capability protocol extends :class:`Component`. The ``bool`` results say whether the component
did what was asked (``failover()`` is False when there is no other endpoint); whether that
*recovered* it is decided only by ``await health()`` afterwards.

The module also holds the seams to the sibling primitives the strategies drive (a retry runner, a
breaker that can be tripped, an audit sink), typed structurally so that any object with the right
methods fits, :class:`~strategylab.fault_tolerance.RetryPolicy`, ``CircuitBreaker`` and ``AuditLog``
among them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import enum
    from collections.abc import Awaitable, Callable

__all__ = [
    "AuditSink",
    "Component",
    "Degradable",
    "Reloadable",
    "Restartable",
    "RetryRunner",
    "Scalable",
    "SupportsFailover",
    "TrippableBreaker",
]

_T = TypeVar("_T")


@runtime_checkable
class Component(Protocol):
    """A part of the system the recovery manager can observe and act on.

    ``health()`` returns True only when the component is observed working (connected, caught up,
    answering); it is how every recovery strategy decides success. The optional capabilities are
    separate protocols in this module (:class:`Restartable`, :class:`SupportsFailover`,
    :class:`Degradable`, :class:`Scalable`, :class:`Reloadable`).
    """

    @property
    def name(self) -> str:
        """The unique name the manager knows this component by."""
        ...

    async def start(self) -> None:
        """Start (or start again after :meth:`stop`)."""
        ...

    async def stop(self) -> None:
        """Stop, releasing resources; must be safe to call on a stopped component."""
        ...

    async def health(self) -> bool:
        """True when the component is observed healthy right now."""
        ...


@runtime_checkable
class Restartable(Component, Protocol):
    """A component that restarts itself (restoring its state) better than ``stop`` + ``start``."""

    async def restart(self) -> object:
        """Restart; the result is ignored, ``health()`` decides."""
        ...


@runtime_checkable
class SupportsFailover(Component, Protocol):
    """A component with a next endpoint or backend to switch to."""

    async def failover(self) -> bool:
        """Switch to the next endpoint/backend; False when there is none."""
        ...


@runtime_checkable
class Degradable(Component, Protocol):
    """A component that can shed features by priority and restore them."""

    async def degrade(self, level: int) -> bool:
        """Shed features down to ``level`` (1 = the least important only); False if it cannot."""
        ...

    async def restore(self) -> bool:
        """Undo the degradation, in reverse order; False if it cannot yet."""
        ...


@runtime_checkable
class Scalable(Component, Protocol):
    """A component with a real resource to resize (pool size, workers, batch size, queue bound)."""

    async def scale(self, factor: float) -> bool:
        """Multiply the resource by ``factor``; False if it cannot."""
        ...


@runtime_checkable
class Reloadable(Component, Protocol):
    """A component with cached state to drop and reload from its source of truth."""

    async def reload(self) -> bool:
        """Drop the cache and reload; False when the new state was rejected (last good kept)."""
        ...


class RetryRunner(Protocol):
    """Runs an async callable under a retry policy; :class:`RetryPolicy` is one."""

    async def acall(self, fn: Callable[[], Awaitable[_T]], /) -> _T:
        """Call ``fn`` until it returns or the policy gives up (re-raising the last error)."""
        ...


class TrippableBreaker(Protocol):
    """A circuit breaker the CIRCUIT_BREAKER strategy can force open; ``CircuitBreaker`` is one."""

    @property
    def name(self) -> str:
        """The breaker's name."""
        ...

    @property
    def state(self) -> enum.Enum:
        """The current state; an enum whose open states have the values ``open``/``forced_open``."""
        ...

    def trip(self) -> object:
        """Open the breaker now."""
        ...


class AuditSink(Protocol):
    """Where recoveries are recorded; :class:`AuditLog` is one."""

    async def aappend(self, kind: str, data: dict[str, Any], /) -> object:
        """Append one record without blocking the event loop."""
        ...
