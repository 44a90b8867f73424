"""FailoverStore with real faults: a full tmpfs under SQLite, a PostgreSQL outage."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import psycopg
import pytest

from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType
from strategylab.market._failover_store import FailoverState, FailoverStore
from strategylab.market._pg_store import PostgresTickStore
from strategylab.market._spool import SpoolStore
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.market._store import TickStore
from strategylab.market._tick import Tick
from volumes import fill, tmpfs

DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
SYMBOLS = ("AAA", "BBB", "CCC")


class Feed:
    """Consecutive batches across a few symbols, remembering everything acknowledged."""

    def __init__(self, per_symbol: int = 100) -> None:
        self.per_symbol = per_symbol
        self.next_seq = dict.fromkeys(SYMBOLS, 1)
        self.acked: list[Tick] = []

    def batch(self) -> list[Tick]:
        out = []
        for symbol in SYMBOLS:
            first = self.next_seq[symbol]
            out += [
                Tick(symbol, seq, seq * 1_000, 100.0, 100.5, 1.0, 2.0)
                for seq in range(first, first + self.per_symbol)
            ]
            self.next_seq[symbol] = first + self.per_symbol
        return out

    async def send(self, store: TickStore) -> None:
        batch = self.batch()
        await store.write(batch)
        self.acked += batch


def state_of(store: FailoverStore) -> FailoverState:
    return store.state


async def assert_complete(store: TickStore, feed: Feed) -> None:
    assert await store.duplicates() == 0
    for symbol in SYMBOLS:
        expected = [t for t in feed.acked if t.symbol == symbol]
        assert await store.read(symbol) == expected


class OrderedSQLite(SQLiteTickStore):
    """A real SQLite store that checks each symbol's ticks arrive in increasing order."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.highest: dict[str, int] = {}
        self.reordered: list[tuple[str, int]] = []
        self.stored: set[tuple[str, int]] = set()

    async def write(self, ticks: Sequence[Tick]) -> int:
        written = await super().write(ticks)
        for tick in ticks:
            # A re-drained tick may repeat one already stored; a NEW tick below the highest
            # stored one of its symbol arrived out of order.
            key = (tick.symbol, tick.seq)
            if key not in self.stored and tick.seq < self.highest.get(tick.symbol, 0):
                self.reordered.append(key)
            self.stored.add(key)
            self.highest[tick.symbol] = max(self.highest.get(tick.symbol, 0), tick.seq)
        return written


# ---------------------------------------------------------------------------- storage full, real


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "vol", 4) as mountpoint:
        yield mountpoint


@pytest.mark.timeout(30)
async def test_sqlite_on_full_tmpfs_spools_then_drains_after_space_returns(
    tmp_path: Path, small_volume: Path
) -> None:
    """SQLite on a full tmpfs → spool (DISK_SPACE_EXHAUSTED recovered by failover) → space back →
    drained in order: nothing lost, nothing duplicated."""
    manager = ErrorRecoveryManager(capture_state=False)
    primary = OrderedSQLite(small_volume / "ticks.db")
    store = FailoverStore(
        primary, SpoolStore(tmp_path / "spool"), manager=manager, probe_interval=0.02
    )
    manager.register(store)
    await store.open()
    feed = Feed()
    try:
        async with asyncio.timeout(25):
            for _ in range(3):
                await feed.send(store)
            assert store.state is FailoverState.PRIMARY
            ballast = small_volume / "ballast"
            assert fill(ballast) > 0
            for _ in range(200):
                await feed.send(store)
                if state_of(store) is not FailoverState.PRIMARY:
                    break
            assert store.statistics().failovers == 1
            stats = manager.statistics()
            assert stats.error_type_distribution.get(ErrorType.DISK_SPACE_EXHAUSTED) == 1
            assert stats.successful_recoveries == 1
            for _ in range(5):
                await feed.send(store)
            assert await store.health() is True
            assert store.spool.pending_batches >= 6
            last = await store.last_seqs()
            assert last == {s: feed.next_seq[s] - 1 for s in SYMBOLS}
            ballast.unlink()
            await store.wait_for_state(FailoverState.PRIMARY)
            await feed.send(store)
        async with asyncio.timeout(10):
            await assert_complete(primary, feed)
        assert primary.reordered == []
        assert store.spool.is_empty()
        final = store.statistics()
        assert final.failbacks == 1
        assert final.batches_drained >= 6
    finally:
        await store.aclose()


