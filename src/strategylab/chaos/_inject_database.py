"""Database faults: SQLite and PostgreSQL locks, pool exhaustion, statement timeouts, and the
server faults (paused, killed, storage full) that only ever hit a :class:`ThrowawayPostgres`.

Each injector takes its target explicitly (a SQLite path, a DSN, a throwaway server) and sizes
itself from its :class:`~strategylab.chaos.Severity`:

- :class:`SQLiteLockHolder`: a connection of its own (on a thread of its own: sqlite3 blocks)
  takes ``BEGIN EXCLUSIVE`` and holds it. The node's store waits ``busy_timeout`` (5 s by
  default, ``SQLiteTickStore(busy_timeout=)``) and then fails with ``database is locked``; its
  failover group spools the batches. Heal rolls back and closes.
- :class:`PgLockHolder`: a transaction holding ``LOCK TABLE ticks IN ACCESS EXCLUSIVE MODE``
  (``ticks`` is :class:`~strategylab.market.PostgresTickStore`'s default table): every read and
  write of the table waits until heal rolls it back.
- :class:`PgPoolExhaustion`: opens connections until ``max_connections`` minus a margin is
  reached (superuser-reserved slots included when its role may take them) and holds them; new
  connections fail with ``too many clients``. Medium: margin 0.
- :class:`PgStatementTimeout`: ``ALTER ROLE ... IN DATABASE ... SET statement_timeout`` (or
  ``ALTER DATABASE`` without a role) to a low figure for new sessions, and a transaction holding
  ``SHARE`` on the table so that writes really take longer than that: a write then fails with
  ``canceling statement due to statement timeout`` instead of waiting. The setting persists in
  the catalog, so heal puts back exactly what was there before.
- :class:`PgServerPause`, :class:`PgServerKill`, :class:`PgStorageFull`: SIGSTOP of the
  postmaster and every backend (heal SIGCONT); SIGKILL of the postmaster (heal starts it again on
  the same data directory and port); the server's tmpfs filled to ``ENOSPC`` (heal deletes the
  filler). Only on a :class:`ThrowawayPostgres` the lab started itself, never a shared server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any, ClassVar, Final

import psutil
import psycopg
from psycopg import sql

from ._inject_resources import fill_to_enospc
from ._injector import Injector, InjectorError
from ._severity import Severity
from ._throwaway_pg import ThrowawayPostgres

__all__ = [
    "PgLockHolder",
    "PgPoolExhaustion",
    "PgServerKill",
    "PgServerPause",
    "PgStatementTimeout",
    "PgStorageFull",
    "SQLiteLockHolder",
]

_CONNECT_TIMEOUT: Final = 5
"""Seconds an injector's own connection may take to open."""


def _table_identifier(table: str, schema: str | None) -> sql.Identifier:
    if not isinstance(table, str) or not table:
        raise ValueError(f"table={table!r}: must be a non-empty table name")
    if schema is not None and (not isinstance(schema, str) or not schema):
        raise ValueError(f"schema={schema!r}: must be None or a non-empty schema name")
    return sql.Identifier(*((schema,) if schema else ()), table)


def _check_dsn(dsn: str) -> str:
    if not isinstance(dsn, str) or not dsn.strip():
        raise ValueError(f"dsn={dsn!r}: must be a non-empty PostgreSQL DSN or URL")
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"dsn: not a PostgreSQL DSN or URL: {exc}") from None
    return dsn


