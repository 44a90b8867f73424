"""`strategylab check` only reads: it never changes the database, and bad inputs are one line.

Every run is the real command (`python -m strategylab check`) against real files: a WAL tick store
written by the node's own store class, the exchange's emitted log, the node's ack log.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from strategylab.market import SQLiteTickReader, StoreUnusableError
from strategylab.market._ledger import AckLog, EmittedLog
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.market._tick import Tick

SYMBOLS = ("AAPL", "MSFT")
T0 = 1_700_000_000_000_000_000
VIOLATION = 3


def _ticks(per_symbol: int) -> list[Tick]:
    out: list[Tick] = []
    for seq in range(1, per_symbol + 1):
        for i, symbol in enumerate(SYMBOLS):
            mid = 100.0 + i + seq / 1000
            out.append(Tick(symbol, seq, T0 + 2 * seq + i, mid - 0.01, mid + 0.01, 1.0, 2.0))
    return out


def _emitted(directory: Path, ticks: list[Tick]) -> Path:
    log = EmittedLog(directory / "emitted.log")
    for i in range(0, len(ticks), 100):
        log.append(ticks[i : i + 100])
    log.close()
    return log.path


def _acks(directory: Path, marks: dict[str, int]) -> Path:
    log = AckLog(directory / "acks.jsonl")
    log.append(marks)
    log.close()
    return log.path


def _store(path: Path, ticks: list[Tick]) -> Path:
    async def write() -> None:
        store = SQLiteTickStore(path, synchronous="NORMAL")
        await store.open()
        try:
            await store.write(ticks)
        finally:
            await store.aclose()

    asyncio.run(write())
    return path


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(emitted log, closed WAL tick store, ack log) that agree: the check passes."""
    ticks = _ticks(300)
    return (
        _emitted(tmp_path, ticks),
        _store(tmp_path / "db" / "ticks.db", ticks),
        _acks(tmp_path, dict.fromkeys(SYMBOLS, 300)),
    )


def _fingerprint(db: Path) -> tuple[str, int, list[str]]:
    """The database's content hash, its mtime and what lies beside it."""
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    return digest, db.stat().st_mtime_ns, sorted(p.name for p in db.parent.iterdir())


