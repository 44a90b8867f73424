"""HealthMonitor: Kubernetes-style probes on an injected clock, aggregates, and recovery reports."""

from __future__ import annotations

import asyncio
import errno
import json
import pickle

import pytest

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance._health import (
    HealthCheck,
    HealthCheckFailedError,
    HealthMonitor,
    HealthState,
    HealthTransition,
    ProbeKind,
)
from strategylab.fault_tolerance._manager import ErrorRecoveryManager
from strategylab.fault_tolerance._taxonomy import ErrorType, RecoveryStrategyKind
from strategylab.testing import FakeClock

OK = True
FAIL = False


class Scripted:
    """A check that returns (or raises) the scripted results in order, then repeats the last."""

    def __init__(self, *results: object) -> None:
        self.results = list(results)
        self.calls = 0

    async def __call__(self) -> HealthState | bool:
        self.calls += 1
        result = self.results[0] if len(self.results) == 1 else self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[return-value]


class Switch:
    """A real component whose health is a flag; ``restart()`` repairs it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.ok = True
        self.restarts = 0

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def health(self) -> bool:
        return self.ok

    async def restart(self) -> None:
        self.restarts += 1
        self.ok = True

    async def check(self) -> bool:
        return self.ok


async def test_failure_threshold_consecutive_failures_make_it_unhealthy() -> None:
    """failure_threshold=3: two failures leave a healthy check healthy, the third flips it."""
    check = Scripted(OK, FAIL, FAIL, FAIL)
    monitor = HealthMonitor([HealthCheck(name="db", check=check, failure_threshold=3)])
    assert await monitor.probe("db") is HealthState.HEALTHY
    assert await monitor.probe("db") is HealthState.HEALTHY
    assert await monitor.probe("db") is HealthState.HEALTHY
    assert await monitor.probe("db") is HealthState.UNHEALTHY
    status = monitor.status("db")
    assert (status.consecutive_failures, status.failures, status.probes) == (3, 3, 4)
    assert status.last_reason == "returned False"


async def test_a_pass_between_failures_resets_the_count() -> None:
    """Failures must be consecutive: fail, fail, pass, fail, fail stays healthy."""
    check = Scripted(OK, FAIL, FAIL, OK, FAIL, FAIL)
    monitor = HealthMonitor([HealthCheck(name="db", check=check, failure_threshold=3)])
    states = [await monitor.probe("db") for _ in range(6)]
    assert states == [HealthState.HEALTHY] * 6


async def test_success_threshold_is_needed_after_a_failure() -> None:
    """success_threshold=2: after going unhealthy, one pass is not enough, two are."""
    check = Scripted(FAIL, OK, FAIL, OK, OK)
    monitor = HealthMonitor(
        [HealthCheck(name="feed", check=check, failure_threshold=1, success_threshold=2)]
    )
    states = [await monitor.probe("feed") for _ in range(5)]
    assert states == [
        HealthState.UNHEALTHY,
        HealthState.UNHEALTHY,
        HealthState.UNHEALTHY,
        HealthState.UNHEALTHY,
        HealthState.HEALTHY,
    ]


async def test_before_the_first_verdict_it_is_live_but_not_ready() -> None:
    """As in Kubernetes: no verdict yet counts as live and as not ready, named in readiness."""
    monitor = HealthMonitor([HealthCheck(name="store", check=Scripted(OK))])
    assert monitor.state("store") is None
    assert monitor.liveness().ok is True
    ready = monitor.readiness()
    assert (ready.ok, ready.failing, ready.reasons["store"]) == (
        False,
        ("store",),
        "no verdict yet",
    )
    await monitor.probe("store")
    assert monitor.readiness().ok is True


async def test_degraded_is_ready_and_named() -> None:
    """A DEGRADED verdict passes both aggregates but is listed, and is their worst state."""
    monitor = HealthMonitor(
        [
            HealthCheck(name="a", check=Scripted(HealthState.DEGRADED)),
            HealthCheck(name="b", check=Scripted(OK)),
        ]
    )
    await monitor.probe("a")
    await monitor.probe("b")
    ready = monitor.readiness()
    assert (ready.ok, ready.state, ready.degraded, ready.failing) == (
        True,
        HealthState.DEGRADED,
        ("a",),
        (),
    )


async def test_liveness_and_readiness_count_only_their_checks() -> None:
    """A failing readiness-only check fails readiness (named, with its reason), not liveness."""
    monitor = HealthMonitor(
        [
            HealthCheck(name="alive", check=Scripted(OK), kind=ProbeKind.LIVENESS),
            HealthCheck(
                name="caught_up",
                check=Scripted(RuntimeError("lagging 900 ticks")),
                kind=ProbeKind.READINESS,
                failure_threshold=1,
            ),
        ]
    )
    await monitor.probe("alive")
    await monitor.probe("caught_up")
    assert monitor.liveness().ok is True
    ready = monitor.readiness()
    assert ready.ok is False
    assert ready.failing == ("caught_up",)
    assert ready.reasons["caught_up"] == "RuntimeError: lagging 900 ticks"


async def test_a_hanging_check_is_timed_out_and_counts_as_a_failure() -> None:
    """A check that never returns is cancelled after its timeout, on the fake clock."""
    clock = FakeClock()
    cancelled = asyncio.Event()

    async def hang() -> bool:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return True  # pragma: no cover

    monitor = HealthMonitor(
        [HealthCheck(name="hung", check=hang, timeout=2.0, failure_threshold=1)], clock=clock
    )
    async with asyncio.timeout(5):
        assert await monitor.probe("hung") is HealthState.UNHEALTHY
    assert cancelled.is_set()
    assert clock.monotonic() == 2.0
    assert monitor.status("hung").last_reason == "timed out after 2s"


async def test_a_check_that_raises_timeout_error_itself_is_told_apart() -> None:
    """A TimeoutError raised by the check is reported as such, not as the probe's timeout."""
    monitor = HealthMonitor(
        [HealthCheck(name="api", check=Scripted(TimeoutError("upstream")), failure_threshold=1)],
        clock=FakeClock(),
    )
    await monitor.probe("api")
    assert monitor.status("api").last_reason == "TimeoutError: upstream"


