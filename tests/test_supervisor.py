"""The OTP-style Supervisor: restart strategies, restart types, intensity, backoff, escalation,
state hand-over, process children and orderly stop.

In-process children are real asyncio tasks and components that really raise; time (the intensity
window, the backoff delays, the health-check interval) is a FakeClock that jumps when every task
waits. The process test runs a real Python child, SIGKILLs it, and waits (bounded) for the
supervisor to observe a new one ready.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

import pytest

from strategylab.errors import ConfigurationError, FaultToleranceError
from strategylab.fault_tolerance import (
    ErrorContext,
    ErrorRecoveryManager,
    ErrorSeverity,
    ErrorType,
)
from strategylab.fault_tolerance._supervisor import (
    ChildSpec,
    ChildStartError,
    ChildStatus,
    ProcessChild,
    RestartIntensityExceededError,
    RestartOutcome,
    RestartStrategy,
    Supervisor,
    SupervisorSnapshot,
    SupervisorState,
)
from strategylab.testing import FakeClock

LIMIT = 10.0
"""Real seconds any one wait for the supervisor may take before the test fails."""


class Worker:
    """A task child that runs until told to crash (raise) or finish (return); logs its life."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.starts = 0
        self._go = asyncio.Event()
        self._finish = False

    async def run(self) -> None:
        self.starts += 1
        self.log.append(f"start {self.name}")
        try:
            await self._go.wait()
        except asyncio.CancelledError:
            self.log.append(f"stop {self.name}")
            raise
        self._go = asyncio.Event()
        if self._finish:
            self._finish = False
            return
        raise RuntimeError(f"{self.name} crashed")

    def crash(self) -> None:
        self._go.set()

    def finish(self) -> None:
        self._finish = True
        self._go.set()


class Counter:
    """A component that counts, can be told to fail (its ``wait()`` raises) or to look unhealthy."""

    def __init__(self, name: str, log: list[str], count: int = 0) -> None:
        self._name = name
        self.log = log
        self.count = count
        self.healthy = True
        self._failed = asyncio.Event()

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        self.log.append(f"start {self._name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self._name}")

    async def health(self) -> bool:
        return self.healthy

    async def wait(self) -> None:
        await self._failed.wait()
        self._failed = asyncio.Event()  # the same instance may be started again
        raise ConnectionError(f"{self._name} lost its connection")

    def fail(self) -> None:
        self._failed.set()


async def until(
    supervisor: Supervisor, predicate: Callable[[SupervisorSnapshot], bool]
) -> SupervisorSnapshot:
    async with asyncio.timeout(LIMIT):
        return await supervisor.wait_for(predicate)


def all_running(snapshot: SupervisorSnapshot) -> bool:
    return all(child.status is ChildStatus.RUNNING for child in snapshot.children)


def restarted(count: int) -> Callable[[SupervisorSnapshot], bool]:
    return lambda s: s.restarts_total >= count and all_running(s)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
async def stack() -> AsyncIterator[list[Supervisor]]:
    """Supervisors to stop at the end of the test, whatever happened."""
    made: list[Supervisor] = []
    yield made
    for supervisor in made:
        await supervisor.stop()


def workers(log: list[str], *names: str) -> dict[str, Worker]:
    return {name: Worker(name, log) for name in names}


def supervise(
    stack: list[Supervisor],
    specs: list[ChildSpec],
    clock: FakeClock,
    strategy: Literal["one_for_one", "rest_for_one", "one_for_all"] = "one_for_one",
    **kwargs: object,
) -> Supervisor:
    supervisor = Supervisor(specs, strategy=strategy, clock=clock, **kwargs)  # type: ignore[arg-type]
    stack.append(supervisor)
    return supervisor


# ------------------------------------------------------------------------- restart strategies


