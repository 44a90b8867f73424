"""Timeout (async scope and sync worker thread) and Fallback (sync, async, constant value)."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from strategylab.errors import CallTimeoutError, ConfigurationError
from strategylab.fault_tolerance import Fallback, Timeout
from strategylab.testing import FakeClock

WAIT = 5.0
"""Upper bound for a worker thread to finish once released; reached only when a test fails."""
SYNC_DEADLINE = 0.05
"""A real deadline, used only where a worker thread (which no fake clock can drive) is timed out."""

REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST", default="none")


def jump_loop_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Move the running loop's clock forward, so its timers fire on the next iteration."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    monkeypatch.setattr(loop, "time", lambda: now + seconds)


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(3):
        await asyncio.sleep(0)


# -- Timeout: configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"seconds": 0}, ConfigurationError, "seconds"),
        ({"seconds": -1.0}, ConfigurationError, "seconds"),
        ({"seconds": float("nan")}, ConfigurationError, "seconds"),
        ({"seconds": "1"}, TypeError, "seconds"),
        ({"seconds": 1.0, "name": ""}, ConfigurationError, "name"),
    ],
)
def test_timeout_bad_arguments_name_the_argument(
    kwargs: dict[str, object], error: type[Exception], field: str
) -> None:
    """Each invalid argument raises an error whose message names it."""
    with pytest.raises(error, match=field):
        Timeout(**kwargs)  # type: ignore[arg-type]


# -- Timeout: async --------------------------------------------------------------------------


async def test_async_call_within_deadline_returns_its_result() -> None:
    """A call that finishes in time returns its own result."""

    async def quick(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    assert await Timeout(10).acall(quick, 1) == 2


@pytest.mark.parametrize("form", ["acall", "awrap"])
async def test_async_expiry_raises_call_timeout_error_chained_from_timeout_error(
    monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """On expiry the caller gets CallTimeoutError(name, seconds) whose cause is a TimeoutError."""
    timeout = Timeout(10, name="fetch-book")
    never = asyncio.Event()
    call = timeout.acall(never.wait) if form == "acall" else timeout.awrap(never.wait)()
    task = asyncio.create_task(call)
    await settle()
    jump_loop_clock(monkeypatch, 11)
    with pytest.raises(CallTimeoutError) as info:
        await task
    assert (info.value.operation, info.value.timeout) == ("fetch-book", 10.0)
    assert type(info.value.__cause__) is TimeoutError


async def test_async_outer_cancellation_propagates_as_cancelled_error() -> None:
    """Cancelling the task running a timed call raises CancelledError, not CallTimeoutError."""
    never = asyncio.Event()
    task = asyncio.create_task(Timeout(10).acall(never.wait))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_async_outer_deadline_is_not_reported_as_this_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An enclosing asyncio.timeout that expires first surfaces as its own TimeoutError."""
    never = asyncio.Event()

    async def guarded() -> None:
        async with asyncio.timeout(5):
            await Timeout(100).acall(never.wait)

    task = asyncio.create_task(guarded())
    await settle()
    jump_loop_clock(monkeypatch, 6)
    with pytest.raises(TimeoutError) as info:
        await task
    assert not isinstance(info.value, CallTimeoutError)


async def test_async_timeout_error_raised_by_the_call_propagates_unchanged() -> None:
    """A TimeoutError the call raises itself, before the deadline, is not turned into ours."""
    original = TimeoutError("socket read")

    async def times_out() -> None:
        raise original

    with pytest.raises(TimeoutError) as info:
        await Timeout(10).acall(times_out)
    assert info.value is original


async def test_decorated_async_function_is_timed() -> None:
    """@Timeout on a coroutine function keeps it async and returns its result."""

    @Timeout(10)
    async def answer() -> int:
        return 42

    assert await answer() == 42


# -- Timeout: sync (worker thread) -----------------------------------------------------------


def test_sync_call_within_deadline_returns_its_result() -> None:
    """A sync call that finishes in time returns its result through the worker thread."""
    assert Timeout(WAIT).call(pow, 2, 10) == 1024


def test_sync_expiry_raises_while_the_call_carries_on_in_its_thread() -> None:
    """Past the deadline the caller gets CallTimeoutError; the call itself keeps running."""
    release = threading.Event()
    finished = threading.Event()

    def slow() -> None:
        release.wait(WAIT)
        finished.set()

    with pytest.raises(CallTimeoutError) as info:
        Timeout(SYNC_DEADLINE, name="db-query").call(slow)
    running_after_timeout = not finished.is_set()
    release.set()
    assert finished.wait(WAIT)
    assert running_after_timeout
    assert info.value.operation == "db-query"
    assert isinstance(info.value.__cause__, TimeoutError)


