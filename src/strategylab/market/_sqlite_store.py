"""The embedded default tick store: SQLite in WAL mode, one writer thread, durable commits.

sqlite3 blocks, so every statement runs on one dedicated worker thread (a single-thread executor):
the event loop never waits on the disk, and the connection is only ever used from one thread at a
time. A batch is one transaction of ``INSERT OR IGNORE`` rows (idempotent on ``(symbol, seq)``: a
stored tick is kept, and of a ``(symbol, seq)`` repeated in a batch the first occurrence), sorted
by ``(symbol, seq)`` and written through a 64 MiB page cache so that many interleaved symbols keep
the inserts local (see :data:`CACHE_KIB`);
with ``synchronous=FULL`` in WAL mode the ``COMMIT`` fsyncs the WAL before :meth:`write` returns.

A full disk (``SQLITE_FULL``, or ``OSError(ENOSPC)`` while opening) surfaces as the original
exception, which :func:`~strategylab.fault_tolerance.classify` maps to DISK_SPACE_EXHAUSTED. After
an I/O-class failure the connection is closed and the next call opens a fresh one, so the store is
usable again as soon as space returns.

Corruption is not transient. :meth:`SQLiteTickStore.open` checks the file before trusting it:
the WAL's frame checksums (SQLite silently drops every commit after a damaged frame), ``PRAGMA
quick_check`` (every page of every B-tree; 0.13 s for a 1,000,000-tick, 59 MB file with the file in
the page cache), and the rows written last (the newest rows of every symbol must decode with the
column types the store writes). A damaged file is moved aside with its ``-wal`` and ``-shm`` to
``<name>.corrupt-<UTC time>`` (never deleted), a fresh file takes its place, an ERROR names both
paths and the recovery manager, if given, is told; the node then resumes from the spool and the
fresh file, so the exchange replays the rest. Corruption met while running (``SQLITE_CORRUPT``)
marks the store damaged: writes raise :class:`~strategylab.market.StoreCorruptedError` at once
and ``health()`` is False, so nothing keeps retrying a file that cannot heal; the next ``open()``
rebuilds it. Damage that leaves every page well-formed (a flipped digit of a price) is invisible
to SQLite; the integrity checker finds it by comparing each row with what the exchange emitted.

``health()`` exercises what a batch needs: free space in the directory for a batch
(``batch_size`` ticks, about 64 bytes each on disk), a batch-sized write that really reaches the WAL
(a small page cache forces it out) and is rolled back, and a committed one-row write.

The WAL is bounded: SQLite checkpoints it (PASSIVE, at a commit) once it holds half of
``wal_size_limit`` (default 64 MiB, :data:`WAL_SIZE_LIMIT`), so with no reader pinning it the file
stays under the limit (half of it plus one commit's pages) and a leaf that many commits append to
reaches the database file once per checkpoint, not once per commit; ``journal_size_limit``
truncates it whenever SQLite restarts it, and when a commit or a health check finds it above
``wal_size_limit`` (a long reader pinned it) a non-blocking ``wal_checkpoint(TRUNCATE)`` gives the
disk back as soon as the readers are gone. New files use 2 KiB pages (:data:`PAGE_SIZE`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import itertools
import logging
import math
import operator
import os
import sqlite3
import struct
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import msgspec

from strategylab._durable import fsync_dir
from strategylab._files import (
    check_sqlite_files,
    create_private_file,
    make_private_dir,
    open_private,
    read_private,
    sqlite_uri,
)
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.fault_tolerance import ErrorRecoveryManager, is_corruption

from ._reader import SQLiteReads
from ._store import QuarantinedTick, StoreCorruptedError
from ._tick import Tick

__all__ = ["PAGE_SIZE", "SQLITE_SCHEMA", "WAL_SIZE_LIMIT", "SQLiteTickStore", "raw_insert_rate"]

_T = TypeVar("_T")
_log = logging.getLogger(__name__)

SQLITE_SCHEMA: Final = (
    (
        "CREATE TABLE IF NOT EXISTS ticks ("
        "symbol TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL, "
        "bid REAL NOT NULL, ask REAL NOT NULL, bid_size REAL NOT NULL, ask_size REAL NOT NULL, "
        "PRIMARY KEY (symbol, seq)) WITHOUT ROWID"
    ),
    (
        "CREATE TABLE IF NOT EXISTS quarantine ("
        "id INTEGER PRIMARY KEY, received_ns INTEGER NOT NULL, reason TEXT NOT NULL, "
        "raw TEXT NOT NULL, symbol TEXT, seq INTEGER)"
    ),
    "CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY, checked_ns INTEGER NOT NULL)",
    # health() writes a batch-sized payload here and rolls it back: it never holds a row.
    "CREATE TABLE IF NOT EXISTS probe (payload BLOB NOT NULL)",
)
"""The schema; ``ticks`` is clustered on its primary key (WITHOUT ROWID): one B-tree, no rowid
index to maintain, and range reads per symbol are sequential."""

_INSERT: Final = "INSERT OR IGNORE INTO ticks VALUES (?, ?, ?, ?, ?, ?, ?)"
CACHE_KIB: Final = 65_536
"""The connection's page cache (``PRAGMA cache_size``, KiB; SQLite's default is 2,000): with
many symbols a batch appends to one leaf of the ``(symbol, seq)`` B-tree per symbol (1,000
symbols: 1,000 leaves, 2-4 MB), which must stay in memory with the interior pages, or every insert
reads a page back. An upper bound, allocated as pages are used."""
PAGE_SIZE: Final = 2048
"""``PRAGMA page_size`` of a NEW file (bytes; SQLite's default is 4,096). With many symbols every
commit dirties at least one leaf per symbol and the WAL takes a whole page for each: 2 KiB pages
halve those bytes (1,000 symbols: about 2 MB of WAL a batch instead of 4 MB) while one symbol's
appends fill their pages either way. An existing file keeps the page size it was created with."""
WAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
"""The default ``wal_size_limit`` (bytes). SQLite checkpoints (PASSIVE, at a commit) once the
WAL holds half of it, so a leaf that many commits append to is copied into the database once per
checkpoint rather than once per commit, and the WAL file stays under the limit while no reader
pins it (half the limit, plus the commit that crossed it)."""
_KEY = operator.itemgetter(0, 1)
_astuple = msgspec.structs.astuple
# After these the connection may hold a half-written WAL frame or a lost file handle: reopen.
_REOPEN_CODES: Final = frozenset(
    {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN}
)

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
OnCorruption = Literal["rebuild", "raise"]

BYTES_PER_TICK: Final = 64
"""Disk a stored tick takes, rounded up (59 bytes a tick in a 1,000,000-tick file, plus WAL
frame headers): ``health()`` wants ``batch_size * BYTES_PER_TICK`` free bytes."""
_PROBE_CACHE_KIB: Final = 64
"""The page cache during the health probe's write: small, so the payload must reach the WAL."""
_TAIL_ROWS: Final = 64
"""Newest rows per symbol read back on open."""
_TAIL_SYMBOLS: Final = 10_000
_RECLAIM_BACKOFF: Final = 8
"""Commits skipped after a TRUNCATE checkpoint found a reader still pinning the WAL."""
_TAIL_SQL: Final = (
    "SELECT seq, typeof(seq), typeof(ts), typeof(bid), typeof(ask), typeof(bid_size), "
    "typeof(ask_size), bid, ask, bid_size, ask_size FROM ticks WHERE symbol = ? "
    "ORDER BY seq DESC LIMIT ?"
)
_TAIL_TYPES: Final = ("integer", "integer", "real", "real", "real", "real")
# Failures of the integrity check that say nothing about the file's bytes: they propagate.
_NOT_DAMAGE: Final = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_INTERRUPT,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
    }
)