async def test_one_for_one_restarts_only_the_crashed_child(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """one_for_one: b crashes, only b starts again; a and c are left running."""
    w = workers(log, "a", "b", "c")
    sup = supervise(stack, [ChildSpec(id=n, start=x.run) for n, x in w.items()], clock)
    await sup.start()
    await until(sup, all_running)
    w["b"].crash()
    snap = await until(sup, restarted(1))
    assert log == ["start a", "start b", "start c", "start b"]
    assert snap.history[-1].restarted == ("b",)
    assert snap.history[-1].reason == "raised RuntimeError: b crashed"
    assert [c.restarts for c in snap.children] == [0, 1, 0]


async def test_rest_for_one_restarts_the_child_and_those_started_after_it(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """rest_for_one: b crashes; c (started after b) is stopped, then b and c start in order."""
    w = workers(log, "a", "b", "c")
    specs = [ChildSpec(id=n, start=x.run) for n, x in w.items()]
    sup = supervise(stack, specs, clock, "rest_for_one")
    await sup.start()
    await until(sup, all_running)
    w["b"].crash()
    snap = await until(sup, restarted(2))
    assert log[3:] == ["stop c", "start b", "start c"]
    assert snap.history[-1].restarted == ("b", "c")
    assert w["a"].starts == 1


async def test_one_for_all_stops_the_others_newest_first_and_starts_all_in_order(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """one_for_all: b crashes; c then a are stopped, then a, b, c start in order."""
    w = workers(log, "a", "b", "c")
    specs = [ChildSpec(id=n, start=x.run) for n, x in w.items()]
    sup = supervise(stack, specs, clock, "one_for_all")
    await sup.start()
    await until(sup, all_running)
    w["b"].crash()
    snap = await until(sup, restarted(3))
    assert log[3:] == ["stop c", "stop a", "start a", "start b", "start c"]
    assert snap.history[-1].restarted == ("a", "b", "c")


# ------------------------------------------------------------------------------ restart types


async def test_transient_child_that_returns_is_not_restarted(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """A transient child that ends normally is left terminated; nothing is restarted."""
    w = Worker("t", log)
    sup = supervise(stack, [ChildSpec(id="t", start=w.run, restart="transient")], clock)
    await sup.start()
    w.finish()
    snap = await until(sup, lambda s: len(s.history) == 1)
    assert snap.children[0].status is ChildStatus.TERMINATED
    assert snap.history[0].outcome is RestartOutcome.NOT_RESTARTED
    assert snap.history[0].reason == "returned"
    assert w.starts == 1
    assert snap.restarts_total == 0


async def test_transient_child_that_raises_is_restarted(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """A transient child that ends abnormally is restarted."""
    w = Worker("t", log)
    sup = supervise(stack, [ChildSpec(id="t", start=w.run, restart="transient")], clock)
    await sup.start()
    w.crash()
    snap = await until(sup, restarted(1))
    assert snap.history[-1].outcome is RestartOutcome.RESTARTED
    assert w.starts == 2


async def test_permanent_child_that_returns_is_restarted(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """A permanent child is restarted even after a normal end."""
    w = Worker("p", log)
    sup = supervise(stack, [ChildSpec(id="p", start=w.run)], clock)
    await sup.start()
    w.finish()
    snap = await until(sup, restarted(1))
    assert snap.history[-1].reason == "returned"
    assert snap.history[-1].outcome is RestartOutcome.RESTARTED
    assert w.starts == 2


async def test_temporary_child_that_raises_is_not_restarted(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """A temporary child is never restarted, even after a crash."""
    w = Worker("tmp", log)
    sup = supervise(stack, [ChildSpec(id="tmp", start=w.run, restart="temporary")], clock)
    await sup.start()
    w.crash()
    snap = await until(sup, lambda s: len(s.history) == 1)
    assert snap.children[0].status is ChildStatus.TERMINATED
    assert w.starts == 1


async def test_temporary_sibling_stopped_by_one_for_all_is_not_restarted(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """one_for_all stops a temporary sibling and, as OTP does, does not start it again."""
    w = workers(log, "a", "tmp")
    specs = [
        ChildSpec(id="a", start=w["a"].run),
        ChildSpec(id="tmp", start=w["tmp"].run, restart="temporary"),
    ]
    sup = supervise(stack, specs, clock, "one_for_all")
    await sup.start()
    await until(sup, all_running)
    w["a"].crash()
    snap = await until(sup, lambda s: s.restarts_total >= 1 and len(s.history) == 1)
    assert log[2:] == ["stop tmp", "start a"]
    assert snap.history[-1].restarted == ("a",)
    assert snap.children[1].status is ChildStatus.TERMINATED
    assert await sup.health() is True


# ------------------------------------------------------------------ intensity and escalation


async def test_crash_loop_past_the_intensity_stops_children_and_escalates_once(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """intensity=2: the third crash within the period stops every child and escalates, once."""
    steady = Worker("steady", log)
    escalations: list[RestartIntensityExceededError] = []
    specs = [
        ChildSpec(id="steady", start=steady.run),
        ChildSpec(id="loop", start=_always_raising(log)),
    ]
    sup = supervise(stack, specs, clock, intensity=2, period=10.0, on_escalate=escalations.append)
    await sup.start()
    snap = await until(sup, lambda s: s.state is SupervisorState.ESCALATED)
    for _ in range(20):  # give a second escalation every chance to happen
        await asyncio.sleep(0)
    assert len(escalations) == 1
    error = escalations[0]
    assert isinstance(error, FaultToleranceError)
    assert (error.child_id, error.restarts, error.intensity, error.period) == ("loop", 3, 2, 10.0)
    assert isinstance(error.__cause__, RuntimeError)
    assert "stop steady" in log
    assert [c.status for c in sup.snapshot().children] == [ChildStatus.STOPPED] * 2
    assert snap.history[-1].outcome is RestartOutcome.ESCALATED
    assert snap.restarts_total == 2
    assert clock.sleeps == [0.01, 0.02]  # the backoff between restarts, on the fake clock
    assert await sup.health() is False


def _always_raising(log: list[str]) -> Callable[[], Awaitable[None]]:
    """A task body that crashes as soon as it runs."""

    async def body() -> None:
        log.append("start loop")
        await asyncio.sleep(0)
        raise RuntimeError("loop crashed")

    return body


async def test_restarts_spread_beyond_the_period_never_escalate(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """intensity=1 per 10 s: crashes 11 s apart are each restarted; the window forgets them."""
    w = Worker("w", log)
    escalations: list[RestartIntensityExceededError] = []
    sup = supervise(
        stack,
        [ChildSpec(id="w", start=w.run)],
        clock,
        intensity=1,
        period=10.0,
        on_escalate=escalations.append,
    )
    await sup.start()
    for n in range(1, 4):
        w.crash()
        snap = await until(sup, restarted(n))
        clock.advance(11.0)
    assert snap.state is SupervisorState.RUNNING
    assert escalations == []
    assert sup.snapshot().restarts_in_window == 0
    assert clock.sleeps == [0.01, 0.01, 0.01]  # each restart is the first of its window


async def test_backoff_grows_within_the_window(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """Crashes in quick succession wait the policy's growing delays before each restart."""
    w = Worker("w", log)
    sup = supervise(
        stack,
        [ChildSpec(id="w", start=w.run)],
        clock,
        intensity=10,
        period=100.0,
        backoff=lambda n: 2.0**n,
    )
    await sup.start()
    for n in range(1, 4):
        w.crash()
        await until(sup, restarted(n))
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert [r.delay for r in sup.snapshot().history] == [1.0, 2.0, 4.0]


async def test_escalation_reaches_the_manager_as_a_critical_error_ending_in_shutdown(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """The manager gets one CRITICAL context for the supervisor; its exhausted chain runs the
    emergency shutdown."""
    shutdowns: list[ErrorContext] = []

    async def kill_switch(context: ErrorContext) -> bool:
        shutdowns.append(context)
        return True

    manager = ErrorRecoveryManager(clock=clock, shutdown_handler=kill_switch, capture_state=False)
    sup = supervise(
        stack,
        [ChildSpec(id="loop", start=_always_raising(log))],
        clock,
        intensity=1,
        manager=manager,
        name="ingest-sup",
    )
    await sup.start()
    await until(sup, lambda s: s.state is SupervisorState.ESCALATED)
    await sup.stop()  # waits for the report to the manager
    assert len(shutdowns) == 1
    assert shutdowns[0].component == "ingest-sup"
    assert shutdowns[0].severity is ErrorSeverity.CRITICAL
    assert shutdowns[0].metadata["child"] == "loop"
    assert manager.statistics().total_errors == 1


async def test_a_manager_that_restarts_the_escalated_supervisor_runs_it_again(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """Registered with the manager, an escalated supervisor is restarted by COMPONENT_RESTART,
    as an OTP supervisor's own supervisor restarts it; no emergency shutdown is needed."""
    shutdowns: list[ErrorContext] = []

    async def kill_switch(context: ErrorContext) -> bool:
        shutdowns.append(context)
        return True

    w = Worker("w", log)
    manager = ErrorRecoveryManager(clock=clock, shutdown_handler=kill_switch, capture_state=False)
    sup = supervise(
        stack,
        [ChildSpec(id="w", start=w.run)],
        clock,
        intensity=0,
        manager=manager,
        escalation_type=ErrorType.STRATEGY_EXECUTION_ERROR,  # chain: restart -> degradation
    )
    manager.register(sup)
    await sup.start()
    w.crash()
    await until(sup, lambda s: s.escalations == 1 and s.state is SupervisorState.RUNNING)
    assert await sup.health() is True
    assert w.starts == 2
    assert shutdowns == []
    assert manager.statistics().successful_recoveries == 1


def test_supervisor_errors_survive_pickling_with_their_fields() -> None:
    """Both errors round-trip through pickle with their attributes (worker processes, logs)."""
    error = RestartIntensityExceededError(
        "sup", child_id="a", reason="exit status -9 (SIGKILL)", restarts=4, intensity=3, period=5.0
    )
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (copy.child_id, copy.restarts, copy.period, str(copy)) == ("a", 4, 5.0, str(error))
    start = pickle.loads(pickle.dumps(ChildStartError("sup", "b", "not ready within 1s")))  # noqa: S301
    assert (start.supervisor, start.child_id, start.reason) == ("sup", "b", "not ready within 1s")


async def test_a_restart_that_fails_to_start_counts_towards_the_intensity(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """A child whose restart raises is recorded START_FAILED and retried until the intensity."""
    made: list[Counter] = []

    def factory() -> Counter:
        if made:
            raise OSError("port in use")
        made.append(Counter("c", log))
        return made[-1]

    escalations: list[RestartIntensityExceededError] = []
    sup = supervise(
        stack,
        [ChildSpec(id="c", start=factory)],
        clock,
        intensity=3,
        on_escalate=escalations.append,
    )
    await sup.start()
    made[0].fail()
    snap = await until(sup, lambda s: s.state is SupervisorState.ESCALATED)
    outcomes = [r.outcome for r in snap.history]
    assert outcomes[0] is RestartOutcome.START_FAILED
    assert outcomes.count(RestartOutcome.START_FAILED) == 3
    assert outcomes[-1] is RestartOutcome.ESCALATED
    assert "port in use" in escalations[0].reason


# ------------------------------------------------------------------------ health and state


async def test_a_failed_health_check_restarts_the_child(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """With a health interval, a component whose health() turns False is restarted."""
    made: list[Counter] = []

    def factory() -> Counter:
        made.append(Counter(f"c{len(made)}", log))
        return made[-1]

    sup = supervise(stack, [ChildSpec(id="c", start=factory, health_interval=1.0)], clock)
    await sup.start()
    made[0].healthy = False
    snap = await until(sup, restarted(1))
    assert snap.history[-1].reason == "unhealthy"
    assert log == ["start c0", "stop c0", "start c1"]
    assert clock.monotonic() >= 1.0


async def test_a_components_wait_that_raises_is_a_crash(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """A component whose wait() raises is stopped and started again (same instance)."""
    counter = Counter("c", log)
    sup = supervise(stack, [ChildSpec(id="c", start=counter)], clock)
    await sup.start()
    counter.fail()
    snap = await until(sup, restarted(1))
    assert snap.history[-1].reason == "raised ConnectionError: c lost its connection"
    assert log[:3] == ["start c", "stop c", "start c"]


async def test_state_is_restored_on_restart(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """save_state on the crash, restore_state before the new start: the count survives."""
    made: list[Counter] = []
    handed: dict[str, int] = {}

    def factory() -> Counter:
        made.append(Counter("c", log, count=handed.pop("count", 0)))
        return made[-1]

    def restore(state: object) -> None:
        assert isinstance(state, int)
        handed["count"] = state

    spec = ChildSpec(
        id="c",
        start=factory,
        save_state=lambda: made[-1].count,
        restore_state=restore,
    )
    sup = supervise(stack, [spec], clock)
    await sup.start()
    made[0].count = 7
    made[0].fail()
    snap = await until(sup, restarted(1))
    assert len(made) == 2
    assert made[1].count == 7
    assert snap.history[-1].state_restored is True


# --------------------------------------------------------------------------------- stopping


async def test_stop_is_in_reverse_start_order(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """Children stop newest first; the supervisor ends STOPPED."""
    counters = [Counter(n, log) for n in ("a", "b", "c")]
    sup = supervise(stack, [ChildSpec(id=c.name, start=c) for c in counters], clock)
    await sup.start()
    assert log == ["start a", "start b", "start c"]
    await sup.stop()
    assert log[3:] == ["stop c", "stop b", "stop a"]
    assert sup.state is SupervisorState.STOPPED
    assert [c.status for c in sup.snapshot().children] == [ChildStatus.STOPPED] * 3


async def test_a_child_that_ignores_cancellation_is_reported_after_its_deadline(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """stop() does not hang on a task that shields itself: it is named a straggler."""
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                log.append("ignored cancel")

    sup = supervise(stack, [ChildSpec(id="s", start=stubborn, shutdown=0.05)], clock)
    await sup.start()
    async with asyncio.timeout(LIMIT):
        await sup.stop()
    assert sup.snapshot().stragglers == ("s",)
    release.set()


async def test_a_child_that_fails_its_first_start_stops_the_others(
    clock: FakeClock, log: list[str], stack: list[Supervisor]
) -> None:
    """start() raises ChildStartError naming the child; the ones started are stopped."""
    a = Counter("a", log)

    def broken() -> Counter:
        raise OSError("no database")

    sup = supervise(stack, [ChildSpec(id="a", start=a), ChildSpec(id="b", start=broken)], clock)
    with pytest.raises(ChildStartError, match=r"'b'.*no database") as caught:
        await sup.start()
    assert caught.value.child_id == "b"
    assert log == ["start a", "stop a"]
    assert sup.state is SupervisorState.STOPPED


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: ChildSpec(id="", start=Worker("x", []).run), "id"),
        (lambda: ChildSpec(id="x", start=Worker("x", []).run, restart="sometimes"), "restart"),  # type: ignore[arg-type]
        (lambda: ChildSpec(id="x", start=Worker("x", []).run, shutdown=0), "shutdown"),
        (lambda: ChildSpec(id="x", start=42), "start"),  # type: ignore[arg-type]
        (lambda: ProcessChild(argv=[]), "argv"),
        (lambda: Supervisor([], strategy="one_for_some"), "strategy"),  # type: ignore[arg-type]
        (lambda: Supervisor([], intensity=-1), "intensity"),
        (lambda: Supervisor([], period=0), "period"),
        (
            lambda: Supervisor([ChildSpec(id="x", start=Worker("x", []).run)] * 2),
            "children",
        ),
    ],
)
def test_bad_configuration_names_the_key(make: Callable[[], object], key: str) -> None:
    """Each bad value raises ConfigurationError naming its field."""
    with pytest.raises(ConfigurationError) as caught:
        make()
    assert caught.value.key == key


def test_strategy_accepts_its_value() -> None:
    """'rest_for_one' is RestartStrategy.REST_FOR_ONE."""
    sup = Supervisor([], strategy="rest_for_one")
    assert sup.snapshot().strategy is RestartStrategy.REST_FOR_ONE


# ---------------------------------------------------------------------------- real processes


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_a_sigkilled_process_is_restarted_and_its_exit_status_recorded(
    stack: list[Supervisor],
) -> None:
    """A real child SIGKILLed: exit status -9 recorded, a new process observed ready."""
    child = ProcessChild(
        argv=[sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
        ready_line="ready",
    )
    sup = Supervisor([ChildSpec(id="proc", start=child, shutdown=2.0)], name="procs")
    stack.append(sup)
    await sup.start()
    first = sup.snapshot().children[0].pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    snap = await until(sup, restarted(1))
    record = snap.history[-1]
    assert record.exit_status == -9
    assert record.reason == "exit status -9 (SIGKILL)"
    assert record.outcome is RestartOutcome.RESTARTED
    assert record.recovery_seconds is not None
    second = snap.children[0].pid
    assert second is not None
    assert second != first
    os.kill(second, 0)  # alive: raises ProcessLookupError otherwise
    await sup.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_a_process_that_exits_before_it_is_ready_fails_to_start(
    stack: list[Supervisor],
) -> None:
    """A process that never prints its ready line and exits 3 is a start failure, exit 3."""
    child = ProcessChild(argv=[sys.executable, "-c", "raise SystemExit(3)"], ready_line="ready")
    sup = Supervisor([ChildSpec(id="proc", start=child)], name="procs")
    stack.append(sup)
    with pytest.raises(ChildStartError, match="exit status 3"):
        await sup.start()
