"""Read-only access to a tick store, SQLite or PostgreSQL: what the tools that only read use.

:func:`open_tick_reader` picks the reader from the store's name: a ``postgresql://`` or
``postgres://`` URL is a :class:`~strategylab.market.PostgresTickStore` opened ``read_only`` (no
schema created; every transaction ``default_transaction_read_only``), anything else an SQLite file
opened by :class:`SQLiteTickReader`. Neither ever writes to the store.

:class:`SQLiteTickReader` opens the file with SQLite's ``mode=ro``: it never creates the schema,
never switches the journal mode, never moves a damaged file aside. A file in WAL mode with no
``-wal`` beside it (no connection has it open: SQLite deletes the WAL when the last one closes) is
opened ``immutable=1`` as well, because a read-only connection to a WAL database would otherwise
create ``-wal`` and ``-shm`` files and could not remove them;
:meth:`SQLiteTickReader.verify_unchanged` compares the file's size, modification time and inode
with what they were at open, so a file that changed meanwhile (a node started writing it) is not
trusted. A WAL database that is open elsewhere
is read through its existing ``-wal``/``-shm``, which SQLite needs.

Errors, each naming the store in one line: :class:`StoreUnusableError` (missing, empty, not SQLite,
not a tick store, an invalid URL), :class:`StoreUnreachableError` (the PostgreSQL server cannot be
reached) and :class:`~strategylab.market.StoreCorruptedError` (a damaged file).

The SQL the SQLite store and this reader run is written once, in :class:`SQLiteReads`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from strategylab._files import UnsafePathError, check_sqlite_readable, sqlite_uri
from strategylab._validate import integer
from strategylab.errors import StrategyLabError

from ._store import QuarantinedTick, StoreCorruptedError
from ._tick import Tick

__all__ = [
    "DEFAULT_TABLE",
    "POSTGRES_SCHEMES",
    "SQLiteReads",
    "SQLiteTickReader",
    "StoreUnreachableError",
    "StoreUnusableError",
    "TickBounds",
    "TickReader",
    "TickSpan",
    "is_postgres_url",
    "open_tick_reader",
]

POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")
"""The URL prefixes that name a PostgreSQL tick store (anything else is an SQLite file)."""
DEFAULT_TABLE: Final = "ticks"
"""The tick table's name unless told otherwise (SQLite's is always this one)."""
_MAX_SEQ: Final = (1 << 63) - 1
_URL: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_PASSWORD: Final = re.compile(r"^([^:/?#]*://[^:@/?#]*):[^@/?#]*@")
_PASSWORD_PARAM: Final = re.compile(r"(?i)([?&]password=)[^&#]*")
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_SQLITE_HEADER: Final = 100
_WAL_VERSION: Final = 2
"""Bytes 18 and 19 of the header (write and read format versions) are 2 in WAL mode."""
_DAMAGE_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


_LAST_SEQS_SQL: Final = (
    "WITH RECURSIVE s(symbol) AS ("
    "SELECT (SELECT MIN(symbol) FROM ticks) "
    "UNION ALL SELECT (SELECT MIN(symbol) FROM ticks WHERE symbol > s.symbol) FROM s "
    "WHERE s.symbol IS NOT NULL) "
    "SELECT symbol, (SELECT MAX(seq) FROM ticks WHERE ticks.symbol = s.symbol) "
    "FROM s WHERE symbol IS NOT NULL"
)
"""The highest seq per symbol as index seeks (one to find each next symbol, one for its highest
seq): O(symbols x log ticks). ``SELECT symbol, MAX(seq) FROM ticks GROUP BY symbol`` scans every
row (~0.12 s per million ticks), which made a FailoverStore's bounded ``last_seqs`` stall on a
store of millions of ticks and the feed resume from seq 1."""


class StoreUnusableError(StrategyLabError):
    """A tick store that cannot be used as one: missing, empty, not SQLite, no ``ticks`` table,
    an invalid URL. The message names the store."""


class StoreUnreachableError(StrategyLabError):
    """The PostgreSQL server of a tick store cannot be reached (refused, timed out, denied)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TickSpan:
    """The stored ticks of one symbol inside a range: the lowest and highest seq, and how many.

    ``first_seq`` and ``last_seq`` are None when ``count`` is 0.
    """

    first_seq: int | None
    last_seq: int | None
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TickBounds:
    """A range of stored ticks: ``from_seq <= seq <= to_seq`` and ``start_ns <= ts < end_ns``.

    Every bound is optional (None: unbounded); ``ts`` is in ns since the epoch.
    """

    from_seq: int | None = None
    to_seq: int | None = None
    start_ns: int | None = None
    end_ns: int | None = None

    def __post_init__(self) -> None:
        # A bound a database cannot hold (SQLite and PostgreSQL integers are 64-bit) is refused
        # here, naming the field, instead of an OverflowError from the driver at query time.
        for key in ("from_seq", "to_seq", "start_ns", "end_ns"):
            value = getattr(self, key)
            if value is not None:
                integer(key, value, minimum=-_MAX_SEQ - 1, maximum=_MAX_SEQ)

    def where(self, placeholder: str) -> tuple[str, list[int]]:
        """`` AND ``-prefixed conditions with ``placeholder`` for each value, and the values."""
        clauses: list[str] = []
        values: list[int] = []
        for value, clause in (
            (self.from_seq, "seq >= "),
            (self.to_seq, "seq <= "),
            (self.start_ns, "ts >= "),
            (self.end_ns, "ts < "),
        ):
            if value is not None:
                clauses.append(clause + placeholder)
                values.append(value)
        return "".join(f" AND {c}" for c in clauses), values