async def _connect(name: str, dsn: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(dsn, connect_timeout=_CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        raise InjectorError(f"{name}: cannot connect: {exc}") from exc


async def _close(conn: psycopg.AsyncConnection[Any] | None) -> None:
    if conn is None:
        return
    with contextlib.suppress(psycopg.Error, OSError):
        await conn.rollback()
    with contextlib.suppress(psycopg.Error, OSError):
        await conn.close()


# ---------------------------------------------------------------------- SQLite


class SQLiteLockHolder(Injector):
    """Hold the write lock of the SQLite file ``db_path`` (``BEGIN EXCLUSIVE``) until heal.

    The holder's connection lives on its own thread; ``busy_timeout`` is how long its own
    ``BEGIN`` may wait for the node's writer to let go (seconds > 0). The lock is the same at
    every severity (SQLite has one writer lock); severity sizes only how long a scenario keeps
    it (``hold`` = 5 s x scale, for the scenario to read). Raises :class:`InjectorError` when
    the file does not exist or the lock cannot be taken.
    """

    kind: ClassVar[str] = "database"

    def __init__(
        self,
        db_path: Path | str,
        severity: Severity = Severity.MEDIUM,
        *,
        busy_timeout: float = 5.0,
        name: str = "database.sqlite_lock",
    ) -> None:
        super().__init__(name, severity)
        if not busy_timeout > 0:
            raise ValueError(f"busy_timeout={busy_timeout!r}: must be > 0 (seconds)")
        self.db_path = Path(db_path)
        self.busy_timeout = float(busy_timeout)
        self.hold = 5.0 * severity.scale
        """Seconds a scenario should keep the lock (5 s at medium, x the severity's scale)."""
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    def capability(self) -> str | None:
        """None: SQLite locking works everywhere (the file is checked at inject)."""
        return None

    async def _inject(self) -> None:
        if not self.db_path.is_file():
            raise InjectorError(f"{self.name}: {self.db_path} is not an existing SQLite file")
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqlite-lock")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(executor, self._lock)
        except sqlite3.Error as exc:
            executor.shutdown(wait=False)
            raise InjectorError(f"{self.name}: cannot lock {self.db_path}: {exc}") from exc
        self._executor = executor

    def _lock(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.db_path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=True
        )
        try:
            conn.execute("BEGIN EXCLUSIVE")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _heal(self) -> None:
        conn, self._conn = self._conn, None
        executor, self._executor = self._executor, None
        if executor is None:
            return

        def release() -> None:
            if conn is not None:
                try:
                    conn.execute("ROLLBACK")
                finally:
                    conn.close()

        try:
            await asyncio.get_running_loop().run_in_executor(executor, release)
        finally:
            executor.shutdown(wait=False)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"db_path": str(self.db_path), "hold_s": self.hold}


# ---------------------------------------------------------------------- PostgreSQL, any DSN


class PgLockHolder(Injector):
    """A transaction holding ``LOCK TABLE <table> IN ACCESS EXCLUSIVE MODE`` on ``dsn`` until
    heal rolls it back. ``table`` defaults to the tick store's ``ticks``; ``schema`` as the
    store's. Severity sizes only how long a scenario keeps it (``hold`` = 5 s x scale). Raises
    :class:`InjectorError` naming the table when it cannot be locked (no such table)."""

    kind: ClassVar[str] = "database"

    def __init__(
        self,
        dsn: str,
        severity: Severity = Severity.MEDIUM,
        *,
        table: str = "ticks",
        schema: str | None = None,
        name: str = "database.pg_lock",
    ) -> None:
        super().__init__(name, severity)
        self.dsn = _check_dsn(dsn)
        self.table = table
        self._ident = _table_identifier(table, schema)
        self.hold = 5.0 * severity.scale
        """Seconds a scenario should keep the lock (5 s at medium)."""
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def _inject(self) -> None:
        conn = await _connect(self.name, self.dsn)
        try:
            await conn.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(self._ident)
            )
        except psycopg.Error as exc:
            await _close(conn)
            raise InjectorError(f"{self.name}: cannot lock table {self.table!r}: {exc}") from exc
        self._conn = conn

    async def _heal(self) -> None:
        conn, self._conn = self._conn, None
        await _close(conn)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"table": self.table, "hold_s": self.hold}


