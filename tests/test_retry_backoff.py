"""Tests for the backoff formula at its edges, the bare delay, and the feed's reconnect backoff."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Iterator
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from strategylab.fault_tolerance import RetryPolicy, set_testing
from strategylab.market._feed_backoff import Backoff
from strategylab.testing import FakeClock

MAX_FLOAT = sys.float_info.max
SMALLEST_SUBNORMAL = math.ulp(0.0)


@pytest.fixture(autouse=True)
def _no_test_mode() -> Iterator[None]:
    with set_testing(False):
        yield


def policy(base: float, multiplier: float, cap: float, **kwargs: object) -> RetryPolicy:
    """A policy with exact delays and the given formula."""
    return RetryPolicy(
        base_delay=base,
        multiplier=multiplier,
        max_delay=cap,
        jitter=None,
        clock=FakeClock(),
        **kwargs,  # type: ignore[arg-type]
    )


def reference(base: float, multiplier: float, cap: float, retry: int) -> float:
    """min(base * multiplier**retry, cap), exactly where that is affordable, else in logs."""
    if base == 0 or cap == 0:
        return 0.0
    if multiplier == 1 or retry == 0:
        return min(base, cap)
    if retry <= 1500:
        exact = Fraction(base) * Fraction(multiplier) ** retry
        return float(min(exact, Fraction(cap)))
    # Far beyond float range unless multiplier is barely above 1; logs decide, with a margin.
    exponent = math.log(base) + retry * math.log(multiplier)
    if exponent >= math.log(cap):
        return cap
    return math.exp(exponent)


bases = st.one_of(
    st.just(0.0),
    st.just(SMALLEST_SUBNORMAL),
    st.floats(min_value=0.0, max_value=MAX_FLOAT, allow_subnormal=True),
)
multipliers = st.one_of(
    st.just(1.0),
    st.just(1.0 + sys.float_info.epsilon),
    st.sampled_from([2.0, 4.0, 1024.0, 2.0**100]),
    st.floats(min_value=1.0, max_value=4.0),
    st.floats(min_value=1.0, max_value=MAX_FLOAT),
)
caps = st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=MAX_FLOAT))
retries = st.one_of(st.integers(0, 64), st.integers(0, 2000), st.integers(0, 2**80))


@given(base=bases, multiplier=multipliers, cap=caps, retry=retries)
@example(base=0.0, multiplier=2.0, cap=30.0, retry=1024)
@example(base=SMALLEST_SUBNORMAL, multiplier=2.0, cap=MAX_FLOAT, retry=1100)
@example(base=1e-300, multiplier=1.0 + 2**-40, cap=1e300, retry=2**50)
def test_backoff_is_the_formula_over_the_whole_domain(
    base: float, multiplier: float, cap: float, retry: int
) -> None:
    """backoff(n) equals min(base * multiplier**n, max_delay) for every valid input."""
    got = policy(base, multiplier, cap).backoff(retry)
    assert type(got) is float
    assert math.isfinite(got)
    assert 0.0 <= got <= cap
    assert math.isclose(
        got, reference(base, multiplier, cap, retry), rel_tol=1e-9, abs_tol=SMALLEST_SUBNORMAL
    )


@given(
    base=st.floats(min_value=0.0, max_value=1e6),
    multiplier=st.floats(min_value=1.0, max_value=10.0),
    cap=st.floats(min_value=0.0, max_value=1e9),
    retry=st.integers(0, 300),
)
def test_backoff_is_the_float_expression_while_the_power_is_finite(
    base: float, multiplier: float, cap: float, retry: int
) -> None:
    """While multiplier**n is a finite float, backoff(n) is that float expression, to the bit."""
    try:
        expected = min(base * multiplier**retry, cap)
    except OverflowError:
        return
    assert policy(base, multiplier, cap).backoff(retry) == expected


@given(base=bases, multiplier=multipliers, cap=caps, retry=retries)
def test_backoff_never_decreases_from_one_retry_to_the_next(
    base: float, multiplier: float, cap: float, retry: int
) -> None:
    """backoff(n + 1) >= backoff(n) everywhere in the domain."""
    formula = policy(base, multiplier, cap)
    assert formula.backoff(retry + 1) >= formula.backoff(retry)


@given(
    base=st.floats(min_value=0.0, max_value=1e6),
    multiplier=st.floats(min_value=1.0, max_value=10.0),
    cap=st.floats(min_value=0.0, max_value=1e6),
    retry=st.integers(0, 200),
    seed=st.integers(0, 2**32),
)
def test_jittered_delay_lies_between_zero_and_the_backoff(
    base: float, multiplier: float, cap: float, retry: int, seed: int
) -> None:
    """delay(n) with full jitter is drawn from [0, backoff(n)]."""
    formula = policy(base, multiplier, cap).with_(jitter=random.Random(seed))
    assert 0.0 <= formula.delay(retry) <= formula.backoff(retry)


@pytest.mark.parametrize("retry", [0, 1, 1024, 10**6, 2**62, 10**400])
def test_zero_base_delay_backs_off_zero_seconds(retry: int) -> None:
    """A zero base_delay gives 0 for every retry, however large, not max_delay."""
    assert policy(0.0, 2.0, 30.0).backoff(retry) == 0.0


@pytest.mark.parametrize("retry", [0, 1, 1024, 2**62])
def test_zero_max_delay_backs_off_zero_seconds(retry: int) -> None:
    """A zero max_delay caps every delay at 0."""
    assert policy(1.0, 2.0, 0.0).backoff(retry) == 0.0


@pytest.mark.parametrize("retry", [0, 1, 1024, 2**62, 10**400])
def test_multiplier_one_keeps_the_base_delay(retry: int) -> None:
    """With multiplier 1 every retry waits base_delay (capped)."""
    assert policy(0.25, 1.0, 30.0).backoff(retry) == 0.25
    assert policy(50.0, 1.0, 30.0).backoff(retry) == 30.0


@pytest.mark.parametrize("retry", [1024, 10**6, 2**62, 10**400])
def test_huge_retry_numbers_reach_the_cap_without_overflow(retry: int) -> None:
    """A retry number far past float range gives max_delay, not an OverflowError."""
    assert policy(0.1, 2.0, 30.0).backoff(retry) == 30.0
    assert policy(1e-300, 4.0, 7.0).backoff(retry) == 7.0


def test_subnormal_base_delay_grows_exactly_past_the_float_range_of_the_power() -> None:
    """A subnormal base times 2**1100 is 2**26, although 2.0**1100 alone overflows."""
    assert policy(SMALLEST_SUBNORMAL, 2.0, 1e300).backoff(1100) == 2.0**26


def test_subnormal_base_delay_is_itself_before_the_first_growth() -> None:
    """Retry 0 of a subnormal base waits exactly that base."""
    assert policy(SMALLEST_SUBNORMAL, 3.0, 1.0).backoff(0) == SMALLEST_SUBNORMAL


def test_backoff_is_exact_for_representable_values() -> None:
    """Small powers of two come out exact, with no rounding drift."""
    formula = policy(0.1, 2.0, 30.0)
    assert [formula.backoff(n) for n in range(10)] == [
        0.1,
        0.2,
        0.4,
        0.8,
        1.6,
        3.2,
        6.4,
        12.8,
        25.6,
        30.0,
    ]


def test_base_above_the_cap_is_capped_from_the_first_retry() -> None:
    """A base_delay larger than max_delay waits max_delay."""
    assert policy(60.0, 2.0, 30.0).backoff(0) == 30.0


def test_negative_retry_index_is_rejected() -> None:
    """backoff(-1) raises ValueError naming the retry."""
    with pytest.raises(ValueError, match="retry=-1"):
        policy(1.0, 2.0, 30.0).backoff(-1)


@pytest.mark.parametrize("retry", [1.5, "2", True, None])
def test_non_integer_retry_index_is_rejected(retry: object) -> None:
    """backoff() takes only an int, not a float, a string, a bool or None."""
    with pytest.raises(TypeError, match="retry="):
        policy(1.0, 2.0, 30.0).backoff(retry)  # type: ignore[arg-type]


def test_decide_rejects_attempt_zero() -> None:
    """decide() numbers attempts from 1 and says so."""
    with pytest.raises(ValueError, match="attempt=0"):
        policy(1.0, 2.0, 30.0).decide(0, 0.0)


def test_delay_ignores_test_mode() -> None:
    """delay() is the bare formula: test mode does not zero it."""
    formula = policy(1.0, 2.0, 30.0)
    with set_testing(True):
        assert [formula.delay(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]


def test_decide_still_applies_test_mode() -> None:
    """decide() gives 0 in test mode where delay() gives the formula."""
    formula = policy(1.0, 2.0, 30.0, max_attempts=5)
    with set_testing(True):
        assert formula.decide(3, 0.0) == 0.0


def test_delay_draws_the_same_jitter_as_decide() -> None:
    """Outside test mode, decide() sleeps what delay() draws from the same generator."""
    first = policy(1.0, 2.0, 30.0, max_attempts=10).with_(jitter=random.Random(5))
    second = first.with_(jitter=random.Random(5))
    assert [first.decide(n, 0.0) for n in range(1, 8)] == [second.delay(n) for n in range(7)]


# -------------------------------------------------------------------- the feed's reconnect backoff


def _feed_delays(*, jitter: bool, count: int = 12) -> list[float]:
    backoff = Backoff(0.05, 2.0, rng=random.Random(11), jitter=jitter, clock=FakeClock())
    return [backoff.next_delay() for _ in range(count)]


@pytest.mark.parametrize("jitter", [False, True], ids=["exact", "jittered"])
@pytest.mark.parametrize("attempts", [None, 1, 3])
def test_feed_backoff_ignores_test_mode(jitter: bool, attempts: int | None) -> None:
    """Under set_testing(True) the feed's reconnect delays are those it draws without it."""
    expected = _feed_delays(jitter=jitter)
    with set_testing(True, attempts=attempts):
        assert _feed_delays(jitter=jitter) == expected


def test_feed_backoff_in_test_mode_does_not_jump_to_the_cap() -> None:
    """In test mode the exact feed delays still grow from the floor."""
    with set_testing(True):
        delays = _feed_delays(jitter=False, count=6)
    assert delays == [0.0, 0.05, 0.1, 0.2, 0.4, 0.8]


def test_feed_backoff_keeps_drawing_after_very_many_failures() -> None:
    """After thousands of failures the feed still waits the cap, with no overflow."""
    backoff = Backoff(0.05, 2.0, jitter=False, clock=FakeClock())
    delays = [backoff.next_delay() for _ in range(5000)]
    assert delays[-1] == 2.0
    assert backoff.ceiling() == 2.0
