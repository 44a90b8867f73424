"""The :class:`HealthMonitor`: each component's check on an interval, after Kubernetes probes.

Trouble is detected by probing, not only by exceptions. A :class:`HealthCheck` is an async
callable run every ``interval`` seconds with a ``timeout``; the monitor keeps each check's state
with the thresholds of a Kubernetes probe (``periodSeconds``, ``timeoutSeconds``,
``initialDelaySeconds``, ``failureThreshold``, ``successThreshold``; see "Configure Liveness,
Readiness and Startup Probes" in the Kubernetes documentation):

- a probe **fails** when the check raises, times out (it is cancelled; a hung check is a failed
  check, as a probe that exceeds ``timeoutSeconds`` is), returns ``False`` or returns
  :attr:`HealthState.UNHEALTHY`; it **passes** when it returns ``True``,
  :attr:`HealthState.HEALTHY` or :attr:`HealthState.DEGRADED` (working, at reduced capacity);
- ``failure_threshold`` consecutive failures make a passing check UNHEALTHY ("after a probe fails
  failureThreshold times in a row, Kubernetes considers that the overall check has failed");
  fewer leave its state alone;
- ``success_threshold`` consecutive passes make a failed (or never yet passed) check pass again
  ("minimum consecutive successes for the probe to be considered successful after having
  failed"); a passing check follows its latest pass between HEALTHY and DEGRADED at once;
- before its first verdict a check has no state (``None``): as in Kubernetes, it counts as
  *live* (the liveness probe's initial state is Success) but *not ready* (the readiness probe's
  initial state is Failure until it succeeds).

:meth:`HealthMonitor.liveness` and :meth:`HealthMonitor.readiness` aggregate the checks of that
:class:`ProbeKind` into a :class:`ProbeResult` that names the failing checks (what ``GET
/health/live`` and ``GET /health/ready`` answer with). Every change of a check's state is a
:class:`HealthTransition`, sent to listeners. A transition to UNHEALTHY is reported to the
recovery manager (``await manager.handle(error, component=...)``) once per *episode*: the episode
ends only when the check is observed HEALTHY again, so a check flapping between DEGRADED and
UNHEALTHY does not start a recovery on every flap.

A recovery counts as done only when the monitor observes the component healthy:
``await monitor.wait_healthy(name, within=seconds)`` returns when a probe has found it so.

This module is a long-running part: the hot path never imports it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, Self

from strategylab import _validate
from strategylab._clock_wait import wait_within
from strategylab._tasks import cancel_and_wait
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError, FaultToleranceError

from ._taxonomy import ErrorType

__all__ = [
    "CheckStatus",
    "HealthCheck",
    "HealthCheckFailedError",
    "HealthListener",
    "HealthMonitor",
    "HealthSnapshot",
    "HealthState",
    "HealthTransition",
    "ProbeKind",
    "ProbeResult",
    "RecoveryHandler",
]

_log = logging.getLogger(__name__)


class HealthState(enum.Enum):
    """A check's verdict, best to worst."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    """Working, at reduced capacity or with a warning; live and ready."""
    UNHEALTHY = "unhealthy"

    @property
    def passing(self) -> bool:
        """True for HEALTHY and DEGRADED."""
        return self is not HealthState.UNHEALTHY


_RANK = {HealthState.HEALTHY: 0, HealthState.DEGRADED: 1, HealthState.UNHEALTHY: 2}


class ProbeKind(enum.Enum):
    """Which aggregate a check counts in: liveness (restart me), readiness (route to me), both."""

    LIVENESS = "liveness"
    READINESS = "readiness"
    BOTH = "both"

    def counts_for(self, kind: ProbeKind) -> bool:
        """True when a check of this kind counts in the ``kind`` aggregate."""
        return self is ProbeKind.BOTH or self is kind


CheckFunction = Callable[[], Awaitable["HealthState | bool"]]
"""An async check: returns a :class:`HealthState` or a bool; raising counts as a failure."""


