"""The named circuit-breaker registry."""

from __future__ import annotations

import threading

import pytest

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import BreakerState, CircuitBreaker, CircuitBreakerRegistry
from strategylab.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> CircuitBreakerRegistry:
    return CircuitBreakerRegistry(
        clock=clock,
        failure_threshold=3,
        configurations={"fragile": {"failure_threshold": 1, "recovery_timeout": 5.0}},
    )


def test_get_or_create_applies_the_defaults(registry: CircuitBreakerRegistry) -> None:
    """A new breaker gets the registry's default settings and the asked-for name."""
    breaker = registry.get_or_create("orders")
    assert (breaker.name, breaker.failure_threshold) == ("orders", 3)


def test_same_name_returns_the_same_breaker(registry: CircuitBreakerRegistry) -> None:
    """Asking twice for one name with the same settings returns one breaker."""
    assert registry.get_or_create("orders") is registry.get_or_create("orders")


def test_overrides_win_over_defaults(registry: CircuitBreakerRegistry) -> None:
    """Keyword overrides replace the defaults for that breaker only."""
    breaker = registry.get_or_create("feed", failure_threshold=7)
    assert breaker.failure_threshold == 7
    assert registry.get_or_create("orders").failure_threshold == 3


def test_named_configuration_applies(registry: CircuitBreakerRegistry) -> None:
    """``config=`` layers a named configuration over the defaults."""
    breaker = registry.get_or_create("quotes", config="fragile")
    assert (breaker.failure_threshold, breaker.recovery_timeout) == (1, 5.0)


def test_unknown_configuration_names_it(registry: CircuitBreakerRegistry) -> None:
    """An unknown configuration name raises ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match="'sturdy'") as info:
        registry.get_or_create("quotes", config="sturdy")
    assert info.value.key == "config"


def test_conflicting_settings_name_the_breaker(registry: CircuitBreakerRegistry) -> None:
    """An existing name asked for with other settings raises, naming the breaker and the key."""
    registry.get_or_create("orders", failure_threshold=4)
    with pytest.raises(ConfigurationError, match="'orders'") as info:
        registry.get_or_create("orders", failure_threshold=5)
    assert "failure_threshold" in str(info.value)


def test_restating_the_same_settings_is_not_a_conflict(registry: CircuitBreakerRegistry) -> None:
    """Overrides equal to the defaults are the same settings."""
    breaker = registry.get_or_create("orders")
    assert registry.get_or_create("orders", failure_threshold=3) is breaker


def test_get_returns_an_existing_breaker(registry: CircuitBreakerRegistry) -> None:
    """``get`` returns the breaker created earlier."""
    breaker = registry.get_or_create("orders", failure_threshold=9)
    assert registry.get("orders") is breaker


def test_get_unknown_name_raises_key_error_naming_it(registry: CircuitBreakerRegistry) -> None:
    """``get`` of an unknown name raises KeyError naming it."""
    with pytest.raises(KeyError, match="'ghost'"):
        registry.get("ghost")


def test_remove_forgets_the_breaker(registry: CircuitBreakerRegistry) -> None:
    """``remove`` returns the breaker; the name can then be created afresh."""
    breaker = registry.get_or_create("orders")
    assert registry.remove("orders") is breaker
    assert "orders" not in registry
    assert registry.get_or_create("orders", failure_threshold=1) is not breaker


def test_remove_unknown_name_raises_key_error(registry: CircuitBreakerRegistry) -> None:
    """``remove`` of an unknown name raises KeyError naming it."""
    with pytest.raises(KeyError, match="'ghost'"):
        registry.remove("ghost")


def test_names_iteration_len_and_contains(registry: CircuitBreakerRegistry) -> None:
    """names() is sorted; iteration yields the breakers in name order; len and ``in`` agree."""
    b = registry.get_or_create("b")
    a = registry.get_or_create("a")
    assert registry.names() == ("a", "b")
    assert list(registry) == [a, b]
    assert len(registry) == 2
    assert "a" in registry
    assert a in registry
    assert "c" not in registry
    assert CircuitBreaker("a") not in registry


def test_metrics_by_name(registry: CircuitBreakerRegistry) -> None:
    """``metrics()`` maps every name to its breaker's metrics snapshot."""
    registry.get_or_create("a").trip()
    registry.get_or_create("b")
    metrics = registry.metrics()
    assert list(metrics) == ["a", "b"]
    assert (metrics["a"].state, metrics["b"].state) == (BreakerState.OPEN, BreakerState.CLOSED)


def test_reset_all_closes_every_breaker(registry: CircuitBreakerRegistry) -> None:
    """``reset_all`` resets every registered breaker."""
    registry.get_or_create("a").trip()
    registry.get_or_create("b").force_open()
    registry.reset_all()
    assert {m.state for m in registry.metrics().values()} == {BreakerState.CLOSED}


def test_unknown_default_key_is_named() -> None:
    """An unknown default setting raises TypeError naming the key."""
    with pytest.raises(TypeError, match="failure_treshold"):
        CircuitBreakerRegistry(failure_treshold=3)


def test_bad_default_value_is_named() -> None:
    """A bad default value is refused when the registry is made, naming the key."""
    with pytest.raises(ConfigurationError) as info:
        CircuitBreakerRegistry(recovery_timeout=-1.0)
    assert info.value.key == "recovery_timeout"


def test_bad_configuration_value_is_named() -> None:
    """A bad value in a named configuration is refused at once, naming the key."""
    with pytest.raises(ConfigurationError) as info:
        CircuitBreakerRegistry(configurations={"x": {"half_open_max_calls": 0}})
    assert info.value.key == "half_open_max_calls"


def test_unknown_override_key_is_named(registry: CircuitBreakerRegistry) -> None:
    """An unknown override raises TypeError naming the key, even for an existing name."""
    registry.get_or_create("orders")
    with pytest.raises(TypeError, match="treshold"):
        registry.get_or_create("orders", treshold=1)


def test_bad_override_value_is_named_and_nothing_is_registered(
    registry: CircuitBreakerRegistry,
) -> None:
    """A bad override value raises naming the key and registers no breaker."""
    with pytest.raises(ConfigurationError) as info:
        registry.get_or_create("orders", minimum_calls=0)
    assert info.value.key == "minimum_calls"
    assert "orders" not in registry


@pytest.mark.parametrize("name", ["", 3])
def test_bad_name_is_refused(registry: CircuitBreakerRegistry, name: object) -> None:
    """An empty or non-string name raises ConfigurationError."""
    with pytest.raises(ConfigurationError, match="name"):
        registry.get_or_create(name)  # type: ignore[arg-type]


def test_concurrent_get_or_create_makes_one_breaker(registry: CircuitBreakerRegistry) -> None:
    """Threads racing to create one name all get the same breaker."""
    barrier = threading.Barrier(8)
    got: list[CircuitBreaker] = []

    def worker() -> None:
        barrier.wait(timeout=5)
        got.append(registry.get_or_create("shared"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert len(got) == 8
    assert len({id(b) for b in got}) == 1
