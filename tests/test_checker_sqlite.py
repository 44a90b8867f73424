"""The integrity checker against the real SQLite tick store, with faults planted in the file."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, closing
from pathlib import Path

import msgspec
import pytest

from strategylab.chaos._checker import IntegrityReport, check
from strategylab.market._ledger import AckLog, EmittedLog
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.market._store import QuarantinedTick
from strategylab.market._tick import Tick, validate_tick

SYMBOLS = ("AAPL", "MSFT", "TSLA")
T0 = 1_700_000_000_000_000_000


def make_ticks(per_symbol: int) -> list[Tick]:
    """Interleaved ticks with non-trivial float payloads, seq from 1 per symbol."""
    out: list[Tick] = []
    ts = T0
    for seq in range(1, per_symbol + 1):
        for i, symbol in enumerate(SYMBOLS):
            ts += 1
            mid = 100.0 + i + math.sin(seq / 13.0) / 3.0
            out.append(Tick(symbol, seq, ts, mid - 0.01, mid + 0.01, seq / 7.0, 1.0 / seq))
    return out


def emit(tmp_path: Path, ticks: Sequence[Tick]) -> Path:
    """Write the emitted log, 100 ticks a record, as the exchange does."""
    log = EmittedLog(tmp_path / "emitted.log")
    for i in range(0, len(ticks), 100):
        log.append(list(ticks[i : i + 100]))
    log.close()
    return log.path


def ack(tmp_path: Path, ticks: Sequence[Tick]) -> Path:
    """An ack log acknowledging every tick, one watermark line per symbol."""
    log = AckLog(tmp_path / "acks.jsonl")
    marks: dict[str, int] = {}
    for t in ticks:
        marks[t.symbol] = max(marks.get(t.symbol, 0), t.seq)
    log.append(marks)
    log.close()
    return log.path


@asynccontextmanager
async def opened(path: Path) -> AsyncIterator[SQLiteTickStore]:
    """An open SQLiteTickStore, closed on exit."""
    store = SQLiteTickStore(path, synchronous="NORMAL")
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def stored(path: Path, ticks: Sequence[Tick]) -> None:
    """Write ``ticks`` through the real store."""
    async with opened(path) as store:
        assert await store.write(ticks) == len(ticks)


def execute(path: Path, sql: str, *params: object) -> None:
    """Plant a fault directly in the database file, as a crash or a bug would."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(sql, params)


async def checked(
    db: Path, emitted: Path, acks: Path | None = None, *, require_complete: bool = False
) -> IntegrityReport:
    """Open the store, check it, close it."""
    async with asyncio.timeout(20), opened(db) as store:
        return await check(emitted, store, acks, require_complete=require_complete)


@pytest.mark.timeout(30)
async def test_clean_sqlite_run_is_ok(tmp_path: Path) -> None:
    """Ticks written through the real store and read back compare equal, bit for bit."""
    ticks = make_ticks(2000)
    db = tmp_path / "ticks.db"
    await stored(db, ticks)
    report = await checked(db, emit(tmp_path, ticks), ack(tmp_path, ticks), require_complete=True)
    assert report.ok, report.summary()
    assert (report.emitted, report.stored, report.acknowledged) == (6000, 6000, 6000)


@pytest.mark.timeout(30)
async def test_row_deleted_from_sqlite_is_lost(tmp_path: Path) -> None:
    """An acknowledged row deleted from the SQLite file is reported lost."""
    ticks = make_ticks(500)
    db = tmp_path / "ticks.db"
    await stored(db, ticks)
    execute(db, "DELETE FROM ticks WHERE symbol = ? AND seq = ?", "MSFT", 321)
    report = await checked(db, emit(tmp_path, ticks), ack(tmp_path, ticks))
    assert not report.ok
    assert report.lost.items == (("MSFT", 321),)
    assert [(g.symbol, g.first, g.last) for g in report.gaps] == [("MSFT", 321, 321)]


@pytest.mark.timeout(30)
async def test_bid_one_ulp_off_in_sqlite_is_corrupted(tmp_path: Path) -> None:
    """A REAL column changed by one ulp is a corruption of the bid, nothing else."""
    ticks = make_ticks(500)
    db = tmp_path / "ticks.db"
    await stored(db, ticks)
    good = next(t for t in ticks if t.symbol == "AAPL" and t.seq == 250)
    execute(
        db,
        "UPDATE ticks SET bid = ? WHERE symbol = ? AND seq = ?",
        math.nextafter(good.bid, math.inf),
        "AAPL",
        250,
    )
    report = await checked(db, emit(tmp_path, ticks), ack(tmp_path, ticks))
    assert report.corrupted.items == (("AAPL", 250),)
    assert report.corruptions[0].fields == ("bid",)
    assert report.lost.count == 0
    assert not report.ok


@pytest.mark.timeout(30)
async def test_duplicate_row_in_table_without_primary_key(tmp_path: Path) -> None:
    """A ticks table created without its primary key, holding a repeated row, is caught."""
    db = tmp_path / "ticks.db"
    execute(
        db,
        "CREATE TABLE ticks (symbol TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL, "
        "bid REAL NOT NULL, ask REAL NOT NULL, bid_size REAL NOT NULL, ask_size REAL NOT NULL)",
    )
    ticks = make_ticks(300)
    await stored(db, ticks)
    dup = next(t for t in ticks if t.symbol == "TSLA" and t.seq == 123)
    execute(db, "INSERT INTO ticks VALUES (?, ?, ?, ?, ?, ?, ?)", *msgspec.structs.astuple(dup))
    async with opened(db) as store:
        assert await store.duplicates() == 1
    report = await checked(db, emit(tmp_path, ticks), ack(tmp_path, ticks))
    assert not report.ok
    assert report.duplicated.count == 1
    assert report.duplicated.items == (("TSLA", 123),)
    assert report.corrupted.count == 0


@pytest.mark.timeout(30)
async def test_unexpected_rows_in_sqlite(tmp_path: Path) -> None:
    """Rows past the emitted end and rows of a never-emitted symbol are unexpected."""
    ticks = make_ticks(100)
    db = tmp_path / "ticks.db"
    extra = [Tick("AAPL", 101, T0 + 10**6, 1.0, 1.5, 1.0, 1.0)]
    extra.append(Tick("ZZZ", 1, T0, 1.0, 1.5, 1.0, 1.0))
    await stored(db, [*ticks, *extra])
    report = await checked(db, emit(tmp_path, ticks), ack(tmp_path, ticks), require_complete=True)
    assert report.unexpected.items == (("AAPL", 101), ("ZZZ", 1))
    assert not report.ok


@pytest.mark.timeout(30)
async def test_quarantine_in_sqlite_accounts_for_invalid_ticks(tmp_path: Path) -> None:
    """An invalid emitted tick quarantined by the real store (with its reason) is accounted."""
    ticks = make_ticks(100)
    i = next(k for k, t in enumerate(ticks) if t.symbol == "MSFT" and t.seq == 40)
    t = ticks[i]
    ticks[i] = bad = Tick(t.symbol, t.seq, t.ts, -1.0, t.ask, t.bid_size, t.ask_size)
    reason = validate_tick(bad)
    assert reason is not None
    db = tmp_path / "ticks.db"
    async with opened(db) as store:
        await store.write([x for x in ticks if x is not bad])
        await store.quarantine([QuarantinedTick(T0, reason, repr(bad), bad.symbol, bad.seq)])
    report = await checked(db, emit(tmp_path, ticks), ack(tmp_path, ticks), require_complete=True)
    assert report.ok, report.summary()
    assert report.quarantined.items == (("MSFT", 40),)