class HealthCheckFailedError(FaultToleranceError):
    """A health check went UNHEALTHY; what the monitor hands to the recovery manager.

    ``check`` and ``component`` name it, ``reason`` is the last failure (the exception's
    ``Type: message``, ``timed out after Ns``, or ``returned False``). ``error_type`` is the
    check's configured :class:`ErrorType` or None; with None the classifier reads the cause chain
    (the exception the check raised, chained as ``__cause__``) and then the component's name (a
    ``store`` that stops answering is DATABASE_CONNECTION_LOST, a ``strategy`` a
    STRATEGY_EXECUTION_ERROR, ...).
    """

    def __init__(
        self, check: str, component: str, reason: str, error_type: ErrorType | None = None
    ) -> None:
        super().__init__(f"health check {check!r} of {component!r} is unhealthy: {reason}")
        self.check = check
        self.component = component
        self.reason = reason
        self.error_type = error_type


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    """One probe: what to call, how often, how long to wait, and when its verdict changes.

    ``interval`` (``periodSeconds``, > 0), ``timeout`` (``timeoutSeconds``, > 0) and
    ``initial_delay`` (``initialDelaySeconds``, >= 0) are seconds on the monitor's clock;
    ``failure_threshold`` and ``success_threshold`` are counts >= 1 (Kubernetes' defaults: 3 and
    1). ``component`` is the name the recovery manager knows (default: ``name``); ``error_type``
    fixes the type reported to it (default: classified, see :class:`HealthCheckFailedError`).
    Raises :class:`~strategylab.errors.ConfigurationError` naming the field.
    """

    name: str
    check: CheckFunction
    interval: float = 10.0
    timeout: float = 1.0
    kind: ProbeKind = ProbeKind.BOTH
    failure_threshold: int = 3
    success_threshold: int = 1
    initial_delay: float = 0.0
    component: str | None = None
    error_type: ErrorType | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError("name", self.name, "must be a non-empty str")
        if not callable(self.check):
            raise ConfigurationError("check", self.check, "must be an async callable")
        _validate.seconds("interval", self.interval)
        _validate.seconds("timeout", self.timeout)
        _validate.seconds("initial_delay", self.initial_delay, allow_zero=True)
        if not isinstance(self.kind, ProbeKind):
            raise ConfigurationError("kind", self.kind, "must be a ProbeKind")
        _validate.integer("failure_threshold", self.failure_threshold, minimum=1)
        _validate.integer("success_threshold", self.success_threshold, minimum=1)
        if self.component is not None and (
            not isinstance(self.component, str) or not self.component
        ):
            raise ConfigurationError("component", self.component, "must be a non-empty str")
        if self.error_type is not None and not isinstance(self.error_type, ErrorType):
            raise ConfigurationError("error_type", self.error_type, "must be an ErrorType")

    @property
    def component_name(self) -> str:
        """``component``, or ``name`` when none was given."""
        return self.component if self.component is not None else self.name


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CheckStatus:
    """A frozen view of one check: its state, counters and last probe."""

    name: str
    component: str
    kind: ProbeKind
    state: HealthState | None
    """None until the first verdict (see the module docstring)."""
    consecutive_failures: int
    consecutive_successes: int
    probes: int
    failures: int
    """Failed probes in total."""
    last_result: HealthState | None
    """What the last probe said (UNHEALTHY for a failure), None before the first."""
    last_reason: str
    """Why the last failed probe failed; "" when none has."""
    last_probe_at: float | None
    """When the last probe finished, on the monitor's monotonic clock."""
    last_duration: float | None
    """How long the last probe took, in seconds."""
    since: float | None
    """When ``state`` last changed, on the monitor's monotonic clock."""
    episode_reported: bool
    """True while the current unhealthy episode has been reported to the manager."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "name": self.name,
            "component": self.component,
            "kind": self.kind.value,
            "state": None if self.state is None else self.state.value,
            "consecutive_failures": self.consecutive_failures,
            "consecutive_successes": self.consecutive_successes,
            "probes": self.probes,
            "failures": self.failures,
            "last_result": None if self.last_result is None else self.last_result.value,
            "last_reason": self.last_reason,
            "last_probe_at": self.last_probe_at,
            "last_duration": self.last_duration,
            "since": self.since,
            "episode_reported": self.episode_reported,
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """The liveness or readiness aggregate: ``ok`` and the checks that make it fail.

    ``state`` is the worst state among the counted checks (HEALTHY when there are none).
    ``failing`` names the checks that fail this aggregate, ``reasons`` says why for each;
    ``degraded`` names the passing checks that are DEGRADED.
    """

    kind: ProbeKind
    ok: bool
    state: HealthState
    failing: tuple[str, ...]
    degraded: tuple[str, ...]
    reasons: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (the body of ``GET /health/live`` or ``/health/ready``)."""
        return {
            "kind": self.kind.value,
            "ok": self.ok,
            "state": self.state.value,
            "failing": list(self.failing),
            "degraded": list(self.degraded),
            "reasons": dict(self.reasons),
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HealthSnapshot:
    """Every check at one moment, with both aggregates."""

    at: float
    """The monitor's monotonic clock when the snapshot was taken."""
    checks: tuple[CheckStatus, ...]
    liveness: ProbeResult
    readiness: ProbeResult
    running: bool

    def check(self, name: str) -> CheckStatus:
        """The status of the check called ``name``; ``KeyError`` naming it otherwise."""
        for status in self.checks:
            if status.name == name:
                return status
        raise KeyError(f"health check {name!r} is not monitored")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "at": self.at,
            "running": self.running,
            "liveness": self.liveness.to_dict(),
            "readiness": self.readiness.to_dict(),
            "checks": [status.to_dict() for status in self.checks],
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HealthTransition:
    """A check's state changed from ``previous`` to ``current`` at ``at`` (monotonic)."""

    check: str
    component: str
    previous: HealthState | None
    current: HealthState
    at: float
    reason: str = ""
    """The last failure's reason for a transition to UNHEALTHY; "" otherwise."""


HealthListener = Callable[[HealthTransition], object]


class RecoveryHandler(Protocol):
    """Where unhealthy transitions go; :class:`ErrorRecoveryManager` is one."""

    async def handle(
        self, exc_or_context: BaseException, component: str | None = None
    ) -> object: ...


class _Raised:
    """A :class:`TimeoutError` the check itself raised, told apart from the probe's own timeout."""

    __slots__ = ("error",)

    def __init__(self, error: TimeoutError) -> None:
        self.error = error


async def _call(check: CheckFunction) -> HealthState | bool | _Raised:
    try:
        return await check()
    except TimeoutError as exc:
        return _Raised(exc)


class _Check:
    """The mutable state of one monitored check."""

    __slots__ = (
        "cause",
        "consecutive_failures",
        "consecutive_successes",
        "failures",
        "last_duration",
        "last_probe_at",
        "last_reason",
        "last_result",
        "probes",
        "reported",
        "since",
        "spec",
        "state",
        "waiters",
    )

    def __init__(self, spec: HealthCheck) -> None:
        self.spec = spec
        self.state: HealthState | None = None
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.probes = 0
        self.failures = 0
        self.last_result: HealthState | None = None
        self.last_reason = ""
        self.cause: BaseException | None = None
        self.last_probe_at: float | None = None
        self.last_duration: float | None = None
        self.since: float | None = None
        self.reported = False
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []
        """(probes needed beyond, future): resolved by a HEALTHY verdict after that probe."""

    def status(self) -> CheckStatus:
        spec = self.spec
        return CheckStatus(
            name=spec.name,
            component=spec.component_name,
            kind=spec.kind,
            state=self.state,
            consecutive_failures=self.consecutive_failures,
            consecutive_successes=self.consecutive_successes,
            probes=self.probes,
            failures=self.failures,
            last_result=self.last_result,
            last_reason=self.last_reason,
            last_probe_at=self.last_probe_at,
            last_duration=self.last_duration,
            since=self.since,
            episode_reported=self.reported,
        )


class HealthMonitor:
    """Runs :class:`HealthCheck` s on their intervals and keeps their Kubernetes-style state.

    ``checks`` (unique names) may be extended with :meth:`add` before or while running.
    ``clock`` measures intervals, timeouts and times (default: the system clock). ``manager``
    (an :class:`ErrorRecoveryManager` or anything with ``async handle(exc, component=...)``)
    receives a :class:`HealthCheckFailedError` once per unhealthy episode; its call runs in a
    task the monitor owns (a slow recovery never delays a probe), and is cancelled by
    :meth:`stop`. ``start()`` begins probing (also ``async with monitor``); :meth:`probe` runs one
    check once, now. One monitor belongs to one event loop.
    """

    def __init__(
        self,
        checks: Iterable[HealthCheck] = (),
        *,
        clock: Clock = SYSTEM_CLOCK,
        manager: RecoveryHandler | None = None,
    ) -> None:
        if not isinstance(clock, Clock):
            raise ConfigurationError("clock", clock, "must implement strategylab.clock.Clock")
        if manager is not None and not callable(getattr(manager, "handle", None)):
            raise ConfigurationError(
                "manager", manager, "must have an async handle(exc, component)"
            )
        self._clock = clock
        self._manager = manager
        self._checks: dict[str, _Check] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reports: set[asyncio.Task[None]] = set()
        self._listeners: list[HealthListener] = []
        self._outcomes: dict[str, object] = {}
        self._running = False
        for check in checks:
            self.add(check)

    # ------------------------------------------------------------------ configuration

    def add(self, check: HealthCheck) -> None:
        """Monitor ``check`` (started at once when the monitor is running).

        Raises :class:`~strategylab.errors.ConfigurationError` for a non-:class:`HealthCheck`
        or a name already monitored.
        """
        if not isinstance(check, HealthCheck):
            raise ConfigurationError("check", check, "must be a HealthCheck")
        if check.name in self._checks:
            raise ConfigurationError("check.name", check.name, "is already monitored")
        self._checks[check.name] = _Check(check)
        if self._running:
            self._spawn(self._checks[check.name])

    def add_listener(self, listener: HealthListener) -> None:
        """Call ``listener(transition)`` on every state change; an exception from it is logged."""
        if not callable(listener):
            raise ConfigurationError("listener", listener, "must be callable")
        self._listeners.append(listener)

    def remove_listener(self, listener: HealthListener) -> None:
        """Stop calling ``listener``; ``ValueError`` if it was never added."""
        self._listeners.remove(listener)

    @property
    def names(self) -> tuple[str, ...]:
        """The monitored checks' names, in the order they were added."""
        return tuple(self._checks)

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._running

    def last_recovery(self, name: str) -> object | None:
        """What the manager returned for the last episode of ``name`` (a ``RecoveryOutcome``),
        None when none was reported or its recovery has not finished; ``KeyError``."""
        self._get(name)
        return self._outcomes.get(name)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start one probing task per check (a no-op while running)."""
        if self._running:
            return
        self._running = True
        for check in self._checks.values():
            self._spawn(check)

    async def stop(self) -> None:
        """Cancel the probing tasks and any manager call in progress, and wait for them."""
        self._running = False
        tasks = [*self._tasks.values(), *self._reports]
        self._tasks.clear()
        await cancel_and_wait(tasks)

    aclose = stop

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def _spawn(self, check: _Check) -> None:
        name = f"health:{check.spec.name}"
        self._tasks[check.spec.name] = asyncio.create_task(self._run(check), name=name)

    async def _run(self, check: _Check) -> None:
        spec = check.spec
        clock = self._clock
        if spec.initial_delay > 0:
            await clock.asleep(spec.initial_delay)
        next_at = clock.monotonic()
        while True:
            await self._probe(check)
            # periodSeconds is the period, not the pause: a slow probe does not stretch it, and a
            # probe that overran a whole period starts the next one at once.
            next_at += spec.interval
            now = clock.monotonic()
            next_at = max(next_at, now)
            await clock.asleep(next_at - now)

    # ------------------------------------------------------------------ probing

    async def probe(self, name: str) -> HealthState | None:
        """Run the check called ``name`` once, now, and return its state after the verdict.

        ``KeyError`` naming it when it is not monitored. The probe counts like a scheduled one.
        """
        check = self._get(name)
        await self._probe(check)
        return check.state

    async def _probe(self, check: _Check) -> None:
        spec = check.spec
        clock = self._clock
        started = clock.monotonic()
        result: HealthState
        reason = ""
        cause: BaseException | None = None
        try:
            returned: object = await wait_within(clock, _call(spec.check), spec.timeout)
        except TimeoutError:
            result = HealthState.UNHEALTHY
            reason = f"timed out after {spec.timeout:g}s"
        except Exception as exc:
            result = HealthState.UNHEALTHY
            reason = f"{type(exc).__name__}: {exc}"
            cause = exc
        else:
            if isinstance(returned, _Raised):
                result = HealthState.UNHEALTHY
                cause = returned.error
                reason = f"{type(cause).__name__}: {cause}"
            elif isinstance(returned, HealthState):
                result = returned
                if result is HealthState.UNHEALTHY:
                    reason = "returned unhealthy"
            elif returned is True:
                result = HealthState.HEALTHY
            elif returned is False:
                result = HealthState.UNHEALTHY
                reason = "returned False"
            else:
                result = HealthState.UNHEALTHY
                reason = f"returned {_validate.shown(returned)}: expected a HealthState or a bool"
        self._record(check, result, reason, cause, started)

    def _record(
        self,
        check: _Check,
        result: HealthState,
        reason: str,
        cause: BaseException | None,
        started: float,
    ) -> None:
        spec = check.spec
        now = self._clock.monotonic()
        check.probes += 1
        check.last_result = result
        check.last_probe_at = now
        check.last_duration = max(0.0, now - started)
        previous = check.state
        new = previous
        if result.passing:
            check.consecutive_failures = 0
            check.consecutive_successes += 1
            already_passing = previous is not None and previous.passing
            if already_passing or check.consecutive_successes >= spec.success_threshold:
                new = result
        else:
            check.failures += 1
            check.consecutive_successes = 0
            check.consecutive_failures += 1
            check.last_reason = reason
            check.cause = cause
            if check.consecutive_failures >= spec.failure_threshold:
                new = HealthState.UNHEALTHY
        if new is not previous and new is not None:
            check.state = new
            check.since = now
            self._transition(check, previous, new, now)
        if check.state is HealthState.HEALTHY:
            check.reported = False
            self._wake(check)

    def _transition(
        self, check: _Check, previous: HealthState | None, new: HealthState, now: float
    ) -> None:
        spec = check.spec
        unhealthy = new is HealthState.UNHEALTHY
        event = HealthTransition(
            check=spec.name,
            component=spec.component_name,
            previous=previous,
            current=new,
            at=now,
            reason=check.last_reason if unhealthy else "",
        )
        _log.log(
            logging.WARNING if unhealthy else logging.INFO,
            "health %s: %s -> %s%s",
            spec.name,
            "unknown" if previous is None else previous.value,
            new.value,
            f" ({event.reason})" if event.reason else "",
        )
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                _log.exception("health listener %r raised", listener)
        if unhealthy and not check.reported and self._manager is not None:
            check.reported = True
            self._outcomes.pop(spec.name, None)
            error = HealthCheckFailedError(
                spec.name, spec.component_name, check.last_reason, spec.error_type
            )
            error.__cause__ = check.cause
            task = asyncio.get_running_loop().create_task(
                self._report(spec.name, spec.component_name, error),
                name=f"health-report:{spec.name}",
            )
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)

    async def _report(self, name: str, component: str, error: HealthCheckFailedError) -> None:
        manager = self._manager
        assert manager is not None  # noqa: S101 - only scheduled with a manager
        try:
            self._outcomes[name] = await manager.handle(error, component=component)
        except Exception:
            _log.exception("reporting %s to the recovery manager failed", name)

    def _wake(self, check: _Check) -> None:
        if not check.waiters:
            return
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for after, future in check.waiters:
            if future.done():
                continue
            if check.probes > after:
                future.set_result(None)
            else:
                keep.append((after, future))
        check.waiters = keep

    # ------------------------------------------------------------------ reading

    async def wait_healthy(self, name: str, *, within: float, fresh: bool = False) -> None:
        """Return once the check called ``name`` is observed HEALTHY by a probe.

        Returns at once when its state is HEALTHY already, unless ``fresh``: then only a
        HEALTHY verdict from a probe that finishes after this call counts (what a recovery
        waits for: evidence gathered after it acted). ``within`` is seconds on the monitor's
        clock (> 0); past it :class:`TimeoutError` names the check and its state. The monitor
        must be running (or someone must call :meth:`probe`) for anything to be observed.
        ``KeyError`` for an unknown name; ``ConfigurationError`` for a bad ``within``.
        """
        check = self._get(name)
        limit = _validate.seconds("within", within)
        if check.state is HealthState.HEALTHY and not fresh:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (check.probes, future)
        check.waiters.append(entry)
        try:
            await wait_within(self._clock, future, limit)
        except TimeoutError:
            state = "unknown" if check.state is None else check.state.value
            raise TimeoutError(
                f"health check {name!r} not observed healthy within {limit:g}s (it is {state}"
                + (f": {check.last_reason})" if check.last_reason else ")")
            ) from None
        finally:
            future.cancel()
            if entry in check.waiters:
                check.waiters.remove(entry)

    def state(self, name: str) -> HealthState | None:
        """The state of the check called ``name`` (None before its first verdict); ``KeyError``."""
        return self._get(name).state

    def status(self, name: str) -> CheckStatus:
        """A frozen view of the check called ``name``; ``KeyError``."""
        return self._get(name).status()

    def liveness(self) -> ProbeResult:
        """Live unless a liveness check is UNHEALTHY (a check with no verdict yet is live)."""
        return self._aggregate(ProbeKind.LIVENESS)

    def readiness(self) -> ProbeResult:
        """Ready when every readiness check passes (one with no verdict yet is not ready)."""
        return self._aggregate(ProbeKind.READINESS)

    def snapshot(self) -> HealthSnapshot:
        """Every check and both aggregates, frozen."""
        return HealthSnapshot(
            at=self._clock.monotonic(),
            checks=tuple(check.status() for check in self._checks.values()),
            liveness=self.liveness(),
            readiness=self.readiness(),
            running=self._running,
        )

    def _aggregate(self, kind: ProbeKind) -> ProbeResult:
        failing: list[str] = []
        degraded: list[str] = []
        reasons: dict[str, str] = {}
        worst = HealthState.HEALTHY
        for check in self._checks.values():
            spec = check.spec
            if not spec.kind.counts_for(kind):
                continue
            state = check.state
            if state is None:
                if kind is ProbeKind.READINESS:
                    failing.append(spec.name)
                    reasons[spec.name] = "no verdict yet"
                    worst = HealthState.UNHEALTHY
                continue
            if _RANK[state] > _RANK[worst]:
                worst = state
            if state is HealthState.UNHEALTHY:
                failing.append(spec.name)
                reasons[spec.name] = check.last_reason or "unhealthy"
            elif state is HealthState.DEGRADED:
                degraded.append(spec.name)
        return ProbeResult(
            kind=kind,
            ok=not failing,
            state=worst,
            failing=tuple(failing),
            degraded=tuple(degraded),
            reasons=types.MappingProxyType(reasons),
        )

    def _get(self, name: str) -> _Check:
        try:
            return self._checks[name]
        except KeyError:
            raise KeyError(f"health check {name!r} is not monitored") from None

    def __repr__(self) -> str:
        states = {
            name: "unknown" if c.state is None else c.state.value
            for name, c in self._checks.items()
        }
        return f"HealthMonitor(running={self._running}, checks={states!r})"
