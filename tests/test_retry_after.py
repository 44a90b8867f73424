"""Tests for Retry-After: a server's or a breaker's requested wait replaces the backoff."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.message
import email.utils
import math
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from strategylab.errors import CircuitOpenError, ConfigurationError
from strategylab.fault_tolerance import (
    CircuitBreaker,
    Pipeline,
    RetryDetails,
    RetryPolicy,
    parse_retry_after,
    retry_after_hint,
    set_testing,
)
from strategylab.testing import FakeClock

EPOCH_NOW = 1_700_000_000.0
"""A wall-clock start for FakeClock, so that HTTP-dates are near 'now'."""


@pytest.fixture(autouse=True)
def _no_test_mode() -> Iterator[None]:
    with set_testing(False):
        yield


class WaitError(Exception):
    """An error that carries a retry_after attribute."""

    def __init__(self, retry_after: object) -> None:
        super().__init__(f"wait {retry_after!r}")
        self.retry_after = retry_after


class HTTPError(Exception):
    """An HTTP error in aiohttp's shape: status and headers on the exception."""

    def __init__(self, status: int, headers: object) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers


class Response:
    """A response in httpx's or requests' shape."""

    def __init__(self, status_code: int, headers: Mapping[str, str]) -> None:
        self.status_code = status_code
        self.headers = headers


class HTTPStatusError(Exception):
    """An error in httpx's and requests' shape: exc.response.status_code and .headers."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


# ---------------------------------------------------------------------------- the extractor


@pytest.mark.parametrize(
    ("value", "expected"),
    [(2.5, 2.5), (7, 7.0), (0, 0.0), (dt.timedelta(seconds=90), 90.0), ("12", 12.0)],
)
def test_retry_after_attribute_gives_seconds(value: object, expected: float) -> None:
    """An exception's retry_after seconds (number, timedelta or header text) is the hint."""
    assert retry_after_hint(WaitError(value)) == expected


@pytest.mark.parametrize("value", [-1.0, math.nan, True, None, "soon", object()])
def test_nonsense_retry_after_attribute_is_no_hint(value: object) -> None:
    """A negative, NaN, boolean or non-numeric retry_after is ignored."""
    assert retry_after_hint(WaitError(value)) is None


def test_infinite_retry_after_attribute_is_kept() -> None:
    """An infinite retry_after (a forced-open breaker) comes through as inf."""
    assert retry_after_hint(CircuitOpenError("quotes", math.inf)) == math.inf


def test_circuit_open_error_gives_its_retry_after() -> None:
    """CircuitOpenError's retry_after is the hint."""
    assert retry_after_hint(CircuitOpenError("quotes", 4.25)) == 4.25


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "30"},
        {"retry-after": "30"},
        {"RETRY-AFTER": b"30"},
        [("Retry-After", "30")],
    ],
    ids=["canonical", "lowercase", "bytes", "pairs"],
)
def test_http_status_with_retry_after_header_gives_seconds(status: int, headers: object) -> None:
    """A 429 or 503 with a Retry-After header (any case, any mapping) asks for that wait."""
    headers = dict(headers) if isinstance(headers, list) else headers
    assert retry_after_hint(HTTPError(status, headers)) == 30.0


def test_header_is_read_from_an_email_message() -> None:
    """Headers as an email.message.Message (urllib's HTTPMessage) are read too."""
    message = email.message.Message()
    message["Retry-After"] = "8"
    assert retry_after_hint(HTTPError(429, message)) == 8.0


@pytest.mark.parametrize("attribute", ["status_code", "status"])
def test_status_and_headers_on_the_response_are_read(attribute: str) -> None:
    """exc.response.status_code / .status with exc.response.headers give the hint."""
    response = Response(503, {"Retry-After": "11"})
    if attribute == "status":
        response.status = response.status_code  # type: ignore[attr-defined]
        response.status_code = None  # type: ignore[assignment]
    assert retry_after_hint(HTTPStatusError(response)) == 11.0