async def test_a_non_bool_result_is_a_failure() -> None:
    """A check returning something else than a HealthState or a bool fails, saying what it got."""
    monitor = HealthMonitor(
        [HealthCheck(name="x", check=Scripted("yes"), failure_threshold=1)], clock=FakeClock()
    )
    assert await monitor.probe("x") is HealthState.UNHEALTHY
    assert "expected a HealthState or a bool" in monitor.status("x").last_reason


async def test_checks_run_on_their_interval_after_the_initial_delay() -> None:
    """Probes start after initial_delay and repeat every interval, measured on the clock."""
    clock = FakeClock()
    times: list[float] = []
    done = asyncio.Event()

    async def check() -> bool:
        times.append(clock.monotonic())
        if len(times) == 4:
            done.set()
        return True

    monitor = HealthMonitor(
        [HealthCheck(name="c", check=check, interval=2.5, initial_delay=1.0)], clock=clock
    )
    async with asyncio.timeout(5), monitor:
        await done.wait()
    assert times == [1.0, 3.5, 6.0, 8.5]
    assert monitor.running is False


async def test_a_slow_probe_does_not_stretch_the_period() -> None:
    """periodSeconds is a period: a probe taking 0.5 s still starts every 2 s."""
    clock = FakeClock()
    times: list[float] = []
    done = asyncio.Event()

    async def slow() -> bool:
        times.append(clock.monotonic())
        if len(times) == 3:
            done.set()
        await clock.asleep(0.5)
        return True

    monitor = HealthMonitor([HealthCheck(name="c", check=slow, interval=2.0)], clock=clock)
    async with asyncio.timeout(5), monitor:
        await done.wait()
    assert times == [0.0, 2.0, 4.0]


