"""A registry of named circuit breakers (resilience4j ``CircuitBreakerRegistry``).

One breaker per dependency, shared by every caller that names it: the registry creates it on first
use from shared default settings, optionally refined by a named configuration and per-breaker
overrides, and hands the same instance to everyone who asks for that name afterwards.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from strategylab.errors import ConfigurationError

from ._breaker import CircuitBreaker

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from ._breaker import BreakerMetrics

__all__ = ["CircuitBreakerRegistry"]

_SETTINGS: Final = frozenset(inspect.signature(CircuitBreaker).parameters) - {"name"}
"""The keyword arguments of :class:`CircuitBreaker` that a registry can set."""

_PROBE_NAME: Final = "circuit-breaker-registry-probe"


def _keys(where: str, settings: Mapping[str, object]) -> dict[str, object]:
    """``settings`` as a dict; ``TypeError`` naming any key that is not a breaker setting."""
    unknown = sorted(set(settings) - _SETTINGS)
    if unknown:
        raise TypeError(
            f"{where}: {', '.join(unknown)} {'is not a' if len(unknown) == 1 else 'are not'} "
            f"CircuitBreaker setting{'' if len(unknown) == 1 else 's'} "
            f"(known: {', '.join(sorted(_SETTINGS))})"
        )
    checked = dict(settings)
    listeners = checked.get("listeners")
    if listeners is not None:
        if not isinstance(listeners, Iterable):
            raise TypeError(f"{where}: listeners={listeners!r}: expected an iterable of listeners")
        # An iterator would be used up by the first breaker: keep what it yields.
        checked["listeners"] = tuple(listeners)
    return checked


def _settings(where: str, settings: Mapping[str, object]) -> dict[str, object]:
    """``settings`` checked now, by building (and dropping) a breaker with them.

    Raises ``TypeError`` naming an unknown key, and whatever :class:`CircuitBreaker` raises for a
    bad value (a :class:`ConfigurationError` or ``TypeError`` naming the key).
    """
    checked = _keys(where, settings)
    CircuitBreaker(_PROBE_NAME, **checked)  # type: ignore[arg-type]
    return checked


class CircuitBreakerRegistry:
    """Named circuit breakers created on demand from shared settings (resilience4j semantics).

    ``defaults`` are :class:`CircuitBreaker` keyword arguments (``failure_threshold``,
    ``recovery_timeout`` in seconds, ``clock``, ...) applied to every breaker the registry creates.
    ``configurations`` maps a configuration name to more settings, applied on top of the defaults
    when :meth:`get_or_create` names it. Settings are checked when given: an unknown key raises
    ``TypeError`` and a bad value :class:`~strategylab.errors.ConfigurationError`, each naming the
    key. All methods are thread-safe.

    Iterating yields the breakers in name order; ``name in registry`` and ``len(registry)`` work on
    the names.
    """

    __slots__ = ("_breakers", "_configurations", "_defaults", "_lock", "_settings")

    def __init__(
        self,
        *,
        configurations: Mapping[str, Mapping[str, object]] | None = None,
        **defaults: object,
    ) -> None:
        self._defaults = _settings("defaults", defaults)
        self._configurations: dict[str, dict[str, object]] = {}
        for config, settings in (configurations or {}).items():
            if not isinstance(config, str) or not config:
                raise ConfigurationError(
                    "configurations", config, "a configuration name must be a non-empty string"
                )
            self._configurations[config] = _settings(
                f"configurations[{config!r}]", {**self._defaults, **settings}
            )
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._settings: dict[str, dict[str, object]] = {}
        """The settings each breaker was created with, to detect a conflicting request."""

    def get_or_create(
        self, name: str, /, *, config: str | None = None, **overrides: object
    ) -> CircuitBreaker:
        """The breaker called ``name``, created now if it does not exist yet.

        Its settings are the registry's defaults, then configuration ``config`` (if given), then
        ``overrides``. Asking again for an existing name returns the same breaker, provided the
        settings asked for are the same: different ones raise
        :class:`~strategylab.errors.ConfigurationError` naming the breaker (use :meth:`get` to
        fetch a breaker without restating its settings). An unknown ``config`` raises
        :class:`~strategylab.errors.ConfigurationError`; a bad override raises as in
        :class:`CircuitBreaker`, naming the key.
        """
        if not isinstance(name, str) or not name:
            raise ConfigurationError("name", name, "expected a non-empty string")
        if config is None:
            base = self._defaults
        else:
            try:
                base = self._configurations[config]
            except KeyError:
                known = ", ".join(map(repr, sorted(self._configurations))) or "none"
                raise ConfigurationError(
                    "config", config, f"no such configuration (known: {known})"
                ) from None
        settings = {**base, **_keys(f"get_or_create({name!r})", overrides)}
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                # The breaker checks the values itself, naming the key of a bad one.
                breaker = CircuitBreaker(name, **settings)  # type: ignore[arg-type]
                self._breakers[name] = breaker
                self._settings[name] = settings
                return breaker
            existing = self._settings[name]
        if existing != settings:
            changed = sorted(
                key
                for key in existing.keys() | settings.keys()
                if existing.get(key, _MISSING) != settings.get(key, _MISSING)
            )
            raise ConfigurationError(
                "name",
                name,
                f"a circuit breaker of that name already exists with other settings "
                f"(differing: {', '.join(changed)}); use get({name!r}) to fetch it",
            )
        return breaker

    def get(self, name: str) -> CircuitBreaker:
        """The existing breaker called ``name``; ``KeyError`` naming it when there is none."""
        with self._lock:
            try:
                return self._breakers[name]
            except KeyError:
                raise KeyError(f"no circuit breaker named {name!r} in this registry") from None

    def remove(self, name: str) -> CircuitBreaker:
        """Forget the breaker called ``name`` and return it; ``KeyError`` naming it when absent.

        Wrappers built from the breaker keep using it; the next :meth:`get_or_create` of the name
        makes a new one.
        """
        with self._lock:
            try:
                breaker = self._breakers.pop(name)
            except KeyError:
                raise KeyError(f"no circuit breaker named {name!r} in this registry") from None
            del self._settings[name]
        return breaker

    def names(self) -> tuple[str, ...]:
        """The names of the registered breakers, sorted."""
        with self._lock:
            return tuple(sorted(self._breakers))

    def metrics(self) -> dict[str, BreakerMetrics]:
        """A snapshot of every registered breaker's metrics, by name (in name order)."""
        return {breaker.name: breaker.metrics() for breaker in self._snapshot()}

    def reset_all(self) -> None:
        """:meth:`CircuitBreaker.reset` every registered breaker."""
        for breaker in self._snapshot():
            breaker.reset()

    def _snapshot(self) -> list[CircuitBreaker]:
        with self._lock:
            return [self._breakers[name] for name in sorted(self._breakers)]

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(self._snapshot())

    def __len__(self) -> int:
        return len(self._breakers)

    def __contains__(self, item: object) -> bool:
        """Whether ``item`` is the name of a registered breaker, or a registered breaker."""
        with self._lock:
            if isinstance(item, CircuitBreaker):
                return self._breakers.get(item.name) is item
            return item in self._breakers

    def __repr__(self) -> str:
        return f"CircuitBreakerRegistry(breakers={list(self.names())!r})"


_MISSING: Final = object()