def test_status_code_on_the_exception_is_read() -> None:
    """exc.status_code (starlette, werkzeug style) counts as the status."""
    error = HTTPError(429, {"Retry-After": "3"})
    error.status_code = error.status  # type: ignore[attr-defined]
    del error.status
    assert retry_after_hint(error) == 3.0


@pytest.mark.parametrize("status", [200, 500, 502, 504, 404])
def test_other_statuses_ignore_retry_after(status: int) -> None:
    """Retry-After counts only on 429 and 503."""
    assert retry_after_hint(HTTPError(status, {"Retry-After": "30"})) is None


def test_http_date_is_measured_against_the_clock() -> None:
    """An HTTP-date asks for the seconds from clock.time() to that date."""
    clock = FakeClock(start=EPOCH_NOW)
    error = HTTPError(503, {"Retry-After": http_date(EPOCH_NOW + 42)})
    assert retry_after_hint(error, clock=clock) == pytest.approx(42.0)


def test_http_date_in_the_past_means_no_wait() -> None:
    """A date already past asks for 0 seconds."""
    clock = FakeClock(start=EPOCH_NOW)
    error = HTTPError(429, {"Retry-After": http_date(EPOCH_NOW - 3600)})
    assert retry_after_hint(error, clock=clock) == 0.0


@pytest.mark.parametrize("value", ["", "soon", "-5", "1.5", "1e3", "inf", "nan", "Thu, 99 Foo"])
def test_garbage_header_is_no_hint(value: str) -> None:
    """A Retry-After that is neither delay-seconds nor an HTTP-date is ignored."""
    assert retry_after_hint(HTTPError(429, {"Retry-After": value})) is None


def test_missing_header_is_no_hint() -> None:
    """A 429 without Retry-After (or without headers) gives no hint."""
    assert retry_after_hint(HTTPError(429, {})) is None
    assert retry_after_hint(HTTPError(429, None)) is None


def test_hint_is_found_through_the_cause_chain() -> None:
    """An error translated with raise ... from keeps the server's answer."""
    translated = RuntimeError("upstream throttled")
    translated.__cause__ = HTTPError(429, {"Retry-After": "6"})
    assert retry_after_hint(translated) == 6.0


def test_plain_exceptions_give_no_hint() -> None:
    """An ordinary exception has nothing to say."""
    assert retry_after_hint(ConnectionError("reset")) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), (" 5 ", 5.0), (b"9", 9.0), ("0", 0.0), ("9" * 400, math.inf)],
)
def test_parse_retry_after_reads_delay_seconds(value: str | bytes, expected: float) -> None:
    """Delay-seconds are whole ASCII digits (RFC 9110 §10.2.3)."""
    assert parse_retry_after(value, now=0.0) == expected


def test_parse_retry_after_reads_an_imf_fixdate() -> None:
    """The RFC's own example date is read relative to now."""
    when = dt.datetime(2015, 10, 21, 7, 28, tzinfo=dt.UTC).timestamp()
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=when - 10) == 10.0


# ------------------------------------------------------------------------------ the policy

Drive = Callable[[RetryPolicy, Callable[[], object]], Awaitable[object]]


async def _via_call(policy: RetryPolicy, fn: Callable[[], object]) -> object:
    return policy.call(fn)


async def _via_wrap(policy: RetryPolicy, fn: Callable[[], object]) -> object:
    return policy.wrap(fn)()


async def _via_acall(policy: RetryPolicy, fn: Callable[[], object]) -> object:
    async def afn() -> object:
        return fn()

    return await policy.acall(afn)


async def _via_awrap(policy: RetryPolicy, fn: Callable[[], object]) -> object:
    async def afn() -> object:
        return fn()

    return await policy.awrap(afn)()


drivers = pytest.mark.parametrize(
    "drive", [_via_call, _via_wrap, _via_acall, _via_awrap], ids=["call", "wrap", "acall", "awrap"]
)