async def test_listeners_see_every_transition_in_order() -> None:
    """None -> healthy -> degraded -> unhealthy -> healthy, each once, with the failure reason."""
    seen: list[HealthTransition] = []
    check = Scripted(OK, HealthState.DEGRADED, OSError("refused"), OK)
    monitor = HealthMonitor(
        [HealthCheck(name="feed", check=check, failure_threshold=1)], clock=FakeClock(5.0)
    )
    monitor.add_listener(seen.append)
    monitor.add_listener(lambda _t: 1 / 0)  # a broken listener must not stop the others
    for _ in range(4):
        await monitor.probe("feed")
    assert [(t.previous, t.current) for t in seen] == [
        (None, HealthState.HEALTHY),
        (HealthState.HEALTHY, HealthState.DEGRADED),
        (HealthState.DEGRADED, HealthState.UNHEALTHY),
        (HealthState.UNHEALTHY, HealthState.HEALTHY),
    ]
    assert seen[2].reason == "OSError: refused"
    assert all(t.at == 5.0 for t in seen)


async def test_unhealthy_is_reported_to_the_manager_once_per_episode() -> None:
    """Failing on, flapping to degraded and back: one error; healthy then failing: a second."""
    clock = FakeClock()
    manager = ErrorRecoveryManager(clock=clock)
    check = Scripted(FAIL, FAIL, HealthState.DEGRADED, FAIL, FAIL, OK, FAIL, FAIL, OK)
    monitor = HealthMonitor(
        [HealthCheck(name="store", check=check, failure_threshold=2)],
        clock=clock,
        manager=manager,
    )
    for _ in range(5):
        await monitor.probe("store")
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        while monitor._reports:  # noqa: ASYNC110 - the reports are the monitor's own tasks
            await asyncio.sleep(0)
    assert manager.statistics().total_errors == 1
    assert monitor.status("store").episode_reported is True
    for _ in range(4):
        await monitor.probe("store")
    async with asyncio.timeout(5):
        while monitor._reports:  # noqa: ASYNC110
            await asyncio.sleep(0)
    stats = manager.statistics()
    assert stats.total_errors == 2
    # "store" with nothing in the cause chain classifies by the component's name.
    assert dict(stats.error_type_distribution) == {ErrorType.DATABASE_CONNECTION_LOST: 2}
    assert monitor.status("store").episode_reported is False


async def test_the_reported_error_classifies_by_its_cause() -> None:
    """A check that raised ENOSPC reports a full disk; a configured error_type wins."""
    clock = FakeClock()
    manager = ErrorRecoveryManager(clock=clock)
    monitor = HealthMonitor(
        [
            HealthCheck(
                name="spool",
                check=Scripted(OSError(errno.ENOSPC, "No space left on device")),
                failure_threshold=1,
            ),
            HealthCheck(
                name="feed",
                check=Scripted(FAIL),
                failure_threshold=1,
                error_type=ErrorType.WEBSOCKET_CONNECTION_DROPPED,
            ),
        ],
        clock=clock,
        manager=manager,
    )
    await monitor.probe("spool")
    await monitor.probe("feed")
    async with asyncio.timeout(5):
        while monitor._reports:  # noqa: ASYNC110
            await asyncio.sleep(0)
    assert dict(manager.statistics().error_type_distribution) == {
        ErrorType.DISK_SPACE_EXHAUSTED: 1,
        ErrorType.WEBSOCKET_CONNECTION_DROPPED: 1,
    }


async def test_a_recovery_is_done_when_the_monitor_observes_the_component_healthy() -> None:
    """A broken strategy goes unhealthy, the manager restarts it, wait_healthy sees it back."""
    clock = FakeClock()
    component = Switch("strategy.momentum")
    manager = ErrorRecoveryManager(clock=clock)
    manager.register(component)
    monitor = HealthMonitor(
        [
            HealthCheck(
                name="momentum",
                component="strategy.momentum",
                check=component.check,
                interval=1.0,
                failure_threshold=2,
            )
        ],
        clock=clock,
        manager=manager,
    )
    unhealthy = asyncio.Event()
    monitor.add_listener(lambda t: unhealthy.set() if t.current is HealthState.UNHEALTHY else None)
    async with asyncio.timeout(5), monitor:
        await monitor.wait_healthy("momentum", within=10)
        component.ok = False
        await unhealthy.wait()
        await monitor.wait_healthy("momentum", within=10, fresh=True)
    assert component.restarts == 1
    outcome = monitor.last_recovery("momentum")
    assert outcome is not None
    assert outcome.success is True  # type: ignore[attr-defined]
    assert outcome.strategy is RecoveryStrategyKind.COMPONENT_RESTART  # type: ignore[attr-defined]
    assert monitor.state("momentum") is HealthState.HEALTHY


