"""The node's store configuration check: :func:`check_store_config`.

The store configuration is checked before anything is opened: an SQLite file that is not a
database or holds ``ticks``/``quarantine`` tables of another schema, a DSN that does not parse, a
database or role the server says does not exist, refused credentials, or a PostgreSQL ``ticks``
table of another schema are configuration errors, not transient faults: one line on stderr naming
``--db`` or ``--postgres`` and exit 2. A PostgreSQL server that cannot be reached at start *is*
transient: the node starts, spools durably, and drains into the server once it answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import psycopg
from psycopg import conninfo

from strategylab._files import check_sqlite_files, open_private, sqlite_probe_uri
from strategylab.errors import ConfigurationError
from strategylab.market import SQLITE_SCHEMA

if TYPE_CHECKING:
    from ._config import NodeConfig

__all__ = ["check_store_config"]

# The node's one logger, under the name it had before the split (filters and the log file name it).
_log = logging.getLogger("strategylab.node._node")

_PG_COLUMNS: Final = (
    ("symbol", "text"),
    ("seq", "bigint"),
    ("ts", "bigint"),
    ("bid", "double precision"),
    ("ask", "double precision"),
    ("bid_size", "double precision"),
    ("ask_size", "double precision"),
)
# psycopg gives no SQLSTATE for a connection the server refused (libpq reports it as text only),
# so these are the server's and libpq's messages for rejections that retrying cannot fix. Anything
# else (refused, timed out, starting up, too many clients) is transient.
_PG_PERMANENT: Final = (
    "does not exist",
    "password authentication failed",
    "authentication failed",
    "no pg_hba.conf entry",
    "permission denied",
    "not permitted to log in",
    "no password supplied",
    "invalid connection option",
    "invalid integer value",
    "invalid value for parameter",
    "unrecognized configuration parameter",
)


async def check_store_config(config: NodeConfig) -> None:
    """Refuse a store configuration that can never work, before anything is opened.

    Raises :class:`ConfigurationError` with key ``--db`` (an SQLite path in a missing directory,
    a directory, a file that is not a database, ``ticks``/``quarantine``/``health`` tables of
    another schema) or ``--postgres`` (a DSN that does not parse; a server that rejects the
    connection for good: unknown database or role, refused credentials; a ``ticks`` table of
    another schema). An unreachable PostgreSQL server is not an error here (the node spools).
    """
    if config.postgres is not None:
        await _check_postgres(config.postgres, config.connect_timeout)
    else:
        await asyncio.to_thread(_check_sqlite, config.db_path, must_exist_dir=config.db is not None)


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, str, int, int]]:
    rows = conn.execute(f"PRAGMA table_info({table})").fetchall()
    return [(str(r[1]), str(r[2]).upper(), int(r[3]), int(r[5])) for r in rows]


def _describe(columns: Sequence[tuple[str, str, int, int]]) -> str:
    return ", ".join(
        f"{name} {kind}{' NOT NULL' if notnull else ''}{' PK' if pk else ''}"
        for name, kind, notnull, pk in columns
    )


def _sqlite_magic(path: Path) -> bool:
    """Whether ``path`` has SQLite's database header, whole or in part (it was one of ours).

    True for the 16-byte header string, and, when that is damaged, for the rest of the 100-byte
    header as SQLite writes it: a power-of-two page size (or 1 for 65,536) and the fixed payload
    fractions 64, 32, 32. A file with neither is not SQLite's: the node refuses it rather than let
    the store move a user's file aside.
    """
    try:
        with os.fdopen(open_private(path, os.O_RDONLY), "rb") as file:
            head = file.read(100)
    except OSError:
        return False
    if head[:16] == b"SQLite format 3\x00":
        return True
    if len(head) < 100 or head[21:24] != b"\x40\x20\x20":
        return False
    page = int.from_bytes(head[16:18], "big")
    return page == 1 or (512 <= page <= 32768 and page & (page - 1) == 0)


def _check_sqlite_path(path: Path, shown: str, *, must_exist_dir: bool) -> bool:
    """Refuse a path the store could never write; True when the file exists already."""
    if path.is_dir():
        raise ConfigurationError("--db", shown, "is a directory, not an SQLite file")
    if not path.exists():
        if must_exist_dir and not path.parent.is_dir():
            raise ConfigurationError("--db", shown, f"directory {path.parent} does not exist")
        if path.parent.is_dir() and not os.access(path.parent, os.W_OK | os.X_OK):
            raise ConfigurationError("--db", shown, f"directory {path.parent} is not writable")
        return False
    for target in (path, path.parent):
        # SQLite writes the file and, in WAL mode, its -wal and -shm beside it.
        if not os.access(target, os.W_OK):
            raise ConfigurationError("--db", shown, f"{target} is not writable")
    return True


def _refuse_foreign(conn: sqlite3.Connection, shown: str, want: Collection[str]) -> None:
    """Refuse an SQLite file holding tables a tick store has not (an order book, say): adding
    tick tables to it would spoil both. An empty file (no tables) is a new store."""
    found = sorted(
        str(row[0])
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    )
    if set(found) - set(want):
        raise ConfigurationError(
            "--db", shown, f"is not a tick store (it holds tables: {', '.join(found)})"
        )


def _check_sqlite(path: Path, *, must_exist_dir: bool) -> None:
    shown = os.fspath(path)
    if not path.is_dir():  # a directory is a bad --db, said below
        # SQLite would follow a symlink, block on a FIFO, write through a hard link.
        check_sqlite_files(path)
    if not _check_sqlite_path(path, shown, must_exist_dir=must_exist_dir):
        return  # a new database: the store creates the schema
    expected = sqlite3.connect(":memory:")
    try:
        for statement in SQLITE_SCHEMA:
            expected.execute(statement)
        tables = [str(r[0]) for r in expected.execute("SELECT name FROM sqlite_master")]
        want = {table: _columns(expected, table) for table in tables}
    finally:
        expected.close()
    try:
        # Read-only: closing a read-write connection checkpoints a leftover WAL into the file and
        # deletes it, before the store could check its frames (a damaged frame would make SQLite
        # drop acknowledged commits silently). A reader never checkpoints.
        # Nothing created beside it either (immutable where there is no -wal to read).
        conn = sqlite3.connect(sqlite_probe_uri(path), uri=True)
    except sqlite3.Error as exc:
        raise ConfigurationError("--db", shown, f"cannot be opened: {exc}") from None
    try:
        _refuse_foreign(conn, shown, want)
        for table, columns in want.items():
            have = _columns(conn, table)
            if have and have != columns:
                raise ConfigurationError(
                    "--db",
                    shown,
                    f"table {table!r} has another schema ({_describe(have)}); "
                    f"expected ({_describe(columns)})",
                )
    except UnicodeDecodeError as exc:
        # Undecodable text in the schema: damage for the store to repair, not a setting.
        _log.warning("--db %s: could not check the schema: %r", shown, exc)
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB and not _sqlite_magic(
            path
        ):
            raise ConfigurationError("--db", shown, f"is not an SQLite database ({exc})") from None
        # An SQLite file SQLite cannot read (a damaged header page) is the store's to repair: it
        # moves the file aside and rebuilds, which it must never do to a file that is not one.
        # Busy, I/O, a full disk, a damaged page: not a configuration error; the store's own
        # recovery deals with those.
        _log.warning("--db %s: could not check the schema: %r", shown, exc)
    finally:
        conn.close()


def _redact(dsn: str) -> str:
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    if "password" in params:
        params["password"] = "***"  # noqa: S105 - a mask, not a password
    return conninfo.make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


async def _check_postgres(dsn: str, connect_timeout: float) -> None:
    try:
        conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        reason = " ".join(str(exc).split())
        raise ConfigurationError("--postgres", _redact(dsn), f"does not parse: {reason}") from None
    shown = _redact(dsn)
    try:
        conn = await psycopg.AsyncConnection.connect(
            dsn, connect_timeout=max(1, round(connect_timeout)), autocommit=True
        )
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        if any(marker in reason for marker in _PG_PERMANENT):
            raise ConfigurationError("--postgres", shown, f"rejected: {reason}") from None
        _log.warning("--postgres: server not reachable at start (%s); spooling until it is", reason)
        return
    try:
        cur = await conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass('ticks') AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum"
        )
        have = tuple((str(name), str(kind)) for name, kind in await cur.fetchall())
        cur = await conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass('ticks') "
            "AND i.indisprimary"
        )
        key = sorted(str(row[0]) for row in await cur.fetchall())
    except psycopg.Error as exc:
        _log.warning("--postgres: could not check the ticks table: %r", exc)
        return
    finally:
        await conn.close()
    if have and (have != _PG_COLUMNS or key != ["seq", "symbol"]):
        described = ", ".join(f"{n} {k}" for n, k in have)
        raise ConfigurationError(
            "--postgres",
            shown,
            f"table 'ticks' has another schema ({described}; primary key {key or 'none'}); "
            "expected (" + ", ".join(f"{n} {k}" for n, k in _PG_COLUMNS) + "; primary key "
            "(symbol, seq))",
        )