def _check(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "strategylab", "check", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("strategylab check: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.timeout(90)
def test_check_leaves_a_closed_wal_database_unchanged(data: tuple[Path, Path, Path]) -> None:
    """A passing check changes neither the bytes nor the mtime and creates no -wal or -shm."""
    emitted, db, acks = data
    assert db.read_bytes()[18:20] == b"\x02\x02"  # the node's store is in WAL mode
    before = _fingerprint(db)
    result = _check(emitted, db, "--acks", acks, "--require-complete")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("integrity OK")
    assert _fingerprint(db) == before


@pytest.mark.timeout(90)
def test_check_reads_the_wal_of_a_database_another_process_holds_open(tmp_path: Path) -> None:
    """Ticks committed to the WAL but not yet checkpointed are seen; the file is not changed."""
    ticks = _ticks(200)
    emitted = _emitted(tmp_path, ticks)
    db = _store(tmp_path / "db" / "ticks.db", ticks[:100])
    with closing(sqlite3.connect(db, isolation_level=None)) as writer:
        writer.execute("PRAGMA wal_autocheckpoint = 0")  # keep the rest in the WAL
        writer.executemany(
            "INSERT INTO ticks VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(t.symbol, t.seq, t.ts, t.bid, t.ask, t.bid_size, t.ask_size) for t in ticks[100:]],
        )
        before = _fingerprint(db)
        assert (tmp_path / "db" / "ticks.db-wal").stat().st_size > 0
        result = _check(emitted, db, "--require-complete")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "400 stored" in result.stdout
        assert _fingerprint(db) == before


@pytest.mark.timeout(90)
def test_an_integrity_violation_has_its_own_exit_status(tmp_path: Path) -> None:
    """A tick acknowledged but not stored is a violation: exit 3, not the 1 of a bad input."""
    ticks = _ticks(100)
    emitted = _emitted(tmp_path, ticks)
    db = _store(tmp_path / "ticks.db", [t for t in ticks if (t.symbol, t.seq) != ("AAPL", 50)])
    acks = _acks(tmp_path, dict.fromkeys(SYMBOLS, 100))
    before = _fingerprint(db)
    result = _check(emitted, db, "--acks", acks)
    assert result.returncode == VIOLATION, result.stdout + result.stderr
    assert result.stdout.startswith("integrity FAILED")
    assert "lost: AAPL#50" in result.stdout
    assert _fingerprint(db) == before


def test_check_help_documents_its_exit_statuses() -> None:
    """`check --help` says what 0, 1, 2 and 3 mean."""
    result = subprocess.run(
        [sys.executable, "-m", "strategylab", "check", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    text = " ".join(result.stdout.split())
    assert "0 nothing wrong" in text
    assert "1 an input cannot be used" in text
    assert "2 a usage error" in text
    assert "3 integrity violated" in text


def _zero_bytes(db: Path) -> None:
    db.write_bytes(b"")


def _not_sqlite(db: Path) -> None:
    db.write_text("symbol,seq\nAAPL,1\n" * 20)


def _no_ticks_table(db: Path) -> None:
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")


def _damaged_pages(db: Path) -> None:
    _store(db, _ticks(2000))
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = bytearray(db.read_bytes())
    page = int.from_bytes(raw[16:18], "big")
    for at in range(2 * page, len(raw) - page, 3 * page):  # every third page from the second on
        raw[at : at + 64] = b"\xa5" * 64
    db.write_bytes(bytes(raw))


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("plant", "fragment"),
    [
        pytest.param(_zero_bytes, "empty (0 bytes)", id="zero-bytes"),
        pytest.param(_not_sqlite, "not an SQLite database", id="not-sqlite"),
        pytest.param(_no_ticks_table, "not a tick store (no ticks table)", id="not-a-tick-store"),
        pytest.param(_damaged_pages, "corrupted", id="damaged-pages"),
    ],
)
def test_an_unusable_database_is_one_line_and_stays_as_it_was(
    tmp_path: Path, plant: Callable[[Path], None], fragment: str
) -> None:
    """Empty, foreign, schema-less or damaged: one line naming the file, exit 1, file unchanged
    (a zero-byte file is not turned into a database)."""
    emitted = _emitted(tmp_path, _ticks(10))
    db = tmp_path / "db" / "ticks.db"
    db.parent.mkdir()
    plant(db)
    before = _fingerprint(db)
    _one_line_error(_check(emitted, db), str(db), fragment)
    assert _fingerprint(db) == before


@pytest.mark.timeout(90)
def test_a_missing_database_is_one_line_exit_1(tmp_path: Path) -> None:
    """A database that does not exist is an operational failure, and is not created."""
    emitted = _emitted(tmp_path, _ticks(10))
    db = tmp_path / "nope.db"
    _one_line_error(_check(emitted, db), str(db), "does not exist")
    assert not db.exists()


@pytest.mark.timeout(90)
def test_a_missing_emitted_log_is_one_line_exit_1(data: tuple[Path, Path, Path]) -> None:
    """The emitted log is named when it cannot be read."""
    _emitted_log, db, _acks_log = data
    missing = db.parent / "emitted.log"
    _one_line_error(_check(missing, db), str(missing), "cannot read the emitted log")


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(None, "the ack log does not exist", id="missing"),
        pytest.param("this is not json\n", "not an ack log", id="not-json"),
        pytest.param('{"symbol": "AAPL"}\n', "missing key 'seq'", id="missing-key"),
        pytest.param("[1, 2]\n", "not an ack log", id="not-an-object"),
    ],
)
def test_a_bad_ack_log_is_one_line_exit_1(
    data: tuple[Path, Path, Path], content: str | None, fragment: str
) -> None:
    """--acks that is missing or not JSON lines of {symbol, seq}: one line naming it, exit 1."""
    emitted, db, _acks_log = data
    acks = db.parent / "bad-acks.jsonl"
    if content is not None:
        acks.write_text(content)
    before = _fingerprint(db)
    _one_line_error(_check(emitted, db, "--acks", acks), str(acks), fragment)
    assert _fingerprint(db) == before


def test_an_immutable_read_of_a_file_that_changed_is_refused(
    data: tuple[Path, Path, Path],
) -> None:
    """Opened immutable (no -wal beside it), a file that changes meanwhile fails the check."""
    _emitted_log, db, _acks_log = data
    reader = SQLiteTickReader(db)
    reader.open_sync()
    try:
        reader.verify_unchanged()  # nothing changed yet
        os.utime(db, ns=(db.stat().st_atime_ns, db.stat().st_mtime_ns + 1_000_000_000))
        with pytest.raises(StoreUnusableError, match="changed while it was being checked"):
            reader.verify_unchanged()
    finally:
        reader.close()


@pytest.mark.timeout(90)
def test_check_s_table_fits_80_columns_with_many_symbols(tmp_path: Path) -> None:
    """Nine symbols: the table is split into blocks of whole columns, none over 80 characters,
    every symbol and count shown."""
    symbols = [f"SYMBOL-{i}" for i in range(9)]
    ticks = [
        Tick(s, seq, T0 + seq * 10 + i, 10.0, 10.5, 1.0, 1.0)
        for seq in range(1, 1_235)
        for i, s in enumerate(symbols)
    ]
    emitted = _emitted(tmp_path, ticks)
    db = _store(tmp_path / "ticks.db", ticks)
    result = _check(emitted, db)
    assert result.returncode == 0, result.stderr
    table = [line for line in result.stdout.splitlines() if line.startswith("  ")]
    assert table
    assert max(len(line) for line in table) <= 80
    assert all(s in result.stdout for s in symbols)
    assert "1,234" in result.stdout
    assert "11,106" in result.stdout  # the total