class TickReader(Protocol):
    """What the read-only tools (``check``, ``backtest``, ``optimize``) read from a tick store."""

    @property
    def name(self) -> str:
        """The store for messages: the file, or the URL without its password."""
        ...

    async def open(self) -> None:
        """Open it read-only; :class:`StoreUnusableError`, :class:`StoreUnreachableError`."""
        ...

    async def aclose(self) -> None:
        """Release it; safe to call twice."""
        ...

    async def last_seqs(self) -> dict[str, int]:
        """The highest stored sequence per symbol."""
        ...

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        """Stored ticks of ``symbol`` from ``from_seq`` to ``to_seq`` (inclusive), in order."""
        ...

    async def symbols(self) -> list[str]:
        """Every symbol with a stored tick, sorted."""
        ...

    async def duplicates(self) -> int:
        """Rows beyond the first per (symbol, seq)."""
        ...

    async def quarantined(self) -> list[QuarantinedTick]:
        """Everything quarantined, oldest first ([] when the store keeps no quarantine)."""
        ...

    async def span(self, symbol: str, bounds: TickBounds | None = None) -> TickSpan:
        """``symbol``'s stored ticks inside ``bounds`` (None: all of them)."""
        ...


def is_postgres_url(store: str | os.PathLike[str]) -> bool:
    """True when ``store`` is a ``postgresql://`` or ``postgres://`` URL (a ``Path`` never is)."""
    return isinstance(store, str) and store.startswith(POSTGRES_SCHEMES)


def _shown_store(store: str | os.PathLike[str]) -> str:
    """``store`` for messages: a file as given, a URL without its password (neither the one in
    ``user:password@`` nor a ``password=`` parameter)."""
    text = os.fspath(store)
    if not _URL.match(text):
        return text
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD.sub(r"\1@", text))


