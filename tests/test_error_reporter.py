"""ErrorReporter: one report per (type, component) episode, bounded owned tasks, FakeClock time."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import cast

import pytest

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import (
    ErrorContext,
    ErrorRecoveryManager,
    ErrorReporter,
    ErrorType,
    ReporterStatistics,
)
from strategylab.testing import FakeClock


class DiskError(Exception):
    error_type = ErrorType.DISK_SPACE_EXHAUSTED


class NoiseError(Exception):
    error_type = ErrorType.INVALID_MARKET_DATA


@dataclasses.dataclass
class Outcome:
    success: bool


class StubManager:
    """Records what it is asked to handle; may hold every call until ``release`` is set."""

    def __init__(self, *, success: bool = True, hold: bool = False, fail: bool = False) -> None:
        self.calls: list[tuple[object, str | None]] = []
        self.success = success
        self.fail = fail
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.cancelled = 0
        self.on_handle: Callable[[], Awaitable[None]] | None = None

    async def handle(
        self,
        exc_or_context: object,
        component: str | None = None,
        operation: Callable[[], Awaitable[object]] | None = None,
    ) -> Outcome:
        self.calls.append((exc_or_context, component))
        if self.on_handle is not None:
            await self.on_handle()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail:
            raise RuntimeError("manager bug")
        return Outcome(self.success)


def make(
    manager: StubManager | None,
    clock: FakeClock,
    *,
    quiet: float = 5.0,
    recovered_quiet: float = 60.0,
) -> ErrorReporter:
    return ErrorReporter(
        cast("ErrorRecoveryManager", manager),
        component="feed",
        quiet=quiet,
        recovered_quiet=recovered_quiet,
        clock=clock,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0, autojump_threshold=None)


async def test_repeats_within_the_quiet_period_are_one_episode(clock: FakeClock) -> None:
    """Errors of one pair less than ``quiet`` apart are counted, not reported, until a gap."""
    manager = StubManager(success=False)
    reporter = make(manager, clock, quiet=5.0)
    assert reporter.report(DiskError("a")) is True
    for _ in range(3):  # 4 s apart: each extends the episode
        clock.advance(4.0)
        assert reporter.report(DiskError("again")) is False
    clock.advance(5.0)
    assert reporter.report(DiskError("new episode")) is True
    await reporter.ajoin()
    assert len(manager.calls) == 2
    assert reporter.statistics() == ReporterStatistics(
        reported=2, suppressed=3, dropped=0, pending=0
    )


async def test_episodes_are_kept_per_type_and_per_component(clock: FakeClock) -> None:
    """Another error type, or the same type from another component, starts its own episode."""
    manager = StubManager(success=False)
    reporter = make(manager, clock, quiet=5.0)
    assert reporter.report(DiskError("a")) is True
    assert reporter.report(NoiseError("b")) is True
    assert reporter.report(DiskError("c"), component="store") is True
    assert reporter.report(DiskError("d")) is False
    await reporter.ajoin()
    assert [component for _, component in manager.calls] == ["feed", "feed", "store"]


async def test_a_successful_recovery_starts_a_quiet_period_for_its_pair(clock: FakeClock) -> None:
    """After a recovery that succeeded, repeats within ``recovered_quiet`` are folded."""
    manager = StubManager(success=True)
    reporter = make(manager, clock, quiet=1.0, recovered_quiet=60.0)
    reporter.report(NoiseError("first"))
    await reporter.ajoin()
    clock.advance(30.0)
    assert reporter.report(NoiseError("healed noise")) is False
    assert reporter.report(DiskError("other pair")) is True
    clock.advance(31.0)  # 61 s after the recovery, 31 s after the last repeat
    assert reporter.report(NoiseError("new episode")) is True
    await reporter.ajoin()
    assert len(manager.calls) == 3


async def test_a_failed_recovery_starts_no_quiet_period(clock: FakeClock) -> None:
    """Only a successful recovery silences its pair: a failed one leaves the next error reported."""
    manager = StubManager(success=False)
    reporter = make(manager, clock, quiet=1.0, recovered_quiet=60.0)
    reporter.report(NoiseError("first"))
    await reporter.ajoin()
    clock.advance(10.0)
    assert reporter.report(NoiseError("second")) is True
    await reporter.ajoin()
    assert len(manager.calls) == 2


async def test_always_reports_inside_an_episode_and_a_recovered_quiet_period(
    clock: FakeClock,
) -> None:
    """``always=True`` is never folded (every security violation is recorded)."""
    manager = StubManager(success=True)
    reporter = make(manager, clock, quiet=5.0, recovered_quiet=60.0)
    reporter.report(NoiseError("first"))
    await reporter.ajoin()
    clock.advance(1.0)
    assert reporter.report(NoiseError("forged"), always=True) is True
    assert reporter.report(NoiseError("forged"), always=True) is True
    await reporter.ajoin()
    assert len(manager.calls) == 3
    assert reporter.statistics().suppressed == 0


async def test_reports_beyond_the_cap_are_dropped_and_counted(clock: FakeClock) -> None:
    """With ``max_pending`` reports in flight, another one is dropped, even an always-report."""
    manager = StubManager(hold=True)
    reporter = ErrorReporter(
        cast("ErrorRecoveryManager", manager), component="feed", max_pending=2, clock=clock
    )
    assert reporter.report(DiskError("a")) is True
    assert reporter.report(NoiseError("b")) is True
    assert reporter.report(DiskError("c"), component="other") is False
    assert reporter.report(NoiseError("d"), component="other", always=True) is False
    stats = reporter.statistics()
    assert (stats.reported, stats.dropped, stats.pending) == (2, 2, 2)
    manager.release.set()
    await reporter.ajoin()
    assert reporter.statistics().pending == 0
    clock.advance(6.0)  # past the episode the dropped reports belonged to
    assert reporter.report(DiskError("e"), component="other") is True  # room again
    await reporter.ajoin()


async def test_aclose_cancels_and_awaits_the_reports_in_flight(clock: FakeClock) -> None:
    """``aclose`` cancels every owned task and returns when they have finished."""
    manager = StubManager(hold=True)
    reporter = make(manager, clock)
    reporter.report(DiskError("a"))
    reporter.report(NoiseError("b"))
    await asyncio.sleep(0)  # let both tasks reach the manager
    await reporter.aclose()
    assert manager.cancelled == 2
    assert reporter.statistics().pending == 0


async def test_aclose_from_inside_a_report_spares_the_calling_task(clock: FakeClock) -> None:
    """A recovery that stops the reporting component (aclose from its own report) completes."""
    manager = StubManager()
    reporter = make(manager, clock)

    async def stop_component() -> None:
        await reporter.aclose()

    manager.on_handle = stop_component
    reporter.report(DiskError("a"))
    await reporter.ajoin()
    assert manager.cancelled == 0
    assert reporter.statistics().reported == 1


async def test_areport_reports_in_the_caller_with_the_same_folding(clock: FakeClock) -> None:
    """``areport`` returns the manager's outcome, and None for an error it folded."""
    manager = StubManager(success=True)
    reporter = make(manager, clock, quiet=5.0)
    outcome = await reporter.areport(DiskError("a"))
    assert outcome is not None
    assert outcome.success is True
    assert await reporter.areport(DiskError("b")) is None
    assert reporter.statistics().pending == 0
    assert len(manager.calls) == 1