def _is_damage(exc: sqlite3.Error) -> bool:
    """Whether an error met while checking or opening the file means its bytes are damaged.

    Besides ``SQLITE_CORRUPT``/``SQLITE_NOTADB``, damaged bytes surface as whatever the reader
    trips on (text that is not UTF-8, a misuse of a malformed schema); only resource and I/O
    failures are something else.
    """
    if is_corruption(exc):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return code is None or (code & 0xFF) not in _NOT_DAMAGE


def _connect(path: Path, synchronous: Synchronous, busy_timeout: float) -> sqlite3.Connection:
    # SQLite follows symlinks and blocks on a FIFO: refuse a symlink, anything but a regular file
    # and a hard link planted at the file or its -wal/-shm/-journal (UnsafePathError names it),
    # and create the file 0600 ourselves (SQLite gives -wal/-shm the file's mode).
    check_sqlite_files(path)
    create_private_file(path)
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch. A quoted
    # URI: "#", "?" and "%" in the file name are part of the name.
    conn = sqlite3.connect(
        sqlite_uri(path, "rw"), uri=True, isolation_level=None, check_same_thread=False
    )
    try:
        _configure(conn, path, synchronous, busy_timeout)
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(
    conn: sqlite3.Connection, path: Path, synchronous: Synchronous, busy_timeout: float
) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    # Before anything writes page 1 (the switch to WAL does): a no-op on an existing file.
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"{path}: journal_mode=WAL refused (got {mode!r})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    for statement in SQLITE_SCHEMA:
        conn.execute(statement)