class PgPoolExhaustion(Injector):
    """Open and hold connections to ``dsn`` until the server has ``margin`` slots left of
    ``max_connections`` (counting every backend already connected).

    ``margin`` defaults by severity: low 2 (pressure, the node's pool of 2 still fits), medium,
    high and critical 0 (every slot this role may take: a new connection fails with ``too many
    clients`` or ``remaining connection slots are reserved``). ``held`` says how many it holds.
    Raises :class:`InjectorError` when it cannot connect at all.
    """

    kind: ClassVar[str] = "database"

    def __init__(
        self,
        dsn: str,
        severity: Severity = Severity.MEDIUM,
        *,
        margin: int | None = None,
        name: str = "database.pg_pool_exhaustion",
    ) -> None:
        super().__init__(name, severity)
        self.dsn = _check_dsn(dsn)
        chosen = severity.pick(low=2, medium=0, high=0, critical=0) if margin is None else margin
        if isinstance(chosen, bool) or not isinstance(chosen, int) or chosen < 0:
            raise ValueError(f"margin={margin!r}: must be an integer >= 0")
        self.margin = chosen
        self._conns: list[psycopg.AsyncConnection[Any]] = []

    @property
    def held(self) -> int:
        """Connections held now."""
        return len(self._conns)

    async def _inject(self) -> None:
        first = await _connect(self.name, self.dsn)
        self._conns.append(first)
        try:
            cur = await first.execute(
                "SELECT current_setting('max_connections')::int, "
                "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
            )
            row = await cur.fetchone()
            await first.rollback()
            assert row is not None  # noqa: S101 - an aggregate always answers
            max_connections, used = int(row[0]), int(row[1])
            wanted = max(max_connections - self.margin - used, 0)
            # In small waves: a server forks one backend per connection.
            while wanted > 0:
                wave = min(wanted, 8)
                opened = await asyncio.gather(
                    *(self._open_one() for _ in range(wave)), return_exceptions=True
                )
                good = [c for c in opened if isinstance(c, psycopg.AsyncConnection)]
                self._conns.extend(good)
                wanted -= wave
                if len(good) < wave:
                    break  # the server is full (someone else took the last slots)
        except BaseException:
            await self._heal()
            raise

    async def _open_one(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.dsn, connect_timeout=_CONNECT_TIMEOUT, autocommit=True
        )

    async def _heal(self) -> None:
        conns, self._conns = self._conns, []
        await asyncio.gather(*(_close(c) for c in conns))

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"margin": self.margin, "held": self.held}


