"""SQLiteTickStore with many interleaved symbols: the batch is sorted by (symbol, seq) before the
insert and the page cache is large, without changing what is stored or how files open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from strategylab.market._sqlite_store import CACHE_KIB, PAGE_SIZE, WAL_SIZE_LIMIT, SQLiteTickStore
from strategylab.market._tick import Tick

# The research reader's query (strategylab.research._data): it must stay correct on these files.
RESEARCH_SQL = (
    "SELECT seq, ts, bid, ask, bid_size, ask_size FROM ticks "
    "WHERE symbol = ? AND seq BETWEEN ? AND ? ORDER BY seq"
)
# The tick table exactly as every earlier version of the store created it.
OLD_TICKS_DDL = (
    "CREATE TABLE IF NOT EXISTS ticks ("
    "symbol TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL, "
    "bid REAL NOT NULL, ask REAL NOT NULL, bid_size REAL NOT NULL, ask_size REAL NOT NULL, "
    "PRIMARY KEY (symbol, seq)) WITHOUT ROWID"
)


def tick(symbol: str, seq: int, price: float) -> Tick:
    return Tick(symbol, seq, 1_000 + seq, price, price + 0.5, 1.0, 2.0)


def interleaved(symbols: int, first: int, last: int, price: float) -> list[Tick]:
    """Ticks as a many-symbol feed delivers them: seq by seq, every symbol in turn."""
    return [
        tick(f"S{n:04d}", seq, price)
        for seq in range(first, last + 1)
        for n in reversed(range(symbols))
    ]


@pytest.mark.timeout(20)
async def test_interleaved_symbols_stored_once_first_occurrence_wins(tmp_path: Path) -> None:
    """1,000 interleaved symbols: every tick stored once; a rewritten or overlapping batch keeps
    the stored values, and a (symbol, seq) repeated in one batch keeps its first occurrence
    (the sort before the insert is stable)."""
    store = SQLiteTickStore(tmp_path / "ticks.db")
    await store.open()
    try:
        assert await store.write(interleaved(1000, 1, 5, 1.0)) == 5000
        assert await store.write(interleaved(1000, 1, 5, 2.0)) == 0
        assert await store.write(interleaved(1000, 4, 8, 3.0)) == 3000
        repeated = [tick("S0007", 9, 4.0), tick("S0001", 9, 4.0), tick("S0007", 9, 5.0)]
        assert await store.write(repeated) == 2
        assert await store.count() == 8002
        assert await store.duplicates() == 0
        assert await store.read("S0007") == [
            *(tick("S0007", seq, 1.0) for seq in range(1, 6)),
            *(tick("S0007", seq, 3.0) for seq in range(6, 9)),
            tick("S0007", 9, 4.0),
        ]
        seqs = await store.last_seqs()
        assert len(seqs) == 1000
        assert seqs["S0007"] == seqs["S0001"] == 9
        assert seqs["S0999"] == 8
    finally:
        await store.aclose()


@pytest.mark.timeout(20)
async def test_the_store_connection_has_the_large_page_cache(tmp_path: Path) -> None:
    """The writer's connection runs with CACHE_KIB of page cache, also after a health probe
    (which shrinks it for its own write and must put it back)."""
    store = SQLiteTickStore(tmp_path / "ticks.db")
    await store.open()
    try:
        assert await store.health() is True
        rows = await store._query("PRAGMA cache_size", ())  # the live connection
        assert rows == [(-CACHE_KIB,)]
        assert CACHE_KIB >= 16_384  # 1,000 symbols' hot leaves (4 MB) and interior pages
    finally:
        await store.aclose()


@pytest.mark.timeout(20)
async def test_a_file_written_by_the_older_store_opens_and_reads_correctly(tmp_path: Path) -> None:
    """A file made the old way (same table, rows in arrival order, default pragmas) passes the
    checks on open, takes sorted batches, and the research query reads every symbol right."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(OLD_TICKS_DDL)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT OR IGNORE INTO ticks VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (t.symbol, t.seq, t.ts, t.bid, t.ask, t.bid_size, t.ask_size)
            for t in interleaved(50, 1, 20, 1.0)
        ],
    )
    conn.execute("COMMIT")
    conn.close()
    store = SQLiteTickStore(path)
    await store.open()
    try:
        assert store.rebuilt is None
        assert await store.write(interleaved(50, 15, 30, 2.0)) == 500
    finally:
        await store.aclose()
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        got = reader.execute(RESEARCH_SQL, ("S0031", 18, 23)).fetchall()
        plan = " ".join(
            str(r[-1])
            for r in reader.execute("EXPLAIN QUERY PLAN " + RESEARCH_SQL, ("S0031", 1, 2))
        )
    finally:
        reader.close()
    assert got == [
        (seq, 1_000 + seq, p, p + 0.5, 1.0, 2.0)
        for seq, p in [(18, 1.0), (19, 1.0), (20, 1.0), (21, 2.0), (22, 2.0), (23, 2.0)]
    ]
    assert "USING PRIMARY KEY" in plan  # a seek on (symbol, seq), no sort, no scan
    assert "TEMP B-TREE" not in plan


