"""The SQLite WAL gives its disk back after a long reader pinned it during ingest."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.market._tick import Tick

LIMIT = 2 * 1024 * 1024
BATCH = 20_000


def ticks(symbol: str, first: int, last: int) -> list[Tick]:
    return [
        Tick(symbol, seq, 1_000 + seq, 100.0 + seq / 1e4, 100.5 + seq / 1e4, 1.0, 2.0)
        for seq in range(first, last + 1)
    ]


def wal_size(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return wal.stat().st_size if wal.exists() else 0


async def ingest_pinned(store: SQLiteTickStore, db: Path, batches: int) -> tuple[int, int]:
    """Write ``batches`` batches while another connection holds a read transaction open;
    returns (the last sequence written, the WAL size just before the reader left)."""
    with closing(sqlite3.connect(db, isolation_level=None)) as reader:
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM ticks").fetchone()[0] == BATCH
        for n in range(1, batches + 1):
            await store.write(ticks("A", n * BATCH + 1, (n + 1) * BATCH))
        pinned = wal_size(db)
        reader.execute("COMMIT")
    return (batches + 1) * BATCH, pinned


@pytest.mark.timeout(60)
async def test_wal_shrinks_once_the_reader_leaves_and_writes_go_on(tmp_path: Path) -> None:
    """A reader pins the WAL past the limit; after it leaves, the next commits bring the file
    back under ``wal_size_limit``."""
    db = tmp_path / "ticks.db"
    store = SQLiteTickStore(db, wal_size_limit=LIMIT)
    await store.open()
    try:
        await store.write(ticks("A", 1, BATCH))
        last, pinned = await ingest_pinned(store, db, batches=10)
        assert pinned > 3 * LIMIT
        sizes = []
        for n in range(10):
            first = last + n * 100 + 1
            await store.write(ticks("A", first, first + 99))
            sizes.append(wal_size(db))
        assert sizes[-1] <= LIMIT, sizes
        assert store.wal_truncations >= 1
        assert await store.count() == last + 1_000
    finally:
        await store.aclose()


@pytest.mark.timeout(60)
async def test_wal_shrinks_at_the_next_health_check_when_writes_stop(tmp_path: Path) -> None:
    """With no write after the reader leaves, the next health check truncates the WAL."""
    db = tmp_path / "ticks.db"
    store = SQLiteTickStore(db, wal_size_limit=LIMIT)
    await store.open()
    try:
        await store.write(ticks("A", 1, BATCH))
        last, pinned = await ingest_pinned(store, db, batches=10)
        assert wal_size(db) == pinned > 3 * LIMIT
        assert await store.health() is True
        assert wal_size(db) <= LIMIT
        assert await store.count() == last
    finally:
        await store.aclose()


@pytest.mark.timeout(60)
async def test_reader_still_pinning_does_not_block_writes(tmp_path: Path) -> None:
    """While the reader stays, the truncation attempt never waits for it: each batch commits
    promptly and the reader's snapshot is intact."""
    db = tmp_path / "ticks.db"
    store = SQLiteTickStore(db, wal_size_limit=LIMIT, busy_timeout=5.0)
    await store.open()
    try:
        await store.write(ticks("A", 1, BATCH))
        with closing(sqlite3.connect(db, isolation_level=None)) as reader:
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM ticks").fetchone()
            started = time.monotonic()
            for n in range(1, 8):
                await store.write(ticks("A", n * BATCH + 1, (n + 1) * BATCH))
            assert await store.health() is True
            # One checkpoint waiting for the reader would take busy_timeout (5 s) by itself.
            assert time.monotonic() - started < 4.0
            assert wal_size(db) > LIMIT
            assert reader.execute("SELECT COUNT(*) FROM ticks").fetchone()[0] == BATCH
            reader.execute("COMMIT")
        assert store.wal_truncations == 0
    finally:
        await store.aclose()
