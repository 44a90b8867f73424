"""A :class:`Supervisor` after Erlang/OTP's ``supervisor`` behaviour.

A supervisor starts its children in order, watches them, and restarts the ones that die, as
OTP's ``supervisor`` module does (https://www.erlang.org/doc/man/supervisor, "Supervision
Principles" in the OTP Design Principles):

- **Child specifications** (:class:`ChildSpec`): an ``id``, how to start the child, its *restart
  type* and its *shutdown* deadline. The restart types are OTP's: a ``permanent`` child is always
  restarted; a ``transient`` child only when it ends abnormally (an exception, a non-zero exit
  status, a signal, a failed health check; a normal end, a task that returns or a process that
  exits 0, is left alone); a ``temporary`` child is never restarted, not even when a sibling's
  death makes a ``rest_for_one`` or ``one_for_all`` supervisor stop it (OTP drops it then).
- **Restart strategies** (:class:`RestartStrategy`): ``one_for_one`` restarts only the child that
  died; ``rest_for_one`` restarts it and the children started after it (they depend on it), the
  later ones stopped newest first and all started again in order; ``one_for_all`` stops every
  other child, newest first, and starts them all again in order.
- **Restart intensity**: at most ``intensity`` restarts within ``period`` seconds. One more
  restart inside that window and the supervisor gives up, as OTP's does (its ``MaxR``/``MaxT``):
  it stops every child in reverse start order and *escalates*: ``on_escalate`` is called with a
  :class:`RestartIntensityExceededError`, and the recovery manager, if one is given, is handed the
  error as a CRITICAL :class:`~strategylab.fault_tolerance.ErrorContext` for this supervisor (its
  chain runs against the supervisor itself when the supervisor is registered with the manager,
  the way an OTP supervisor's own supervisor restarts it, and an exhausted CRITICAL chain ends in
  the emergency shutdown). Each escalation happens once; :meth:`Supervisor.start` starts afresh.
- **Shutdown**: :meth:`Supervisor.stop` stops the children in reverse start order, each within
  its ``shutdown`` deadline (a task is cancelled, a component's ``stop()`` awaited, a process sent
  SIGTERM and then SIGKILL).

Beyond OTP, because these children are not Erlang processes:

- a child is an asyncio *task body* (a coroutine function: it crashed when it raised), a
  :class:`~strategylab.fault_tolerance.Component` (it crashed when its ``start()`` raised, when its
  optional ``wait()`` raised or returned, or when its health check failed), or an OS process
  (:class:`ProcessChild`: it crashed when it exited; its exit status is recorded, ``-9`` for a
  SIGKILL). A process child is tied to the supervisor's process with
  :class:`strategylab._children.ChildGuard`, so it dies with it even on SIGKILL;
- a (re)start counts as done only when the child is observed healthy (its readiness check
  passed, within ``ready_timeout``); a start that fails or never becomes ready counts as another
  crash of that child, towards the restart intensity;
- restarts wait a backoff delay on the injected clock (``backoff``: a
  :class:`~strategylab.fault_tolerance.RetryPolicy`, whose :meth:`~RetryPolicy.delay` is used,
  or a function of the restart number; the number is the child's restarts within the last
  ``period`` seconds, so the delay grows in a crash loop and falls back after a quiet period);
- ``save_state``/``restore_state`` hooks carry a child's state across a restart: its state is
  saved when it ends (or is stopped) and restored before its next start;
- every exit and what was done about it is a :class:`RestartRecord`, in a bounded history in
  the frozen :class:`SupervisorSnapshot` that :meth:`Supervisor.snapshot` returns.

Time: the intensity window, the backoff delays and the health-check interval are measured on the
injected ``clock``; bounds on one real operation (a ``stop()``, a process's exit, one health check,
readiness) use the event loop's clock, so a real process is never killed early because a
:class:`~strategylab.testing.FakeClock` jumped. This module is a long-running part of the library:
the hot path never imports it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final, Literal

from strategylab import _validate
from strategylab._children import ChildGuard, ChildProcesses
from strategylab._tasks import cancel_and_wait
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import ConfigurationError, FaultToleranceError

from ._classify import classify
from ._component import Component
from ._context import ErrorContext
from ._retry import RetryPolicy
from ._supervisor_children import (
    ReadyCheck,
    SupportsWait,
    _ComponentRun,
    _describe,
    _Exit,
    _NotReadyError,
    _Run,
    _TaskRun,
)
from ._supervisor_process import ProcessChild, _ProcessRun, tcp_ready
from ._taxonomy import ErrorSeverity, ErrorType

if TYPE_CHECKING:
    from ._manager import ErrorRecoveryManager

__all__ = [
    "ChildSnapshot",
    "ChildSpec",
    "ChildStartError",
    "ChildStatus",
    "ProcessChild",
    "RestartIntensityExceededError",
    "RestartOutcome",
    "RestartRecord",
    "RestartStrategy",
    "RestartType",
    "Supervisor",
    "SupervisorSnapshot",
    "SupervisorState",
    "SupportsWait",
    "tcp_ready",
]

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- errors


class RestartIntensityExceededError(FaultToleranceError):
    """More than ``intensity`` restarts within ``period`` seconds: the supervisor gave up.

    ``supervisor`` names it, ``child_id`` the child whose exit was one too many and ``reason``
    why it exited; ``restarts`` is how many restarts the window held (``intensity + 1``).
    """

    def __init__(
        self,
        supervisor: str,
        *,
        child_id: str,
        reason: str,
        restarts: int,
        intensity: int,
        period: float,
    ) -> None:
        super().__init__(
            f"supervisor {supervisor!r}: {restarts} restarts within {period:g}s exceed the "
            f"intensity {intensity}; last: {child_id!r} {reason}"
        )
        self.supervisor = supervisor
        self.child_id = child_id
        self.reason = reason
        self.restarts = restarts
        self.intensity = intensity
        self.period = period


class ChildStartError(FaultToleranceError):
    """A child failed to start (or to become ready) while :meth:`Supervisor.start` started them.

    As OTP's ``start_link`` does, the supervisor then stops the children it had already started
    and does not run. ``child_id`` names the child, ``reason`` says what went wrong.
    """

    def __init__(self, supervisor: str, child_id: str, reason: str) -> None:
        super().__init__(f"supervisor {supervisor!r}: child {child_id!r} did not start: {reason}")
        self.supervisor = supervisor
        self.child_id = child_id
        self.reason = reason


# ------------------------------------------------------------------------------ vocabulary


class RestartType(enum.Enum):
    """When a child is restarted (OTP's ``restart`` key of a child specification)."""

    PERMANENT = "permanent"
    """Always restarted."""
    TRANSIENT = "transient"
    """Restarted only after an abnormal end."""
    TEMPORARY = "temporary"
    """Never restarted."""


class RestartStrategy(enum.Enum):
    """Which children a crash restarts (OTP's ``strategy`` supervisor flag)."""

    ONE_FOR_ONE = "one_for_one"
    """Only the child that ended."""
    REST_FOR_ONE = "rest_for_one"
    """That child and every child started after it."""
    ONE_FOR_ALL = "one_for_all"
    """Every child."""


class ChildStatus(enum.Enum):
    """Where one child is in its life."""

    STOPPED = "stopped"
    """Not started, or stopped by the supervisor."""
    STARTING = "starting"
    """Started, not yet observed ready."""
    RUNNING = "running"
    """Started and observed ready."""
    RESTARTING = "restarting"
    """Ended (or stopped for a sibling) and waiting to start again."""
    TERMINATED = "terminated"
    """Ended and not to be restarted (temporary, or transient after a normal end)."""


class SupervisorState(enum.Enum):
    """Where the supervisor is in its life."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    ESCALATED = "escalated"
    """The restart intensity was exceeded: the children are stopped and the error escalated."""


class RestartOutcome(enum.Enum):
    """What the supervisor did about one exit."""

    RESTARTED = "restarted"
    """The restart set was started again and observed ready."""
    NOT_RESTARTED = "not_restarted"
    """The restart type says to leave it (temporary; transient after a normal end)."""
    START_FAILED = "start_failed"
    """A restart was tried and the child did not start or become ready (counts as a crash)."""
    ESCALATED = "escalated"
    """The restart would have exceeded the intensity: the supervisor gave up."""


# ------------------------------------------------------------------------------ child kinds


TaskBody = Callable[[], Awaitable[None]]
ChildStart = Callable[[], Awaitable[None] | Component] | Component | ProcessChild
"""How a child is started: a coroutine function (the child is an owned task running it), a
factory returning a fresh :class:`Component` for every start, a :class:`Component` (the same one
is stopped and started again), or a :class:`ProcessChild`."""

StateHook = Callable[[], object]
RestoreHook = Callable[[object], object]


# ------------------------------------------------------------------------------- child spec


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ChildSpec:
    """One child of a :class:`Supervisor` (OTP's child specification).

    - ``id``: unique among the supervisor's children;
    - ``start``: see :data:`ChildStart`;
    - ``restart``: a :class:`RestartType` or its value (``"permanent"``, the default,
      ``"transient"``, ``"temporary"``);
    - ``shutdown``: seconds a stop may take (> 0); a task still running is reported, a process is
      sent SIGKILL;
    - ``health``: an async check for a task child (a component uses its ``health()``, a process
      its :class:`ProcessChild` checks); ``health_interval``: seconds, on the supervisor's clock,
      between checks while the child runs (None: not polled); a check that returns False, raises
      or takes more than ``health_timeout`` seconds is a crash (reason ``unhealthy``);
    - ``ready_timeout``: seconds a (re)start may take to be observed healthy; ``ready_interval``:
      seconds between readiness polls;
    - ``save_state()`` is called when the child ends or is stopped and its result kept;
      ``restore_state(state)`` is called with the last saved state before the child starts again.
      Either may be sync or async; an exception from one is logged and the child still restarts
      (without its state).

    Raises :class:`~strategylab.errors.ConfigurationError` naming the field for a bad value.
    """

    id: str
    start: ChildStart
    restart: RestartType | Literal["permanent", "transient", "temporary"] = RestartType.PERMANENT
    shutdown: float = 5.0
    health: ReadyCheck | None = None
    health_interval: float | None = None
    health_timeout: float = 5.0
    ready_timeout: float = 10.0
    ready_interval: float = 0.01
    save_state: StateHook | None = None
    restore_state: RestoreHook | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ConfigurationError("id", self.id, "must be a non-empty str")
        if not isinstance(self.start, (ProcessChild, Component)) and not callable(self.start):
            raise ConfigurationError(
                "start",
                self.start,
                "must be a coroutine function, a Component factory, a Component or a ProcessChild",
            )
        try:
            object.__setattr__(self, "restart", RestartType(self.restart))
        except ValueError:
            raise ConfigurationError(
                "restart", self.restart, "must be 'permanent', 'transient' or 'temporary'"
            ) from None
        _validate.seconds("shutdown", self.shutdown)
        _validate.seconds("health_timeout", self.health_timeout)
        _validate.seconds("ready_timeout", self.ready_timeout)
        _validate.seconds("ready_interval", self.ready_interval)
        if self.health_interval is not None:
            _validate.seconds("health_interval", self.health_interval)
        for key in ("health", "save_state", "restore_state"):
            value = getattr(self, key)
            if value is not None and not callable(value):
                raise ConfigurationError(key, value, "must be callable or None")

    @property
    def restart_type(self) -> RestartType:
        """``restart`` as a :class:`RestartType`."""
        return RestartType(self.restart)


# --------------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RestartRecord:
    """One child's exit and what the supervisor did about it."""

    child_id: str
    reason: str
    """Why it ended: ``raised RuntimeError: boom``, ``exit status -9 (SIGKILL)``, ``unhealthy``,
    ``returned`` / ``exit status 0`` (a normal end), ``start failed: ...``."""
    exit_status: int | None
    """A process child's exit status (negative: killed by that signal); None for other kinds."""
    time: float
    """When the exit was observed, ``clock.time()`` seconds."""
    outcome: RestartOutcome
    restarted: tuple[str, ...] = ()
    """The ids started again, in start order (the restart set of the strategy)."""
    delay: float = 0.0
    """Seconds of backoff waited before the restart."""
    recovery_seconds: float | None = None
    """Seconds (on the clock) from the exit to the restart set observed ready; None if not."""
    state_restored: bool = False
    """True when the child's saved state was restored into its new start."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ChildSnapshot:
    """One child, now."""

    id: str
    kind: Literal["task", "component", "process"]
    restart: RestartType
    status: ChildStatus
    restarts: int
    """Times this child was started again after its first start."""
    pid: int | None
    """A running process child's PID."""
    last_reason: str | None
    last_exit_status: int | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorSnapshot:
    """A supervisor, now: what the status service shows. Frozen; take a new one to see changes."""

    name: str
    state: SupervisorState
    strategy: RestartStrategy
    intensity: int
    period: float
    children: tuple[ChildSnapshot, ...]
    """In start order."""
    restarts_total: int
    """Child starts after a crash since the supervisor was built (a ``one_for_all`` restart of
    three children counts three; a failed start counts too)."""
    restarts_in_window: int
    """Restarts within the last ``period`` seconds (the intensity's count)."""
    history: tuple[RestartRecord, ...]
    """The most recent exits and what was done, oldest first (bounded)."""
    escalations: int
    stragglers: tuple[str, ...]
    """Children whose last stop overran its deadline (a task that ignored cancellation)."""


# ---------------------------------------------------------------------------------- helpers


async def _maybe_await(value: object) -> object:
    if inspect.isawaitable(value):
        return await value
    return value


# ---------------------------------------------------------------------------------- children


class _Child:
    __slots__ = (
        "exit",
        "incarnation",
        "restarts",
        "run",
        "saved",
        "spec",
        "status",
        "watcher",
    )

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.status = ChildStatus.STOPPED
        self.run: _Run | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.incarnation = 0
        self.restarts = 0
        self.exit: _Exit | None = None
        self.saved: tuple[object] | None = None
        """The last saved state, boxed (a saved None is still a state)."""

    @property
    def kind(self) -> Literal["task", "component", "process"]:
        if self.run is not None:
            return self.run.kind
        start = self.spec.start
        if isinstance(start, ProcessChild):
            return "process"
        return "component" if isinstance(start, Component) else "task"


def _check_children(children: object) -> None:
    if isinstance(children, str | bytes) or not isinstance(children, Sequence):
        raise ConfigurationError("children", children, "must be a sequence of ChildSpec")
    seen: set[str] = set()
    for spec in children:
        if not isinstance(spec, ChildSpec):
            raise ConfigurationError("children", spec, "every child must be a ChildSpec")
        if spec.id in seen:
            raise ConfigurationError("children", spec.id, "child ids must be unique")
        seen.add(spec.id)


_AT_REST: Final = frozenset({ChildStatus.STOPPED, ChildStatus.TERMINATED})
"""Statuses in which an exit event for the child is stale: nothing is to be restarted."""

Backoff = RetryPolicy | Callable[[int], float]

_DEFAULT_BACKOFF = RetryPolicy(base_delay=0.01, multiplier=2.0, max_delay=5.0, jitter=None)


class Supervisor:
    """Starts, watches and restarts children after OTP's supervisor; see the module docstring.

    ``children`` are :class:`ChildSpec` with unique ids, started in that order. ``strategy`` is a
    :class:`RestartStrategy` or its value; at most ``intensity`` (int >= 0) restarts are allowed
    within ``period`` seconds (> 0). ``backoff`` gives the delay before a restart (default: 0.01 s
    doubling to at most 5 s, no jitter). ``manager`` (an
    :class:`~strategylab.fault_tolerance.ErrorRecoveryManager`) and ``on_escalate`` (called with
    the :class:`RestartIntensityExceededError`; may be async) hear of an escalation;
    ``escalation_type`` is the :class:`ErrorType` the manager is given (default: the last crash's
    exception, or the escalation error for an exit without one, classified with the child's id
    as the component, so the classifier's name hints and default apply). ``guard`` ties process
    children to this process (default: a :class:`~strategylab._children.ChildGuard` made on the
    first process start and closed on stop). ``history`` bounds the kept :class:`RestartRecord`.

    The supervisor is itself a :class:`~strategylab.fault_tolerance.Component` (``name``,
    ``start``, ``stop``, ``health``), so a manager (or another supervisor) can restart it.
    Raises :class:`~strategylab.errors.ConfigurationError` naming the argument for a bad value.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        name: str = "supervisor",
        strategy: RestartStrategy
        | Literal["one_for_one", "rest_for_one", "one_for_all"] = RestartStrategy.ONE_FOR_ONE,
        intensity: int = 3,
        period: float = 5.0,
        backoff: Backoff | None = None,
        clock: Clock = SYSTEM_CLOCK,
        manager: ErrorRecoveryManager | None = None,
        on_escalate: Callable[[RestartIntensityExceededError], object] | None = None,
        escalation_type: ErrorType | None = None,
        guard: ChildGuard | None = None,
        history: int = 100,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError("name", name, "must be a non-empty str")
        _check_children(children)
        try:
            self._strategy = RestartStrategy(strategy)
        except ValueError:
            raise ConfigurationError(
                "strategy", strategy, "must be 'one_for_one', 'rest_for_one' or 'one_for_all'"
            ) from None
        self._intensity = _validate.integer("intensity", intensity, minimum=0)
        self._period = _validate.seconds("period", period)
        if backoff is not None and not isinstance(backoff, RetryPolicy) and not callable(backoff):
            raise ConfigurationError("backoff", backoff, "must be a RetryPolicy or a callable")
        if not isinstance(clock, Clock):
            raise ConfigurationError("clock", clock, "must implement strategylab.clock.Clock")
        if on_escalate is not None and not callable(on_escalate):
            raise ConfigurationError("on_escalate", on_escalate, "must be callable or None")
        if escalation_type is not None and not isinstance(escalation_type, ErrorType):
            raise ConfigurationError("escalation_type", escalation_type, "must be an ErrorType")
        self._name = name
        self._children = [_Child(spec) for spec in children]
        self._backoff: Backoff = _DEFAULT_BACKOFF if backoff is None else backoff
        self._clock = clock
        self._manager = manager
        self._on_escalate = on_escalate
        self._escalation_type = escalation_type
        self._guard = guard
        self._own_guard = False
        self._history: collections.deque[RestartRecord] = collections.deque(
            maxlen=_validate.integer("history", history, minimum=1)
        )
        self._state = SupervisorState.STOPPED
        self._events: asyncio.Queue[tuple[_Child, int, _Exit]] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._report_task: asyncio.Task[None] | None = None
        self._restart_times: collections.deque[float] = collections.deque()
        self._per_child: dict[str, collections.deque[float]] = {}
        self._restarts_total = 0
        self._escalations = 0
        self._stragglers: tuple[str, ...] = ()
        self._changed: asyncio.Event | None = None

    # ------------------------------------------------------------------ component protocol

    @property
    def name(self) -> str:
        """The supervisor's name (its component name for the recovery manager)."""
        return self._name

    @property
    def state(self) -> SupervisorState:
        """Where the supervisor is in its life."""
        return self._state

    async def start(self) -> None:
        """Start every child in order, each observed ready, then watch them.

        A no-op while running. Raises :class:`ChildStartError` (after stopping the children
        already started, in reverse order) when a child does not start or become ready.
        """
        if self._state in {SupervisorState.RUNNING, SupervisorState.STARTING}:
            return
        self._state = SupervisorState.STARTING
        self._events = asyncio.Queue()
        self._changed = asyncio.Event()
        self._restart_times.clear()
        self._per_child.clear()
        for child in self._children:
            problem = await self._start_child(child)
            if problem is not None:
                await self._stop_children(self._children)
                self._state = SupervisorState.STOPPED
                self._close_guard()
                raise ChildStartError(self._name, child.spec.id, problem)
        self._state = SupervisorState.RUNNING
        self._loop_task = asyncio.create_task(self._loop(), name=f"supervisor:{self._name}")
        self._notify()

    async def stop(self) -> None:
        """Stop watching, then stop the children in reverse start order, each within its
        ``shutdown`` deadline; waits for an escalation report in flight. Safe to repeat."""
        current = asyncio.current_task()
        if self._state is not SupervisorState.ESCALATED:
            self._state = SupervisorState.STOPPING
        await cancel_and_wait(
            task for task in (self._loop_task,) if task is not None and task is not current
        )
        await self._stop_children(self._children)
        report = self._report_task
        if report is not None and report is not current:
            await asyncio.wait((report,))
        self._close_guard()
        if self._state is not SupervisorState.ESCALATED:
            self._state = SupervisorState.STOPPED
        self._notify()

    async def health(self) -> bool:
        """True while running with every child that should run observed running."""
        if self._state is not SupervisorState.RUNNING:
            return False
        return all(
            child.status in {ChildStatus.RUNNING, ChildStatus.TERMINATED}
            for child in self._children
        )

    # ------------------------------------------------------------------ observing

    def snapshot(self) -> SupervisorSnapshot:
        """A frozen picture of the supervisor and its children now."""
        now = self._clock.monotonic()
        return SupervisorSnapshot(
            name=self._name,
            state=self._state,
            strategy=self._strategy,
            intensity=self._intensity,
            period=self._period,
            children=tuple(self._child_snapshot(child) for child in self._children),
            restarts_total=self._restarts_total,
            restarts_in_window=sum(1 for t in self._restart_times if t > now - self._period),
            history=tuple(self._history),
            escalations=self._escalations,
            stragglers=self._stragglers,
        )

    async def wait_for(self, predicate: Callable[[SupervisorSnapshot], bool]) -> SupervisorSnapshot:
        """Wait until ``predicate(snapshot)`` holds (checked on every change); the snapshot.

        Bound it with ``asyncio.timeout``; it waits for ever otherwise.
        """
        while True:
            snapshot = self.snapshot()
            if predicate(snapshot):
                return snapshot
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            changed.set()
            self._changed = asyncio.Event()

    def _child_snapshot(self, child: _Child) -> ChildSnapshot:
        run = child.run
        last = child.exit
        return ChildSnapshot(
            id=child.spec.id,
            kind=child.kind,
            restart=child.spec.restart_type,
            status=child.status,
            restarts=child.restarts,
            pid=run.pid if run is not None else None,
            last_reason=None if last is None else last.reason,
            last_exit_status=None if last is None else last.exit_status,
        )

    # ------------------------------------------------------------------ starting a child

    def _ensure_guard(self) -> ChildGuard:
        if self._guard is None:
            self._guard = ChildGuard()
            self._own_guard = True
        return self._guard

    def _close_guard(self) -> None:
        if self._own_guard and self._guard is not None:
            self._guard.close()
            self._guard = None
            self._own_guard = False

    async def _launch(self, child: _Child) -> _Run:
        spec = child.spec
        start = spec.start
        label = f"{self._name}:{spec.id}"
        if isinstance(start, ProcessChild):
            process_run = _ProcessRun(
                start, ChildProcesses(self._ensure_guard(), stop_timeout=spec.shutdown)
            )
            child.run = process_run
            await process_run.launch(label)
            return process_run
        if isinstance(start, Component):
            component_run = _ComponentRun(start)
            child.run = component_run
            await start.start()
            return component_run
        made = start()
        if isinstance(made, Component):
            component_run = _ComponentRun(made)
            child.run = component_run
            await made.start()
            return component_run
        if inspect.isawaitable(made):
            task = asyncio.ensure_future(made)
            task.set_name(label)
            task_run = _TaskRun(task, spec.health)
            child.run = task_run
            return task_run
        raise TypeError(
            f"child {spec.id!r}: start() returned {type(made).__name__}; expected an awaitable "
            "or a Component"
        )

    async def _start_child(self, child: _Child) -> str | None:
        """Start one child and wait until it is observed ready; the problem, or None."""
        spec = child.spec
        child.incarnation += 1
        child.status = ChildStatus.STARTING
        child.run = None
        if child.saved is not None and spec.restore_state is not None:
            try:
                await _maybe_await(spec.restore_state(child.saved[0]))
            except Exception:
                _log.exception("%s: restore_state of %s raised", self._name, spec.id)
        try:
            run = await self._launch(child)
            async with asyncio.timeout(spec.ready_timeout):
                await run.until_ready(spec.ready_interval)
        except TimeoutError:
            problem = f"not ready within {spec.ready_timeout:g}s"
        except _NotReadyError as exc:
            problem = f"ended before it was ready: {exc}"
        except Exception as exc:
            problem = _describe(exc)
        else:
            child.status = ChildStatus.RUNNING
            child.watcher = asyncio.create_task(
                self._watch(child, run, child.incarnation), name=f"{self._name}:{spec.id}:watch"
            )
            self._notify()
            return None
        await self._stop_run(child)  # whatever part of it did start
        child.status = ChildStatus.RESTARTING
        return problem

    # ------------------------------------------------------------------ watching

    async def _watch(self, child: _Child, run: _Run, incarnation: int) -> None:
        ended = asyncio.ensure_future(run.wait())
        checks = (
            asyncio.ensure_future(self._health_loop(child.spec, run))
            if child.spec.health_interval is not None
            else None
        )
        try:
            await asyncio.wait(
                [t for t in (ended, checks) if t is not None], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            await cancel_and_wait((ended, checks))
        source = ended if ended.done() and not ended.cancelled() else checks
        assert source is not None  # noqa: S101 - one of them finished
        events = self._events
        if events is not None:
            events.put_nowait((child, incarnation, source.result()))

    async def _health_loop(self, spec: ChildSpec, run: _Run) -> _Exit:
        interval = spec.health_interval
        assert interval is not None  # noqa: S101 - only started with an interval
        while True:
            await self._clock.asleep(interval)
            try:
                async with asyncio.timeout(spec.health_timeout):
                    ok = await run.healthy()
            except TimeoutError:
                return _Exit(f"unhealthy: check took over {spec.health_timeout:g}s", normal=False)
            except Exception as exc:
                return _Exit(f"unhealthy: check {_describe(exc)}", normal=False, error=exc)
            if not ok:
                return _Exit("unhealthy", normal=False)

    async def _loop(self) -> None:
        events = self._events
        assert events is not None  # noqa: S101 - made by start()
        while True:
            child, incarnation, ended = await events.get()
            if incarnation != child.incarnation or child.status in _AT_REST:
                continue  # an incarnation already stopped or replaced by a restart
            await self._handle_exit(child, ended)
            if self._state is SupervisorState.ESCALATED:
                return

    # ------------------------------------------------------------------ restarting

    def _should_restart(self, spec: ChildSpec, ended: _Exit) -> bool:
        kind = spec.restart_type
        if kind is RestartType.PERMANENT:
            return True
        return kind is RestartType.TRANSIENT and not ended.normal

    def _restart_set(self, child: _Child) -> list[_Child]:
        if self._strategy is RestartStrategy.ONE_FOR_ONE:
            return [child]
        if self._strategy is RestartStrategy.REST_FOR_ONE:
            return self._children[self._children.index(child) :]
        return list(self._children)

    def _delay(self, child_id: str, now: float) -> float:
        times = self._per_child.setdefault(child_id, collections.deque())
        while times and times[0] <= now - self._period:
            times.popleft()
        times.append(now)
        number = len(times) - 1
        backoff = self._backoff
        delay = backoff.delay(number) if isinstance(backoff, RetryPolicy) else backoff(number)
        return max(0.0, float(delay))

    async def _handle_exit(self, child: _Child, ended: _Exit) -> None:
        spec = child.spec
        crashed_at = self._clock.monotonic()
        wall = self._clock.time()
        child.exit = ended
        child.status = ChildStatus.RESTARTING
        await self._stop_run(child)  # reaps a process, saves the state
        if not self._should_restart(spec, ended):
            child.status = ChildStatus.TERMINATED
            self._record(child, ended, wall, RestartOutcome.NOT_RESTARTED)
            return

        window = self._restart_times
        window.append(crashed_at)
        while window and window[0] <= crashed_at - self._period:
            window.popleft()
        if len(window) > self._intensity:
            await self._escalate(child, ended, wall, len(window))
            return

        affected = self._restart_set(child)
        await self._stop_children([c for c in affected if c is not child], restarting=True)
        delay = self._delay(spec.id, crashed_at)
        self._notify()
        await self._clock.asleep(delay)

        restarted: list[str] = []
        restored = child.saved is not None and spec.restore_state is not None
        for sibling in affected:
            if sibling is not child and sibling.spec.restart_type is RestartType.TEMPORARY:
                sibling.status = ChildStatus.TERMINATED  # OTP never restarts a temporary child
                continue
            problem = await self._start_child(sibling)
            sibling.restarts += 1
            self._restarts_total += 1
            if problem is not None:
                failed = _Exit(f"start failed: {problem}", normal=False)
                self._record(
                    sibling, failed, self._clock.time(), RestartOutcome.START_FAILED, delay=delay
                )
                # Counted as another crash of that child: the loop restarts it (and the rest of
                # this restart set) under the strategy and the intensity.
                events = self._events
                if events is not None:
                    events.put_nowait((sibling, sibling.incarnation, failed))
                return
            restarted.append(sibling.spec.id)
        self._record(
            child,
            ended,
            wall,
            RestartOutcome.RESTARTED,
            restarted=tuple(restarted),
            delay=delay,
            recovery=self._clock.monotonic() - crashed_at,
            restored=restored,
        )

    async def _escalate(self, child: _Child, ended: _Exit, wall: float, restarts: int) -> None:
        self._state = SupervisorState.ESCALATED
        self._escalations += 1
        await self._stop_children(self._children)
        self._close_guard()
        error = RestartIntensityExceededError(
            self._name,
            child_id=child.spec.id,
            reason=ended.reason,
            restarts=restarts,
            intensity=self._intensity,
            period=self._period,
        )
        if ended.error is not None:
            error.__cause__ = ended.error
        self._record(child, ended, wall, RestartOutcome.ESCALATED)
        _log.error("%s", error)
        if self._on_escalate is not None:
            try:
                await _maybe_await(self._on_escalate(error))
            except Exception:
                _log.exception("%s: on_escalate raised", self._name)
        if self._manager is not None:
            kind = self._escalation_type
            if kind is None:
                kind = classify(
                    ended.error if ended.error is not None else error, component=child.spec.id
                )
            context = ErrorContext.from_exception(
                error,
                component=self._name,
                error_type=kind,
                severity=ErrorSeverity.CRITICAL,
                metadata={"child": child.spec.id, "reason": ended.reason},
                capture_state=False,
                clock=self._clock,
            )
            # Its own task: the manager's chain may stop or restart this supervisor, which must
            # not cancel the report it is part of.
            self._report_task = asyncio.create_task(
                self._report(context), name=f"{self._name}:escalation"
            )

    async def _report(self, context: ErrorContext) -> None:
        manager = self._manager
        assert manager is not None  # noqa: S101 - only started with a manager
        try:
            await manager.handle(context)
        except Exception:
            _log.exception("%s: the recovery manager raised on the escalation", self._name)

    def _record(
        self,
        child: _Child,
        ended: _Exit,
        wall: float,
        outcome: RestartOutcome,
        *,
        restarted: tuple[str, ...] = (),
        delay: float = 0.0,
        recovery: float | None = None,
        restored: bool = False,
    ) -> None:
        self._history.append(
            RestartRecord(
                child_id=child.spec.id,
                reason=ended.reason,
                exit_status=ended.exit_status,
                time=wall,
                outcome=outcome,
                restarted=restarted,
                delay=delay,
                recovery_seconds=recovery,
                state_restored=restored,
            )
        )
        self._notify()

    # ------------------------------------------------------------------ stopping

    async def _stop_run(self, child: _Child) -> bool:
        """Stop the child's current incarnation (if any) within its deadline; save its state."""
        run, child.run = child.run, None
        watcher, child.watcher = child.watcher, None
        current = asyncio.current_task()
        if watcher is not None and watcher is not current:
            await cancel_and_wait((watcher,))
        in_time = True
        if run is not None:
            in_time = await run.stop(child.spec.shutdown)
        save = child.spec.save_state
        if save is not None and run is not None:
            try:
                child.saved = (await _maybe_await(save()),)
            except Exception:
                _log.exception("%s: save_state of %s raised", self._name, child.spec.id)
        return in_time

    async def _stop_children(self, children: Sequence[_Child], *, restarting: bool = False) -> None:
        """Stop ``children`` newest first, each within its deadline."""
        late: list[str] = []
        for child in reversed(children):
            if child.run is None and child.watcher is None:
                if not restarting and child.status is not ChildStatus.TERMINATED:
                    child.status = ChildStatus.STOPPED
                continue
            if not await self._stop_run(child):
                late.append(child.spec.id)
            child.status = ChildStatus.RESTARTING if restarting else ChildStatus.STOPPED
        if late:
            _log.warning("%s: did not stop within the deadline: %s", self._name, ", ".join(late))
        self._stragglers = tuple(late)
        self._notify()

    def __repr__(self) -> str:
        return (
            f"Supervisor(name={self._name!r}, strategy={self._strategy.value}, "
            f"children={[c.spec.id for c in self._children]!r}, state={self._state.value})"
        )