class PgStatementTimeout(Injector):
    """New sessions get a low ``statement_timeout`` and writes of ``table`` take longer than it.

    ``role`` (None: every role) scopes ``ALTER ROLE role IN DATABASE db SET statement_timeout``
    (``ALTER DATABASE db SET`` without a role); sessions already open keep their setting until
    they reconnect. A transaction holds ``SHARE`` on ``table`` (reads go on, writes wait), so a
    new session's write is cancelled after ``timeout_ms``: medium 200 ms, low 500, high 100,
    critical 50. Heal rolls the holder back and puts back the setting that was there before
    (none, or its old value). Raises :class:`InjectorError` when the role or table is unknown
    or the setting cannot be changed (it needs ownership of the database or the role).
    """

    kind: ClassVar[str] = "database"

    def __init__(
        self,
        dsn: str,
        severity: Severity = Severity.MEDIUM,
        *,
        table: str = "ticks",
        schema: str | None = None,
        role: str | None = None,
        timeout_ms: int | None = None,
        name: str = "database.pg_statement_timeout",
    ) -> None:
        super().__init__(name, severity)
        self.dsn = _check_dsn(dsn)
        self.table = table
        self._ident = _table_identifier(table, schema)
        if role is not None and (not isinstance(role, str) or not role):
            raise ValueError(f"role={role!r}: must be None or a role name")
        self.role = role
        chosen = (
            severity.pick(low=500, medium=200, high=100, critical=50)
            if timeout_ms is None
            else timeout_ms
        )
        if isinstance(chosen, bool) or not isinstance(chosen, int) or chosen < 1:
            raise ValueError(f"timeout_ms={timeout_ms!r}: must be an integer >= 1 (milliseconds)")
        self.timeout_ms = chosen
        self._holder: psycopg.AsyncConnection[Any] | None = None
        self._previous: str | None = None
        self._database: str | None = None

    def _target(self, database: str) -> sql.Composable:
        if self.role is None:
            return sql.SQL("DATABASE {}").format(sql.Identifier(database))
        return sql.SQL("ROLE {} IN DATABASE {}").format(
            sql.Identifier(self.role), sql.Identifier(database)
        )

    async def _inject(self) -> None:
        conn = await _connect(self.name, self.dsn)
        try:
            await conn.set_autocommit(True)
            cur = await conn.execute(
                "SELECT current_database(), ("
                " SELECT option FROM pg_db_role_setting s, unnest(s.setconfig) AS option"
                " WHERE s.setdatabase = (SELECT oid FROM pg_database"
                "                         WHERE datname = current_database())"
                " AND s.setrole = COALESCE((SELECT oid FROM pg_roles WHERE rolname = %s), 0)"
                " AND option LIKE 'statement\\_timeout=%%' LIMIT 1)",
                (self.role,),
            )
            row = await cur.fetchone()
            assert row is not None  # noqa: S101 - a SELECT without FROM answers one row
            self._database, option = str(row[0]), row[1]
            self._previous = None if option is None else str(option).partition("=")[2]
            await conn.execute(
                sql.SQL("ALTER {} SET statement_timeout = {}").format(
                    self._target(self._database), sql.Literal(f"{self.timeout_ms}ms")
                )
            )
        except psycopg.Error as exc:
            await _close(conn)
            raise InjectorError(f"{self.name}: cannot set statement_timeout: {exc}") from exc
        try:
            await conn.set_autocommit(False)
            await conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(self._ident))
        except psycopg.Error as exc:
            await self._restore(conn)
            await _close(conn)
            raise InjectorError(f"{self.name}: cannot lock table {self.table!r}: {exc}") from exc
        self._holder = conn

    async def _restore(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.rollback()
        await conn.set_autocommit(True)
        assert self._database is not None  # noqa: S101 - set by _inject
        target = self._target(self._database)
        if self._previous is None:
            await conn.execute(sql.SQL("ALTER {} RESET statement_timeout").format(target))
        else:
            await conn.execute(
                sql.SQL("ALTER {} SET statement_timeout = {}").format(
                    target, sql.Literal(self._previous)
                )
            )

    async def _heal(self) -> None:
        conn, self._holder = self._holder, None
        try:
            if conn is None or conn.broken or conn.closed:
                # The holder's connection died (its lock went with it): a fresh one resets.
                await _close(conn)
                conn = await _connect(self.name, self.dsn)
            await self._restore(conn)
        except psycopg.Error as exc:
            raise InjectorError(
                f"{self.name}: could not put statement_timeout back "
                f"({self._previous or 'unset'}): {exc}"
            ) from exc
        finally:
            await _close(conn)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "table": self.table,
            "role": self.role,
            "timeout_ms": self.timeout_ms,
        }


# ---------------------------------------------------------------------- the throwaway server


def _server_problem(server: ThrowawayPostgres) -> str | None:
    return server.capability()


_STOP_POLLS: Final = 500
"""Looks (10 ms apart, 5 s in all) for every paused process to show as stopped."""


def _stopped_or_gone(process: psutil.Process) -> bool:
    try:
        return process.status() in {psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE}
    except psutil.NoSuchProcess:
        return True