class Script:
    """Raises the given exceptions in turn, then returns "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def make_policy(clock: FakeClock, **kwargs: Any) -> RetryPolicy:
    settings: dict[str, Any] = {
        "max_attempts": 4,
        "base_delay": 0.5,
        "max_delay": 1.0,
        "jitter": random.Random(3),
        "clock": clock,
        **kwargs,
    }
    return RetryPolicy(**settings)


@drivers
async def test_hint_replaces_the_backoff_exactly(drive: Drive) -> None:
    """A retry_after hint is slept exactly: no jitter, not capped by max_delay."""
    clock = FakeClock()
    assert await drive(make_policy(clock), Script(WaitError(7.5))) == "ok"
    assert clock.sleeps == [7.5]


@drivers
async def test_http_429_retry_after_sets_the_next_wait(drive: Drive) -> None:
    """An HTTP 429 with Retry-After waits the server's seconds."""
    clock = FakeClock()
    script = Script(HTTPError(429, {"Retry-After": "20"}))
    assert await drive(make_policy(clock), script) == "ok"
    assert clock.sleeps == [20.0]


@drivers
async def test_http_date_is_read_against_the_policy_clock(drive: Drive) -> None:
    """An HTTP-date Retry-After is measured against the policy's clock.time()."""
    clock = FakeClock(start=EPOCH_NOW)
    script = Script(HTTPError(503, {"Retry-After": http_date(EPOCH_NOW + 15)}))
    assert await drive(make_policy(clock), script) == "ok"
    assert clock.sleeps == [pytest.approx(15.0)]


@drivers
async def test_failures_without_a_hint_keep_the_backoff(drive: Drive) -> None:
    """Only the failure that carries a hint changes the wait; the others back off."""
    clock = FakeClock()
    policy = make_policy(clock, jitter=None)
    script = Script(ConnectionError("a"), WaitError(9.0), ConnectionError("b"))
    assert await drive(policy, script) == "ok"
    assert clock.sleeps == [0.5, 9.0, 1.0]


@drivers
async def test_infinite_hint_gives_up_at_once(drive: Drive) -> None:
    """An infinite wait gives up with the caller's exception, no sleep, one attempt."""
    clock = FakeClock()
    script = Script(CircuitOpenError("quotes", math.inf))
    with pytest.raises(CircuitOpenError):
        await drive(make_policy(clock), script)
    assert script.calls == 1
    assert clock.sleeps == []


@drivers
async def test_hint_past_the_deadline_gives_up(drive: Drive) -> None:
    """A wait that would end past the deadline is not started."""
    clock = FakeClock()
    given_up: list[RetryDetails] = []
    script = Script(WaitError(30.0))
    policy = make_policy(clock, deadline=10.0, on_give_up=given_up.append)
    with pytest.raises(WaitError):
        await drive(policy, script)
    assert clock.sleeps == []
    assert [d.attempt for d in given_up] == [1]


@drivers
async def test_hint_within_the_deadline_is_slept(drive: Drive) -> None:
    """A wait that ends before the deadline is honoured."""
    clock = FakeClock()
    assert await drive(make_policy(clock, deadline=10.0), Script(WaitError(9.0))) == "ok"
    assert clock.sleeps == [9.0]


@drivers
async def test_hint_is_not_slept_in_test_mode(drive: Drive) -> None:
    """In test mode a hint does not make the retry sleep."""
    clock = FakeClock()
    delays: list[float] = []
    policy = make_policy(clock, before_sleep=lambda d: delays.append(d.delay))
    with set_testing(True):
        assert await drive(policy, Script(WaitError(60.0))) == "ok"
    assert clock.sleeps == []
    assert delays == [0.0]


@drivers
async def test_hint_does_not_add_attempts(drive: Drive) -> None:
    """max_attempts still bounds a retry whose failures carry hints."""
    clock = FakeClock()
    script = Script(*(WaitError(1.0) for _ in range(5)))
    with pytest.raises(WaitError):
        await drive(make_policy(clock, max_attempts=3), script)
    assert script.calls == 3
    assert clock.sleeps == [1.0, 1.0]


@drivers
async def test_retry_after_none_switches_hints_off(drive: Drive) -> None:
    """With retry_after=None the backoff is used whatever the exception says."""
    clock = FakeClock()
    policy = make_policy(clock, jitter=None, retry_after=None)
    assert await drive(policy, Script(WaitError(60.0))) == "ok"
    assert clock.sleeps == [0.5]