async def test_a_context_is_keyed_by_its_own_type_and_component(clock: FakeClock) -> None:
    """An ErrorContext is reported as given, and folded under its own (type, component)."""
    manager = StubManager(success=False)
    reporter = make(manager, clock, quiet=5.0)
    context = ErrorContext.from_exception(
        RuntimeError("x"),
        component="ingest",
        error_type=ErrorType.DATABASE_CONNECTION_LOST,
        capture_state=False,
        clock=clock,
    )
    assert reporter.report(context) is True
    assert reporter.report(context) is False
    assert reporter.report(DiskError("feed's own")) is True
    await reporter.ajoin()
    assert manager.calls[0] == (context, None)


async def test_a_failing_manager_is_logged_not_raised(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception from the manager is logged; ``areport`` returns None and nothing is silenced."""
    manager = StubManager(fail=True)
    reporter = make(manager, clock, quiet=0.0)
    assert await reporter.areport(DiskError("a")) is None
    assert "the recovery manager failed" in caplog.text
    assert reporter.report(DiskError("b")) is True
    await reporter.ajoin()


async def test_without_a_manager_nothing_is_reported_or_counted(clock: FakeClock) -> None:
    """A component without a manager reports nothing and counts nothing."""
    reporter = make(None, clock)
    assert reporter.report(DiskError("a")) is False
    assert await reporter.areport(DiskError("b")) is None
    assert reporter.statistics() == ReporterStatistics(
        reported=0, suppressed=0, dropped=0, pending=0
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("quiet", -1.0), ("recovered_quiet", float("nan")), ("max_pending", 0)],
)
def test_a_bad_setting_is_refused_naming_its_field(
    clock: FakeClock, field: str, value: float
) -> None:
    """Negative or non-finite periods and a cap below 1 raise ConfigurationError naming them."""
    with pytest.raises(ConfigurationError, match=field):
        ErrorReporter(None, component="feed", clock=clock, **{field: value})  # type: ignore[arg-type]
