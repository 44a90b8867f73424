"""Time is injected: the failover probes, the engine's loops, the exchange's heartbeats and pacing,
and the optimiser's deadlines and elapsed times follow the clock they are given, not the system's.

Every clock here is a :class:`FakeClock` that never jumps by itself: time moves only when a test
calls ``advance``, so a wait that still read the system clock would never end (or end on its own).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest

from exchange_client import WsClient
from strategylab._clock_wait import wait_within
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.exchange import Exchange, ExchangeConfig
from strategylab.market._failover_store import FailoverState, FailoverStore
from strategylab.market._spool import SpoolStore
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.research._optimizer import JobStatus, Optimizer, ParamValue
from strategylab.strategy._examples import TickTrader
from strategylab.testing import FakeClock
from strategylab.trading._engine import EngineConfig, StrategyEngine
from strategylab.trading._orders import ExchangeFill, OrderClient


def manual_clock(start: float = 0.0) -> FakeClock:
    """A fake clock that moves only when the test advances it."""
    return FakeClock(start, autojump_threshold=None)


async def wait_until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait (bounded, in real time) for another component's task to reach a point.

    What is awaited is real work (a thread, a socket, a worker process), not the passage of fake
    time, and it offers no event to wait on.
    """
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def settle() -> None:
    """Let woken tasks run for a while (no time passes on any clock)."""
    for _ in range(20):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------------------- the helper