class _ServerFault(Injector):
    """A fault of a :class:`ThrowawayPostgres` the lab started (never a shared server: anything
    else is a :class:`TypeError`); ``hold`` (5 s x scale) is how long a scenario keeps it."""

    kind: ClassVar[str] = "database"
    default_name: ClassVar[str] = "database.pg_server"

    def __init__(
        self,
        server: ThrowawayPostgres,
        severity: Severity = Severity.MEDIUM,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(name or self.default_name, severity)
        if not isinstance(server, ThrowawayPostgres):
            raise TypeError(f"server={server!r}: must be a ThrowawayPostgres (never a shared one)")
        self.server = server
        self.hold = 5.0 * severity.scale

    def capability(self) -> str | None:
        return _server_problem(self.server)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"hold_s": self.hold}


class PgServerPause(_ServerFault):
    """SIGSTOP the throwaway server's postmaster and every backend: connections and queries hang
    (no error, no answer) until heal sends SIGCONT. Severity sizes how long a scenario keeps it
    paused (``hold`` = 5 s x scale)."""

    default_name: ClassVar[str] = "database.pg_pause"

    def __init__(
        self,
        server: ThrowawayPostgres,
        severity: Severity = Severity.MEDIUM,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(server, severity, name=name)
        self._stopped: list[psutil.Process] = []

    async def _inject(self) -> None:
        if not self.server.running:
            raise InjectorError(f"{self.name}: the throwaway server is not running")
        # The postmaster first: it must not fork new backends while the others are stopped.
        for pid in self.server.server_pids():
            try:
                process = psutil.Process(pid)
                process.suspend()
            except psutil.NoSuchProcess:
                continue
            self._stopped.append(process)
        # SIGSTOP is delivered asynchronously: the fault is in force once each one is stopped.
        for _ in range(_STOP_POLLS):
            if all(_stopped_or_gone(p) for p in self._stopped):
                return
            await asyncio.sleep(0.01)
        raise InjectorError(f"{self.name}: the server's processes did not all stop")

    async def _heal(self) -> None:
        stopped, self._stopped = self._stopped, []
        for process in reversed(stopped):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()


class PgServerKill(_ServerFault):
    """SIGKILL the throwaway server's postmaster (its backends exit when they see it gone); heal
    starts it again on the same data directory and port, where it runs crash recovery from the
    WAL. Severity sizes how long a scenario leaves it down (``hold`` = 5 s x scale). Heal raises
    :class:`InjectorError` when the server does not come back within its ``start_timeout``."""

    default_name: ClassVar[str] = "database.pg_kill"

    async def _inject(self) -> None:
        if not self.server.running:
            raise InjectorError(f"{self.name}: the throwaway server is not running")
        # SIGKILL; reaps it and waits for its backends to see it gone and exit.
        await self.server.kill()

    async def _heal(self) -> None:
        await self.server.start()


class PgStorageFull(_ServerFault):
    """Fill the throwaway server's size-limited volume (its tmpfs, ``storage_limit``) with a file
    of the injector's own until ``ENOSPC``: a write that needs a new page fails with ``could not
    extend file ... No space left on device``. Heal deletes the file. Needs a server started with
    ``storage_limit`` (capability says why not otherwise). Same at every severity: a disk is
    full or it is not; ``hold`` = 5 s x scale."""

    default_name: ClassVar[str] = "database.pg_storage_full"

    def __init__(
        self,
        server: ThrowawayPostgres,
        severity: Severity = Severity.MEDIUM,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(server, severity, name=name)
        self._filler: Path | None = None
        self.filled = 0
        """Bytes the filler file took."""

    def capability(self) -> str | None:
        reason = _server_problem(self.server)
        if reason is not None:
            return reason
        if self.server.storage_limit is None:
            return "the throwaway server was started without storage_limit (no size-limited volume)"
        return None

    async def _inject(self) -> None:
        path = self.server.root / "chaos-filler"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise InjectorError(f"{self.name}: cannot create {path}: {exc}") from exc
        self._filler = path
        try:
            self.filled = await asyncio.to_thread(fill_to_enospc, fd)
        finally:
            os.close(fd)

    async def _heal(self) -> None:
        path, self._filler = self._filler, None
        if path is not None:
            path.unlink(missing_ok=True)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"filled_bytes": self.filled}
