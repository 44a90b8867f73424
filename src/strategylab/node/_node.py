"""The ingesting node: exchange URL → :class:`Feed` → :class:`Ingestor` → tick store.

In process::

    node = Node(NodeConfig(exchange_url=..., symbols=("A", "B"), data_dir=path))
    await node.start()
    await node.wait_caught_up({"A": 1000, "B": 1000}, timeout=10)
    await node.aclose()

As a process (``strategylab node --exchange-url http://127.0.0.1:P --data-dir D --symbols A,B``,
run by :func:`run_node_process`) it prints one JSON ``status`` line every ``--status-interval``
seconds and, on SIGTERM or SIGINT, drains the queue for at most ``--drain-timeout`` seconds
(default 1; ticks still queued then were never acknowledged and are replayed by the next run),
prints a ``stopped`` line and exits 0: SIGTERM stops a node within 2 s whatever state its store
is in.

Exit codes: 0 stopped on request; 1 operational failure at start (an ``OSError``); 2 a bad option,
including a store that can never work (see below); 3 an EMERGENCY_SHUTDOWN: the node stopped
intake, flushed what it could within ``--shutdown-deadline`` seconds, printed an
``emergency_shutdown`` line naming the reason, and exited.

The store is SQLite (``--db``) or PostgreSQL (``--postgres DSN``), wrapped in a ``FailoverStore``
with a durable spool in ``data_dir/spool``. Recoveries are audited in ``data_dir/audit.jsonl``;
acknowledgements go to ``data_dir/acks.jsonl`` (the integrity checker's "acknowledged" set); the
log goes to ``data_dir/logs/node.log`` (every name: :class:`strategylab._layout.DataLayout`).

The store configuration is checked before anything is opened: an SQLite file that is not a
database or holds ``ticks``/``quarantine`` tables of another schema, a DSN that does not parse, a
database or role the server says does not exist, refused credentials, or a PostgreSQL ``ticks``
table of another schema are configuration errors, not transient faults: one line on stderr naming
``--db`` or ``--postgres`` and exit 2. A PostgreSQL server that cannot be reached at start *is*
transient: the node starts, spools durably, and drains into the server once it answers.

A full disk (``ENOSPC``/``SQLITE_FULL``) on any file the node writes (store, spool, ack log,
audit log, status output) is reported as DISK_SPACE_EXHAUSTED. The node's policy for it puts a
RETRY first: the recovery re-probes the component's health for up to ``--disk-full-grace``
seconds (default 60, the database SLA) and succeeds only once the component is observed healthy
again (ingest resumes by itself); a disk still full after that falls through the standard chain
to the emergency shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sqlite3
import stat
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import conninfo

from strategylab._files import (
    UnsafePathError,
    check_sqlite_files,
    make_private_dir,
    open_private,
    refuse_symlinks,
    refuse_unsafe_dirs,
    sqlite_uri,
)
from strategylab._layout import DataLayout
from strategylab._logging import configure_logging, escape
from strategylab._tasks import log_failure
from strategylab.clock import SYSTEM_CLOCK, Clock
from strategylab.errors import AuditIntegrityError, ConfigurationError
from strategylab.fault_tolerance import (
    DEFAULT_POLICIES,
    AuditLog,
    ErrorContext,
    ErrorRecoveryManager,
    ErrorSeverity,
    ErrorType,
    RecoveryPolicy,
    RecoveryStrategyKind,
    RetryPolicy,
    load_audit_key,
)
from strategylab.market import (
    SQLITE_SCHEMA,
    AckLog,
    FailoverStore,
    Feed,
    FeedConfig,
    Ingestor,
    IngestorConfig,
    PostgresTickStore,
    SpoolStore,
    SQLiteTickStore,
    TickStore,
)

__all__ = ["EXIT_EMERGENCY", "Node", "NodeConfig", "run_node", "run_node_process"]

_log = logging.getLogger(__name__)

EXIT_EMERGENCY: Final = 3
"""The exit code of a node that ended in an EMERGENCY_SHUTDOWN."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Everything a node needs; ``db`` defaults to ``data_dir/ticks.db``."""

    exchange_url: str
    symbols: tuple[str, ...]
    data_dir: Path
    db: Path | None = None
    postgres: str | None = None
    signing_key: bytes | None = dataclasses.field(default=None, repr=False)  # a secret
    audit_key: bytes | None = dataclasses.field(default=None, repr=False)  # a secret
    """HMAC key of the audit chain; ``None``: ``$STRATEGYLAB_AUDIT_KEY`` when set, else unkeyed."""
    backup_urls: tuple[str, ...] = ()
    status_interval: float = 1.0
    stale_after: float = 3.0
    connect_timeout: float = 5.0
    backoff_floor: float = 0.05
    backoff_cap: float = 2.0
    batch_size: int = 20_000
    max_queue: int = 200_000
    linger: float = 0.02
    spool: bool = True
    drain_timeout: float = 1.0
    """Seconds :meth:`Node.aclose` may take in all (stop the feed, flush, close the store)."""
    shutdown_deadline: float = 5.0
    """Seconds an emergency shutdown may take to stop intake, flush and close."""
    disk_full_grace: float = 60.0
    """Seconds a DISK_SPACE_EXHAUSTED recovery waits for the component to be healthy again."""

    def __post_init__(self) -> None:
        for key in ("status_interval", "drain_timeout", "shutdown_deadline", "disk_full_grace"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigurationError(key, value, "must be a finite number > 0")

    @property
    def db_path(self) -> Path:
        """The SQLite file."""
        return self.db if self.db is not None else self.layout.ticks_db

    @property
    def layout(self) -> DataLayout:
        """The data directory's file names."""
        return DataLayout(self.data_dir)


class Node:
    """Feed, ingestor, store and recovery manager, wired and started together."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_data_dir: Callable[[], None] | None = None,
    ) -> None:
        """``on_data_dir`` is called once the store configuration passed its checks and the data
        directory exists, before anything is written there (the process opens its log file)."""
        self.config = config
        self._clock = clock
        self._on_data_dir = on_data_dir
        self._audit: AuditLog | None = None
        self._manager: ErrorRecoveryManager | None = None
        self._store: TickStore | None = None
        self._ingestor: Ingestor | None = None
        self._feed: Feed | None = None
        self._status_out: _StatusOutput | None = None
        self._started_at = 0.0
        self._halted = asyncio.Event()
        self._emergency: ErrorContext | None = None
        self._emergency_task: asyncio.Task[bool] | None = None
        self._close_task: asyncio.Task[bool] | None = None
        # Validate now, so that a bad option fails before anything is opened.
        self._feed_config = FeedConfig(
            urls=(config.exchange_url, *config.backup_urls),
            symbols=config.symbols,
            signing_key=config.signing_key,
            stale_after=config.stale_after,
            connect_timeout=config.connect_timeout,
            backoff_floor=config.backoff_floor,
            backoff_cap=config.backoff_cap,
        )
        self._ingest_config = IngestorConfig(
            batch_size=config.batch_size, max_queue=config.max_queue, linger=config.linger
        )

    # ------------------------------------------------------------------ parts

    @property
    def feed(self) -> Feed:
        """The feed (after :meth:`start`)."""
        if self._feed is None:
            raise RuntimeError("node is not started")
        return self._feed

    @property
    def ingestor(self) -> Ingestor:
        """The ingestor (after :meth:`start`)."""
        if self._ingestor is None:
            raise RuntimeError("node is not started")
        return self._ingestor

    @property
    def store(self) -> TickStore:
        """The store the ingestor writes to (after :meth:`start`)."""
        if self._store is None:
            raise RuntimeError("node is not started")
        return self._store

    @property
    def manager(self) -> ErrorRecoveryManager:
        """The recovery manager (after :meth:`start`)."""
        if self._manager is None:
            raise RuntimeError("node is not started")
        return self._manager

    # ------------------------------------------------------------------ lifecycle

    @property
    def halted(self) -> asyncio.Event:
        """Set once an emergency shutdown has stopped the node (see :attr:`emergency`)."""
        return self._halted

    @property
    def emergency(self) -> ErrorContext | None:
        """The error that triggered the emergency shutdown, if one ran."""
        return self._emergency

    async def start(self) -> None:
        """Check the store configuration, open the store, start the ingestor and the feed.

        Raises :class:`ConfigurationError` (key ``--db`` or ``--postgres``) for a store that can
        never work, before anything is opened or created; ``OSError`` if the data directory
        cannot be created.
        """
        cfg = self.config
        # Before anything reads or writes there: a symlink planted at a file the node creates
        # or appends to is refused (UnsafePathError names it), never followed.
        # So is anything but a regular file (a FIFO would block the open) and a planted hard link.
        # The SQLite files are checked by check_store_config (a directory there is a bad --db).
        layout = cfg.layout
        refuse_unsafe_dirs(cfg.data_dir, layout.spool)
        refuse_symlinks(layout.audit, layout.audit_anchor, layout.acks)
        await check_store_config(cfg)
        make_private_dir(cfg.data_dir)  # 0700 when created here
        if self._on_data_dir is not None:
            self._on_data_dir()
        # A full disk holds audit records in memory, in order, until space returns. The chain is
        # keyed with --audit-key-file or $STRATEGYLAB_AUDIT_KEY; its head is anchored in a second
        # file and on stdout ("audit_anchor"), so that a shortened log is caught by `strategylab
        # audit verify`. Opening verifies the whole chain (and the anchors): a log damaged
        # anywhere is an AuditIntegrityError, never appended to.
        audit_key = cfg.audit_key if cfg.audit_key is not None else load_audit_key()
        self._audit = AuditLog(
            layout.audit,
            clock=self._clock,
            hold_when_full=10_000,
            key=audit_key,
            anchor=layout.audit_anchor,
            on_anchor=lambda seq, digest: _print(
                "audit_anchor", {"seq": seq, "hash": digest}, self._status_out
            ),
        )
        manager = self._manager = ErrorRecoveryManager(
            policies={ErrorType.DISK_SPACE_EXHAUSTED: _disk_full_policy(cfg, self._clock)},
            clock=self._clock,
            audit=_OpenAudit(self._audit),
            shutdown_handler=self._emergency_shutdown,
            shutdown_deadline=cfg.shutdown_deadline,
        )
        self._status_out = _StatusOutput(manager)
        primary: TickStore
        if cfg.postgres is not None:
            primary = PostgresTickStore(cfg.postgres)
        else:
            primary = SQLiteTickStore(cfg.db_path, batch_size=cfg.batch_size, manager=manager)
        store: TickStore = primary
        if cfg.spool:
            store = FailoverStore(
                primary, SpoolStore(layout.spool), manager=manager, clock=self._clock
            )
        await store.open()
        self._store = store
        ingestor = self._ingestor = Ingestor(
            store,
            self._ingest_config,
            ack_log=AckLog(layout.acks),
            manager=manager,
            clock=self._clock,
        )
        feed = self._feed = Feed(
            self._feed_config,
            ingestor,
            manager=manager,
            clock=self._clock,
            kill_switch=self._kill_switch,
        )
        if isinstance(store, FailoverStore):
            manager.register(store)
        manager.register(ingestor)
        manager.register(self._status_out)
        manager.register(feed, depends_on=(ingestor.name,))
        await ingestor.start()
        await feed.start()
        self._started_at = self._clock.monotonic()

    async def wait_caught_up(self, last_seqs: Mapping[str, int], timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every ``last_seqs[symbol]`` is stored (or quarantined/declared lost);
        ``TimeoutError`` names the symbols still behind."""
        await self.ingestor.wait_accounted(last_seqs, timeout)

    async def aclose(self) -> None:
        """Stop the feed, flush the queue, close the store and the logs, all within
        ``config.drain_timeout`` seconds; idempotent (a second call waits for the first)."""
        await self._close(self.config.drain_timeout)

    async def _close(self, deadline: float) -> bool:
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close_all(deadline), name="node.close")
            self._close_task.add_done_callback(log_failure)
        # A close already under way (an emergency shutdown) is waited for within THIS deadline.
        try:
            async with asyncio.timeout(deadline + 0.25):
                return await asyncio.shield(self._close_task)
        except TimeoutError:
            _log.error("node: close did not finish within %.1fs", deadline)
            return False

    async def _close_all(self, deadline: float) -> bool:
        """Stop intake, flush what can be flushed, close; True when nothing was left behind."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        clean = True
        if self._feed is not None:
            clean &= await _bounded(self._feed.stop(), min(0.5, deadline / 3), "feed stop")
        if self._ingestor is not None:
            # Leave a little of the budget for closing the store and the logs.
            await self._ingestor.aclose(max(end - loop.time() - 0.2, 0.05))
            clean &= self._ingestor.statistics().queued == 0
        if self._store is not None:
            clean &= await _bounded(
                self._store.aclose(), max(end - loop.time(), 0.1), "store close"
            )
        if self._audit is not None:
            self._audit.close()
        return clean

    async def _kill_switch(self, error: Exception) -> None:
        """The feed's kill switch (forged frames past its threshold): the emergency shutdown."""
        await self._emergency_shutdown(
            ErrorContext.from_exception(
                error,
                component=self.feed.name,
                error_type=ErrorType.SECURITY_VIOLATION,
                severity=ErrorSeverity.CRITICAL,
                capture_state=False,
                clock=self._clock,
            )
        )

    async def _emergency_shutdown(self, context: ErrorContext) -> bool:
        """The manager's EMERGENCY_SHUTDOWN handler: stop intake, flush within the deadline, halt.

        The work runs in a task the node owns, so that stopping the component whose task reported
        the error (and is waiting here) cannot cancel the shutdown half-way.
        """
        if self._emergency_task is None:
            self._emergency = context
            self._emergency_task = asyncio.create_task(
                self._halt(context), name="node.emergency-shutdown"
            )
            self._emergency_task.add_done_callback(log_failure)
        return await asyncio.shield(self._emergency_task)

    async def _halt(self, context: ErrorContext) -> bool:
        _log.error(
            "EMERGENCY SHUTDOWN: %s in %s: %s",
            context.error_type.value,
            context.component,
            context.message,
        )
        try:
            if self._audit is not None:
                with contextlib.suppress(Exception):
                    await self._audit.aappend(
                        "emergency_shutdown",
                        {
                            "error_id": str(context.error_id),
                            "error_type": context.error_type.value,
                            "component": context.component,
                            "reason": context.message,
                        },
                    )
            return await self._close(self.config.shutdown_deadline)
        finally:
            self._halted.set()

    def status(self) -> dict[str, Any]:
        """The JSON-ready status line (``event`` is added by the caller)."""
        feed = self.feed.statistics()
        ingest = self.ingestor.statistics()
        recovery = self.manager.statistics()
        elapsed = max(self._clock.monotonic() - self._started_at, 1e-9)
        store = self._store
        store_state = "primary"
        spool_pending = 0
        if isinstance(store, FailoverStore):
            failover = store.statistics()
            store_state, spool_pending = failover.state.value, failover.spool_pending
        status_out = self._status_out
        return {
            "healthy": ingest.healthy
            and (status_out is None or status_out.ok)
            and feed.connected
            and feed.subscribed,
            "ingest_healthy": ingest.healthy,
            "failing": ingest.failing,
            "writer_restarts": ingest.restarts,
            "write_failures": ingest.write_failures,
            "store_state": store_state,
            "spool_pending": spool_pending,
            "emergency": None if self._emergency is None else self._emergency.error_type.value,
            "ticks_stored": ingest.acknowledged,
            "ticks_per_s": round(ingest.acknowledged / elapsed, 1),
            "queued": ingest.queued,
            "reconnects": feed.reconnects,
            "recoveries": recovery.successful_recoveries,
            "errors": recovery.total_errors,
            "connected": feed.connected and feed.subscribed,
            "duplicates": feed.duplicates,
            "gaps": feed.gaps,
            "crc_errors": feed.crc_errors,
            "signature_errors": feed.signature_errors,
            "invalid_ticks": feed.invalid_ticks,
            "lost_ticks": feed.lost_ticks,
            "last_seq": dict(ingest.acked),
            "recovery": {
                "errors": recovery.total_errors,
                "succeeded": recovery.successful_recoveries,
                "failed": recovery.failed_recoveries,
                "rejected": recovery.rejected_recoveries,
                "joined": recovery.joined_recoveries,
                "success_rate": recovery.success_rate,
                "p50_ms": recovery.p50_ms,
                "p95_ms": recovery.p95_ms,
                "p99_ms": recovery.p99_ms,
                "escalations": recovery.pattern_escalations,
                "fall_throughs": recovery.fall_throughs,
                "by_type": {t.value: n for t, n in recovery.error_type_distribution.items()},
                "by_strategy": {k.value: n for k, n in recovery.strategy_distribution.items()},
                "sla_compliance": dict(recovery.sla_compliance),
            },
        }