def open_tick_reader(
    store: str | os.PathLike[str],
    *,
    verify: bool = True,
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
) -> TickReader:
    """A reader of ``store`` (not yet open): PostgreSQL for a URL, else the SQLite file.

    ``verify`` (SQLite only): run ``PRAGMA quick_check`` on open (every page; ~0.13 s per
    million ticks). ``table`` and ``schema`` (PostgreSQL only): the tick table a
    :class:`~strategylab.market.PostgresTickStore` was given (its quarantine is
    ``TABLE_quarantine`` beside it); ``schema`` None is the connection's ``search_path`` (e.g. the
    URL's ``options=-csearch_path=NAME``), as the node's store resolves it. The reader's ``name``
    is the file, or the URL without its password. Raises :class:`StoreUnusableError` for an
    empty name or a URL whose scheme is not ``postgresql``/``postgres`` (an SQLite file is a
    path, never a URL), and ``ValueError`` naming ``table``/``schema`` for an empty one, or for
    either given with an SQLite file (whose table is always ``ticks``).
    """
    text = os.fspath(store)
    if not text.strip():
        raise StoreUnusableError(f"{text!r}: an empty name is not a tick store")
    if not table.strip():
        raise ValueError(f"table={table!r}: must not be empty")
    if schema is not None and not schema.strip():
        raise ValueError(f"schema={schema!r}: must not be empty (None: the search_path)")
    if is_postgres_url(store):
        from ._pg_store import PostgresTickStore  # noqa: PLC0415 - psycopg only when asked

        return PostgresTickStore(
            text,
            read_only=True,
            pool_size=1,
            name=_shown_store(text),
            table=table,
            schema=schema,
        )
    if isinstance(store, str) and (scheme := _URL.match(store)):
        raise StoreUnusableError(
            f"{_shown_store(store)}: unsupported URL scheme {scheme.group(1)!r} "
            "(a SQLite file or a postgresql:// URL)"
        )
    if table != DEFAULT_TABLE or schema is not None:
        raise ValueError(
            f"table={table!r}, schema={schema!r}: only a PostgreSQL store has a table and a "
            f"schema to choose ({os.fspath(store)!r} is an SQLite file)"
        )
    return SQLiteTickReader(Path(store), verify=verify)


class SQLiteReads:
    """The read queries of a tick store's SQLite file, written once.

    Mixed into :class:`~strategylab.market.SQLiteTickStore` and :class:`SQLiteTickReader`, which
    supply ``_query`` (run one statement, return its rows).
    """

    async def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _has_quarantine(self) -> bool:
        return True

    async def last_seqs(self) -> dict[str, int]:
        """The highest stored sequence per symbol (where a feed resumes), by index seeks: a few
        milliseconds however many ticks are stored (see :data:`_LAST_SEQS_SQL`)."""
        rows = await self._query(_LAST_SEQS_SQL, ())
        return {str(symbol): int(seq) for symbol, seq in rows}

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        """Stored ticks of ``symbol`` from ``from_seq`` to ``to_seq`` (inclusive), in order."""
        upper = to_seq if to_seq is not None else _MAX_SEQ
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

    async def quarantined(self) -> list[QuarantinedTick]:
        """Everything quarantined, oldest first."""
        if not self._has_quarantine():
            return []
        rows = await self._query(
            "SELECT received_ns, reason, raw, symbol, seq FROM quarantine ORDER BY id", ()
        )
        return [
            QuarantinedTick(received_ns=r[0], reason=r[1], raw=r[2], symbol=r[3], seq=r[4])
            for r in rows
        ]

    async def span(self, symbol: str, bounds: TickBounds | None = None) -> TickSpan:
        """``symbol``'s stored ticks inside ``bounds`` (None: all of them)."""
        where, values = (bounds or TickBounds()).where("?")
        rows = await self._query(
            # Only the fixed clauses of TickBounds.where are joined in; values are bound.
            f"SELECT MIN(seq), MAX(seq), COUNT(*) FROM ticks WHERE symbol = ?{where}",  # noqa: S608
            (symbol, *values),
        )
        low, high, count = rows[0]
        return TickSpan(first_seq=low, last_seq=high, count=int(count))


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _identity(path: Path) -> tuple[int, int, int, bool]:
    """What must not change while an immutable connection reads ``path``."""
    info = path.stat()
    return info.st_size, info.st_mtime_ns, info.st_ino, _sibling(path, "-wal").exists()


