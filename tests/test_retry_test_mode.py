"""Tests for set_testing as a plain switch and as a context manager restoring the earlier mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager

import pytest

from strategylab.fault_tolerance import RetryPolicy, is_testing, set_testing
from strategylab.testing import FakeClock


@pytest.fixture(autouse=True)
def _restore_mode() -> Iterator[None]:
    with set_testing(False):
        yield


def attempts_made(max_attempts: int = 5) -> int:
    """How many attempts a policy makes at an always-failing call under the current mode."""
    calls = 0

    def fail() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError(calls)

    policy = RetryPolicy(max_attempts=max_attempts, jitter=None, clock=FakeClock())
    with pytest.raises(ConnectionError):
        policy.call(fail)
    return calls


def test_plain_call_switches_test_mode_on_at_once() -> None:
    """set_testing(True) takes effect when called, without a with block."""
    set_testing(True, attempts=1)
    assert is_testing()
    assert attempts_made() == 1


def test_return_value_is_a_context_manager() -> None:
    """set_testing returns a context manager."""
    restore = set_testing(True)
    assert isinstance(restore, AbstractContextManager)
    with restore as entered:
        assert entered is None


def test_with_block_restores_test_mode_off() -> None:
    """Leaving the with block switches test mode off again when it was off."""
    with set_testing(True, attempts=2):
        assert is_testing()
        assert attempts_made() == 2
    assert not is_testing()
    assert attempts_made() == 5


def test_with_block_restores_the_previous_attempts() -> None:
    """Nested blocks restore the enclosing block's attempt cap on exit."""
    with set_testing(True, attempts=3):
        with set_testing(True, attempts=1):
            assert attempts_made() == 1
        assert is_testing()
        assert attempts_made() == 3
    assert not is_testing()


def test_switching_off_inside_test_mode_is_undone_on_exit() -> None:
    """with set_testing(False) inside test mode turns it back on afterwards."""
    with set_testing(True, attempts=2), set_testing(False):
        assert not is_testing()
        assert attempts_made() == 5
    assert not is_testing()
    with set_testing(True, attempts=2):
        with set_testing(False):
            pass
        assert attempts_made() == 2


def test_with_block_restores_the_mode_when_it_raises() -> None:
    """An exception leaving the block still restores the earlier mode, and propagates."""
    with pytest.raises(KeyError), set_testing(True):
        raise KeyError("boom")
    assert not is_testing()


def test_no_sleep_inside_the_block() -> None:
    """Inside the block a retry sleeps not at all."""
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=3, jitter=None, clock=clock)
    with set_testing(True), pytest.raises(ConnectionError):
        policy.call(_always_fails)
    assert clock.sleeps == []


def test_bad_attempts_leave_the_mode_unchanged() -> None:
    """An invalid attempts raises and does not switch test mode on."""
    with pytest.raises(ValueError, match="attempts"):
        set_testing(True, attempts=0)
    assert not is_testing()


def _always_fails() -> None:
    raise ConnectionError("down")
