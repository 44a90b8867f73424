"""FeedBackoff: reset only by a connection that proved itself; server-requested waits honoured."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategylab.errors import ConfigurationError
from strategylab.market._feed import FeedConfig
from strategylab.market._feed_backoff import FeedBackoff
from strategylab.testing import FakeClock


def backoff(
    clock: FakeClock,
    *,
    proven_after: float = 5.0,
    retry_later_floor: float = 1.0,
    max_server_wait: float = 60.0,
) -> FeedBackoff:
    return FeedBackoff(
        0.1,
        1.0,
        proven_after=proven_after,
        retry_later_floor=retry_later_floor,
        max_server_wait=max_server_wait,
        jitter=False,
        clock=clock,
    )


def test_subscribed_alone_never_resets_the_backoff() -> None:
    """Connections that only get as far as "subscribed" keep backing off: 0, floor, 2*floor, …"""
    clock = FakeClock()
    b = backoff(clock)
    delays = []
    for _ in range(6):
        b.healthy()
        delays.append(b.next_delay())
        clock.advance(delays[-1])
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert b.failures == 6


def test_a_connection_alive_for_proven_after_resets_the_backoff() -> None:
    """Frames still arriving proven_after seconds after "subscribed" prove the connection."""
    clock = FakeClock(100.0)
    b = backoff(clock, proven_after=5.0)
    for _ in range(3):
        b.next_delay()
    b.healthy()
    assert not b.alive(clock.monotonic() + 4.99)
    assert (b.proven, b.failures) == (False, 3)
    assert b.alive(clock.monotonic() + 5.0)
    assert (b.proven, b.failures) == (True, 0)
    assert not b.alive(clock.monotonic() + 6.0), "proved once per connection"
    assert b.next_delay() == 0.0


def test_a_short_lived_connection_does_not_reset_the_backoff() -> None:
    """Alive less than proven_after, then dropped: the next delay keeps growing."""
    clock = FakeClock()
    b = backoff(clock, proven_after=5.0)
    b.next_delay()
    b.next_delay()
    b.healthy()
    clock.advance(4.0)
    assert not b.alive(clock.monotonic())
    assert b.next_delay() == 0.2


def test_stored_data_proves_a_connection_at_once() -> None:
    """Data acknowledged by the sink proves the connection, with no minimum time."""
    clock = FakeClock()
    b = backoff(clock)
    for _ in range(4):
        b.next_delay()
    assert not b.stored(), "no connection is healthy: nothing to prove"
    b.healthy()
    assert b.stored()
    assert b.failures == 0
    assert b.next_delay() == 0.0


def test_healthy_since_is_the_first_subscribed_of_a_connection() -> None:
    """A second "subscribed" on the same connection does not restart the proving period."""
    clock = FakeClock()
    b = backoff(clock, proven_after=2.0)
    b.healthy()
    clock.advance(1.5)
    b.healthy()
    assert b.alive(clock.monotonic() + 0.5)


@pytest.mark.parametrize("code", [1012, 1013])
def test_close_codes_asking_to_wait_give_at_least_the_floor(code: int) -> None:
    """After 1012/1013 the wait is at least retry_later_floor, even for the first retry."""
    clock = FakeClock()
    b = backoff(clock, retry_later_floor=1.5)
    assert b.next_delay(close_code=code) == 1.5
    assert b.next_delay(close_code=code) == 1.5
    for _ in range(4):
        b.next_delay()
    assert b.next_delay(close_code=code) == 1.5  # the backoff (capped at 1.0) is below the floor


@pytest.mark.parametrize("code", [None, 1000, 1001, 1006, 1011])
def test_other_close_codes_use_the_plain_backoff(code: int | None) -> None:
    """Codes that do not ask for a wait leave the backoff as it is: the first retry at once."""
    b = backoff(FakeClock())
    assert b.next_delay(close_code=code) == 0.0
    assert b.next_delay(close_code=code) == 0.1


@pytest.mark.parametrize(
    ("hint", "expected"), [(0.0, 0.0), (2.0, 2.0), (7.0, 7.0), (500.0, 30.0), (math.inf, 30.0)]
)
def test_retry_after_is_honoured_up_to_max_server_wait(hint: float, expected: float) -> None:
    """A Retry-After hint is a floor for the wait, capped at max_server_wait (inf included)."""
    b = backoff(FakeClock(), max_server_wait=30.0)
    assert b.next_delay(retry_after=hint) == expected


def test_the_backoff_wins_when_it_is_longer_than_the_request() -> None:
    """A server asking for less than the current backoff does not shorten it."""
    b = FeedBackoff(1.0, 60.0, jitter=False, clock=FakeClock())
    for _ in range(5):
        b.next_delay()
    assert b.next_delay(retry_after=2.0, close_code=1013) == 16.0


@given(
    st.lists(
        st.tuples(st.floats(0.0, 4.99), st.sampled_from([None, 1000, 1006, 1013])), max_size=30
    )
)
def test_unproven_connections_never_shorten_the_backoff_ceiling(
    lives: list[tuple[float, int | None]],
) -> None:
    """Whatever unproven connections do (alive under proven_after, any close code), the failure
    count only grows: the schedule never starts over."""
    clock = FakeClock()
    b = FeedBackoff(0.1, 1.0, proven_after=5.0, rng=random.Random(1), clock=clock)
    for n, (alive_for, code) in enumerate(lives, start=1):
        b.healthy()
        assert not b.alive(clock.monotonic() + alive_for)
        b.next_delay(close_code=code)
        assert b.failures == n


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("proven_after", -1.0),
        ("proven_after", math.nan),
        ("retry_later_floor", -0.5),
        ("max_server_wait", math.inf),
    ],
)
def test_bad_settings_name_the_field(key: str, value: float) -> None:
    """FeedBackoff and FeedConfig refuse a bad setting with an error that names it."""
    options: dict[str, Any] = {key: value}
    with pytest.raises(ConfigurationError, match=key):
        FeedBackoff(**options)
    with pytest.raises(ConfigurationError, match=key):
        FeedConfig(urls=("ws://x/ws",), symbols=("A",), **options)