def _bound_wal(conn: sqlite3.Connection, limit: int) -> None:
    """Keep the WAL of ``conn`` under ``limit`` bytes while no reader pins it."""
    # Whenever SQLite restarts the WAL it truncates the file to this size.
    conn.execute(f"PRAGMA journal_size_limit = {limit}")
    # SQLite's own checkpoint (PASSIVE, after a commit) once the WAL holds half the limit: the
    # file stays under it without a TRUNCATE per commit (see WAL_SIZE_LIMIT).
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.execute(f"PRAGMA wal_autocheckpoint = {max(1, limit // 2 // page)}")


def _integrity_problem(conn: sqlite3.Connection, *, full: bool = True) -> str | None:
    """What is wrong with an open database, or None: ``quick_check`` (when ``full``), then the
    newest rows."""
    if full:
        found = [str(row[0]) for row in conn.execute("PRAGMA quick_check(10)").fetchall()]
        if found != ["ok"]:
            return "quick_check: " + "; ".join(found)
    return _tail_problem(conn)


def _tail_problem(conn: sqlite3.Connection) -> str | None:
    # The rows written last sit on the pages written last: each must decode with the types the
    # store writes (a NaN read from a damaged REAL comes back as NULL). Symbols are found by
    # seeking the primary key, not by scanning it.
    row = conn.execute("SELECT symbol FROM ticks ORDER BY symbol LIMIT 1").fetchone()
    for _ in range(_TAIL_SYMBOLS):
        if row is None:
            return None
        symbol = row[0]
        if not isinstance(symbol, str):
            return f"ticks: symbol {symbol!r} is not text"
        for values in conn.execute(_TAIL_SQL, (symbol, _TAIL_ROWS)):
            types = values[1:7]
            if types != _TAIL_TYPES or not all(math.isfinite(v) for v in values[7:]):
                return f"ticks: row {symbol}#{values[0]} reads back as {types} {values[7:]}"
        row = conn.execute(
            "SELECT symbol FROM ticks WHERE symbol > ? ORDER BY symbol LIMIT 1", (symbol,)
        ).fetchone()
    return None


