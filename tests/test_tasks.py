"""SupervisedTask: a failed run is reported, counted as down, and restarted after a backoff."""

from __future__ import annotations

import asyncio

import pytest

from strategylab._tasks import SupervisedTask
from strategylab.testing import FakeClock


async def test_a_failing_body_is_reported_and_restarted_until_it_returns() -> None:
    """Two failures: both reported in order, two restarts after delay(1) and delay(2), then done."""
    clock = FakeClock()
    errors = [OSError(28, "No space left on device"), RuntimeError("bug")]
    runs: list[int] = []
    reported: list[Exception] = []

    async def body() -> None:
        runs.append(1)
        if errors:
            raise errors.pop(0)

    supervised = SupervisedTask(
        body, name="w", on_failure=reported.append, delay=lambda n: 0.5 * n, clock=clock
    )
    async with asyncio.timeout(5):
        await supervised.start()
    assert len(runs) == 3
    assert [type(e) for e in reported] == [OSError, RuntimeError]
    assert supervised.restarts == 2
    assert clock.sleeps == [0.5, 1.0]
    assert isinstance(supervised.last_error, RuntimeError)
    assert supervised.running is False


async def test_down_while_waiting_for_the_restart() -> None:
    """Between a failure and its restart the task is down; after the delay it runs again."""
    clock = FakeClock(autojump_threshold=None)
    second_run = asyncio.Event()
    calls = 0

    async def body() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first run fails")
        second_run.set()
        await asyncio.Event().wait()

    supervised = SupervisedTask(
        body, name="w", on_failure=lambda _e: None, delay=lambda _n: 2.0, clock=clock
    )
    supervised.start()
    async with asyncio.timeout(5):
        while not supervised.down:  # noqa: ASYNC110 - the supervisor has no event for it
            await asyncio.sleep(0)
        assert supervised.running
        clock.advance(2.0)
        await second_run.wait()
    assert (supervised.down, supervised.restarts) == (False, 1)
    await supervised.stop()
    assert supervised.running is False


async def test_cancellation_is_not_swallowed_and_not_reported() -> None:
    """stop() cancels the body; cancellation is neither reported nor restarted."""
    reported: list[Exception] = []
    entered = asyncio.Event()

    async def body() -> None:
        entered.set()
        await asyncio.Event().wait()

    supervised = SupervisedTask(
        body, name="w", on_failure=reported.append, delay=lambda _n: 0.0, clock=FakeClock()
    )
    task = supervised.start()
    await entered.wait()
    await supervised.stop()
    assert task.cancelled()
    assert reported == []


async def test_an_on_failure_that_raises_does_not_kill_the_supervisor() -> None:
    """A broken reporter is logged; the body is still restarted."""
    calls = 0

    async def body() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("boom")

    def bad_report(_exc: Exception) -> None:
        raise RuntimeError("reporter broken")

    supervised = SupervisedTask(
        body, name="w", on_failure=bad_report, delay=lambda _n: 0.1, clock=FakeClock()
    )
    async with asyncio.timeout(5):
        await supervised.start()
    assert calls == 2


@pytest.mark.parametrize("stable_after", [0.0, 100.0])
async def test_consecutive_failures_reset_after_a_stable_run(stable_after: float) -> None:
    """delay(n) counts consecutive failures; a run that stayed up ``stable_after`` resets n."""
    clock = FakeClock()
    calls = 0
    seen: list[int] = []

    async def body() -> None:
        nonlocal calls
        calls += 1
        await clock.asleep(1.0)
        if calls <= 3:
            raise ValueError(calls)

    def delay(n: int) -> float:
        seen.append(n)
        return 0.01

    supervised = SupervisedTask(
        body,
        name="w",
        on_failure=lambda _e: None,
        delay=delay,
        clock=clock,
        stable_after=stable_after,
    )
    async with asyncio.timeout(5):
        await supervised.start()
    assert seen == ([1, 1, 1] if stable_after == 0.0 else [1, 2, 3])
