"""The :class:`ComponentRegistry`: named components and the order they start and stop in.

A component may name others it *depends on*. The order follows the semantics of systemd's
``After=``/``Requires=`` on a unit and of an OTP supervisor's child list:

- **start**: every dependency before its dependants (systemd orders a unit ``After=`` what it
  requires; an OTP supervisor starts its children in list order). Among components that do not
  depend on one another the registration order is kept, so the order is deterministic and a
  registry without any dependency starts in registration order;
- **stop**: the exact reverse of the start order (systemd stops in the reverse of the start
  order; an OTP supervisor terminates its children in reverse start order), so nothing is stopped
  while something that depends on it is still running.

A dependency may be registered after its dependant (a forward reference): the graph is checked
when an order is asked for, and an unknown dependency or a cycle raises
:class:`~strategylab.errors.ConfigurationError` naming the missing component or the cycle
(``a -> b -> a``). The order is computed once per change of the registry and cached.

The recovery manager keeps its components here (its emergency shutdown stops them in
:meth:`ComponentRegistry.stop_order`); supervisors and the kill switch use the same order.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from strategylab.errors import ConfigurationError

__all__ = ["ComponentRegistry"]

C = TypeVar("C")


class ComponentRegistry(Generic[C]):
    """Components by name, each with the names it depends on; start and stop orders from them.

    ``register(name, component, depends_on=(...))`` adds one; :meth:`start_order` lists the names
    dependencies first (registration order among equals), :meth:`stop_order` the reverse. An
    unknown dependency or a cycle raises :class:`~strategylab.errors.ConfigurationError` from
    either order (and from :meth:`check`). Not thread-safe: one registry belongs to one owner
    (a manager, a supervisor) on one event loop.

    ``name in registry``, ``len(registry)`` and iteration (names, in registration order) work.
    """

    __slots__ = ("_components", "_depends_on", "_order")

    def __init__(self) -> None:
        self._components: dict[str, C] = {}
        self._depends_on: dict[str, tuple[str, ...]] = {}
        self._order: tuple[str, ...] | None = None
        """The cached start order; None when the registry changed since it was computed."""

    def register(self, name: str, component: C, *, depends_on: Sequence[str] = ()) -> None:
        """Add ``component`` as ``name``, started after (and stopped before) ``depends_on``.

        Raises :class:`~strategylab.errors.ConfigurationError` for an empty or non-``str`` name,
        a name already registered, a ``depends_on`` that is a string rather than a sequence of
        names, or a component that depends on itself. A dependency that is not registered yet is
        accepted here and checked by :meth:`start_order`.
        """
        if not isinstance(name, str) or not name:
            raise ConfigurationError("name", name, "must be a non-empty str")
        if name in self._components:
            raise ConfigurationError("name", name, "is already registered")
        if isinstance(depends_on, str) or not isinstance(depends_on, Sequence):
            raise ConfigurationError("depends_on", depends_on, "must be a sequence of names")
        for dependency in depends_on:
            if not isinstance(dependency, str) or not dependency:
                raise ConfigurationError("depends_on", dependency, "must be a non-empty str")
            if dependency == name:
                raise ConfigurationError(
                    "depends_on", dependency, f"a component cannot depend on itself ({name!r})"
                )
        self._components[name] = component
        self._depends_on[name] = tuple(dict.fromkeys(depends_on))
        self._order = None

    def unregister(self, name: str) -> C:
        """Remove ``name`` and return its component.

        Raises ``KeyError`` naming it when it is not registered, and
        :class:`~strategylab.errors.ConfigurationError` naming its dependants while any
        registered component still depends on it (unregister those first).
        """
        if name not in self._components:
            raise KeyError(f"component {name!r} is not registered")
        dependants = self.dependants(name)
        if dependants:
            raise ConfigurationError(
                "name",
                name,
                f"is required by {', '.join(map(repr, dependants))}; unregister those first",
            )
        del self._depends_on[name]
        self._order = None
        return self._components.pop(name)

    def get(self, name: str) -> C:
        """The component registered as ``name``; ``KeyError`` naming it when there is none."""
        try:
            return self._components[name]
        except KeyError:
            raise KeyError(f"component {name!r} is not registered") from None

    def depends_on(self, name: str) -> tuple[str, ...]:
        """The names ``name`` depends on, as registered (duplicates dropped); ``KeyError``."""
        self.get(name)
        return self._depends_on[name]

    def dependants(self, name: str) -> tuple[str, ...]:
        """The registered components that depend on ``name`` directly, in registration order."""
        return tuple(other for other, deps in self._depends_on.items() if name in deps)

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        return tuple(self._components)

    def components(self) -> tuple[C, ...]:
        """Every registered component, in registration order."""
        return tuple(self._components.values())

    def check(self) -> None:
        """Raise :class:`~strategylab.errors.ConfigurationError` for an unknown dependency
        (naming it and its dependant) or a cycle (naming it, ``a -> b -> a``)."""
        self.start_order()

    def start_order(self) -> tuple[str, ...]:
        """The names, every dependency before its dependants; registration order among equals.

        Kahn's topological sort with the registration index as the tie-break (the smallest
        ready index first): O((V + E) log V), computed once per change. Raises
        :class:`~strategylab.errors.ConfigurationError` as :meth:`check` does.
        """
        if self._order is None:
            self._order = self._sort()
        return self._order

    def stop_order(self) -> tuple[str, ...]:
        """The reverse of :meth:`start_order`: every dependant before what it depends on."""
        return self.start_order()[::-1]

    def start_components(self) -> tuple[C, ...]:
        """The components in :meth:`start_order`."""
        return tuple(self._components[name] for name in self.start_order())

    def stop_components(self) -> tuple[C, ...]:
        """The components in :meth:`stop_order`."""
        return tuple(self._components[name] for name in self.stop_order())

    def _sort(self) -> tuple[str, ...]:
        names = list(self._components)
        index = {name: i for i, name in enumerate(names)}
        waiting_on = dict.fromkeys(names, 0)
        dependants: dict[str, list[str]] = {name: [] for name in names}
        for name, deps in self._depends_on.items():
            for dependency in deps:
                if dependency not in index:
                    raise ConfigurationError(
                        "depends_on",
                        dependency,
                        f"{name!r} depends on it but no component of that name is registered",
                    )
                waiting_on[name] += 1
                dependants[dependency].append(name)
        ready = [index[name] for name in names if waiting_on[name] == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            name = names[heapq.heappop(ready)]
            order.append(name)
            for dependant in dependants[name]:
                waiting_on[dependant] -= 1
                if waiting_on[dependant] == 0:
                    heapq.heappush(ready, index[dependant])
        if len(order) < len(names):
            cycle = self._cycle({name for name in names if waiting_on[name] > 0})
            raise ConfigurationError(
                "depends_on", " -> ".join(cycle), "the dependencies form a cycle"
            )
        return tuple(order)

    def _cycle(self, stuck: set[str]) -> list[str]:
        """One cycle among ``stuck`` (the names Kahn's sort could not place), closed: a, b, a.

        Every stuck name waits on at least one stuck dependency, so following the first such
        dependency from any of them must come back to a name already seen.
        """
        start = next(name for name in self._components if name in stuck)
        path: list[str] = []
        seen: dict[str, int] = {}
        name = start
        while name not in seen:
            seen[name] = len(path)
            path.append(name)
            name = next(dep for dep in self._depends_on[name] if dep in stuck)
        return [*path[seen[name] :], name]

    def __contains__(self, name: object) -> bool:
        return name in self._components

    def __len__(self) -> int:
        return len(self._components)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._components))

    def __repr__(self) -> str:
        return f"ComponentRegistry(names={list(self._components)!r})"
