"""The pytest plugin: the example test passes, the fixtures heal and clean up, the marker exists."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from strategylab.chaos import ProxyToxic, Toxic
from strategylab.chaos.pytest_plugin import FaultProxies, Inject, IntegrityChecker
from strategylab.market import AckLog, EmittedLog, SQLiteTickStore, Tick
from strategylab.testing import FakeClock

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "test_chaos_example.py"


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    """A real TCP echo service: its ``host:port``."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def _round_trip(address: str, deadline: float) -> bytes:
    host, port = address.rsplit(":", 1)
    async with asyncio.timeout(deadline):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"ping")
            await writer.drain()
            return await reader.readexactly(4)
        finally:
            writer.close()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_the_documented_example_passes_under_the_installed_plugin(
    pytester: pytest.Pytester,
) -> None:
    """docs/examples/test_chaos_example.py passes in a fresh pytest (plugin by entry point,
    pytest-asyncio in its default strict mode, ``--strict-markers``)."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_chaos_example=EXAMPLE.read_text())
    result = pytester.runpytest_subprocess("--strict-markers", "-W", "error", "-p", "no:randomly")
    result.assert_outcomes(passed=1)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_the_chaos_marker_selects_chaos_tests(pytester: pytest.Pytester) -> None:
    """``@pytest.mark.chaos`` is registered, so ``-m chaos`` and ``--strict-markers`` work."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.chaos
        def test_chaos():
            pass

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--strict-markers", "-m", "chaos", "-p", "no:randomly")
    result.assert_outcomes(passed=1, deselected=1)


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_fault_proxy_forwards_and_is_stopped_at_teardown(echo: str) -> None:
    """A proxy from the factory forwards to the address; aclose (teardown) stops it."""
    proxies = FaultProxies()
    proxy = await proxies(echo, name="echo")
    assert await _round_trip(proxy.listen, 2.0) == b"ping"
    await proxies.aclose()
    assert proxies.proxies == ()
    with pytest.raises(OSError):
        await _round_trip(proxy.listen, 2.0)


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_the_fixtures_are_installed_in_this_suite(
    echo: str, fault_proxy: FaultProxies, inject: Inject, fake_clock: FakeClock
) -> None:
    """The plugin's fixtures reach this suite through the entry point and work together."""
    proxy = await fault_proxy(echo)
    async with inject.toxic(proxy, "blackhole", stream="both"):
        assert sorted(t.stream.value for t in proxy.toxics) == ["downstream", "upstream"]
        with pytest.raises(TimeoutError):
            await _round_trip(proxy.listen, 0.2)
    assert proxy.toxics == ()
    assert await _round_trip(proxy.listen, 2.0) == b"ping"
    await fake_clock.asleep(60)
    assert fake_clock.monotonic() == 60


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_a_fault_left_on_is_healed_at_teardown(echo: str) -> None:
    """``inject.start`` leaves a fault on; the teardown's ``heal_all`` switches it off."""
    proxies = FaultProxies()
    proxy = await proxies(echo)
    try:
        injector = Inject()
        toxic = Toxic.build("latency", name="slow", attributes={"latency": 300})
        await injector.start(ProxyToxic(proxy, [toxic]))
        assert list(proxy.toxics) == [toxic]
        assert injector.guard.active
        await injector.heal_all()
        assert proxy.toxics == ()
        assert not injector.guard.active
    finally:
        await proxies.aclose()


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_a_heal_that_raises_fails_the_teardown(echo: str) -> None:
    """A heal that fails is reported as an AssertionError naming the fault, never ignored."""

    class Broken(ProxyToxic):
        async def _heal(self) -> None:
            raise RuntimeError("stuck")

    proxies = FaultProxies()
    proxy = await proxies(echo)
    try:
        injector = Inject()
        toxic = Toxic.build("latency", name="slow", attributes={"latency": 10})
        await injector.start(Broken(proxy, [toxic], name="network.stuck"))
        with pytest.raises(AssertionError, match=r"network\.stuck.*stuck"):
            await injector.heal_all()
    finally:
        await proxies.aclose()


def _ticks(n: int) -> list[Tick]:
    return [
        Tick("AAPL", seq, 1_700_000_000 + seq, 99.5, 100.5, 1.0, 2.0) for seq in range(1, n + 1)
    ]


@pytest.mark.timeout(30)
async def test_integrity_checker_finds_a_lost_acknowledged_tick(tmp_path: Path) -> None:
    """Over a real emitted ledger and SQLite store: clean passes, a lost acked tick fails."""
    ticks = _ticks(20)
    emitted = EmittedLog(tmp_path / "emitted.log")
    emitted.append(ticks)
    emitted.close()
    acks = AckLog(tmp_path / "acks.jsonl")
    acks.append({"AAPL": 20})
    acks.close()
    store = SQLiteTickStore(tmp_path / "ticks.db")
    await store.open()
    try:
        await store.write([t for t in ticks if t.seq != 7])
    finally:
        await store.aclose()
    checker = IntegrityChecker()
    report = await checker(emitted.path, tmp_path / "ticks.db", acks.path)
    assert report.lost.count == 1
    with pytest.raises(AssertionError, match="lost 1"):
        checker.assert_ok(report)