class SQLiteTickReader(SQLiteReads):
    """A tick store's SQLite file opened read-only (see the module docstring).

    Never creates, repairs or converts anything. ``open_sync``/``close`` are the blocking halves
    (for a worker thread); ``open``/``aclose`` run them off the event loop.
    """

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = True) -> None:
        self.path = Path(path)
        self._verify = verify
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int, int, bool] | None = None
        self._tables: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        """The file, as given."""
        return str(self.path)

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """:meth:`open_sync` on a worker thread."""
        await asyncio.to_thread(self.open_sync)

    async def aclose(self) -> None:
        """:meth:`close` on a worker thread."""
        await asyncio.to_thread(self.close)

    def open_sync(self) -> None:
        """Open the file read-only and check it is a tick store (and, with ``verify``, intact).

        Raises :class:`StoreUnusableError` or :class:`~strategylab.market.StoreCorruptedError`.
        """
        from ._sqlite_store import wal_damage  # noqa: PLC0415 - the store's WAL reader

        try:
            check_sqlite_readable(self.path)
        except UnsafePathError as exc:
            raise StoreUnusableError(str(exc)) from None
        except FileNotFoundError:
            pass  # named below, with the other unusable inputs
        header = self._header()
        wal, shm = _sibling(self.path, "-wal"), _sibling(self.path, "-shm")
        immutable = (
            header[18] == _WAL_VERSION
            and header[19] == _WAL_VERSION
            and not wal.exists()
            and not shm.exists()
        )
        if wal.exists() and (reason := wal_damage(wal)) is not None:
            raise StoreCorruptedError(self.path, reason)
        uri = sqlite_uri(self.path, "ro") + ("&immutable=1" if immutable else "")
        if immutable:
            self._identity = _identity(self.path)
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        try:
            self._validate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _validate(self, conn: sqlite3.Connection) -> None:
        """A tick store (it has ``ticks``) whose every page passes ``quick_check``."""
        try:
            conn.execute("PRAGMA query_only = ON")
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            found = (
                [str(row[0]) for row in conn.execute("PRAGMA quick_check(10)").fetchall()]
                if self._verify
                else ["ok"]
            )
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        self._tables = frozenset(str(name) for (name,) in rows)
        if "ticks" not in self._tables:
            raise StoreUnusableError(
                f"{self.path}: an SQLite database, but not a tick store (no ticks table)"
            )
        if found != ["ok"]:
            raise StoreCorruptedError(self.path, "quick_check: " + "; ".join(found))

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def verify_unchanged(self) -> None:
        """Raise :class:`StoreUnusableError` if an immutable read met a file that changed."""
        if self._identity is not None and _identity(self.path) != self._identity:
            raise StoreUnusableError(
                f"{self.path}: changed while it was being checked (is a node writing it?); "
                "run the check again"
            )

    def _header(self) -> bytes:
        path = self.path
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise StoreUnusableError(f"{path}: not a regular file")
            if info.st_size == 0:
                raise StoreUnusableError(f"{path}: empty (0 bytes), not a tick store")
            with path.open("rb") as file:
                header = file.read(_SQLITE_HEADER)
        except FileNotFoundError:
            raise StoreUnusableError(f"{path}: does not exist") from None
        except OSError as exc:
            raise StoreUnusableError(f"{path}: cannot read it: {exc.strerror or exc}") from None
        if not header.startswith(_SQLITE_MAGIC) or len(header) < _SQLITE_HEADER:
            raise StoreUnusableError(f"{path}: not an SQLite database")
        return header

    def _translate(self, exc: sqlite3.Error) -> Exception:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _DAMAGE_CODES:
            return StoreCorruptedError(self.path, str(exc))
        return StoreUnusableError(f"{self.path}: cannot read it: {exc}")

    # -- reads ----------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"{self.path}: not open (call open() first)")
        return conn

    def _fetch(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        except UnicodeDecodeError as exc:  # text that is not UTF-8 can only be damaged bytes
            raise StoreCorruptedError(self.path, f"reading it: {exc}") from None

    async def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(functools.partial(self._fetch, sql, params))

    def _has_quarantine(self) -> bool:
        return "quarantine" in self._tables

    def iter_rows(
        self, symbol: str, from_seq: int, to_seq: int
    ) -> Iterator[tuple[int, int, float, float, float, float]]:
        """``(seq, ts, bid, ask, bid_size, ask_size)`` of ``symbol``'s ticks ``from_seq..to_seq``
        in order, straight from the cursor (blocking: call it on a worker thread)."""
        try:
            cursor = self._connection().execute(
                "SELECT seq, ts, bid, ask, bid_size, ask_size FROM ticks "
                "WHERE symbol = ? AND seq BETWEEN ? AND ? ORDER BY seq",
                (symbol, from_seq, to_seq),
            )
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        return iter(cursor)
