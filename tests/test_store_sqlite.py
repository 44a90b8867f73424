"""SQLiteTickStore against real files: idempotency, ranges, quarantine, durability, storage full."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from strategylab.fault_tolerance import ErrorType, classify
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.market._store import QuarantinedTick, TickStore
from strategylab.market._tick import Tick


def ticks(symbol: str, first: int, last: int) -> list[Tick]:
    return [
        Tick(symbol, seq, 1_000 + seq, 100.0 + seq, 100.5 + seq, 1.0, 2.0)
        for seq in range(first, last + 1)
    ]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteTickStore]:
    s = SQLiteTickStore(tmp_path / "ticks.db")
    await s.open()
    try:
        yield s
    finally:
        await s.aclose()


@pytest.mark.timeout(10)
async def test_store_satisfies_protocols(store: SQLiteTickStore) -> None:
    """The store is a TickStore and its health() round trip succeeds."""
    assert isinstance(store, TickStore)
    assert await store.health() is True


@pytest.mark.timeout(10)
async def test_same_batch_twice_is_stored_once(store: SQLiteTickStore) -> None:
    """Writing a batch again adds nothing: the count of new rows is 0 and no duplicates exist."""
    batch = ticks("AAA", 1, 100)
    assert await store.write(batch) == 100
    assert await store.write(batch) == 0
    assert await store.write([*ticks("AAA", 90, 110)]) == 10
    assert await store.count() == 110
    assert await store.duplicates() == 0


@pytest.mark.timeout(10)
async def test_last_seqs_and_symbols(store: SQLiteTickStore) -> None:
    """last_seqs gives the highest sequence per symbol; symbols lists each once."""
    await store.write([*ticks("AAA", 1, 7), *ticks("BBB", 1, 3)])
    assert await store.last_seqs() == {"AAA": 7, "BBB": 3}
    assert await store.symbols() == ["AAA", "BBB"]


@pytest.mark.timeout(10)
async def test_read_returns_inclusive_range_in_order(store: SQLiteTickStore) -> None:
    """read() returns exactly the requested inclusive range, in sequence order, intact."""
    batch = ticks("AAA", 1, 50)
    await store.write(list(reversed(batch)))
    assert await store.read("AAA", 10, 20) == batch[9:20]
    assert await store.read("AAA") == batch
    assert await store.read("ZZZ") == []


@pytest.mark.timeout(10)
async def test_quarantine_round_trip(store: SQLiteTickStore) -> None:
    """Quarantined entries come back with their reasons, in order."""
    entries = [
        QuarantinedTick(received_ns=1, reason="crossed quote", raw="Tick(...)", symbol="A", seq=3),
        QuarantinedTick(received_ns=2, reason="bad frame", raw="deadbeef"),
    ]
    await store.quarantine(entries)
    assert await store.quarantined() == entries


@pytest.mark.timeout(10)
async def test_committed_batch_survives_reopen(tmp_path: Path) -> None:
    """A batch write() returned for is in the file when opened by a fresh connection."""
    path = tmp_path / "durable.db"
    first = SQLiteTickStore(path)
    await first.open()
    await first.write(ticks("AAA", 1, 10))
    await first.aclose()
    await first.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM ticks").fetchone()[0] == 10


@pytest.mark.timeout(10)
async def test_write_does_not_block_the_event_loop(store: SQLiteTickStore) -> None:
    """While a large batch commits on the writer thread, other coroutines keep running."""
    ticked = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticked
        while not done.is_set():
            ticked += 1
            await asyncio.sleep(0)

    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        tg.create_task(ticker())
        await store.write(ticks("AAA", 1, 30_000))
        done.set()
    assert ticked > 1


@pytest.mark.timeout(15)
async def test_sqlite_full_surfaces_and_store_recovers(tmp_path: Path) -> None:
    """SQLITE_FULL (max_page_count) surfaces as sqlite3.Error, nothing partial, usable after."""
    store = SQLiteTickStore(tmp_path / "capped.db")
    await store.open()
    try:
        await store.write(ticks("AAA", 1, 10))
        await store._run(lambda: store._ensure().execute("PRAGMA max_page_count = 20"))
        with pytest.raises(sqlite3.Error) as caught:
            await store.write(ticks("AAA", 11, 20_000))
        assert caught.value.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL
        assert classify(caught.value, component="store") is ErrorType.DISK_SPACE_EXHAUSTED
        # The failed batch left nothing behind, and (after the reopen) the cap is gone.
        assert await store.count() == 10
        assert await store.write(ticks("AAA", 11, 20_000)) == 19_990
        assert store.reopens == 1
    finally:
        await store.aclose()