# ------------------------------------------------------------------------ store configuration

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
        conn = sqlite3.connect(sqlite_uri(path, "ro"), uri=True)
    except sqlite3.Error as exc:
        raise ConfigurationError("--db", shown, f"cannot be opened: {exc}") from None
    try:
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


# ---------------------------------------------------------------------------------- process


class _StatusOutput:
    """Where the status lines go (stdout), as a component the recovery manager can observe.

    A line is written with one ``os.write`` on the descriptor, not through Python's buffer: on a
    full disk (``ENOSPC``) the line is dropped whole (any partial write is cut off again) instead of
    staying in a buffer to come out later, torn or twice. The failure that starts such an outage is
    reported to the manager (DISK_SPACE_EXHAUSTED); ``health()`` is True once the volume has free
    space again (or, for a pipe or terminal, once a line went out).
    """

    name = "status"

    def __init__(self, manager: ErrorRecoveryManager | None) -> None:
        self._manager = manager
        self.ok = True
        self.dropped = 0
        self._reports: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop: the last lines still go out."""

    async def health(self) -> bool:
        """True when the last line went out or, for a file, its volume has free space again."""
        if self.ok:
            return True
        try:
            fd = sys.stdout.fileno()
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return os.fstatvfs(fd).f_bavail > 0
        except (AttributeError, OSError, ValueError):
            pass
        return False

    def write(self, event: str, data: Mapping[str, Any]) -> None:
        """Write one JSON line; a failed write is counted, reported once, and dropped."""
        line = json.dumps({"event": event, **data}, separators=(",", ":")) + "\n"
        try:
            _write_line(line)
        except OSError as exc:
            self.dropped += 1
            if self.ok and self._manager is not None:
                task = asyncio.get_running_loop().create_task(self._report(exc))
                self._reports.add(task)
                task.add_done_callback(self._reports.discard)
            self.ok = False
            return
        self.ok = True

    async def _report(self, exc: OSError) -> None:
        assert self._manager is not None  # noqa: S101 - checked by write()
        try:
            await self._manager.handle(exc, component=self.name)
        except Exception:
            _log.exception("status: the recovery manager failed on %r", exc)


def _write_line(line: str) -> None:
    out = sys.stdout
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        # Not a real descriptor (a test capturing output): the stream's own write.
        out.write(line)
        out.flush()
        return
    out.flush()
    data = line.encode("utf-8")
    start = os.lseek(fd, 0, os.SEEK_CUR) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        if start is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
        raise


def _print(event: str, data: Mapping[str, Any], out: _StatusOutput | None = None) -> None:
    if out is not None:
        out.write(event, data)
        return
    with contextlib.suppress(OSError):
        _write_line(json.dumps({"event": event, **data}, separators=(",", ":")) + "\n")


class _OpenAudit:
    """The manager's audit sink: the node's audit log, and nothing once the log is closed (a
    recovery finishing during shutdown must not turn into a logged traceback)."""

    def __init__(self, log: AuditLog) -> None:
        self._log = log

    async def aappend(self, kind: str, data: dict[str, Any], /) -> object:
        if self._log.closed:
            _log.debug("audit log closed; %s record not written", kind)
            return None
        return await self._log.aappend(kind, data)


async def _bounded(step: Awaitable[object], seconds: float, what: str) -> bool:
    """Await ``step`` for at most ``seconds``; False (logged in one line) on a timeout or error."""
    try:
        async with asyncio.timeout(seconds):
            await step
    except TimeoutError:
        _log.error("node: %s did not finish within %.2fs", what, seconds)
        return False
    except Exception as exc:
        _log.error("node: %s failed: %r", what, exc)
        return False
    return True


def _disk_full_policy(config: NodeConfig, clock: Clock) -> RecoveryPolicy:
    """DISK_SPACE_EXHAUSTED: RETRY (wait up to the grace for the component to be healthy again)
    before the standard chain (degradation, failover, emergency shutdown)."""
    base = DEFAULT_POLICIES[ErrorType.DISK_SPACE_EXHAUSTED]
    chain = (RecoveryStrategyKind.RETRY, *base.chain)
    probe = RetryPolicy(
        max_attempts=1_000_000,
        base_delay=0.1,
        multiplier=2.0,
        max_delay=1.0,
        jitter=None,
        deadline=config.disk_full_grace,
        clock=clock,
        name="disk-full",
    )
    return dataclasses.replace(base, chain=chain, retry=probe)


async def run_node(
    config: NodeConfig, stop: asyncio.Event | None = None, *, node: Node | None = None
) -> int:
    """Run a node until ``stop`` is set, SIGTERM/SIGINT arrives, or an emergency shutdown halts
    it; print status lines. Returns the exit code: 0, or :data:`EXIT_EMERGENCY`.

    Raises :class:`ConfigurationError` for a store that can never work (nothing is started).
    """
    done = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, done.set)
            installed.append(sig)
    node = node if node is not None else Node(config)
    started = False
    try:
        await node.start()
        started = True
        out = node._status_out  # noqa: SLF001 - our own instance
        _print("started", {"pid": os.getpid(), "symbols": list(config.symbols)}, out)
        halted = node.halted
        while not done.is_set() and not halted.is_set():
            waiters = (asyncio.ensure_future(done.wait()), asyncio.ensure_future(halted.wait()))
            try:
                await asyncio.wait(waiters, timeout=config.status_interval)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if halted.is_set():
                break
            _print("status", node.status(), out)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await node.aclose()
    emergency = node.emergency
    if emergency is not None:
        _print(
            "emergency_shutdown",
            {
                "reason": emergency.message,
                "error_type": emergency.error_type.value,
                "component": emergency.component,
                "exit_code": EXIT_EMERGENCY,
                **node.status(),
            },
            node._status_out,  # noqa: SLF001 - our own instance
        )
        return EXIT_EMERGENCY
    if started:
        _print("stopped", node.status(), node._status_out)  # noqa: SLF001 - our own instance
    return 0


def run_node_process(config: NodeConfig, *, log_level: int = logging.WARNING) -> int:
    """Run ``config`` as the ``strategylab node`` process: validate, log to stderr and to
    ``data_dir/logs/node.log``, serve until a signal. Errors are one line on stderr.

    Returns the exit code: 0 after a clean shutdown, 1 for an operational failure at start (a
    damaged audit log included), 2 for a bad option (a store that can never work, a symlink
    planted in the data directory included), 3 (:data:`EXIT_EMERGENCY`) after an emergency
    shutdown.
    """
    try:
        # Build once to validate the feed and ingestor settings before anything starts.
        Node(config)
        if config.data_dir.exists() and not config.data_dir.is_dir():
            raise ConfigurationError(  # noqa: TRY301 - reported with the other bad options
                "--data-dir", str(config.data_dir), "exists and is not a directory"
            )
    except ConfigurationError as exc:
        # The flag the user typed, not the field of the feed or ingestor config (urls).
        named = exc.as_option({"urls": "--exchange-url/--feed-url/--backup-url"})
        return _fail(named, 2)
    log_file = config.layout.log_file("node")

    def open_log() -> None:
        # Only once the store passed its checks: a refused start leaves no data directory.
        refuse_unsafe_dirs(log_file.parent)
        configure_logging(log_level, sys.stderr, log_file=log_file)

    try:
        configure_logging(log_level, sys.stderr)
        return asyncio.run(run_node(config, node=Node(config, on_data_dir=open_log)))
    except (ConfigurationError, UnsafePathError) as exc:
        return _fail(exc, 2)
    except AuditIntegrityError as exc:
        return _fail(f"audit log damaged: {exc}", 1)
    except OSError as exc:
        return _fail(exc, 1)


def _fail(error: object, code: int) -> int:
    sys.stderr.write(f"strategylab node: error: {escape(str(error))}\n")
    return code
