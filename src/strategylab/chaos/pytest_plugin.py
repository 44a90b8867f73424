"""A pytest plugin for chaos tests of your own services (registered by a ``pytest11`` entry point).

Installed with Strategy Lab, it gives every test suite:

- ``fault_proxy``: a factory, ``proxy = await fault_proxy("host:port")``, that starts a
  :class:`~strategylab.chaos.Proxy` in front of that address (on a free local port:
  ``proxy.listen``) and stops it at teardown (:class:`FaultProxies`);
- ``inject``: ``async with inject(injector):`` switches a fault on for the block and heals it
  however the block ends (:func:`~strategylab.chaos.injected`); ``inject.toxic(proxy,
  "latency", latency=500)`` is the same for one toxic; ``await inject.start(injector)`` leaves
  it on until teardown. A :class:`~strategylab.chaos.HealGuard` heals whatever is still on at
  teardown (:class:`Inject`);
- ``fake_clock``: a :class:`strategylab.testing.FakeClock` (autojump on: awaiting its
  ``asleep`` never waits);
- ``integrity_checker``: ``report = await integrity_checker(emitted_log, db, acks)`` runs the
  Jepsen-style checker (:func:`~strategylab.chaos.check_store`) over an exchange's emitted
  ledger and a tick store; ``integrity_checker.assert_ok(report)`` fails the test with the
  counts (:class:`IntegrityChecker`);
- the marker ``@pytest.mark.chaos`` for tests that inject real faults (select them with
  ``-m chaos`` or leave them out with ``-m "not chaos"``).

The async fixtures need pytest-asyncio (``asyncio_mode = "auto"``, or mark the tests
``@pytest.mark.asyncio``). The plugin adds fixtures and a marker, and changes nothing for tests
that use none of them. docs/experiments.md has an example test.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from strategylab.testing import FakeClock

from ._injector import HealGuard, Injector, injected
from ._proxy import Proxy
from ._toxics import Toxic

if TYPE_CHECKING:
    # The checker and the experiment runner load numpy and aiohttp: imported when a fixture
    # is used, so that every pytest run of every suite does not pay for them at start.
    from ._checker import IntegrityReport

_asyncio_fixture: Callable[[Any], Any] | None
try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - pytest-asyncio is in the test extra
    _asyncio_fixture = None
else:
    _asyncio_fixture = pytest_asyncio.fixture

__all__ = [
    "FaultProxies",
    "Inject",
    "IntegrityChecker",
    "fake_clock",
    "fault_proxy",
    "inject",
    "integrity_checker",
    "pytest_configure",
]

_MARKER = "chaos: a chaos test that injects real faults (strategylab.chaos.pytest_plugin)"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``chaos`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line("markers", _MARKER)


class FaultProxies:
    """The ``fault_proxy`` fixture: call it to put a started fault proxy in front of an address;
    every proxy it made is stopped at teardown."""

    def __init__(self) -> None:
        self._proxies: list[Proxy] = []

    async def __call__(
        self, upstream: str, *, name: str | None = None, listen: str = "127.0.0.1:0"
    ) -> Proxy:
        """A started proxy from ``listen`` (a free local port by default) to ``upstream``
        (``host:port``). Raises :class:`~strategylab.errors.ConfigurationError` for a bad
        address or name, :class:`OSError` when ``listen`` cannot be bound."""

        proxy = Proxy(name or f"proxy{len(self._proxies)}", listen=listen, upstream=upstream)
        await proxy.start()
        self._proxies.append(proxy)
        return proxy

    @property
    def proxies(self) -> tuple[Proxy, ...]:
        """The proxies made so far, oldest first."""
        return tuple(self._proxies)

    async def aclose(self) -> None:
        """Stop every proxy, newest first."""
        while self._proxies:
            await self._proxies.pop().stop()


class Inject:
    """The ``inject`` fixture: injectors with a guaranteed heal."""

    def __init__(self) -> None:

        self.guard: HealGuard = HealGuard()
        """Every injector this fixture switched on and has not healed yet."""

    def __call__(self, injector: Injector) -> contextlib.AbstractAsyncContextManager[Injector]:
        """``async with inject(injector):``: on for the block, healed however it ends (also on
        an exception or a cancellation). Raises what the injector's ``inject`` raises."""

        return injected(injector, self.guard)

    def toxic(
        self,
        proxy: Proxy,
        toxic_type: str,
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
        **attributes: float,
    ) -> contextlib.AbstractAsyncContextManager[Injector]:
        """``async with inject.toxic(proxy, "latency", latency=500):``: one toxic (Toxiproxy's
        type and attribute names; ``stream`` ``downstream``, ``upstream`` or ``both``) for the
        block. Raises :class:`~strategylab.errors.ConfigurationError` for a bad toxic."""

        streams = ("upstream", "downstream") if stream == "both" else (stream,)
        count = len(self.guard.active)
        toxics = [
            Toxic.build(
                toxic_type,
                name=f"pytest{count}_{toxic_type}_{one}",
                stream=one,
                toxicity=toxicity,
                attributes=attributes,
            )
            for one in streams
        ]
        from ._experiment import ProxyToxic  # noqa: PLC0415 - lazy: aiohttp

        return self(ProxyToxic(proxy, toxics, name=f"network.{toxic_type}"))

    async def start(self, injector: Injector) -> Injector:
        """Switch ``injector`` on now; it is healed at teardown (or by ``injector.heal()``)."""
        self.guard.add(injector)
        await injector.inject()
        return injector

    async def heal_all(self) -> None:
        """Heal everything still on; raises :class:`AssertionError` naming each heal that
        failed (the fixture's teardown calls this)."""
        failures = await self.guard.heal_all()
        if failures:
            shown = "; ".join(f"{name}: {exc!r}" for name, exc in failures)
            raise AssertionError(f"heal failed at teardown: {shown}")


