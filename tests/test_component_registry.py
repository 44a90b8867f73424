"""ComponentRegistry: registration, dependency start/stop order, unknown names and cycles."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import ComponentRegistry


def _registry(edges: dict[str, tuple[str, ...]]) -> ComponentRegistry[str]:
    registry: ComponentRegistry[str] = ComponentRegistry()
    for name, deps in edges.items():
        registry.register(name, f"component {name}", depends_on=deps)
    return registry


def test_without_dependencies_start_order_is_registration_order() -> None:
    """Independent components start in registration order and stop in reverse."""
    registry = _registry({"c": (), "a": (), "b": ()})
    assert registry.start_order() == ("c", "a", "b")
    assert registry.stop_order() == ("b", "a", "c")


def test_a_dependency_starts_first_even_when_registered_later() -> None:
    """A forward reference is allowed; the dependency still starts before its dependant."""
    registry = _registry({"engine": ("feed",), "feed": ("store",), "store": ()})
    assert registry.start_order() == ("store", "feed", "engine")
    assert registry.stop_components() == (
        "component engine",
        "component feed",
        "component store",
    )


def test_order_is_stable_among_components_that_do_not_depend_on_each_other() -> None:
    """Ties are broken by registration order: the smallest ready registration index first."""
    registry = _registry({"x": ("d",), "a": (), "d": (), "b": ("a",)})
    assert registry.start_order() == ("a", "d", "x", "b")


def test_unknown_dependency_names_the_missing_component() -> None:
    """A dependency that was never registered raises ConfigurationError naming it."""
    registry = _registry({"feed": ("store",)})
    with pytest.raises(ConfigurationError, match=r"'store'.*'feed' depends on it") as info:
        registry.start_order()
    assert (info.value.key, info.value.value) == ("depends_on", "store")


def test_cycle_names_the_cycle() -> None:
    """A cycle raises ConfigurationError whose value spells the cycle."""
    registry = _registry({"a": ("b",), "b": ("c",), "c": ("a",), "d": ()})
    with pytest.raises(ConfigurationError, match="cycle") as info:
        registry.check()
    assert info.value.value == "a -> b -> c -> a"


def test_self_dependency_is_refused_at_registration() -> None:
    """A component cannot depend on itself."""
    registry: ComponentRegistry[str] = ComponentRegistry()
    with pytest.raises(ConfigurationError, match="itself"):
        registry.register("a", "A", depends_on=["a"])


@pytest.mark.parametrize(
    ("name", "depends_on", "key"),
    [("", (), "name"), (3, (), "name"), ("a", "store", "depends_on"), ("a", ("",), "depends_on")],
)
def test_bad_registration_names_the_argument(name: object, depends_on: object, key: str) -> None:
    """A bad name or depends_on raises ConfigurationError naming the argument."""
    registry: ComponentRegistry[str] = ComponentRegistry()
    with pytest.raises(ConfigurationError) as info:
        registry.register(name, "x", depends_on=depends_on)  # type: ignore[arg-type]
    assert info.value.key == key


def test_duplicate_name_is_refused() -> None:
    """Two components cannot share a name."""
    registry = _registry({"a": ()})
    with pytest.raises(ConfigurationError, match="already registered"):
        registry.register("a", "again")


def test_unregister_refuses_a_component_others_depend_on() -> None:
    """Removing a dependency while its dependant is registered raises, naming the dependant."""
    registry = _registry({"store": (), "feed": ("store",)})
    with pytest.raises(ConfigurationError, match="'feed'"):
        registry.unregister("store")
    assert registry.unregister("feed") == "component feed"
    assert registry.unregister("store") == "component store"
    assert registry.start_order() == ()
    with pytest.raises(KeyError, match="store"):
        registry.unregister("store")


def test_order_follows_changes() -> None:
    """The cached order is recomputed after a registration."""
    registry = _registry({"b": ("a",), "a": ()})
    assert registry.start_order() == ("a", "b")
    registry.register("c", "C")
    registry.register("z", "Z", depends_on=["c"])
    assert registry.start_order() == ("a", "b", "c", "z")
    assert list(registry) == ["b", "a", "c", "z"]
    assert ("a" in registry, "q" in registry, len(registry)) == (True, False, 4)
    assert registry.depends_on("z") == ("c",)
    assert registry.dependants("a") == ("b",)


@st.composite
def _dags(draw: st.DrawFn) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """A random DAG over up to 12 nodes, registered in a random order."""
    size = draw(st.integers(min_value=0, max_value=12))
    topo = [f"n{i}" for i in range(size)]
    edges: dict[str, tuple[str, ...]] = {}
    for i, name in enumerate(topo):
        # Edges only to nodes earlier in a hidden topological order: acyclic by construction.
        edges[name] = tuple(draw(st.lists(st.sampled_from(topo[:i]), max_size=4))) if i else ()
    registration = draw(st.permutations(topo))
    return list(registration), edges


@given(_dags())
def test_every_dependency_precedes_its_dependant(
    dag: tuple[list[str], dict[str, tuple[str, ...]]],
) -> None:
    """For a random DAG registered in any order, start_order puts dependencies first, once each,
    and stop_order is its reverse."""
    registration, edges = dag
    registry: ComponentRegistry[str] = ComponentRegistry()
    for name in registration:
        registry.register(name, name, depends_on=edges[name])
    order = registry.start_order()
    assert sorted(order) == sorted(registration)
    position = {name: i for i, name in enumerate(order)}
    for name, deps in edges.items():
        for dependency in deps:
            assert position[dependency] < position[name]
    assert registry.stop_order() == order[::-1]


@given(_dags())
def test_a_dependency_respecting_registration_keeps_its_order(
    dag: tuple[list[str], dict[str, tuple[str, ...]]],
) -> None:
    """When components are registered dependencies first, start_order is registration order."""
    _, edges = dag
    registry: ComponentRegistry[str] = ComponentRegistry()
    for name, deps in edges.items():
        registry.register(name, name, depends_on=deps)
    assert registry.start_order() == tuple(edges)