def test_sync_timeout_error_note_uses_the_injected_clock() -> None:
    """The error's note reports the time waited as measured by the injected clock."""
    clock = FakeClock()
    release = threading.Event()

    def slow() -> None:
        clock.advance(7)
        release.wait(WAIT)

    wrapped = Timeout(SYNC_DEADLINE, clock=clock).wrap(slow)
    try:
        with pytest.raises(CallTimeoutError) as info:
            wrapped()
    finally:
        release.set()
    assert info.value.__notes__ == ["gave up after 7.000s"]


def test_sync_exception_of_the_call_propagates() -> None:
    """An exception raised in the worker thread reaches the caller as it is."""

    def boom() -> None:
        raise LookupError("missing")

    with pytest.raises(LookupError, match="missing"):
        Timeout(WAIT).call(boom)


def test_sync_timeout_error_raised_by_the_call_propagates_unchanged() -> None:
    """The call's own TimeoutError is not mistaken for the wait's."""

    def times_out() -> None:
        raise TimeoutError("socket read")

    with pytest.raises(TimeoutError) as info:
        Timeout(WAIT).call(times_out)
    assert not isinstance(info.value, CallTimeoutError)


def test_sync_call_sees_the_callers_context_variables() -> None:
    """The worker thread runs the call in a copy of the caller's contextvars context."""
    token = REQUEST.set("order-17")
    try:
        assert Timeout(WAIT).call(REQUEST.get) == "order-17"
    finally:
        REQUEST.reset(token)


def test_decorated_sync_function_is_timed() -> None:
    """@Timeout on a sync function runs it under the timeout and keeps its name."""

    @Timeout(WAIT)
    def where() -> str:
        return threading.current_thread().name

    assert where().startswith("strategylab-timeout")
    assert where.__name__ == "where"


# -- Fallback --------------------------------------------------------------------------------


def test_fallback_answers_a_matching_exception_with_the_handler() -> None:
    """A matching exception is passed to the handler, whose answer is returned."""
    seen: list[Exception] = []

    def handler(exc: Exception) -> str:
        seen.append(exc)
        return "cached"

    def fail() -> str:
        raise ConnectionError("down")

    assert Fallback(handler, on=ConnectionError).call(fail) == "cached"
    assert isinstance(seen[0], ConnectionError)


def test_fallback_lets_other_exceptions_propagate() -> None:
    """Exceptions outside `on` are not answered."""

    @Fallback.value(0, on=(ConnectionError,))
    def fail() -> int:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        fail()


def test_fallback_passes_a_success_through() -> None:
    """A call that succeeds returns its own result, not the fallback's."""
    assert Fallback.value(0).wrap(lambda: 5)() == 5


@pytest.mark.parametrize("form", ["acall", "awrap", "decorator"])
async def test_fallback_awaits_an_async_handler(form: str) -> None:
    """In async use an async handler is awaited."""

    async def handler(exc: Exception) -> str:
        await asyncio.sleep(0)
        return f"fallback for {type(exc).__name__}"

    async def fail() -> str:
        raise ConnectionError

    fallback = Fallback(handler)
    if form == "acall":
        result = await fallback.acall(fail)
    elif form == "awrap":
        result = await fallback.awrap(fail)()
    else:
        result = await fallback(fail)()
    assert result == "fallback for ConnectionError"


@pytest.mark.parametrize("form", ["acall", "awrap"])
async def test_fallback_uses_a_sync_handler_in_async_calls(form: str) -> None:
    """A sync handler also answers async calls."""

    async def fail() -> int:
        raise OSError

    fallback = Fallback.value(-1)
    result = await (fallback.acall(fail) if form == "acall" else fallback.awrap(fail)())
    assert result == -1


async def test_fallback_does_not_answer_cancellation() -> None:
    """Cancellation passes through a fallback on Exception."""
    never = asyncio.Event()
    task = asyncio.create_task(Fallback.value("x").acall(never.wait))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("form", ["call", "wrap"])
def test_fallback_with_async_handler_refuses_sync_use(form: str) -> None:
    """An async handler cannot answer a sync call: a TypeError naming the handler."""

    async def handler(exc: Exception) -> int:
        return 0

    fallback = Fallback(handler)
    use = fallback.call if form == "call" else fallback.wrap
    with pytest.raises(TypeError, match="handler"):
        use(int)


@pytest.mark.parametrize(
    ("on", "error"),
    [
        ((), ConfigurationError),
        (asyncio.CancelledError, TypeError),
        ((ValueError, KeyboardInterrupt), TypeError),
        ("ValueError", TypeError),
    ],
)
def test_fallback_on_must_name_exception_subclasses(on: object, error: type[Exception]) -> None:
    """`on` must be one or more Exception subclasses; the error names `on`."""
    with pytest.raises(error, match="on="):
        Fallback.value(0, on=on)  # type: ignore[arg-type]