async def test_wait_healthy_times_out_naming_the_check_and_its_state() -> None:
    """A check that stays failing: TimeoutError after `within` seconds on the fake clock."""
    clock = FakeClock()
    monitor = HealthMonitor(
        [HealthCheck(name="db", check=Scripted(FAIL), interval=1.0, failure_threshold=1)],
        clock=clock,
    )
    async with asyncio.timeout(5), monitor:
        with pytest.raises(TimeoutError, match=r"'db' not observed healthy within 3s.*unhealthy"):
            await monitor.wait_healthy("db", within=3)
    assert clock.monotonic() == pytest.approx(3.0)


async def test_wait_healthy_fresh_needs_a_new_probe() -> None:
    """Already healthy: returns at once; with fresh=True only a later probe counts."""
    clock = FakeClock(autojump_threshold=None)
    monitor = HealthMonitor([HealthCheck(name="c", check=Scripted(OK))], clock=clock)
    await monitor.probe("c")
    await monitor.wait_healthy("c", within=1)
    waiter = asyncio.create_task(monitor.wait_healthy("c", within=1, fresh=True))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()
    await monitor.probe("c")
    async with asyncio.timeout(5):
        await waiter
    assert waiter.exception() is None


async def test_snapshot_is_frozen_and_json_ready() -> None:
    """The snapshot carries every check and both aggregates, and serialises to JSON."""
    monitor = HealthMonitor(
        [HealthCheck(name="db", check=Scripted(FAIL), failure_threshold=1)], clock=FakeClock()
    )
    await monitor.probe("db")
    snap = monitor.snapshot()
    assert snap.check("db").state is HealthState.UNHEALTHY
    assert snap.liveness.failing == ("db",)
    with pytest.raises(AttributeError):
        snap.running = True  # type: ignore[misc]
    assert json.loads(json.dumps(snap.to_dict()))["checks"][0]["state"] == "unhealthy"
    with pytest.raises(KeyError, match="'nope'"):
        snap.check("nope")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("interval", 0),
        ("timeout", -1.0),
        ("failure_threshold", 0),
        ("success_threshold", 1.5),
        ("initial_delay", float("nan")),
        ("name", ""),
        ("error_type", "memory"),
    ],
)
def test_bad_check_settings_name_the_field(field: str, value: object) -> None:
    """Each invalid setting raises ConfigurationError naming its field."""
    kwargs: dict[str, object] = {"name": "c", "check": Scripted(OK), field: value}
    with pytest.raises(ConfigurationError) as info:
        HealthCheck(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == field


def test_duplicate_and_unknown_names_are_refused() -> None:
    """Two checks with one name is a configuration error; an unknown name is a KeyError."""
    check = HealthCheck(name="c", check=Scripted(OK))
    with pytest.raises(ConfigurationError, match="already monitored"):
        HealthMonitor([check, check])
    with pytest.raises(KeyError, match="'zz'"):
        HealthMonitor([check]).state("zz")


def test_the_reported_error_pickles_with_its_fields() -> None:
    """HealthCheckFailedError keeps check, component, reason and error_type through pickle."""
    error = HealthCheckFailedError("c", "store", "returned False", ErrorType.SYSTEM_OVERLOAD)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (copy.check, copy.component, copy.reason, copy.error_type) == (
        "c",
        "store",
        "returned False",
        ErrorType.SYSTEM_OVERLOAD,
    )
