"""The eight recovery strategy executors, driven against fake components that change state."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import uuid

import pytest

from strategylab.fault_tolerance import (
    Component,
    ErrorContext,
    ErrorSeverity,
    ErrorType,
    RecoveryStrategyKind,
    RetryPolicy,
)
from strategylab.fault_tolerance._strategies import (
    STRATEGIES,
    ComponentUnhealthyError,
    StrategyRequest,
    scale_factor,
)
from strategylab.testing import FakeClock

K = RecoveryStrategyKind


class Plain:
    """A component with only the required methods; its health is its ``healthy`` flag."""

    def __init__(self, name: str = "feed", *, healthy: bool = False) -> None:
        self.name = name
        self.healthy = healthy
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")
        self.healthy = True

    async def stop(self) -> None:
        self.calls.append("stop")
        self.healthy = False

    async def health(self) -> bool:
        self.calls.append("health")
        return self.healthy


class Capable(Plain):
    """Has every optional capability; each one repairs the component only if named in ``fixes``."""

    def __init__(self, name: str = "feed", *, fixes: frozenset[str] = frozenset()) -> None:
        super().__init__(name)
        self.fixes = fixes
        self.args: list[object] = []

    def _act(self, what: str) -> bool:
        self.calls.append(what)
        if what in self.fixes:
            self.healthy = True
        return True

    async def restart(self) -> None:
        self._act("restart")

    async def failover(self) -> bool:
        return self._act("failover")

    async def degrade(self, level: int) -> bool:
        self.args.append(level)
        return self._act("degrade")

    async def restore(self) -> bool:
        return self._act("restore")

    async def scale(self, factor: float) -> bool:
        self.args.append(factor)
        return self._act("scale")

    async def reload(self) -> bool:
        return self._act("reload")


class Refusing(Capable):
    """Every capability answers False (nothing to fail over to, reload rejected, ...)."""

    def _act(self, what: str) -> bool:
        self.calls.append(what)
        return False


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"


class FakeBreaker:
    """A breaker whose ``trip()`` opens it unless it is stuck."""

    def __init__(self, *, stuck: bool = False) -> None:
        self.name = "db"
        self.state = State.CLOSED
        self.stuck = stuck

    def trip(self) -> None:
        if not self.stuck:
            self.state = State.OPEN


def _context(component: str = "feed") -> ErrorContext:
    return ErrorContext(
        error_id=uuid.uuid4(),
        error_type=ErrorType.DATA_INGESTION_FAILURE,
        timestamp=dt.datetime.now(dt.UTC),
        severity=ErrorSeverity.HIGH,
        component=component,
        message="boom",
    )


def _request(
    kind: RecoveryStrategyKind,
    component: Component | None,
    *,
    clock: FakeClock | None = None,
    **changes: object,
) -> StrategyRequest:
    fields: dict[str, object] = {
        "kind": kind,
        "context": _context(),
        "component": component,
        "operation": None,
        "retry": RetryPolicy(
            max_attempts=3, base_delay=1.0, jitter=None, clock=clock or FakeClock()
        ),
        "breaker": None,
        "level": 1,
        "components": () if component is None else (component,),
    }
    fields.update(changes)
    return StrategyRequest(**fields)  # type: ignore[arg-type]


REPAIRS = {
    K.FAILOVER: "failover",
    K.GRACEFUL_DEGRADATION: "degrade",
    K.COMPONENT_RESTART: "restart",
    K.RESOURCE_SCALING: "scale",
    K.CACHE_CLEAR_RELOAD: "reload",
}


def test_every_kind_has_an_executor() -> None:
    """STRATEGIES maps all eight kinds."""
    assert set(STRATEGIES) == set(RecoveryStrategyKind)


@pytest.mark.parametrize("kind", list(REPAIRS), ids=lambda k: k.value)
async def test_strategy_succeeds_when_health_is_observed(kind: RecoveryStrategyKind) -> None:
    """A component-acting strategy succeeds when its action made health() True."""
    component = Capable(fixes=frozenset({REPAIRS[kind]}))
    result = await STRATEGIES[kind](_request(kind, component))
    assert result.success
    assert component.calls[-2:] == [REPAIRS[kind], "health"]


@pytest.mark.parametrize("kind", list(REPAIRS), ids=lambda k: k.value)
async def test_strategy_fails_when_still_unhealthy(kind: RecoveryStrategyKind) -> None:
    """The same strategy fails when health() still says False after its action."""
    component = Capable(fixes=frozenset())
    result = await STRATEGIES[kind](_request(kind, component))
    assert (result.success, result.applicable) == (False, True)
    assert "still unhealthy" in result.detail


@pytest.mark.parametrize(
    "kind",
    [K.FAILOVER, K.GRACEFUL_DEGRADATION, K.RESOURCE_SCALING, K.CACHE_CLEAR_RELOAD],
    ids=lambda k: k.value,
)
async def test_strategy_fails_without_probing_when_the_action_is_refused(
    kind: RecoveryStrategyKind,
) -> None:
    """An action that returns False fails the strategy and health() is not consulted."""
    component = Refusing()
    result = await STRATEGIES[kind](_request(kind, component))
    assert not result.success
    assert "health" not in component.calls


@pytest.mark.parametrize(
    "kind",
    [K.FAILOVER, K.GRACEFUL_DEGRADATION, K.RESOURCE_SCALING, K.CACHE_CLEAR_RELOAD],
    ids=lambda k: k.value,
)
async def test_strategy_is_not_applicable_without_the_capability(
    kind: RecoveryStrategyKind,
) -> None:
    """A component lacking the method makes the strategy not applicable."""
    result = await STRATEGIES[kind](_request(kind, Plain()))
    assert (result.success, result.applicable) == (False, False)


async def test_restart_falls_back_to_stop_then_start() -> None:
    """Without restart(), COMPONENT_RESTART stops, starts, then probes health."""
    component = Plain()
    result = await STRATEGIES[K.COMPONENT_RESTART](_request(K.COMPONENT_RESTART, component))
    assert result.success
    assert component.calls == ["stop", "start", "health"]


async def test_restart_is_not_applicable_for_an_unregistered_component() -> None:
    """COMPONENT_RESTART needs a component."""
    result = await STRATEGIES[K.COMPONENT_RESTART](_request(K.COMPONENT_RESTART, None))
    assert not result.applicable


async def test_degradation_passes_the_escalation_level() -> None:
    """GRACEFUL_DEGRADATION calls degrade(level) with the request's level."""
    component = Capable(fixes=frozenset({"degrade"}))
    await STRATEGIES[K.GRACEFUL_DEGRADATION](_request(K.GRACEFUL_DEGRADATION, component, level=3))
    assert component.args == [3]