@drivers
async def test_custom_extractor_is_used(drive: Drive) -> None:
    """A user's retry_after callable decides the wait."""
    clock = FakeClock()
    seen: list[BaseException] = []

    def extractor(exc: BaseException) -> float | None:
        seen.append(exc)
        return 2.0

    error = ConnectionError("x")
    assert await drive(make_policy(clock, retry_after=extractor), Script(error)) == "ok"
    assert clock.sleeps == [2.0]
    assert seen == [error]


@drivers
async def test_extractor_returning_nonsense_is_an_error(drive: Drive) -> None:
    """A retry_after callable returning a negative wait raises ValueError naming it."""
    policy = make_policy(FakeClock(), retry_after=lambda _exc: -1.0)
    with pytest.raises(ValueError, match=r"retry_after=.* returned -1\.0"):
        await drive(policy, Script(ConnectionError("x")))


def test_hint_is_reported_to_before_sleep() -> None:
    """RetryDetails.delay is the wait actually used."""
    clock = FakeClock()
    details: list[RetryDetails] = []
    policy = make_policy(clock, before_sleep=details.append)
    policy.call(Script(WaitError(12.0)))
    assert [d.delay for d in details] == [12.0]


def test_rejected_results_do_not_consult_the_extractor() -> None:
    """A rejected result has no exception to read; the backoff is used."""
    clock = FakeClock()
    calls: list[BaseException] = []

    def extractor(exc: BaseException) -> float | None:
        calls.append(exc)
        return 99.0

    results = iter([None, "ok"])
    policy = make_policy(
        clock, jitter=None, retry_after=extractor, retry_on_result=lambda r: r is None
    )
    assert policy.call(lambda: next(results)) == "ok"
    assert calls == []
    assert clock.sleeps == [0.5]


@pytest.mark.parametrize("value", [3.0, "header", 1])
def test_retry_after_must_be_callable_or_none(value: object) -> None:
    """A non-callable retry_after is refused, naming the field."""
    with pytest.raises(ConfigurationError, match="retry_after"):
        RetryPolicy(retry_after=value)  # type: ignore[arg-type]


def test_decide_gives_up_on_an_infinite_hint() -> None:
    """decide() with retry_after=inf gives up."""
    policy = make_policy(FakeClock())
    assert policy.decide(1, 0.0, retry_after=math.inf) is None


def test_decide_uses_a_finite_hint() -> None:
    """decide() returns the hint itself, beyond max_delay."""
    policy = make_policy(FakeClock())
    assert policy.decide(1, 0.0, retry_after=45.0) == 45.0


# ---------------------------------------------------------------- with a real circuit breaker


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("composed", ["nested", "pipeline"])
async def test_retry_waits_out_an_open_breaker(mode: str, composed: str) -> None:
    """Rejected by an open breaker, the retry sleeps until it half-opens, then succeeds."""
    clock = FakeClock()
    breaker = CircuitBreaker("hinted", failure_threshold=1, recovery_timeout=10.0, clock=clock)
    policy = RetryPolicy(max_attempts=3, base_delay=0.5, jitter=None, clock=clock)
    script = Script(ConnectionError("down"))

    async def ascript() -> object:
        return script()

    pipeline = Pipeline(policy, breaker)
    if mode == "sync":
        wrapped = (
            pipeline.wrap(script) if composed == "pipeline" else policy.wrap(breaker.wrap(script))
        )
        result = wrapped()
    else:
        awrapped = (
            pipeline.awrap(ascript)
            if composed == "pipeline"
            else policy.awrap(breaker.awrap(ascript))
        )
        result = await awrapped()
    assert result == "ok"
    assert clock.sleeps == [0.5, pytest.approx(9.5)]
    assert script.calls == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_forced_open_breaker_is_not_retried(mode: str) -> None:
    """A forced-open breaker (retry_after=inf) makes the retry give up at once."""
    clock = FakeClock()
    breaker = CircuitBreaker("forced", clock=clock)
    breaker.force_open()
    policy = RetryPolicy(max_attempts=5, clock=clock)
    script = Script()

    async def ascript() -> object:
        return script()

    async def guarded() -> object:
        if mode == "sync":
            return policy.call(breaker.wrap(script))
        return await policy.acall(breaker.awrap(ascript))

    with pytest.raises(CircuitOpenError):
        await guarded()
    assert clock.sleeps == []
    assert script.calls == 0