@pytest.mark.timeout(5)
async def test_wait_within_times_out_when_the_fake_clock_reaches_the_deadline() -> None:
    """wait_within on a FakeClock raises TimeoutError exactly when the clock is advanced to it."""
    clock = manual_clock()
    never = asyncio.Event()
    waiter = asyncio.create_task(wait_within(clock, never.wait(), 5.0))
    await wait_until(lambda: clock.pending_sleepers == 1)
    clock.advance(4.9)
    await settle()
    assert not waiter.done()
    clock.advance(0.1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(waiter, 5)
    assert clock.pending_sleepers == 0


@pytest.mark.timeout(5)
@pytest.mark.parametrize("clock", [manual_clock(), SYSTEM_CLOCK], ids=["fake", "system"])
async def test_wait_within_returns_the_result_and_leaves_no_sleeper(clock: Clock) -> None:
    """Work that finishes first gives its result, on a fake clock and on the system clock."""

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert await wait_within(clock, answer(), 60.0) == 42
    if isinstance(clock, FakeClock):
        assert clock.pending_sleepers == 0


# ---------------------------------------------------------------------------------- failover


class ProbedSQLite(SQLiteTickStore):
    """A real SQLite store whose health probe answers ``healthy`` and notes when it was asked."""

    def __init__(self, path: Path, clock: FakeClock) -> None:
        super().__init__(path)
        self.clock = clock
        self.healthy = False
        self.probed_at: list[float] = []

    async def health(self) -> bool:
        self.probed_at.append(self.clock.monotonic())
        return self.healthy


@pytest.mark.timeout(15)
async def test_failover_store_probes_on_the_injected_clock(tmp_path: Path) -> None:
    """While spooling, the primary is probed every probe_interval of the fake clock, no sooner."""
    clock = manual_clock()
    primary = ProbedSQLite(tmp_path / "ticks.db", clock)
    store = FailoverStore(primary, SpoolStore(tmp_path / "spool"), probe_interval=10.0, clock=clock)
    await store.open()
    try:
        assert await store.failover() is True
        await wait_until(lambda: clock.pending_sleepers == 1)
        assert primary.probed_at == [0.0]
        assert clock.next_deadline() == 10.0
        clock.advance(9.9)
        await settle()
        assert primary.probed_at == [0.0]
        clock.advance(0.1)
        await wait_until(lambda: len(primary.probed_at) == 2 and clock.pending_sleepers == 1)
        assert primary.probed_at == [0.0, 10.0]
        primary.healthy = True
        clock.advance(10.0)
        async with asyncio.timeout(5):
            await store.wait_for_state(FailoverState.PRIMARY)
        assert primary.probed_at == [0.0, 10.0, 20.0]
        assert clock.sleeps == [10.0, 10.0]
        assert store.statistics().failed_probes == 2
    finally:
        await store.aclose()


# ---------------------------------------------------------------------------------- engine


class CountingClient(OrderClient):
    """An order client that notes, on the fake clock, when the engine polled for fills."""

    def __init__(self, url: str, clock: FakeClock) -> None:
        super().__init__(url)
        self.clock = clock
        self.polled_at: list[float] = []

    async def fills(self) -> list[ExchangeFill]:
        self.polled_at.append(self.clock.monotonic())
        return await super().fills()


@pytest.fixture
async def quiet_exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    """A real in-process exchange that emits nothing (on the system clock)."""
    ex = Exchange(
        ExchangeConfig(symbols=("A",), tick_rate=0, max_ticks=0, data_dir=tmp_path / "ex")
    )
    await ex.start()
    yield ex
    await ex.stop()


@pytest.mark.timeout(20)
async def test_engine_loops_wait_on_the_injected_clock(
    quiet_exchange: Exchange, tmp_path: Path
) -> None:
    """The fill poll runs every fill_poll_interval of the fake clock; the resolver and the state
    flush wait on it too."""
    clock = manual_clock(1_000.0)
    client = CountingClient(quiet_exchange.url, clock)
    config = EngineConfig(
        fill_poll_interval=3.0, resolve_interval=7.0, resolve_max_interval=7.0, state_interval=11.0
    )
    engine = StrategyEngine(
        [lambda: TickTrader("trader", ("A",), every=1)],
        client=client,
        db=tmp_path / "book.db",
        config=config,
        clock=clock,
    )
    await engine.start()
    try:
        await wait_until(lambda: clock.pending_sleepers == 3)  # fills, resolver, state
        assert sorted(clock.sleeps) == [3.0, 7.0, 11.0]
        before = len(client.polled_at)  # reconciliation asks for fills too, at start
        assert client.polled_at == [1_000.0] * before
        assert clock.next_deadline() == 1_003.0
        clock.advance(3.0)
        await wait_until(lambda: clock.sleeps.count(3.0) == 2)
        assert client.polled_at[before:] == [1_003.0]
        assert clock.next_deadline() == 1_006.0
        clock.advance(2.9)
        await settle()
        assert client.polled_at[before:] == [1_003.0]
        clock.advance(0.1)
        await wait_until(lambda: clock.sleeps.count(3.0) == 3)
        assert client.polled_at[before:] == [1_003.0, 1_006.0]
    finally:
        await engine.aclose()


# ---------------------------------------------------------------------------------- exchange


@pytest.mark.timeout(15)
async def test_exchange_heartbeats_follow_the_injected_clock(tmp_path: Path) -> None:
    """A subscriber gets a heartbeat each heartbeat_interval of the fake clock, stamped with it."""
    clock = manual_clock(1_000.0)
    config = ExchangeConfig(
        symbols=("A",), tick_rate=0, max_ticks=0, heartbeat_interval=30.0, data_dir=tmp_path
    )
    exchange = Exchange(config, clock=clock)
    await exchange.start()
    client = await WsClient.connect(exchange.ws_url)
    try:
        await client.subscribe()
        assert clock.sleeps == [30.0]
        assert clock.next_deadline() == 1_030.0
        clock.advance(30.0)
        async with asyncio.timeout(5):
            kind, beat = await client.next()
        assert kind == "heartbeat"
        assert beat.ts == 1_030 * 10**9
        await wait_until(lambda: clock.sleeps == [30.0, 30.0])
        assert clock.next_deadline() == 1_060.0
        clock.advance(30.0)
        async with asyncio.timeout(5):
            kind, beat = await client.next()
        assert (kind, beat.ts) == ("heartbeat", 1_060 * 10**9)
    finally:
        await client.close()
        await exchange.stop()


@pytest.mark.timeout(15)
async def test_exchange_paces_ticks_on_the_injected_clock(tmp_path: Path) -> None:
    """With tick_rate 10, one fake second emits exactly 10 ticks, stamped on the fake clock."""
    clock = manual_clock(1_000.0)
    config = ExchangeConfig(
        symbols=("A",), tick_rate=10, heartbeat_interval=3_600.0, data_dir=tmp_path
    )
    exchange = Exchange(config, clock=clock)
    await exchange.start()
    try:
        await wait_until(lambda: clock.pending_sleepers == 2)  # the generator and the heartbeats
        assert exchange.ticks_emitted == 0
        clock.advance(1.0)
        await wait_until(lambda: exchange.ticks_emitted == 10 and clock.pending_sleepers == 2)
        assert exchange.ticks_emitted == 10
        quote = exchange.book.quote("A")
        assert quote is not None
    finally:
        await exchange.stop()


# ---------------------------------------------------------------------------------- optimiser


def make_spec(parameters: Mapping[str, ParamValue], scope: float) -> dict[str, object]:
    """The spec the job takes: the parameters plus the scope."""
    return {**parameters, "scope": scope}


def quick_or_stuck_job(spec: dict[str, object]) -> dict[str, float]:
    """Run in a worker: answer at once, or (``stuck``) block for longer than any test runs."""
    if spec.get("stuck"):
        time.sleep(60)
    return {"pnl": 1.0}


@pytest.mark.timeout(60)
async def test_optimizer_job_timeout_and_elapsed_read_the_injected_clock() -> None:
    """A job overruns when the fake clock passes its timeout; elapsed times are fake seconds."""
    clock = manual_clock()
    optimizer: Optimizer[dict[str, object]] = Optimizer(
        quick_or_stuck_job,
        make_spec,
        max_workers=1,
        timeout=100.0,
        startup_timeout=1_000.0,
        max_shrinks=0,
        clock=clock,
    )
    run = asyncio.create_task(optimizer.arun([{"stuck": False}, {"stuck": True}]))
    try:
        # Worker start (1000), the quick job (100), then the stuck job (100) waiting on the clock.
        await wait_until(lambda: len(clock.sleeps) == 3 and clock.pending_sleepers == 1, 30.0)
        assert clock.sleeps == [1_000.0, 100.0, 100.0]
        assert not run.done()
        clock.advance(100.0)
        async with asyncio.timeout(30):
            report = await run
    finally:
        if not run.done():
            optimizer.cancel()
            await asyncio.wait({run})
    quick, stuck = report.results
    assert (quick.status, quick.elapsed) == (JobStatus.OK, 0.0)
    assert (stuck.status, stuck.elapsed) == (JobStatus.SKIPPED, 100.0)
    assert stuck.reason == "overran 100s at scope 1"
    assert report.elapsed == 100.0