def _wal_size(db: Path) -> int:
    return Path(f"{db}-wal").stat().st_size


def _pragma(path: Path, name: str) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute(f"PRAGMA {name}").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.timeout(20)
async def test_a_new_file_gets_the_small_page_size_an_old_one_keeps_its_own(
    tmp_path: Path,
) -> None:
    """A file the store creates has PAGE_SIZE pages (fewer WAL bytes per dirty leaf); a file
    created with SQLite's default 4,096 keeps it, opens clean and takes writes."""
    new = tmp_path / "new.db"
    store = SQLiteTickStore(new)
    await store.open()
    try:
        assert await store.write(interleaved(20, 1, 3, 1.0)) == 60
    finally:
        await store.aclose()
    assert PAGE_SIZE == 2048
    assert _pragma(new, "page_size") == PAGE_SIZE
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(OLD_TICKS_DDL)
    conn.close()
    assert _pragma(old, "page_size") == 4096
    store = SQLiteTickStore(old)
    await store.open()
    try:
        assert store.rebuilt is None
        assert await store.write(interleaved(20, 1, 3, 1.0)) == 60
        assert await store.count() == 60
    finally:
        await store.aclose()
    assert _pragma(old, "page_size") == 4096


@pytest.mark.timeout(60)
async def test_many_symbol_ingest_keeps_the_wal_under_its_limit_without_truncating(
    tmp_path: Path,
) -> None:
    """With no reader, SQLite's own checkpoint at half of ``wal_size_limit`` keeps the WAL file
    under the limit after every commit of 200 interleaved symbols (each commit a few hundred
    KB of WAL), and no TRUNCATE checkpoint is needed (the store's default limit is
    WAL_SIZE_LIMIT)."""
    limit = 2 * 1024 * 1024
    db = tmp_path / "ticks.db"
    store = SQLiteTickStore(db, wal_size_limit=limit)
    await store.open()
    try:
        rows = await store._query("PRAGMA wal_autocheckpoint", ())
        assert rows == [(limit // 2 // PAGE_SIZE,)]
        sizes = []
        for n in range(16):
            assert await store.write(interleaved(200, 5 * n + 1, 5 * n + 5, 1.0)) == 1000
            sizes.append(_wal_size(db))
        assert max(sizes) <= limit, sizes
        assert max(sizes) > limit // 2, sizes  # the WAL was used, not checkpointed per commit
        assert store.wal_truncations == 0
        assert await store.count() == 16_000
    finally:
        await store.aclose()
    assert SQLiteTickStore(db)._wal_limit == WAL_SIZE_LIMIT == 64 * 1024 * 1024