class IntegrityChecker:
    """The ``integrity_checker`` fixture: the chaos lab's checker over a ledger and a store."""

    async def __call__(
        self,
        emitted_log: str | os.PathLike[str],
        db: str | os.PathLike[str],
        acks: str | os.PathLike[str] | Mapping[str, int] | None = None,
        *,
        require_complete: bool = False,
    ) -> IntegrityReport:
        """Check the tick store ``db`` (an SQLite file or a ``postgresql://`` URL, read only)
        against the exchange's ``emitted_log`` and, when given, the node's ``acks``. Raises
        :class:`~strategylab.chaos.CheckInputError` for an input that cannot be used."""

        from ._checker import check_store  # noqa: PLC0415 - lazy: numpy

        return await check_store(emitted_log, db, acks, require_complete=require_complete)

    @staticmethod
    def assert_ok(report: IntegrityReport) -> None:
        """Fail (:class:`AssertionError`) unless nothing was lost, duplicated, unexpected,
        corrupted or invalid in the store; the message gives every count."""
        if not report.ok:
            counts = {
                "lost": report.lost.count,
                "duplicated": report.duplicated.count,
                "unexpected": report.unexpected.count,
                "corrupted": report.corrupted.count,
                "invalid_stored": report.invalid_stored.count,
                "missing": report.missing.count,
            }
            shown = ", ".join(f"{k} {v}" for k, v in counts.items())
            raise AssertionError(f"integrity check failed: {shown}")


def _async_fixture(func: Any) -> Any:
    if _asyncio_fixture is not None:
        return _asyncio_fixture(func)

    @pytest.fixture(name=func.__name__)
    def missing() -> None:  # pragma: no cover - pytest-asyncio is in the test extra
        pytest.fail(
            f"the {func.__name__} fixture needs pytest-asyncio (pip install pytest-asyncio)"
        )

    return missing


@_async_fixture
async def fault_proxy() -> AsyncIterator[FaultProxies]:
    """A factory of started fault proxies, stopped at teardown."""
    proxies = FaultProxies()
    try:
        yield proxies
    finally:
        await proxies.aclose()


@_async_fixture
async def inject() -> AsyncIterator[Inject]:
    """Injectors with a guaranteed heal; whatever is still on is healed at teardown."""
    injector = Inject()
    try:
        yield injector
    finally:
        await injector.heal_all()


@pytest.fixture
def fake_clock() -> FakeClock:
    """A :class:`strategylab.testing.FakeClock` at 0 with autojump."""
    return FakeClock()


@pytest.fixture
def integrity_checker() -> IntegrityChecker:
    """The Jepsen-style integrity checker over an emitted ledger and a tick store."""
    return IntegrityChecker()
