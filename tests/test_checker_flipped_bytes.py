"""The checker finds damage SQLite cannot see: a price's bytes flipped inside a table page."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import struct
from contextlib import closing
from pathlib import Path

import pytest

from strategylab.chaos._checker import check
from strategylab.market._ledger import AckLog, EmittedLog
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.market._tick import Tick

SYMBOLS = ("AAPL", "MSFT")


def make_ticks(per_symbol: int) -> list[Tick]:
    out: list[Tick] = []
    for seq in range(1, per_symbol + 1):
        for i, symbol in enumerate(SYMBOLS):
            mid = 100.0 + i + math.sin(seq / 13.0) / 3.0
            out.append(Tick(symbol, seq, 1_000 * seq + i, mid - 0.01, mid + 0.01, seq / 7.0, 2.0))
    return out


def flip_in_file(db: Path, value: float, bit: int) -> None:
    """Flip one bit of the stored big-endian float64 ``value`` in the database file itself."""
    data = bytearray(db.read_bytes())
    needle = struct.pack(">d", value)
    at = data.find(needle)
    assert at > 0, "value not found in the file"
    assert data.find(needle, at + 1) < 0, "value stored twice: pick another"
    data[at + 7 - bit // 8] ^= 1 << (bit % 8)
    db.write_bytes(bytes(data))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("field", "bit"), [("bid", 0), ("ask", 20), ("bid", 62)])
async def test_flipped_value_bytes_are_corrupted_not_lost(
    tmp_path: Path, field: str, bit: int
) -> None:
    """A bit flipped inside one row's value on disk passes SQLite's checks; the checker reports
    that row, and only that field, as corrupted."""
    ticks = make_ticks(3_000)
    emitted = EmittedLog(tmp_path / "emitted.log")
    for i in range(0, len(ticks), 100):
        emitted.append(ticks[i : i + 100])
    emitted.close()
    acks = AckLog(tmp_path / "acks.jsonl")
    acks.append(dict.fromkeys(SYMBOLS, 3_000))
    acks.close()
    db = tmp_path / "ticks.db"
    store = SQLiteTickStore(db)
    await store.open()
    await store.write(ticks)
    await store.aclose()
    victim = next(t for t in ticks if t.symbol == "MSFT" and t.seq == 2_999)
    flip_in_file(db, getattr(victim, field), bit)
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = SQLiteTickStore(db)
    await store.open()
    try:
        assert store.rebuilt is None
        async with asyncio.timeout(30):
            report = await check(emitted.path, store, acks.path, require_complete=True)
    finally:
        await store.aclose()
    assert not report.ok
    assert report.corrupted.items == (("MSFT", 2_999),)
    assert report.corruptions[0].fields == (field,)
    assert report.lost.count == 0
    assert report.missing.count == 0
    assert report.unexpected.count == 0
