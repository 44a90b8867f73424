"""The eight recovery strategy executors.

Each strategy is one async function ``(StrategyRequest) -> StrategyResult``. A strategy succeeds
only when it *observes* the outcome it was after: the failed operation returned, ``await
component.health()`` is True, the breaker is open, every component stopped. Nothing here decides
success with a random number or a sleep.

A component without the method a strategy needs (see :mod:`._component`) makes the strategy
``applicable=False``; the manager records that and moves to the next strategy in the chain. An
exception raised inside a strategy is the manager's to catch and record; these functions let it
propagate (and never touch :class:`asyncio.CancelledError`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import types
from collections.abc import Awaitable, Callable, Mapping, Sequence

from ._component import (
    Component,
    Degradable,
    Reloadable,
    Restartable,
    RetryRunner,
    Scalable,
    SupportsFailover,
    TrippableBreaker,
)
from ._context import ErrorContext
from ._taxonomy import RecoveryStrategyKind

__all__ = [
    "STRATEGIES",
    "ComponentUnhealthyError",
    "ShutdownHandler",
    "Strategy",
    "StrategyRequest",
    "StrategyResult",
    "scale_factor",
]

ShutdownHandler = Callable[[ErrorContext], Awaitable[bool]]
"""Replaces the default emergency shutdown; returns True when the system is safely stopped."""

_OPEN_STATES = frozenset({"open", "forced_open"})


class ComponentUnhealthyError(ConnectionError):
    """``health()`` said False while the RETRY strategy re-probed a component.

    A :class:`ConnectionError` so that a retry policy limited to connection-type errors retries it.
    """


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StrategyRequest:
    """Everything a strategy may use; built by the manager for each recovery."""

    kind: RecoveryStrategyKind
    context: ErrorContext
    component: Component | None
    """The registered component that failed; None when it was never registered."""
    operation: Callable[[], Awaitable[object]] | None
    retry: RetryRunner
    breaker: TrippableBreaker | None
    level: int
    """The escalation step: 1 for a first recovery, deeper as errors keep crossing the threshold."""
    components: Sequence[Component] = ()
    """Every registered component in start order, dependencies first (the
    :class:`~strategylab.fault_tolerance.ComponentRegistry`'s): the emergency shutdown stops them
    in reverse, every dependant before what it depends on."""
    shutdown_handler: ShutdownHandler | None = None
    shutdown_deadline: float = 5.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StrategyResult:
    """What one strategy did: succeeded, failed, or was not applicable, and why."""

    kind: RecoveryStrategyKind
    success: bool
    applicable: bool = True
    detail: str = ""


Strategy = Callable[[StrategyRequest], Awaitable[StrategyResult]]


def scale_factor(level: int) -> float:
    """The RESOURCE_SCALING factor for an escalation level: 1.5x, then 2x, 2.5x, ..."""
    return 1.0 + 0.5 * level


def _not_applicable(req: StrategyRequest, why: str) -> StrategyResult:
    return StrategyResult(kind=req.kind, success=False, applicable=False, detail=why)


async def _observe(req: StrategyRequest, component: Component, did: str) -> StrategyResult:
    healthy = (await component.health()) is True
    state = "healthy" if healthy else "still unhealthy"
    return StrategyResult(kind=req.kind, success=healthy, detail=f"{did}; {state}")


def _refused(req: StrategyRequest, what: str) -> StrategyResult:
    return StrategyResult(kind=req.kind, success=False, detail=f"{what} returned False")


async def retry(req: StrategyRequest) -> StrategyResult:
    """Re-run the failed operation under the retry policy; without one, re-probe ``health()``."""
    if req.operation is not None:
        await req.retry.acall(req.operation)
        return StrategyResult(kind=req.kind, success=True, detail="operation succeeded")
    component = req.component
    if component is None:
        return _not_applicable(req, "no operation to retry and no registered component to probe")

    async def probe() -> None:
        if (await component.health()) is not True:
            raise ComponentUnhealthyError(f"{component.name} is unhealthy")

    await req.retry.acall(probe)
    return StrategyResult(kind=req.kind, success=True, detail="health probe passed")


async def failover(req: StrategyRequest) -> StrategyResult:
    """Switch the component to its next endpoint or backend, then probe its health."""
    component = req.component
    if not isinstance(component, SupportsFailover):
        return _not_applicable(req, "component has no failover()")
    if not await component.failover():
        return _refused(req, "failover()")
    return await _observe(req, component, "failed over")


async def graceful_degradation(req: StrategyRequest) -> StrategyResult:
    """Shed features down to the escalation level, then probe health."""
    component = req.component
    if not isinstance(component, Degradable):
        return _not_applicable(req, "component has no degrade()")
    if not await component.degrade(req.level):
        return _refused(req, f"degrade({req.level})")
    return await _observe(req, component, f"degraded to level {req.level}")


async def component_restart(req: StrategyRequest) -> StrategyResult:
    """``restart()`` the component (or ``stop()`` then ``start()``), then probe health."""
    component = req.component
    if component is None:
        return _not_applicable(req, "component is not registered")
    if isinstance(component, Restartable):
        await component.restart()
    else:
        await component.stop()
        await component.start()
    return await _observe(req, component, "restarted")


async def resource_scaling(req: StrategyRequest) -> StrategyResult:
    """Scale the component's resource by :func:`scale_factor`, then probe health."""
    component = req.component
    if not isinstance(component, Scalable):
        return _not_applicable(req, "component has no scale()")
    factor = scale_factor(req.level)
    if not await component.scale(factor):
        return _refused(req, f"scale({factor})")
    return await _observe(req, component, f"scaled by {factor}")


async def circuit_breaker(req: StrategyRequest) -> StrategyResult:
    """Trip the breaker registered in front of the component's dependency; success = it is open."""
    breaker = req.breaker
    if breaker is None:
        return _not_applicable(req, "no breaker registered for the component")
    breaker.trip()
    state = breaker.state.value
    return StrategyResult(
        kind=req.kind,
        success=state in _OPEN_STATES,
        detail=f"breaker {breaker.name!r} is {state}",
    )


async def emergency_shutdown(req: StrategyRequest) -> StrategyResult:
    """Run the shutdown handler, or stop every component in reverse start order (dependants
    first).

    Each ``stop()`` gets ``shutdown_deadline`` seconds (``asyncio.timeout``, on the event loop's
    clock: a hung stop must not hang the kill switch, whatever clock the manager measures with).
    Components that time out or raise are reported by name; success means all of them stopped.
    """
    if req.shutdown_handler is not None:
        done = (await req.shutdown_handler(req.context)) is True
        return StrategyResult(
            kind=req.kind,
            success=done,
            detail="shutdown handler finished" if done else "shutdown handler returned False",
        )
    stragglers: list[str] = []
    for component in reversed(req.components):
        try:
            async with asyncio.timeout(req.shutdown_deadline):
                await component.stop()
        except TimeoutError:
            stragglers.append(f"{component.name} (timed out)")
        except Exception as exc:
            stragglers.append(f"{component.name} ({type(exc).__name__}: {exc})")
    if stragglers:
        return StrategyResult(
            kind=req.kind, success=False, detail="did not stop: " + ", ".join(stragglers)
        )
    return StrategyResult(
        kind=req.kind, success=True, detail=f"stopped {len(req.components)} component(s)"
    )


async def cache_clear_reload(req: StrategyRequest) -> StrategyResult:
    """Drop the component's cached state and reload it from the source of truth, then probe."""
    component = req.component
    if not isinstance(component, Reloadable):
        return _not_applicable(req, "component has no reload()")
    if not await component.reload():
        return _refused(req, "reload()")
    return await _observe(req, component, "reloaded")


_K = RecoveryStrategyKind

STRATEGIES: Mapping[RecoveryStrategyKind, Strategy] = types.MappingProxyType(
    {
        _K.RETRY: retry,
        _K.FAILOVER: failover,
        _K.GRACEFUL_DEGRADATION: graceful_degradation,
        _K.COMPONENT_RESTART: component_restart,
        _K.RESOURCE_SCALING: resource_scaling,
        _K.CIRCUIT_BREAKER: circuit_breaker,
        _K.EMERGENCY_SHUTDOWN: emergency_shutdown,
        _K.CACHE_CLEAR_RELOAD: cache_clear_reload,
    }
)
"""One executor per :class:`RecoveryStrategyKind`."""
