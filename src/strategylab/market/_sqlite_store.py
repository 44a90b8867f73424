"""The embedded default tick store: SQLite in WAL mode, one writer thread, durable commits.

sqlite3 blocks, so every statement runs on one dedicated worker thread (a single-thread executor):
the event loop never waits on the disk, and the connection is only ever used from one thread at a
time. A batch is one transaction of ``INSERT OR IGNORE`` rows (idempotent on ``(symbol, seq)``);
with ``synchronous=FULL`` in WAL mode the ``COMMIT`` fsyncs the WAL before :meth:`write` returns.

A full disk (``SQLITE_FULL``, or ``OSError(ENOSPC)`` while opening) surfaces as the original
exception, which :func:`~strategylab.fault_tolerance.classify` maps to DISK_SPACE_EXHAUSTED. After
an I/O-class failure the connection is closed and the next call opens a fresh one, so the store is
usable again as soon as space returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import msgspec

from ._store import QuarantinedTick
from ._tick import Tick

__all__ = ["SCHEMA", "SQLiteTickStore", "raw_insert_rate"]

_T = TypeVar("_T")

SCHEMA: Final = (
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
)
"""The schema; ``ticks`` is clustered on its primary key (WITHOUT ROWID): one B-tree, no rowid
index to maintain, and range reads per symbol are sequential."""

_INSERT: Final = "INSERT OR IGNORE INTO ticks VALUES (?, ?, ?, ?, ?, ?, ?)"
_astuple = msgspec.structs.astuple
# After these the connection may hold a half-written WAL frame or a lost file handle: reopen.
_REOPEN_CODES: Final = frozenset(
    {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN}
)

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


def _connect(path: Path, synchronous: Synchronous, busy_timeout: float) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
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
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"{path}: journal_mode=WAL refused (got {mode!r})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    for statement in SCHEMA:
        conn.execute(statement)


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
        started = time.perf_counter()
        for start in range(0, len(rows), batch_size):
            conn.execute("BEGIN")
            conn.executemany(_INSERT, rows[start : start + batch_size])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return len(rows) / elapsed if elapsed > 0 else float("inf")


class SQLiteTickStore:
    """A :class:`~strategylab.market.TickStore` on a local SQLite file (also a ``Component``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 5.0,
        name: str = "sqlite",
    ) -> None:
        if synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous={synchronous!r}: expected OFF, NORMAL, FULL or EXTRA")
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout={busy_timeout!r}: must be >= 0")
        self.path = Path(path)
        self._synchronous: Synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._name = name
        self._conn: sqlite3.Connection | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._reopens = 0

    @property
    def name(self) -> str:
        """The component name (``"sqlite"`` unless given)."""
        return self._name

    @property
    def reopens(self) -> int:
        """How many times the connection was replaced after an I/O-class failure."""
        return self._reopens

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Start the writer thread and open the database (creating the schema)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"sqlite-{self._name}"
            )
        await self._run(self._ensure)

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
        """True when a durable write round trip (a committed one-row upsert) just succeeded.

        A ``SELECT 1`` answers even on a full disk; a commit does not, so the failover store's
        probe only sees this store healthy when it can take writes again.
        """
        if self._executor is None:
            return False
        try:
            await self._run(self._probe)
        except (sqlite3.Error, OSError):
            return False
        return True

    # ------------------------------------------------------------------ TickStore

    async def write(self, ticks: Sequence[Tick]) -> int:
        """Commit ``ticks`` in one transaction (durably); returns how many were new."""
        if not ticks:
            return 0
        return await self._run(functools.partial(self._write, ticks))

    async def last_seqs(self) -> dict[str, int]:
        """The highest stored sequence per symbol."""
        rows = await self._query("SELECT symbol, MAX(seq) FROM ticks GROUP BY symbol", ())
        return {str(symbol): int(seq) for symbol, seq in rows}

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        """Stored ticks of ``symbol`` from ``from_seq`` to ``to_seq`` (inclusive), in order."""
        upper = to_seq if to_seq is not None else (1 << 63) - 1
        rows = await self._query(
            "SELECT symbol, seq, ts, bid, ask, bid_size, ask_size FROM ticks "
            "WHERE symbol = ? AND seq BETWEEN ? AND ? ORDER BY seq",
            (symbol, from_seq, upper),
        )
        return [Tick(*row) for row in rows]

    async def symbols(self) -> list[str]:
        """Every symbol with a stored tick, sorted."""
        rows = await self._query("SELECT DISTINCT symbol FROM ticks ORDER BY symbol", ())
        return [str(row[0]) for row in rows]

    async def count(self) -> int:
        """How many ticks are stored."""
        rows = await self._query("SELECT COUNT(*) FROM ticks", ())
        return int(rows[0][0])

    async def duplicates(self) -> int:
        """Rows beyond the first per (symbol, seq): 0, since that is the primary key."""
        rows = await self._query(
            "SELECT COALESCE(SUM(n - 1), 0) FROM "
            "(SELECT COUNT(*) AS n FROM ticks GROUP BY symbol, seq HAVING n > 1)",
            (),
        )
        return int(rows[0][0])

    async def quarantine(self, entries: Sequence[QuarantinedTick]) -> None:
        """Keep refused input with its reason (one durable transaction)."""
        if entries:
            await self._run(functools.partial(self._quarantine, entries))

    async def quarantined(self) -> list[QuarantinedTick]:
        """Everything quarantined, oldest first."""
        rows = await self._query(
            "SELECT received_ns, reason, raw, symbol, seq FROM quarantine ORDER BY id", ()
        )
        return [
            QuarantinedTick(received_ns=r[0], reason=r[1], raw=r[2], symbol=r[3], seq=r[4])
            for r in rows
        ]

    # ------------------------------------------------------------------ worker-thread side

    async def _run(self, fn: Callable[[], _T]) -> _T:
        executor = self._executor
        if executor is None:
            raise RuntimeError(f"{self._name}: store is not open (call open() first)")
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    async def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        return await self._run(functools.partial(self._fetch, sql, params))

    def _ensure(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn = _connect(self.path, self._synchronous, self._busy_timeout)
        return conn

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _failed(self, conn: sqlite3.Connection, exc: BaseException) -> None:
        # Roll back whatever the failed transaction left; a connection that cannot even do that,
        # or whose failure was I/O-class, is replaced on the next call.
        code = getattr(exc, "sqlite_errorcode", None)
        reopen = isinstance(exc, OSError) or (code is not None and code & 0xFF in _REOPEN_CODES)
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
        return result

    def _write(self, ticks: Iterable[Tick]) -> int:
        def body(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany(_INSERT, map(_astuple, ticks))
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
        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO health (id, checked_ns) VALUES (1, ?)", (time.time_ns(),)
            )

        self._transaction(body)

    def _fetch(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        conn = self._ensure()
        try:
            return conn.execute(sql, params).fetchall()
        except BaseException as exc:
            self._failed(conn, exc)
            raise