async def test_scaling_factor_grows_with_the_level() -> None:
    """RESOURCE_SCALING asks for scale_factor(level)."""
    component = Capable(fixes=frozenset({"scale"}))
    await STRATEGIES[K.RESOURCE_SCALING](_request(K.RESOURCE_SCALING, component, level=2))
    assert component.args == [scale_factor(2)] == [2.0]


async def test_retry_reruns_the_operation_until_it_returns() -> None:
    """RETRY re-runs the operation under the retry policy, sleeping on the injected clock."""
    clock = FakeClock()
    calls: list[int] = []

    async def operation() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    result = await STRATEGIES[K.RETRY](_request(K.RETRY, None, clock=clock, operation=operation))
    assert result.success
    assert (len(calls), clock.sleeps) == (3, [1.0, 2.0])


async def test_retry_raises_the_last_error_when_the_operation_keeps_failing() -> None:
    """RETRY lets the retry policy's final exception propagate (the manager records it)."""

    async def operation() -> None:
        raise ConnectionError("still down")

    with pytest.raises(ConnectionError, match="still down"):
        await STRATEGIES[K.RETRY](_request(K.RETRY, None, operation=operation))


async def test_retry_without_operation_reprobes_health() -> None:
    """Without an operation, RETRY retries health() until it is True."""
    component = Plain()
    probes: list[int] = []

    async def health() -> bool:
        probes.append(1)
        return len(probes) >= 2

    component.health = health  # type: ignore[method-assign]
    result = await STRATEGIES[K.RETRY](_request(K.RETRY, component))
    assert result.success
    assert len(probes) == 2


