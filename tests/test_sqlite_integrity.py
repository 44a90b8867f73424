"""SQLiteTickStore against damaged files: checked on open, moved aside, rebuilt, and said so."""

from __future__ import annotations

import logging
import random
import shutil
import sqlite3
import struct
from pathlib import Path

import pytest

from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType, classify
from strategylab.fault_tolerance._classify import is_corruption
from strategylab.market._sqlite_store import SQLiteTickStore, wal_damage
from strategylab.market._store import StoreCorruptedError
from strategylab.market._tick import Tick
from strategylab.node._store_check import _check_sqlite
from strategylab.testing import FakeClock

PAGE = 4096


def ticks(symbol: str, first: int, last: int) -> list[Tick]:
    return [
        Tick(symbol, seq, 1_000 + seq, 100.0 + seq / 1e4, 100.5 + seq / 1e4, 1.0, 2.0)
        for seq in range(first, last + 1)
    ]


async def filled(path: Path, per_symbol: int = 20_000) -> None:
    """A store of two symbols, closed cleanly (the WAL checkpointed into the file)."""
    store = SQLiteTickStore(path)
    await store.open()
    try:
        for first in range(1, per_symbol + 1, 5_000):
            last = first + 4_999
            await store.write([*ticks("A", first, last), *ticks("B", first, last)])
    finally:
        await store.aclose()
    assert not wal_exists(path)


def is_damaged(store: SQLiteTickStore) -> bool:
    return store.damaged


def wal_exists(db: Path) -> bool:
    return Path(f"{db}-wal").exists()


def damage_last_pages(path: Path, seed: int, pages: int = 4) -> bytes:
    """Overwrite one of the last ``pages`` pages with random bytes; returns the damaged file."""
    rng = random.Random(seed)
    data = bytearray(path.read_bytes())
    count = len(data) // PAGE
    page = rng.randrange(count - pages, count)
    data[page * PAGE : (page + 1) * PAGE] = rng.randbytes(PAGE)
    path.write_bytes(bytes(data))
    return bytes(data)


