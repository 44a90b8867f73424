"""The circuit breaker against a small reference model, driven by Hypothesis."""

from __future__ import annotations

import contextlib
from collections import deque

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from strategylab.errors import CircuitOpenError
from strategylab.fault_tolerance import BreakerState, CircuitBreaker
from strategylab.testing import FakeClock

S = BreakerState
THRESHOLD, TIMEOUT, TRIALS, WINDOW, MINIMUM, RATE, SLOW = 3, 10.0, 2, 6, 4, 50.0, 1.0
MAX_WAIT = 15.0
BAD = "bad"
"""The result ``record_result`` counts as a failure."""


class FailureError(ConnectionError):
    """The injected failure."""


class IgnoredError(ConnectionError):
    """An exception the breaker is told to ignore."""


class Model:
    """The breaker's rules written as plainly as possible."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.state = S.CLOSED
        self.open_until = 0.0
        self.half_open_until = 0.0
        self.consecutive = 0
        self.window: deque[bool] = deque(maxlen=WINDOW)
        self.trial_successes = 0
        self.successes = self.failures = self.ignored = self.not_permitted = 0

    def current(self) -> BreakerState:
        now = self.clock.monotonic()
        if self.state is S.HALF_OPEN and now >= self.half_open_until:
            # Undecided for MAX_WAIT: open from the moment the wait ran out.
            self.open(self.half_open_until)
        if self.state is S.OPEN and now >= self.open_until:
            self.move(S.HALF_OPEN)
            self.half_open_until = now + MAX_WAIT
        return self.state

    def move(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            self.trial_successes = 0

    def open(self, now: float) -> None:
        self.open_until = now + TIMEOUT
        self.move(S.OPEN)

    def clear(self) -> None:
        self.window.clear()
        self.consecutive = 0

    def permits(self) -> bool:
        return self.current() not in {S.OPEN, S.FORCED_OPEN}

    def outcome(self, *, failed: bool, ignored: bool = False) -> None:
        """Record a call that was permitted in the current state and has just finished."""
        state, now = self.state, self.clock.monotonic()
        if state is S.DISABLED:
            return
        if ignored:
            self.ignored += 1
        elif failed:
            self.failures += 1
        else:
            self.successes += 1
        if state is S.HALF_OPEN:
            self.trial_outcome(failed=failed, ignored=ignored)
            return
        if ignored:
            return
        self.consecutive = self.consecutive + 1 if failed else 0
        self.window.append(failed)
        rate_trip = len(self.window) >= MINIMUM and sum(self.window) * 100 >= RATE * len(
            self.window
        )
        if state is S.CLOSED and (self.consecutive >= THRESHOLD or rate_trip):
            self.open(now)

    def trial_outcome(self, *, failed: bool, ignored: bool) -> None:
        """Record the outcome of a HALF_OPEN trial (slowness alone counts for nothing here)."""
        now = self.clock.monotonic()
        if now >= self.half_open_until:
            self.current()  # the trial outlived the half-open period: not counted
        elif failed:
            self.open(now)
        elif not ignored:
            self.trial_successes += 1
            if self.trial_successes == TRIALS:
                self.clear()
                self.move(S.CLOSED)


class BreakerMachine(RuleBasedStateMachine):
    """Random calls, clock jumps and overrides; the breaker must agree with the model."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.breaker = CircuitBreaker(
            "model",
            THRESHOLD,
            TIMEOUT,
            self.clock,
            failure_rate_threshold=RATE,
            sliding_window_size=WINDOW,
            minimum_calls=MINIMUM,
            slow_call_duration_threshold=SLOW,
            half_open_max_calls=TRIALS,
            max_wait_in_half_open=MAX_WAIT,
            ignore_on=IgnoredError,
            record_result=lambda result: result == BAD,
        )
        self.model = Model(self.clock)
        self.transitions: list[tuple[BreakerState, BreakerState]] = []
        self.breaker.add_listener(lambda b, old, new: self.transitions.append((old, new)))
        self.ran = 0

    def attempt(
        self,
        *,
        failed: bool,
        duration: float,
        sync: bool,
        ignored: bool = False,
        bad: bool = False,
    ) -> None:
        expected = self.model.permits()
        ran_before = self.ran

        def body() -> str:
            self.ran += 1
            self.clock.advance(duration)
            if failed:
                raise FailureError
            if ignored:
                raise IgnoredError
            return BAD if bad else "ok"

        async def abody() -> str:
            return body()

        try:
            if sync:
                self.breaker.call(body)
            else:
                coro = self.breaker.acall(abody)
                with contextlib.suppress(StopIteration):  # abody never suspends
                    coro.send(None)
        except CircuitOpenError as exc:
            self.rejected(exc, expected=expected, ran_before=ran_before)
            return
        except FailureError:
            assert failed
        except IgnoredError:
            assert ignored
        assert expected, "the breaker permitted a call the model rejects"
        assert self.ran == ran_before + 1
        self.model.outcome(failed=failed or bad, ignored=ignored)

    def rejected(self, exc: CircuitOpenError, *, expected: bool, ran_before: int) -> None:
        assert not expected, "the breaker rejected a call the model permits"
        assert self.ran == ran_before
        assert exc.retry_after >= 0.0
        self.model.not_permitted += 1

    @rule(sync=st.booleans())
    def succeed(self, sync: bool) -> None:
        self.attempt(failed=False, duration=0.1, sync=sync)

    @rule(sync=st.booleans())
    def fail(self, sync: bool) -> None:
        self.attempt(failed=True, duration=0.1, sync=sync)

    @rule(sync=st.booleans())
    def slow_success(self, sync: bool) -> None:
        self.attempt(failed=False, duration=2 * SLOW, sync=sync)

    @rule(sync=st.booleans())
    def slow_ignored(self, sync: bool) -> None:
        self.attempt(failed=False, ignored=True, duration=2 * SLOW, sync=sync)

    @rule(sync=st.booleans())
    def bad_result(self, sync: bool) -> None:
        self.attempt(failed=False, bad=True, duration=0.1, sync=sync)

    @rule(seconds=st.sampled_from([0.5, 3.0, 9.9, 10.0, 14.0, 25.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.model.clear()
        self.model.move(S.CLOSED)

    @rule()
    def trip(self) -> None:
        self.breaker.trip()
        if self.model.state in {S.CLOSED, S.OPEN, S.HALF_OPEN}:
            self.model.open_until = self.clock.monotonic() + TIMEOUT
            self.model.move(S.OPEN)

    @rule(state=st.sampled_from([S.FORCED_OPEN, S.FORCED_CLOSED, S.DISABLED]))
    def override(self, state: BreakerState) -> None:
        {
            S.FORCED_OPEN: self.breaker.force_open,
            S.FORCED_CLOSED: self.breaker.force_closed,
            S.DISABLED: self.breaker.disable,
        }[state]()
        self.model.move(state)

    @invariant()
    def state_matches(self) -> None:
        assert self.breaker.state is self.model.current()

    @invariant()
    def counters_match(self) -> None:
        m, model = self.breaker.metrics(), self.model
        assert (m.successful_calls, m.failed_calls, m.ignored_calls, m.not_permitted) == (
            model.successes,
            model.failures,
            model.ignored,
            model.not_permitted,
        )
        assert m.consecutive_failures == model.consecutive
        assert m.window_calls == len(model.window)

    @invariant()
    def transitions_chain(self) -> None:
        state = S.CLOSED
        for old, new in self.transitions:
            assert old is state
            assert new is not old
            state = new
        assert state is self.breaker.state


BreakerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestBreakerStateMachine = BreakerMachine.TestCase