async def test_retry_probe_gives_up_with_component_unhealthy() -> None:
    """A component that never becomes healthy exhausts the probe retries."""
    with pytest.raises(ComponentUnhealthyError):
        await STRATEGIES[K.RETRY](_request(K.RETRY, Plain()))


async def test_retry_without_operation_or_component_is_not_applicable() -> None:
    """RETRY has nothing to do without an operation or a component."""
    result = await STRATEGIES[K.RETRY](_request(K.RETRY, None))
    assert not result.applicable


async def test_circuit_breaker_succeeds_when_the_breaker_opens() -> None:
    """CIRCUIT_BREAKER trips the registered breaker; success means it is now open."""
    breaker = FakeBreaker()
    result = await STRATEGIES[K.CIRCUIT_BREAKER](
        _request(K.CIRCUIT_BREAKER, Plain(), breaker=breaker)
    )
    assert result.success
    assert breaker.state is State.OPEN


async def test_circuit_breaker_fails_when_the_breaker_stays_closed() -> None:
    """A breaker that does not open fails the strategy."""
    result = await STRATEGIES[K.CIRCUIT_BREAKER](
        _request(K.CIRCUIT_BREAKER, Plain(), breaker=FakeBreaker(stuck=True))
    )
    assert (result.success, result.applicable) == (False, True)


async def test_circuit_breaker_without_breaker_is_not_applicable() -> None:
    """No registered breaker: the strategy does not apply."""
    result = await STRATEGIES[K.CIRCUIT_BREAKER](_request(K.CIRCUIT_BREAKER, Plain()))
    assert not result.applicable


async def test_emergency_shutdown_stops_components_in_reverse_order() -> None:
    """The default shutdown stops every component, last registered first."""
    order: list[str] = []
    components = [Plain(n, healthy=True) for n in ("store", "feed", "engine")]
    for c in components:

        async def stop(c: Plain = c) -> None:
            order.append(c.name)

        c.stop = stop  # type: ignore[method-assign]
    result = await STRATEGIES[K.EMERGENCY_SHUTDOWN](
        _request(K.EMERGENCY_SHUTDOWN, components[0], components=tuple(components))
    )
    assert result.success
    assert order == ["engine", "feed", "store"]


async def test_emergency_shutdown_reports_stragglers_by_name() -> None:
    """A stop() that hangs past the deadline or raises is named; the others still stop."""
    hung, broken, fine = Plain("hung"), Plain("broken"), Plain("fine", healthy=True)

    async def hang() -> None:
        await asyncio.Event().wait()

    async def explode() -> None:
        raise OSError("disk gone")

    hung.stop = hang  # type: ignore[method-assign]
    broken.stop = explode  # type: ignore[method-assign]
    result = await STRATEGIES[K.EMERGENCY_SHUTDOWN](
        _request(
            K.EMERGENCY_SHUTDOWN,
            None,
            components=(fine, hung, broken),
            shutdown_deadline=0.01,
        )
    )
    assert not result.success
    assert "hung (timed out)" in result.detail
    assert "broken (OSError: disk gone)" in result.detail
    assert not fine.healthy


@pytest.mark.parametrize("answer", [True, False])
async def test_emergency_shutdown_uses_the_handler(answer: bool) -> None:
    """A shutdown handler replaces the default and its answer is the result."""
    seen: list[ErrorContext] = []
    component = Plain(healthy=True)

    async def handler(context: ErrorContext) -> bool:
        seen.append(context)
        return answer

    request = _request(K.EMERGENCY_SHUTDOWN, component, shutdown_handler=handler)
    result = await STRATEGIES[K.EMERGENCY_SHUTDOWN](request)
    assert result.success is answer
    assert seen == [request.context]
    assert component.calls == []