def aside(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if ".corrupt-" in p.name)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_damaged_last_pages_are_moved_aside_and_a_fresh_store_opens(
    tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A page written last, overwritten while stopped: open() keeps the damaged file under a new
    name (bit for bit), starts an empty store that takes writes, and logs one ERROR naming both."""
    db = tmp_path / "ticks.db"
    await filled(db)
    damaged = damage_last_pages(db, seed)
    store = SQLiteTickStore(db, clock=FakeClock(start=1_700_000_000.0))
    with caplog.at_level(logging.ERROR, logger="strategylab.market._sqlite_store"):
        await store.open()
    try:
        found = store.rebuilt
        assert found is not None
        assert found.moved_to == tmp_path / "ticks.db.corrupt-20231114T221320Z"
        assert found.moved_to.read_bytes() == damaged
        assert aside(db) == [found.moved_to]
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert str(db) in errors[0].getMessage()
        assert str(found.moved_to) in errors[0].getMessage()
        assert await store.count() == 0
        assert await store.health() is True
        assert await store.write(ticks("A", 1, 100)) == 100
        assert await store.last_seqs() == {"A": 100}
    finally:
        await store.aclose()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)


@pytest.mark.timeout(30)
async def test_damaged_header_is_corruption_not_a_crash(tmp_path: Path) -> None:
    """A file whose first page is garbage (SQLITE_NOTADB) is moved aside the same way."""
    db = tmp_path / "ticks.db"
    await filled(db, per_symbol=5_000)
    data = bytearray(db.read_bytes())
    data[:100] = bytes(100)
    db.write_bytes(bytes(data))
    store = SQLiteTickStore(db)
    await store.open()
    try:
        assert store.rebuilt is not None
        assert "not a database" in store.rebuilt.reason
        assert await store.write(ticks("A", 1, 10)) == 10
    finally:
        await store.aclose()


@pytest.mark.timeout(30)
async def test_raise_mode_leaves_the_file_alone(tmp_path: Path) -> None:
    """on_corruption="raise" (for readers) raises StoreCorruptedError and moves nothing."""
    db = tmp_path / "ticks.db"
    await filled(db, per_symbol=10_000)
    damaged = damage_last_pages(db, seed=7)
    store = SQLiteTickStore(db, on_corruption="raise")
    with pytest.raises(StoreCorruptedError) as caught:
        await store.open()
    await store.aclose()
    assert caught.value.path == db
    assert caught.value.moved_to is None
    assert db.read_bytes() == damaged
    assert aside(db) == []


def test_corruption_is_classified_and_not_retryable(tmp_path: Path) -> None:
    """StoreCorruptedError and SQLite's own SQLITE_NOTADB are DATA_INGESTION_FAILURE corruption."""
    err = StoreCorruptedError(tmp_path / "t.db", "quick_check: page 9 is never used")
    assert classify(err, component="sqlite") is ErrorType.DATA_INGESTION_FAILURE
    assert err.retryable is False
    assert is_corruption(err)
    assert is_corruption(RuntimeError("drain failed").with_traceback(None)) is False
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not an sqlite file at all" * 200)
    with pytest.raises(sqlite3.DatabaseError) as caught, sqlite3.connect(junk) as conn:
        conn.execute("SELECT * FROM sqlite_master").fetchall()
    assert is_corruption(caught.value)
    wrapped = RuntimeError("write failed")
    wrapped.__cause__ = caught.value
    assert is_corruption(wrapped)
    assert classify(caught.value, component="sqlite") is ErrorType.DATA_INGESTION_FAILURE


@pytest.mark.timeout(30)
async def test_rebuild_is_reported_to_the_manager(tmp_path: Path) -> None:
    """With a manager, the rebuild is one DATA_INGESTION_FAILURE whose recovery is the fresh
    store observed healthy."""
    db = tmp_path / "ticks.db"
    await filled(db, per_symbol=10_000)
    damage_last_pages(db, seed=11)
    manager = ErrorRecoveryManager(capture_state=False)
    store = SQLiteTickStore(db, manager=manager)
    await store.open()
    try:
        stats = manager.statistics()
        assert stats.error_type_distribution == {ErrorType.DATA_INGESTION_FAILURE: 1}
        assert stats.successful_recoveries == 1
    finally:
        await store.aclose()


@pytest.mark.timeout(30)
async def test_a_sound_file_is_opened_as_it_is(tmp_path: Path) -> None:
    """A clean file passes the check: nothing moved, every row still there."""
    db = tmp_path / "ticks.db"
    await filled(db, per_symbol=10_000)
    store = SQLiteTickStore(db)
    await store.open()
    try:
        assert store.rebuilt is None
        assert store.wal_damage is None
        assert await store.count() == 20_000
        assert aside(db) == []
    finally:
        await store.aclose()


@pytest.mark.timeout(30)
async def test_corruption_met_while_running_stops_writes_until_reopened(tmp_path: Path) -> None:
    """SQLITE_CORRUPT while running is not retried: writes fail fast with StoreCorruptedError,
    health() is False; the next open() moves the file aside and rebuilds."""
    db = tmp_path / "ticks.db"
    store = SQLiteTickStore(db)
    await store.open()
    try:
        for first in range(1, 20_001, 5_000):
            await store.write(ticks("A", first, first + 4_999))
        # The file is damaged under a connection that does not know yet (a fresh one).
        await store._run(lambda: store._ensure().execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        await store._run(store._close_conn)
        data = bytearray(db.read_bytes())
        for page in range(2, len(data) // PAGE):
            data[page * PAGE + 8 : page * PAGE + 200] = bytes(range(192))
        db.write_bytes(bytes(data))
        with pytest.raises(sqlite3.DatabaseError) as met:
            await store.read("A")
        assert is_corruption(met.value)
        assert is_damaged(store)
        with pytest.raises(StoreCorruptedError):
            await store.write(ticks("A", 20_001, 20_010))
        assert await store.health() is False
        await store.aclose()
        await store.open()
        assert store.rebuilt is not None
        assert not is_damaged(store)
        assert await store.write(ticks("A", 1, 10)) == 10
    finally:
        await store.aclose()


# ------------------------------------------------------------------------------------ the WAL


def wal_frames(path: Path) -> tuple[int, int]:
    """(page size, frame count) of a WAL file."""
    data = path.read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    return page_size, (len(data) - 32) // (24 + page_size)


@pytest.mark.timeout(30)
async def test_damaged_wal_frame_is_reported_and_copied(tmp_path: Path) -> None:
    """A flipped byte in an early WAL frame makes SQLite drop every later commit without an
    error; open() says so, keeps a copy of the WAL, and the store opens at the earlier commit."""
    live = tmp_path / "live"
    live.mkdir()
    store = SQLiteTickStore(live / "ticks.db")
    await store.open()
    try:
        for first in range(1, 601, 100):
            await store.write(ticks("A", first, first + 99))
        # A crash image: the files as a SIGKILL would leave them (the WAL not checkpointed).
        crashed = tmp_path / "crashed"
        crashed.mkdir()
        for name in ("ticks.db", "ticks.db-wal"):
            shutil.copy(live / name, crashed / name)
    finally:
        await store.aclose()
    wal = crashed / "ticks.db-wal"
    assert wal_damage(wal) is None
    _page_size, frames = wal_frames(wal)
    assert frames >= 6
    data = bytearray(wal.read_bytes())
    data[32 + 24 + 100] ^= 0x01  # the first frame's page
    wal.write_bytes(bytes(data))
    reason = wal_damage(wal)
    assert reason is not None
    assert "frame 1 of" in reason
    reopened = SQLiteTickStore(crashed / "ticks.db")
    await reopened.open()
    try:
        found = reopened.wal_damage
        assert found is not None
        assert found.moved_to is not None
        assert found.moved_to.read_bytes() == bytes(data)
        assert reopened.rebuilt is None
        assert await reopened.count() < 600
    finally:
        await reopened.aclose()


def test_torn_wal_tail_is_not_damage(tmp_path: Path) -> None:
    """A last frame that fails its checksum with no commit after it is an unacknowledged
    transaction torn by a crash, not damage."""
    db = tmp_path / "t.db"
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        for i in range(5):
            conn.execute("INSERT INTO t VALUES (?)", (i,))
        wal = tmp_path / "t.db-wal"
        data = bytearray(wal.read_bytes())
    finally:
        conn.close()
    page_size, frames = wal_frames_of(data)
    last = 32 + (frames - 1) * (24 + page_size)
    data[last + 24 + 7] ^= 0xFF
    wal.write_bytes(bytes(data))
    assert wal_damage(wal) is None


def wal_frames_of(data: bytes | bytearray) -> tuple[int, int]:
    page_size = struct.unpack(">I", data[8:12])[0]
    return page_size, (len(data) - 32) // (24 + page_size)


def _flip(path: Path, at: int, mask: int) -> bytes:
    data = bytearray(path.read_bytes())
    data[at] ^= mask
    path.write_bytes(bytes(data))
    return bytes(data)


def _read(path: Path) -> bytes:
    return path.read_bytes()


async def _crash_image(tmp_path: Path) -> Path:
    """The files of a store with six commits in its WAL, as a SIGKILL would leave them."""
    live = tmp_path / "live"
    live.mkdir()
    store = SQLiteTickStore(live / "ticks.db")
    await store.open()
    crashed = tmp_path / "crashed"
    try:
        for first in range(1, 601, 100):
            await store.write(ticks("A", first, first + 99))
        crashed.mkdir()
        for name in ("ticks.db", "ticks.db-wal"):
            shutil.copy(live / name, crashed / name)
    finally:
        await store.aclose()
    return crashed / "ticks.db"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("field", [8, 12], ids=["salt-1", "salt-2"])
async def test_damaged_frame_salts_with_later_commits_are_damage(
    tmp_path: Path, field: int
) -> None:
    """A frame whose salts were flipped is not the end of its generation when later frames carry
    them and commit: SQLite would drop those commits."""
    db = await _crash_image(tmp_path)
    wal = Path(f"{db}-wal")
    page_size, frames = wal_frames(wal)
    _flip(wal, 32 + (frames // 2) * (24 + page_size) + field, 0x40)
    reason = wal_damage(wal)
    assert reason is not None
    assert "salts" in reason


@pytest.mark.timeout(30)
async def test_the_nodes_start_check_leaves_a_crashed_wal_for_the_store(tmp_path: Path) -> None:
    """The node's schema check opens the file read-only: it never checkpoints (and so deletes) a
    WAL whose damage the store must see."""
    db = await _crash_image(tmp_path)
    wal = Path(f"{db}-wal")
    damaged = _flip(wal, 32 + 24 + 100, 0x01)
    _check_sqlite(db, must_exist_dir=True)
    assert _read(wal) == damaged
    reopened = SQLiteTickStore(db)
    await reopened.open()
    try:
        assert reopened.wal_damage is not None
    finally:
        await reopened.aclose()


def _damage_middle_page(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    middle = (len(data) // page // 2) * page
    data[middle + 8 : middle + 40] = b"\xa5" * 32
    path.write_bytes(bytes(data))


@pytest.mark.timeout(30)
async def test_verify_false_skips_the_full_scan_but_not_the_cheap_checks(tmp_path: Path) -> None:
    """A damaged middle page: the full scan finds it; a reader that opted out of it opens."""
    db = tmp_path / "ticks.db"
    await filled(db)
    _damage_middle_page(db)
    with pytest.raises(StoreCorruptedError, match="quick_check"):
        await SQLiteTickStore(db, on_corruption="raise").open()
    reader = SQLiteTickStore(db, on_corruption="raise", verify=False)
    await reader.open()
    await reader.aclose()
    assert aside(db) == []