@pytest.mark.timeout(20)
async def test_writes_during_drain_keep_per_symbol_order(tmp_path: Path) -> None:
    """Batches written while a large spool drains reach the primary after it, in order."""
    feed = Feed(per_symbol=200)
    # A spool left by an earlier run: the store opens SPOOLING and drains it in the background.
    leftover = SpoolStore(tmp_path / "spool")
    await leftover.open()
    for _ in range(100):
        batch = feed.batch()
        await leftover.write(batch)
        feed.acked += batch
    await leftover.aclose()
    primary = OrderedSQLite(tmp_path / "ticks.db")
    store = FailoverStore(primary, SpoolStore(tmp_path / "spool"), probe_interval=0.01)
    await store.open()
    try:
        assert store.state is FailoverState.SPOOLING
        async with asyncio.timeout(15):
            while state_of(store) is not FailoverState.PRIMARY:
                await feed.send(store)
            await feed.send(store)
        assert store.statistics().batches_to_spool >= 1
        async with asyncio.timeout(10):
            await assert_complete(primary, feed)
        assert primary.reordered == []
        assert store.statistics().failbacks == 1
    finally:
        await store.aclose()


class ProbeCrash(BaseException):
    """Not an Exception: escapes the probe's error handling and kills the failback task."""


class CrashingProbeSQLite(SQLiteTickStore):
    """A real SQLite store whose health probe raises :class:`ProbeCrash`."""

    async def health(self) -> bool:
        raise ProbeCrash


@pytest.mark.timeout(10)
async def test_dead_failback_task_fails_wait_for_state_fast(tmp_path: Path) -> None:
    """If the failback task dies, wait_for_state raises at once instead of waiting forever."""
    store = FailoverStore(
        CrashingProbeSQLite(tmp_path / "ticks.db"),
        SpoolStore(tmp_path / "spool"),
        probe_interval=0.01,
    )
    await store.open()
    try:
        assert await store.failover() is True
        async with asyncio.timeout(5):
            with pytest.raises(RuntimeError, match="failback task died") as caught:
                await store.wait_for_state(FailoverState.PRIMARY)
        assert isinstance(caught.value.__cause__, ProbeCrash)
        assert store.state is not FailoverState.PRIMARY
    finally:
        await store.aclose()


# ---------------------------------------------------------------------------- PostgreSQL outage


@pytest.fixture
async def pg_role() -> AsyncIterator[tuple[str, psycopg.AsyncConnection[tuple[object, ...]]]]:
    try:
        admin = await psycopg.AsyncConnection.connect(DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {DSN!r} is unreachable; this test needs the real server: {exc}")
    role = f"store_failover_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    await admin.execute(f'GRANT CREATE ON DATABASE test TO "{role}"')
    try:
        yield role, admin
    finally:
        await admin.execute(f'ALTER ROLE "{role}" LOGIN')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        await admin.execute(f'DROP SCHEMA IF EXISTS "{role}" CASCADE')
        await admin.execute(f'REVOKE CREATE ON DATABASE test FROM "{role}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


@pytest.mark.timeout(30)
async def test_postgres_outage_spools_then_drains(
    tmp_path: Path, pg_role: tuple[str, psycopg.AsyncConnection[tuple[object, ...]]]
) -> None:
    """PostgreSQL refuses the node (backends terminated, logins blocked) → spool → logins allowed
    again → drained in order, nothing lost or duplicated."""
    role, admin = pg_role
    manager = ErrorRecoveryManager(capture_state=False)
    primary = PostgresTickStore(
        f"host=127.0.0.1 port=5432 dbname=test user={role}", schema=role, connect_timeout=2
    )
    store = FailoverStore(
        primary, SpoolStore(tmp_path / "spool"), manager=manager, probe_interval=0.05
    )
    manager.register(store)
    await store.open()
    feed = Feed()
    try:
        async with asyncio.timeout(25):
            await feed.send(store)
            await admin.execute(f'ALTER ROLE "{role}" NOLOGIN')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            for _ in range(5):
                await feed.send(store)
            assert store.state is not FailoverState.PRIMARY
            stats = manager.statistics()
            assert stats.error_type_distribution.get(ErrorType.DATABASE_CONNECTION_LOST) == 1
            assert stats.successful_recoveries == 1
            assert store.spool.pending_batches == 5
            await admin.execute(f'ALTER ROLE "{role}" LOGIN')
            await store.wait_for_state(FailoverState.PRIMARY)
            await feed.send(store)
        await assert_complete(primary, feed)
        assert store.spool.is_empty()
        assert store.statistics().batches_to_primary == 2
    finally:
        await store.aclose()


@pytest.mark.timeout(15)
async def test_unreachable_primary_at_open_spools(tmp_path: Path) -> None:
    """A primary on a closed port: open() fails over, writes are acknowledged by the spool."""
    primary = PostgresTickStore(
        "host=127.0.0.1 port=1 dbname=test user=postgres", connect_timeout=1
    )
    manager = ErrorRecoveryManager(capture_state=False)
    store = FailoverStore(
        primary, SpoolStore(tmp_path / "spool"), manager=manager, probe_interval=0.05
    )
    manager.register(store)
    await store.open()
    feed = Feed(per_symbol=5)
    try:
        await feed.send(store)
        assert store.state is FailoverState.SPOOLING
        assert await store.health() is True
        assert list(store.spool.pending()) == [feed.acked]
        assert (
            manager.statistics().error_type_distribution.get(ErrorType.DATABASE_CONNECTION_LOST)
            == 1
        )
    finally:
        await store.aclose()