# ----------------------------------------------------------------------- over a real socket


async def _serve(answers: list[tuple[int, dict[str, str]]]) -> tuple[web.AppRunner, str, list[int]]:
    """An aiohttp server on 127.0.0.1 giving ``answers`` in turn, then 200 "ok"."""
    served: list[int] = []

    async def handler(_request: web.Request) -> web.Response:
        status, headers = answers.pop(0) if answers else (200, {})
        served.append(status)
        return web.Response(status=status, headers=headers, text="ok" if status == 200 else "")

    app = web.Application()
    app.router.add_get("/quotes", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server  # the only way to learn the bound port
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, f"http://127.0.0.1:{port}/quotes", served


async def _fetch_with(policy: RetryPolicy, url: str) -> object:
    async with aiohttp.ClientSession() as session:

        async def fetch() -> str:
            async with session.get(url, raise_for_status=True) as response:
                return await response.text()

        return await policy.acall(fetch)


@pytest.mark.integration
@pytest.mark.parametrize("status", [429, 503])
async def test_aiohttp_retry_after_seconds_over_a_real_socket(status: int) -> None:
    """A real 429/503 with Retry-After: 3 makes the retry wait 3 s, then the 200 is returned."""
    runner, url, served = await _serve([(status, {"Retry-After": "3"})])
    clock = FakeClock()
    try:
        async with asyncio.timeout(10):
            policy = RetryPolicy(max_attempts=3, jitter=random.Random(0), clock=clock)
            assert await _fetch_with(policy, url) == "ok"
    finally:
        await runner.cleanup()
    assert served == [status, 200]
    assert clock.sleeps == [3.0]


@pytest.mark.integration
async def test_aiohttp_retry_after_http_date_over_a_real_socket() -> None:
    """A real 503 with an HTTP-date Retry-After waits until that date on the policy's clock."""
    clock = FakeClock(start=EPOCH_NOW)
    runner, url, served = await _serve([(503, {"Retry-After": http_date(EPOCH_NOW + 42)})])
    try:
        async with asyncio.timeout(10):
            policy = RetryPolicy(max_attempts=3, clock=clock)
            assert await _fetch_with(policy, url) == "ok"
    finally:
        await runner.cleanup()
    assert served == [503, 200]
    assert clock.sleeps == [pytest.approx(42.0)]


@pytest.mark.parametrize("value", [-1.0, math.nan])
def test_decide_rejects_a_negative_or_nan_hint(value: float) -> None:
    """decide() refuses a retry_after that is not seconds >= 0."""
    with pytest.raises(ValueError, match="retry_after="):
        make_policy(FakeClock()).decide(1, 0.0, retry_after=value)


@drivers
async def test_zero_hint_leaves_the_wait_to_the_backoff(drive: Drive) -> None:
    """A hint of 0 (a busy HALF_OPEN breaker, a date already past) sleeps the backoff instead."""
    clock = FakeClock()
    policy = make_policy(clock, jitter=None)
    assert await drive(policy, Script(WaitError(0.0), WaitError(0.0))) == "ok"
    assert clock.sleeps == [0.5, 1.0]


@pytest.mark.parametrize("digits", [309, 400, 401, 4300, 5000, 100_000])
def test_absurdly_long_delay_seconds_is_an_infinite_wait(digits: int) -> None:
    """Delay-seconds longer than any float (or than int() accepts) is math.inf, never an error."""
    assert parse_retry_after("9" * digits, now=0.0) == math.inf
    assert parse_retry_after("0" * digits + "7", now=0.0) == 7.0