_WAL_MAGIC: Final = frozenset({0x377F0682, 0x377F0683})
_WAL_HEADER: Final = struct.Struct(">8I")
_FRAME_HEADER: Final = struct.Struct(">6I")


def _wal_checksum(data: bytes, big_endian: bool, s0: int, s1: int) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes), continuing from ``s0, s1``."""
    words = array("I", data)
    if big_endian != (sys.byteorder == "big"):
        words.byteswap()
    mask = 0xFFFFFFFF
    for a, b in zip(words[0::2], words[1::2], strict=True):
        s0 = (s0 + a + s1) & mask
        s1 = (s1 + b + s0) & mask
    return s0, s1


def wal_damage(path: str | os.PathLike[str]) -> str | None:
    """What SQLite would silently throw away from the WAL at ``path``, or None.

    SQLite replays a WAL up to its first frame whose salts or checksum do not match and ignores
    the rest, so a damaged frame followed by later commits loses those commits without an error.
    This walks the frames the same way and reports a frame that fails its checksum while a later
    frame of the same WAL generation (same salts) commits, or a damaged header in front of frames.
    A torn tail (a transaction that was never acknowledged) and frames left from an earlier
    generation are not damage. Reads the whole file (bounded by ``wal_size_limit`` in use).
    """
    try:
        data = read_private(path)  # never a planted FIFO (which would block) or symlink
    except FileNotFoundError:
        return None
    if len(data) < _WAL_HEADER.size:
        return None
    magic, _version, page_size, _ckpt, salt1, salt2, c1, c2 = _WAL_HEADER.unpack_from(data)
    valid = magic in _WAL_MAGIC and page_size >= 512 and not page_size & (page_size - 1)
    big = bool(magic & 1)
    if not valid or _wal_checksum(data[:24], big, 0, 0) != (c1, c2):
        frames = len(data) > _WAL_HEADER.size + _FRAME_HEADER.size
        return "WAL header is damaged: SQLite ignores every frame after it" if frames else None
    return _wal_frames_damage(data, page_size, big, (salt1, salt2), (c1, c2))


def _wal_frames_damage(
    data: bytes, page_size: int, big: bool, salts: tuple[int, int], seed: tuple[int, int]
) -> str | None:
    frame = _FRAME_HEADER.size + page_size
    frames = (len(data) - _WAL_HEADER.size) // frame
    s0, s1 = seed
    for i in range(frames):
        at = _WAL_HEADER.size + i * frame
        _page, _commit, f1, f2, k1, k2 = _FRAME_HEADER.unpack_from(data, at)
        if (f1, f2) != salts:
            # The end of this generation, unless a later frame carries its salts and commits: a
            # generation's frames are a prefix of the file, so this frame's salts were damaged.
            later = _later_commits(data, frame, frames, i, salts)
            if not later:
                return None
            return (
                f"WAL frame {i + 1} of {frames} has damaged salts: SQLite drops it and {later} "
                "later commit(s)"
            )
        s0, s1 = _wal_checksum(data[at : at + 8], big, s0, s1)
        s0, s1 = _wal_checksum(data[at + _FRAME_HEADER.size : at + frame], big, s0, s1)
        if (s0, s1) == (k1, k2):
            continue
        later = _later_commits(data, frame, frames, i, salts)
        if not later:
            # A torn, never-committed tail. (Damage inside the very last commit cannot be told
            # from a torn last write: the feed's replay brings that one transaction back.)
            return None
        return (
            f"WAL frame {i + 1} of {frames} fails its checksum: SQLite drops it and "
            f"{later} later commit(s)"
        )
    return None


def _later_commits(data: bytes, frame: int, frames: int, after: int, salts: tuple[int, int]) -> int:
    """Commit frames of the generation ``salts`` after frame ``after`` (0-based)."""
    later = 0
    for j in range(after + 1, frames):
        _p, commit, g1, g2, _k1, _k2 = _FRAME_HEADER.unpack_from(data, _WAL_HEADER.size + j * frame)
        if (g1, g2) == salts:
            later += commit != 0
    return later


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def raw_insert_rate(
    path: str | os.PathLike[str],
    rows: Sequence[tuple[str, int, int, float, float, float, float]],
    *,
    batch_size: int = 5000,
    synchronous: Synchronous = "FULL",
) -> float:
    """Rows per second of a bare ``executemany`` of ``rows`` into a fresh database at ``path``.

    The baseline for the ingest benchmark: the same schema, pragmas and per-batch commit as
    :class:`SQLiteTickStore`, without threads, conversion or the event loop.
    """
    target = Path(path)
    conn = _connect(target, synchronous, 5.0)
    try:
        _bound_wal(conn, WAL_SIZE_LIMIT)
        started = time.perf_counter()
        for start in range(0, len(rows), batch_size):
            conn.execute("BEGIN")
            conn.executemany(_INSERT, rows[start : start + batch_size])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return len(rows) / elapsed if elapsed > 0 else float("inf")


class SQLiteTickStore(SQLiteReads):
    """A :class:`~strategylab.market.TickStore` on a local SQLite file (also a ``Component``).

    ``batch_size`` (ticks) sizes the health probe; ``wal_size_limit`` (bytes) bounds the WAL once
    no reader pins it. ``on_corruption`` says what :meth:`open` does with a file that fails its
    integrity check: ``"rebuild"`` (move it aside, start a fresh one; for the node, which owns the
    file) or ``"raise"`` (:class:`~strategylab.market.StoreCorruptedError`; for readers such as a
    checker or a backtest, which must not move a file another process writes). ``manager``, if
    given, is told about a rebuild. ``clock`` dates the name of a moved-aside file.
    ``verify=False`` skips the full scan on open (``PRAGMA quick_check``, 0.1–0.4 s for a
    million ticks) and keeps only the cheap checks (the WAL's frames, the newest rows): for a
    reader that opens the file often (a backtest), where SQLite still reports a damaged page the
    moment a read touches it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 5.0,
        name: str = "sqlite",
        batch_size: int = 20_000,
        wal_size_limit: int = WAL_SIZE_LIMIT,
        on_corruption: OnCorruption = "rebuild",
        verify: bool = True,
        manager: ErrorRecoveryManager | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous={synchronous!r}: expected OFF, NORMAL, FULL or EXTRA")
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout={busy_timeout!r}: must be >= 0")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be an int >= 1")
        if (
            isinstance(wal_size_limit, bool)
            or not isinstance(wal_size_limit, int)
            or wal_size_limit < 0
        ):
            raise ValueError(f"wal_size_limit={wal_size_limit!r}: must be an int >= 0 (bytes)")
        if on_corruption not in {"rebuild", "raise"}:
            raise ValueError(f"on_corruption={on_corruption!r}: expected 'rebuild' or 'raise'")
        self.path = Path(path)
        self._synchronous: Synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._name = name
        self._probe_bytes = batch_size * BYTES_PER_TICK
        self._wal_limit = wal_size_limit
        self._on_corruption: OnCorruption = on_corruption
        self._verify = bool(verify)
        self._manager = manager
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._reopens = 0
        self._damaged: BaseException | None = None
        self._rebuilt: StoreCorruptedError | None = None
        self._wal_damage: StoreCorruptedError | None = None
        self._reclaims = 0
        self._reclaim_skip = 0

    @property
    def name(self) -> str:
        """The component name (``"sqlite"`` unless given)."""
        return self._name

    @property
    def reopens(self) -> int:
        """How many times the connection was replaced after an I/O-class failure."""
        return self._reopens

    @property
    def rebuilt(self) -> StoreCorruptedError | None:
        """What the last :meth:`open` found wrong, and where it moved the file; None if sound."""
        return self._rebuilt

    @property
    def wal_damage(self) -> StoreCorruptedError | None:
        """Commits SQLite dropped from a damaged WAL at the last :meth:`open` (copied aside)."""
        return self._wal_damage

    @property
    def damaged(self) -> bool:
        """True after corruption was met while running: writes fail fast until reopened."""
        return self._damaged is not None

    @property
    def wal_truncations(self) -> int:
        """How many TRUNCATE checkpoints gave the WAL's disk space back."""
        return self._reclaims

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Start the writer thread, check the file and open it (creating the schema).

        A file that fails the integrity check (see the module docstring) is moved aside and
        replaced by a fresh one (``on_corruption="rebuild"``), or raises
        :class:`~strategylab.market.StoreCorruptedError` (``"raise"``). ``OSError`` and
        ``sqlite3.Error`` other than corruption (a full disk, a missing directory) propagate.
        """
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"sqlite-{self._name}"
            )
        found = await self._run(self._open_checked)
        if self._manager is not None:
            for problem in found:
                await self._manager.handle(
                    problem, component=self._name, operation=self._observe_rebuilt
                )

    async def aclose(self) -> None:
        """Close the connection and stop the writer thread; safe to call twice."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_conn)
        finally:
            executor.shutdown(wait=False)

    async def start(self) -> None:
        """``Component.start``: :meth:`open`."""
        await self.open()

    async def stop(self) -> None:
        """``Component.stop``: :meth:`aclose`."""
        await self.aclose()

    async def health(self) -> bool:
        """True when the store can take a batch now: see the module docstring.

        A one-row commit succeeds on a full disk (it reuses WAL space already allocated) while
        real batches fail, so the probe checks free space for a batch, writes a batch-sized
        payload that must reach the WAL (rolled back) and commits one row. False while the store
        is damaged. Also gives a WAL that a reader had pinned back to the disk.
        """
        if self._executor is None:
            return False
        try:
            await self._run(self._probe)
        except (sqlite3.Error, OSError, StoreCorruptedError):
            return False
        return True

    # ------------------------------------------------------------------ TickStore

    async def write(self, ticks: Sequence[Tick]) -> int:
        """Commit ``ticks`` in one transaction (durably); returns how many were new.

        Raises the driver's ``sqlite3.Error`` or ``OSError`` (``SQLITE_FULL``: a full disk), or
        :class:`~strategylab.market.StoreCorruptedError` once the file is known to be damaged.
        """
        if not ticks:
            return 0
        return await self._run(functools.partial(self._write, ticks))

    async def quarantine(self, entries: Sequence[QuarantinedTick]) -> None:
        """Keep refused input with its reason (one durable transaction)."""
        if entries:
            await self._run(functools.partial(self._quarantine, entries))

    # ------------------------------------------------------------------ worker-thread side

    async def _run(self, fn: Callable[[], _T]) -> _T:
        executor = self._executor
        if executor is None:
            raise RuntimeError(f"{self._name}: store is not open (call open() first)")
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    async def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        return await self._run(functools.partial(self._fetch, sql, params))

    async def _observe_rebuilt(self) -> None:
        # The manager's RETRY step for a rebuild: the fresh store observed taking writes.
        if not await self.health():
            raise StoreCorruptedError(self.path, "the rebuilt store is not healthy")

    def _connect(self) -> sqlite3.Connection:
        conn = _connect(self.path, self._synchronous, self._busy_timeout)
        _bound_wal(conn, self._wal_limit)
        return conn

    def _ensure(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            if self._damaged is not None:
                raise StoreCorruptedError(
                    self.path, f"{self._damaged} (reopen the store to rebuild it)"
                ) from self._damaged
            make_private_dir(self.path.parent)
            conn = self._conn = self._connect()
        return conn

    def _open_checked(self) -> list[StoreCorruptedError]:
        """Open the file if it passes the integrity check, else deal with it (worker thread)."""
        found: list[StoreCorruptedError] = []
        if self._conn is not None:
            return found
        make_private_dir(self.path.parent)
        self._damaged = self._rebuilt = self._wal_damage = None
        check_sqlite_files(self.path)  # before anything here reads them
        wal = _sibling(self.path, "-wal")
        if self.path.exists() and (reason := wal_damage(wal)) is not None:
            # The database is consistent without the dropped commits; their ticks come back
            # from the exchange's replay. The WAL is copied (SQLite will overwrite it) for a human.
            copy = self._copy_aside(wal)
            self._wal_damage = StoreCorruptedError(wal, reason, copy)
            _log.error(
                "%s: %s: %s; copied it to %s; the dropped ticks are replayed from the exchange",
                self._name,
                wal,
                reason,
                copy,
            )
            found.append(self._wal_damage)
        try:
            conn = self._connect()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            # Text in the schema that is not UTF-8 can only be damaged bytes.
            if isinstance(exc, sqlite3.DatabaseError) and not _is_damage(exc):
                raise
            found.append(self._replace(f"cannot open it: {exc}"))
            return found
        try:
            problem = _integrity_problem(conn, full=self._verify)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            if isinstance(exc, sqlite3.Error) and not _is_damage(exc):
                conn.close()
                raise
            problem = f"reading it: {exc}"
        if problem is None:
            self._conn = conn
            return found
        conn.close()
        found.append(self._replace(problem))
        return found

    def _replace(self, problem: str) -> StoreCorruptedError:
        """Move the damaged file aside and open a fresh one (or raise, if so configured)."""
        if self._on_corruption == "raise":
            raise StoreCorruptedError(self.path, problem)
        moved = self._move_aside()
        self._conn = self._connect()
        self._rebuilt = StoreCorruptedError(self.path, problem, moved)
        _log.error(
            "%s: %s is corrupted (%s): moved it to %s and started a fresh %s; ticks are rebuilt "
            "from the spool and the exchange's replay",
            self._name,
            self.path,
            problem,
            moved,
            self.path,
        )
        return self._rebuilt

    def _aside_bases(self) -> Iterator[Path]:
        """``<name>.corrupt-<UTC time>``, then ``…-2``, ``…-3``: names to move damage aside to."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock.time()))
        yield _sibling(self.path, f".corrupt-{stamp}")
        for n in itertools.count(2):
            yield _sibling(self.path, f".corrupt-{stamp}-{n}")

    def _aside_base(self) -> Path:
        # lexists: a dangling symlink planted at a name counts as taken, never as free.
        for base in self._aside_bases():
            if not any(os.path.lexists(_sibling(base, s)) for s in ("", "-wal", "-shm")):
                return base
        raise AssertionError("unreachable: the names are endless")  # pragma: no cover

    def _copy_aside(self, wal: Path) -> Path:
        """Copy the damaged WAL to a new ``<name>.corrupt-<UTC time>[-n]-wal``, created 0600 and
        exclusively: a name that exists (a planted symlink included) is skipped, never written
        through."""
        data = read_private(wal)
        for base in self._aside_bases():
            copy = _sibling(base, "-wal")
            try:
                fd = open_private(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            fsync_dir(self.path.parent)
            return copy
        raise AssertionError("unreachable: the names are endless")  # pragma: no cover

    def _move_aside(self) -> Path:
        base = self._aside_base()
        # The WAL first: a fresh file must never meet the old file's WAL, which SQLite would
        # replay into it.
        for suffix in ("-wal", "-shm", ""):
            source = _sibling(self.path, suffix)
            if os.path.lexists(source):
                source.replace(_sibling(base, suffix))  # rename: a link is moved, not followed
        fsync_dir(self.path.parent)
        return base

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _failed(self, conn: sqlite3.Connection, exc: BaseException) -> None:
        # Roll back whatever the failed transaction left; a connection that cannot even do that,
        # or whose failure was I/O-class, is replaced on the next call. Corruption is not
        # retried: the store stays damaged (writes fail fast) until open() rebuilds it.
        code = getattr(exc, "sqlite_errorcode", None)
        reopen = isinstance(exc, OSError) or (code is not None and code & 0xFF in _REOPEN_CODES)
        if is_corruption(exc) and self._damaged is None:
            self._damaged = exc
            reopen = True
            _log.error(
                "%s: %s is corrupted (%r): refusing writes until the store is reopened, which "
                "moves it aside and rebuilds it",
                self._name,
                self.path,
                exc,
            )
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                reopen = True
        if reopen:
            self._reopens += 1
            self._conn = None
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _transaction(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._ensure()
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = body(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            self._failed(conn, exc)
            raise
        self._reclaim(conn, force=False)
        return result

    def _reclaim(self, conn: sqlite3.Connection, *, force: bool) -> None:
        """Truncate a WAL above the limit once no reader pins it; never waits, never raises."""
        try:
            size = _sibling(self.path, "-wal").stat().st_size
        except OSError:
            return
        if size <= self._wal_limit:
            return
        if self._reclaim_skip > 0 and not force:
            self._reclaim_skip -= 1
            return
        # busy_timeout 0: with a reader still in the WAL the checkpoint reports busy at once
        # instead of holding the writer for busy_timeout seconds.
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        except sqlite3.Error as exc:
            # The batch is committed; a checkpoint that cannot run now (a full disk) is retried
            # later and must not turn an acknowledged write into a failure.
            _log.debug("%s: WAL checkpoint failed: %r", self._name, exc)
            busy = 1
        if busy:
            self._reclaim_skip = _RECLAIM_BACKOFF
        else:
            self._reclaims += 1
            self._reclaim_skip = 0

    def _write(self, ticks: Iterable[Tick]) -> int:
        # In (symbol, seq) order: each leaf of the clustered key is visited once, in order
        # (ticks of many symbols arrive interleaved). The sort is stable, so of a (symbol, seq)
        # repeated in the batch the first occurrence is still the one INSERT OR IGNORE keeps.
        rows = sorted(map(_astuple, ticks), key=_KEY)

        def body(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany(_INSERT, rows)
            return conn.total_changes - before

        return self._transaction(body)

    def _quarantine(self, entries: Sequence[QuarantinedTick]) -> None:
        def body(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO quarantine (received_ns, reason, raw, symbol, seq) "
                "VALUES (?, ?, ?, ?, ?)",
                [(e.received_ns, e.reason, e.raw, e.symbol, e.seq) for e in entries],
            )

        self._transaction(body)

    def _probe(self) -> None:
        need = self._probe_bytes
        free = os.statvfs(self.path.parent)
        available = free.f_bavail * free.f_frsize
        if available < need:
            raise OSError(
                errno.ENOSPC,
                f"{available} bytes free in {self.path.parent}, a batch needs {need}",
            )
        conn = self._ensure()
        # A batch-sized write that must reach the disk: with a page cache smaller than the
        # payload, SQLite spills the pages to the WAL before the rollback.
        cache = conn.execute("PRAGMA cache_size").fetchone()[0]
        try:
            conn.execute(f"PRAGMA cache_size = -{_PROBE_CACHE_KIB}")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO probe (payload) VALUES (zeroblob(?))", (need,))
            conn.execute("ROLLBACK")
        except BaseException as exc:
            self._failed(conn, exc)
            raise
        finally:
            if self._conn is conn:
                conn.execute(f"PRAGMA cache_size = {cache}")

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO health (id, checked_ns) VALUES (1, ?)", (time.time_ns(),)
            )

        self._transaction(body)
        self._reclaim(conn, force=True)

    def _fetch(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        conn = self._ensure()
        try:
            return conn.execute(sql, params).fetchall()
        except BaseException as exc:
            self._failed(conn, exc)
            raise
