"""Tests of error classification: built-in rules on real exceptions, chains, user rules, hints."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import json
import os
import queue
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import psycopg
import psycopg.errors as pge
import pytest
import websockets.datastructures
import websockets.exceptions as wse
import websockets.http11
import websockets.sync.client
import websockets.sync.server
from websockets.frames import Close

from strategylab.errors import (
    AuditIntegrityError,
    BulkheadFullError,
    CallTimeoutError,
    CircuitOpenError,
    ConfigurationError,
    RecoveryRejectedError,
)
from strategylab.fault_tolerance import Classifier, ErrorType, classify, register_rule
from strategylab.fault_tolerance._classify import ComponentKind, component_kind, default_classifier

T = ErrorType
PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=5"


def _caught(fn: Callable[[], object]) -> BaseException:
    """Run ``fn`` and return what it raised."""
    try:
        fn()
    except BaseException as exc:
        return exc
    pytest.fail(f"{fn!r} raised nothing")


def _chained(outer: BaseException, cause: BaseException) -> BaseException:
    """``outer`` raised ``from cause``, with real tracebacks."""

    def boom() -> None:
        try:
            raise cause
        except BaseException as exc:
            raise outer from exc

    return _caught(boom)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------
# Real exceptions
# ------------------------------------------------------------------------------------------------


def _refused() -> BaseException:
    port = _closed_port()
    return _caught(lambda: socket.create_connection(("127.0.0.1", port), timeout=2))


def _sqlite_full(tmp: Path) -> BaseException:
    con = sqlite3.connect(tmp / "full.db")
    con.execute("PRAGMA max_page_count = 2")
    con.execute("CREATE TABLE t (x BLOB)")
    exc = _caught(lambda: con.execute("INSERT INTO t VALUES (zeroblob(100000))"))
    con.close()
    return exc


def _sqlite_cantopen(tmp: Path) -> BaseException:
    return _caught(lambda: sqlite3.connect(tmp / "missing" / "dir" / "x.db"))


def _sqlite_busy(tmp: Path) -> BaseException:
    path = tmp / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    exc = _caught(lambda: other.execute("INSERT INTO t VALUES (2)"))
    other.close()
    holder.execute("ROLLBACK")
    holder.close()
    return exc


def _sqlite_notadb(tmp: Path) -> BaseException:
    path = tmp / "garbage.db"
    path.write_bytes(b"this is not a database" * 100)
    con = sqlite3.connect(path)
    exc = _caught(lambda: con.execute("SELECT * FROM sqlite_master"))
    con.close()
    return exc


def _sqlite_readonly(tmp: Path) -> BaseException:
    path = tmp / "ro.db"
    sqlite3.connect(path).close()
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    exc = _caught(lambda: con.execute("CREATE TABLE t (x)"))
    con.close()
    return exc


def _sqlite_interrupted(tmp: Path) -> BaseException:
    con = sqlite3.connect(":memory:")
    # A progress handler that returns non-zero aborts the statement, as a statement timeout would.
    con.set_progress_handler(lambda: 1, 1)
    exc = _caught(
        lambda: con.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT * FROM c"
        ).fetchall()
    )
    con.close()
    return exc


def _timeout_in_asyncio() -> BaseException:
    async def main() -> None:
        async with asyncio.timeout(0):
            await asyncio.sleep(1)

    return _caught(lambda: asyncio.run(main()))


def _queue_full() -> BaseException:
    q: queue.Queue[int] = queue.Queue(maxsize=1)
    q.put_nowait(1)
    return _caught(lambda: q.put_nowait(2))


def _ws_response(status: int) -> websockets.http11.Response:
    return websockets.http11.Response(status, "reason", websockets.datastructures.Headers())


Factory = Callable[[Path], BaseException]

CASES: list[tuple[str, Factory, str | None, ErrorType]] = [
    # --- stdlib ---------------------------------------------------------------------------------
    ("memory-error", lambda _: _caught(lambda: bytearray(2**60)), None, T.MEMORY_EXHAUSTION),
    (
        "enospc",
        lambda _: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        None,
        T.DISK_SPACE_EXHAUSTED,
    ),
    (
        "edquot",
        lambda _: OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)),
        None,
        T.DISK_SPACE_EXHAUSTED,
    ),
    (
        "efbig",
        lambda _: OSError(errno.EFBIG, os.strerror(errno.EFBIG)),
        None,
        T.DISK_SPACE_EXHAUSTED,
    ),
    (
        "enomem",
        lambda _: OSError(errno.ENOMEM, os.strerror(errno.ENOMEM)),
        None,
        T.MEMORY_EXHAUSTION,
    ),
    ("etimedout", lambda _: OSError(errno.ETIMEDOUT, "timed out"), None, T.NETWORK_TIMEOUT),
    (
        "etimedout-optimizer",
        lambda _: OSError(errno.ETIMEDOUT, "x"),
        "optimizer",
        T.NETWORK_TIMEOUT,
    ),
    ("refused-feed", lambda _: _refused(), "market.feed", T.WEBSOCKET_CONNECTION_DROPPED),
    ("refused-store", lambda _: _refused(), "tick_store", T.DATABASE_CONNECTION_LOST),
    ("refused-unhinted", lambda _: _refused(), None, T.EXTERNAL_API_FAILURE),
    ("refused-exchange", lambda _: _refused(), "exchange", T.EXTERNAL_API_FAILURE),
    (
        "econnreset-ws",
        lambda _: OSError(errno.ECONNRESET, "reset"),
        "ws",
        T.WEBSOCKET_CONNECTION_DROPPED,
    ),
    (
        "econnaborted-db",
        lambda _: OSError(errno.ECONNABORTED, "x"),
        "db",
        T.DATABASE_CONNECTION_LOST,
    ),
    ("epipe-feed", lambda _: OSError(errno.EPIPE, "x"), "feed", T.WEBSOCKET_CONNECTION_DROPPED),
    ("enetunreach", lambda _: OSError(errno.ENETUNREACH, "x"), None, T.EXTERNAL_API_FAILURE),
    (
        "ehostunreach-store",
        lambda _: OSError(errno.EHOSTUNREACH, "x"),
        "store",
        T.DATABASE_CONNECTION_LOST,
    ),
    (
        "enetdown-feed",
        lambda _: OSError(errno.ENETDOWN, "x"),
        "feed",
        T.WEBSOCKET_CONNECTION_DROPPED,
    ),
    ("eacces", lambda _: OSError(errno.EACCES, "denied"), "store", T.CONFIGURATION_ERROR),
    ("eperm", lambda _: OSError(errno.EPERM, "not permitted"), None, T.CONFIGURATION_ERROR),
    ("emfile", lambda _: OSError(errno.EMFILE, "too many files"), None, T.SYSTEM_OVERLOAD),
    ("enfile", lambda _: OSError(errno.ENFILE, "x"), None, T.SYSTEM_OVERLOAD),
    ("eagain", lambda _: OSError(errno.EAGAIN, "x"), None, T.SYSTEM_OVERLOAD),
    (
        "reset-no-errno-feed",
        lambda _: ConnectionResetError(),
        "feed",
        T.WEBSOCKET_CONNECTION_DROPPED,
    ),
    ("broken-pipe-no-errno-db", lambda _: BrokenPipeError(), "db", T.DATABASE_CONNECTION_LOST),
    (
        "gaierror-feed",
        lambda _: socket.gaierror(socket.EAI_NONAME, "unknown"),
        "feed",
        T.WEBSOCKET_CONNECTION_DROPPED,
    ),
    ("timeout", lambda _: TimeoutError(), None, T.NETWORK_TIMEOUT),
    ("asyncio-timeout", lambda _: _timeout_in_asyncio(), "feed", T.NETWORK_TIMEOUT),
    ("timeout-optimizer", lambda _: _timeout_in_asyncio(), "optimizer", T.OPTIMIZATION_TIMEOUT),
    (
        "timeout-optimiser-worker",
        lambda _: TimeoutError(),
        "strategylab.optimiser.worker",
        T.OPTIMIZATION_TIMEOUT,
    ),
    (
        "broken-pool-optimizer",
        lambda _: BrokenProcessPool("died"),
        "optimizer",
        T.OPTIMIZATION_TIMEOUT,
    ),
    (
        "broken-pool-backtest",
        lambda _: BrokenProcessPool("died"),
        "backtest",
        T.BACKTEST_ENGINE_FAILURE,
    ),
    (
        "broken-executor-elsewhere",
        lambda _: concurrent.futures.BrokenExecutor("x"),
        None,
        T.DATA_INGESTION_FAILURE,
    ),
    ("queue-full", lambda _: _queue_full(), "ingestor", T.SYSTEM_OVERLOAD),
    ("asyncio-queue-full", lambda _: _caught(_full_asyncio_queue), None, T.SYSTEM_OVERLOAD),
    # --- sqlite3: real errors, provoked -----------------------------------------------------
    ("sqlite-full", _sqlite_full, "store", T.DISK_SPACE_EXHAUSTED),
    ("sqlite-cantopen", _sqlite_cantopen, "store", T.DATABASE_CONNECTION_LOST),
    ("sqlite-busy", _sqlite_busy, "store", T.SYSTEM_OVERLOAD),
    ("sqlite-notadb", _sqlite_notadb, "store", T.DATA_INGESTION_FAILURE),
    ("sqlite-readonly", _sqlite_readonly, "store", T.CONFIGURATION_ERROR),
    ("sqlite-interrupt", _sqlite_interrupted, "store", T.NETWORK_TIMEOUT),
    # --- decoding ---------------------------------------------------------------------------
    ("json", lambda _: _caught(lambda: json.loads("{")), "feed", T.INVALID_MARKET_DATA),
    ("json-config", lambda _: _caught(lambda: json.loads("{")), "config", T.CONFIGURATION_ERROR),
    ("unicode", lambda _: _caught(b"\xff".decode), None, T.INVALID_MARKET_DATA),
    # --- strategylab.errors -----------------------------------------------------------------
    (
        "configuration-error",
        lambda _: ConfigurationError("k", 1, "bad"),
        "feed",
        T.CONFIGURATION_ERROR,
    ),
    ("circuit-open", lambda _: CircuitOpenError("exchange", 1.0), None, T.EXTERNAL_API_FAILURE),
    ("bulkhead-full", lambda _: BulkheadFullError("orders", 1, 0), None, T.SYSTEM_OVERLOAD),
    ("recovery-rejected", lambda _: RecoveryRejectedError("busy"), None, T.SYSTEM_OVERLOAD),
    ("call-timeout", lambda _: CallTimeoutError("fetch", 1.0), "api", T.NETWORK_TIMEOUT),
    (
        "call-timeout-optimizer",
        lambda _: CallTimeoutError("job", 1.0),
        "optimizer",
        T.OPTIMIZATION_TIMEOUT,
    ),
    (
        "audit-integrity",
        lambda _: AuditIntegrityError("a.log", 3, "hash"),
        None,
        T.SECURITY_VIOLATION,
    ),
    # --- websockets, constructed as the library constructs them ------------------------------
    (
        "ws-closed-error",
        lambda _: wse.ConnectionClosedError(Close(1011, "x"), None),
        None,
        T.WEBSOCKET_CONNECTION_DROPPED,
    ),
    (
        "ws-closed-ok",
        lambda _: wse.ConnectionClosedOK(Close(1000, ""), Close(1000, ""), rcvd_then_sent=True),
        "feed",
        T.WEBSOCKET_CONNECTION_DROPPED,
    ),
    ("ws-closed", lambda _: wse.ConnectionClosed(None, None), None, T.WEBSOCKET_CONNECTION_DROPPED),
    ("ws-status-401", lambda _: wse.InvalidStatus(_ws_response(401)), "feed", T.SECURITY_VIOLATION),
    ("ws-status-403", lambda _: wse.InvalidStatus(_ws_response(403)), "feed", T.SECURITY_VIOLATION),
    (
        "ws-status-429",
        lambda _: wse.InvalidStatus(_ws_response(429)),
        "feed",
        T.EXTERNAL_API_FAILURE,
    ),
    (
        "ws-status-503",
        lambda _: wse.InvalidStatus(_ws_response(503)),
        "feed",
        T.EXTERNAL_API_FAILURE,
    ),
    (
        "ws-status-404",
        lambda _: wse.InvalidStatus(_ws_response(404)),
        "feed",
        T.CONFIGURATION_ERROR,
    ),
    (
        "ws-invalid-upgrade",
        lambda _: wse.InvalidUpgrade("Upgrade", "h2c"),
        "feed",
        T.EXTERNAL_API_FAILURE,
    ),
    (
        "ws-invalid-message",
        lambda _: _chained(
            wse.InvalidMessage("did not receive a valid HTTP response"),
            EOFError("connection closed"),
        ),
        "feed",
        T.WEBSOCKET_CONNECTION_DROPPED,
    ),
    (
        "ws-invalid-uri",
        lambda _: wse.InvalidURI("http://x", "scheme isn't ws or wss"),
        None,
        T.CONFIGURATION_ERROR,
    ),
    (
        "ws-payload-too-big",
        lambda _: wse.PayloadTooBig(2_000_000, 1_000_000),
        "feed",
        T.INVALID_MARKET_DATA,
    ),
    (
        "ws-protocol-error",
        lambda _: wse.ProtocolError("invalid opcode"),
        "feed",
        T.INVALID_MARKET_DATA,
    ),
    # --- psycopg, as the library defines them (those no test server can be made to raise) ----
    ("pg-disk-full", lambda _: pge.DiskFull("no space"), "store", T.DISK_SPACE_EXHAUSTED),
    ("pg-out-of-memory", lambda _: pge.OutOfMemory("oom"), "store", T.MEMORY_EXHAUSTION),
    ("pg-too-many-connections", lambda _: pge.TooManyConnections("x"), "store", T.SYSTEM_OVERLOAD),
    ("pg-crash-shutdown", lambda _: pge.CrashShutdown("x"), "store", T.DATABASE_CONNECTION_LOST),
    (
        "pg-cannot-connect-now",
        lambda _: pge.CannotConnectNow("x"),
        "store",
        T.DATABASE_CONNECTION_LOST,
    ),
    (
        "pg-connection-failure",
        lambda _: pge.ConnectionFailure("x"),
        "store",
        T.DATABASE_CONNECTION_LOST,
    ),
    ("pg-invalid-password", lambda _: pge.InvalidPassword("x"), "store", T.CONFIGURATION_ERROR),
    ("pg-data-corrupted", lambda _: pge.DataCorrupted("x"), "store", T.DATA_INGESTION_FAILURE),
    (
        "pg-no-sqlstate",
        lambda _: psycopg.OperationalError("server closed the connection unexpectedly"),
        None,
        T.DATABASE_CONNECTION_LOST,
    ),
    (
        "pg-too-many-clients-at-connect",
        lambda _: psycopg.OperationalError(
            "connection to server failed: FATAL:  sorry, too many clients already"
        ),
        "store",
        T.SYSTEM_OVERLOAD,
    ),
]


def _full_asyncio_queue() -> None:
    q: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    q.put_nowait(1)
    q.put_nowait(2)


@pytest.mark.parametrize(
    ("factory", "component", "expected"),
    [pytest.param(f, c, e, id=name) for name, f, c, e in CASES],
)
def test_builtin_rule(
    factory: Factory, component: str | None, expected: ErrorType, tmp_path: Path
) -> None:
    """Each built-in rule maps its real exception, in its component, to the documented type."""
    assert classify(factory(tmp_path), component) is expected


def test_oserror_errno_wins_over_subclass() -> None:
    """An OSError built from ENOSPC classifies by errno, whatever subclass Python picked."""
    exc = OSError(errno.ENOSPC, "full")
    assert classify(exc, "feed") is T.DISK_SPACE_EXHAUSTED


def test_sqlite_extended_code_is_masked(tmp_path: Path) -> None:
    """An extended SQLite code classifies by its primary code (the low byte)."""
    exc = sqlite3.OperationalError("disk I/O error")
    exc.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE
    assert classify(exc, "store") is T.DATABASE_CONNECTION_LOST


def test_sqlite_error_without_code_is_not_recognised() -> None:
    """A sqlite3 error the module raised without a code falls through to the component hint."""
    con = sqlite3.connect(":memory:")
    con.close()
    exc = _caught(lambda: con.execute("SELECT 1"))
    assert classify(exc, "strategy") is T.STRATEGY_EXECUTION_ERROR


def test_errno_less_permission_error_is_not_security() -> None:
    """A PermissionError raised by code (a failed signature check) is not a security violation."""
    exc = PermissionError("bad signature")
    assert classify(exc, "feed") is T.DATA_INGESTION_FAILURE


# ------------------------------------------------------------------------------------------------
# PostgreSQL, for real
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def pg() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    try:
        conn = psycopg.connect(PG_DSN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_DSN!r} is unreachable; these tests need it: {exc}")
    with conn:
        yield conn


@pytest.mark.integration
def test_pg_closed_port_is_connection_lost() -> None:
    """Connecting to a closed port raises an OperationalError without sqlstate: connection lost."""
    port = _closed_port()
    exc = _caught(lambda: psycopg.connect(f"host=127.0.0.1 port={port} connect_timeout=2"))
    assert isinstance(exc, psycopg.OperationalError)
    assert classify(exc, "store") is T.DATABASE_CONNECTION_LOST


@pytest.mark.integration
def test_pg_statement_timeout_is_network_timeout(
    pg: psycopg.Connection[tuple[object, ...]],
) -> None:
    """A statement_timeout cancels the query with sqlstate 57014: a network timeout."""
    pg.execute("SET statement_timeout = 1")
    exc = _caught(lambda: pg.execute("SELECT pg_sleep(1)"))
    assert isinstance(exc, pge.QueryCanceled)
    assert classify(exc, "store") is T.NETWORK_TIMEOUT


@pytest.mark.integration
def test_pg_statement_timeout_in_optimizer(pg: psycopg.Connection[tuple[object, ...]]) -> None:
    """A statement timeout inside the optimiser is an optimisation timeout."""
    pg.execute("SET statement_timeout = 1")
    exc = _caught(lambda: pg.execute("SELECT pg_sleep(1)"))
    assert classify(exc, "optimizer") is T.OPTIMIZATION_TIMEOUT


@pytest.mark.integration
def test_pg_undefined_table_is_configuration(pg: psycopg.Connection[tuple[object, ...]]) -> None:
    """A missing table (42P01, a schema not migrated) is a configuration error."""
    exc = _caught(lambda: pg.execute("SELECT * FROM no_such_table_for_classify"))
    assert isinstance(exc, pge.UndefinedTable)
    assert classify(exc, "store") is T.CONFIGURATION_ERROR


@pytest.mark.integration
def test_pg_terminated_backend_is_connection_lost(
    pg: psycopg.Connection[tuple[object, ...]],
) -> None:
    """A backend terminated by an administrator (57P01) is a lost database connection."""
    with psycopg.connect(PG_DSN, autocommit=True) as victim:
        pg.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
        exc = _caught(lambda: victim.execute("SELECT 1"))
    assert isinstance(exc, pge.AdminShutdown)
    assert classify(exc, "store") is T.DATABASE_CONNECTION_LOST


@pytest.mark.integration
def test_pg_lock_timeout_is_overload(pg: psycopg.Connection[tuple[object, ...]]) -> None:
    """A lock_timeout behind another transaction's lock (55P03) is contention: overload."""
    key = 0x5C1A55  # an advisory lock: contention without creating any table
    pg.execute("SELECT pg_advisory_lock(%s)", (key,))
    try:
        with psycopg.connect(PG_DSN, autocommit=True) as waiter:
            waiter.execute("SET lock_timeout = 10")
            exc = _caught(lambda: waiter.execute("SELECT pg_advisory_lock(%s)", (key,)))
    finally:
        pg.execute("SELECT pg_advisory_unlock(%s)", (key,))
    assert isinstance(exc, pge.LockNotAvailable)
    assert classify(exc, "store") is T.SYSTEM_OVERLOAD


@pytest.mark.integration
def test_pg_missing_database_is_configuration() -> None:
    """Connecting to a database that does not exist is a configuration error."""
    dsn = PG_DSN.replace("dbname=test", "dbname=no_such_database_for_classify")
    exc = _caught(lambda: psycopg.connect(dsn))
    assert isinstance(exc, psycopg.OperationalError)
    assert classify(exc, "store") is T.CONFIGURATION_ERROR


# ------------------------------------------------------------------------------------------------
# websockets, for real
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def ws_url() -> Iterator[str]:
    def process_request(
        conn: websockets.sync.server.ServerConnection, request: websockets.http11.Request
    ) -> websockets.http11.Response | None:
        if request.path == "/private":
            return conn.respond(401, "no credentials\n")
        return None

    def handler(conn: websockets.sync.server.ServerConnection) -> None:
        conn.close(1011, "internal error")

    server = websockets.sync.server.serve(handler, "127.0.0.1", 0, process_request=process_request)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.socket.getsockname()[:2]
    try:
        yield f"ws://{host}:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


@pytest.mark.integration
def test_ws_server_close_is_connection_dropped(ws_url: str) -> None:
    """A server closing the socket with 1011 raises ConnectionClosedError: connection dropped."""
    with websockets.sync.client.connect(ws_url + "/", open_timeout=5) as conn:
        exc = _caught(lambda: conn.recv(timeout=5))
    assert isinstance(exc, wse.ConnectionClosedError)
    assert classify(exc, "feed") is T.WEBSOCKET_CONNECTION_DROPPED


@pytest.mark.integration
def test_ws_unauthorised_handshake_is_security(ws_url: str) -> None:
    """A handshake refused with HTTP 401 raises InvalidStatus: a security violation."""
    exc = _caught(lambda: websockets.sync.client.connect(ws_url + "/private", open_timeout=5))
    assert isinstance(exc, wse.InvalidStatus)
    assert classify(exc, "feed") is T.SECURITY_VIOLATION


# ------------------------------------------------------------------------------------------------
# Cause chains and groups
# ------------------------------------------------------------------------------------------------


def test_wrapper_classifies_by_cause() -> None:
    """``RuntimeError(...) from OSError(ENOSPC)`` is a full disk."""
    exc = _chained(RuntimeError("flush failed"), OSError(errno.ENOSPC, "full"))
    assert classify(exc, "ingestor") is T.DISK_SPACE_EXHAUSTED


def test_wrapper_classifies_by_implicit_context(tmp_path: Path) -> None:
    """An exception raised while handling a real SQLITE_FULL classifies by that context."""
    full = _sqlite_full(tmp_path)

    def boom() -> None:
        try:
            raise full
        except sqlite3.Error:
            raise RuntimeError("commit failed")  # noqa: B904 - the implicit context is the point

    assert classify(_caught(boom), "store") is T.DISK_SPACE_EXHAUSTED


def test_suppressed_context_is_not_walked() -> None:
    """``raise ... from None`` hides the context from classification too."""

    def boom() -> None:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError:
            raise RuntimeError("hidden") from None

    assert classify(_caught(boom), "strategy") is T.STRATEGY_EXECUTION_ERROR


def test_recognised_outer_exception_wins_over_cause() -> None:
    """A recognised outer exception is not overridden by its cause."""
    exc = _chained(CircuitOpenError("db", 1.0), OSError(errno.ENOSPC, "full"))
    assert classify(exc) is T.EXTERNAL_API_FAILURE


def test_cyclic_chain_terminates() -> None:
    """A cycle in the cause chain ends the walk instead of looping forever."""
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert classify(a, "backtest") is T.BACKTEST_ENGINE_FAILURE


def test_deep_chain_is_walked() -> None:
    """The cause is found through several layers of wrapping."""
    exc: BaseException = MemoryError()
    for i in range(10):
        exc = _chained(RuntimeError(f"layer {i}"), exc)
    assert classify(exc) is T.MEMORY_EXHAUSTION


def test_task_group_takes_most_severe_member() -> None:
    """An ExceptionGroup from a TaskGroup classifies as its most severe recognised member."""

    async def reset() -> None:
        raise ConnectionResetError(errno.ECONNRESET, "reset")

    async def oom() -> None:
        raise MemoryError

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(reset())
            tg.create_task(oom())

    exc = _caught(lambda: asyncio.run(main()))
    assert isinstance(exc, BaseExceptionGroup)
    assert classify(exc, "feed") is T.MEMORY_EXHAUSTION


def test_group_member_causes_are_walked() -> None:
    """A group member wrapping a recognised cause classifies by that cause."""
    member = _chained(RuntimeError("write failed"), OSError(errno.ENOSPC, "full"))
    assert (
        classify(BaseExceptionGroup("tasks", [ValueError("x"), member])) is T.DISK_SPACE_EXHAUSTED
    )


# ------------------------------------------------------------------------------------------------
# User rules and the error_type attribute
# ------------------------------------------------------------------------------------------------


class _SignatureError(Exception):
    error_type = ErrorType.SECURITY_VIOLATION


class _DeclaredOSError(OSError):
    error_type = ErrorType.INVALID_MARKET_DATA


def _timeouts_are_overload(exc: BaseException, component: str | None) -> ErrorType | None:
    return T.SYSTEM_OVERLOAD if isinstance(exc, TimeoutError) else None


def _everything_is_config(exc: BaseException, component: str | None) -> ErrorType | None:
    return T.CONFIGURATION_ERROR


def test_error_type_attribute_is_honoured() -> None:
    """An exception declaring ``error_type`` is classified as that type."""
    assert classify(_SignatureError("bad hmac"), "feed") is T.SECURITY_VIOLATION


def test_error_type_attribute_beats_builtin_rule() -> None:
    """A declared ``error_type`` wins over the built-in rule for its base class."""
    assert classify(_DeclaredOSError(errno.ENOSPC, "x")) is T.INVALID_MARKET_DATA


def test_error_type_attribute_of_wrong_type_is_ignored() -> None:
    """An ``error_type`` attribute that is not an ErrorType is not trusted."""
    exc = TimeoutError()
    exc.error_type = "security_violation"  # type: ignore[attr-defined]
    assert classify(exc) is T.NETWORK_TIMEOUT


def test_user_rule_runs_before_builtins() -> None:
    """A user rule overrides the built-in rule for the same exception."""
    classifier = Classifier([_timeouts_are_overload])
    assert classifier.classify(TimeoutError()) is T.SYSTEM_OVERLOAD


def test_user_rule_returning_none_defers() -> None:
    """A user rule returning None lets the built-in rules decide."""
    classifier = Classifier([_timeouts_are_overload])
    assert classifier.classify(MemoryError()) is T.MEMORY_EXHAUSTION


def test_add_rule_first_runs_before_earlier_rules() -> None:
    """``add_rule(first=True)`` puts the rule ahead of the rules already added."""
    classifier = Classifier([_timeouts_are_overload])
    classifier.add_rule(_everything_is_config)
    assert classifier.classify(TimeoutError()) is T.CONFIGURATION_ERROR


def test_add_rule_last_runs_after_earlier_rules() -> None:
    """``add_rule(first=False)`` puts the rule behind the rules already added."""
    classifier = Classifier([_timeouts_are_overload])
    classifier.add_rule(_everything_is_config, first=False)
    assert classifier.classify(TimeoutError()) is T.SYSTEM_OVERLOAD


def test_user_rule_applies_to_causes() -> None:
    """User rules are asked about each exception in the cause chain."""
    classifier = Classifier([_timeouts_are_overload])
    assert classifier.classify(_chained(RuntimeError("x"), TimeoutError())) is T.SYSTEM_OVERLOAD


def test_user_rule_receives_component() -> None:
    """A user rule is called with the component name it was classified in."""
    seen: list[str | None] = []

    def rule(exc: BaseException, component: str | None) -> ErrorType | None:
        seen.append(component)
        return None

    Classifier([rule]).classify(ValueError(), "strategy.momentum")
    assert seen == ["strategy.momentum"]


def test_user_rule_bad_return_is_type_error() -> None:
    """A rule returning something other than an ErrorType or None raises TypeError naming it."""
    classifier = Classifier([lambda exc, component: "network_timeout"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="expected an ErrorType"):
        classifier.classify(ValueError())


def test_add_rule_rejects_non_callable() -> None:
    """A rule that is not callable is refused when added."""
    with pytest.raises(TypeError, match="rule="):
        Classifier().add_rule(42)  # type: ignore[arg-type]


def test_remove_rule_restores_builtin() -> None:
    """A removed rule is no longer asked."""
    classifier = Classifier([_timeouts_are_overload])
    classifier.remove_rule(_timeouts_are_overload)
    assert classifier.classify(TimeoutError()) is T.NETWORK_TIMEOUT


def test_remove_unknown_rule_raises() -> None:
    """Removing a rule that was never added raises ValueError."""
    with pytest.raises(ValueError, match="not registered"):
        Classifier().remove_rule(_timeouts_are_overload)


def test_register_rule_reaches_module_classify() -> None:
    """``register_rule`` adds to the classifier behind ``classify``."""
    register_rule(_timeouts_are_overload)
    try:
        assert classify(TimeoutError()) is T.SYSTEM_OVERLOAD
    finally:
        default_classifier().remove_rule(_timeouts_are_overload)


def test_register_rule_works_as_decorator() -> None:
    """``register_rule`` returns the rule, so it can decorate a function."""
    rule = register_rule(_everything_is_config, first=False)
    try:
        assert rule is _everything_is_config
    finally:
        default_classifier().remove_rule(rule)


def test_without_builtins_everything_is_default() -> None:
    """``include_builtins=False`` leaves only user rules, hints and the default."""
    classifier = Classifier(include_builtins=False, default=T.EXTERNAL_API_FAILURE)
    assert classifier.classify(MemoryError()) is T.EXTERNAL_API_FAILURE


def test_default_is_configurable() -> None:
    """An unknown exception with no component hint gets the classifier's default."""
    assert Classifier(default=T.SYSTEM_OVERLOAD).classify(ValueError()) is T.SYSTEM_OVERLOAD


def test_bad_default_is_rejected() -> None:
    """A default that is not an ErrorType raises TypeError naming the field."""
    with pytest.raises(TypeError, match="default="):
        Classifier(default="system_overload")  # type: ignore[arg-type]


def test_hints_can_be_disabled() -> None:
    """With ``component_hints=False`` the component name does not pick the fallback."""
    classifier = Classifier(component_hints=False)
    assert classifier.classify(KeyError("x"), "strategy") is T.DATA_INGESTION_FAILURE


# ------------------------------------------------------------------------------------------------
# Component hints
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "kind"),
    [
        ("strategy", ComponentKind.STRATEGY),
        ("strategy.momentum", ComponentKind.STRATEGY),
        ("MeanReversionStrategy", ComponentKind.STRATEGY),
        ("backtest", ComponentKind.BACKTEST),
        ("BacktestEngine", ComponentKind.BACKTEST),
        ("optimizer", ComponentKind.OPTIMIZER),
        ("grid_optimiser", ComponentKind.OPTIMIZER),
        ("strategylab.market.feed", ComponentKind.FEED),
        ("ws", ComponentKind.FEED),
        ("ingestor", ComponentKind.INGEST),
        ("TickStore", ComponentKind.STORE),
        ("postgres-primary", ComponentKind.STORE),
        ("sqlite3", ComponentKind.STORE),
        ("exchange_api", ComponentKind.API),
        ("OrderAPI", ComponentKind.API),
        ("config", ComponentKind.CONFIG),
        ("strategylab", None),
        ("dashboard", None),
        ("", None),
        (None, None),
    ],
)
def test_component_kind(component: str | None, kind: ComponentKind | None) -> None:
    """Component names map to kinds by whole words, the most specific (last) word winning."""
    assert component_kind(component) is kind


@pytest.mark.parametrize(
    ("component", "expected"),
    [
        ("strategy.momentum", T.STRATEGY_EXECUTION_ERROR),
        ("backtest", T.BACKTEST_ENGINE_FAILURE),
        ("optimizer", T.BACKTEST_ENGINE_FAILURE),
        ("feed", T.DATA_INGESTION_FAILURE),
        ("store", T.DATABASE_CONNECTION_LOST),
        ("exchange", T.EXTERNAL_API_FAILURE),
        ("config", T.CONFIGURATION_ERROR),
        ("dashboard", T.DATA_INGESTION_FAILURE),
        (None, T.DATA_INGESTION_FAILURE),
    ],
)
@pytest.mark.parametrize(
    "make", [lambda: KeyError("px"), lambda: ValueError("x"), lambda: TypeError("x")]
)
def test_unknown_exception_falls_back_by_component(
    make: Callable[[], Exception], component: str | None, expected: ErrorType
) -> None:
    """KeyError/ValueError/TypeError get the component's fallback, or the default without one."""
    assert classify(make(), component) is expected


# ------------------------------------------------------------------------------------------------
# Cost and laziness
# ------------------------------------------------------------------------------------------------


def test_drivers_are_not_imported() -> None:
    """Classifying never imports psycopg or websockets; their rules load only once they are."""
    code = (
        "import sys\n"
        "from strategylab.fault_tolerance._classify import classify\n"
        "classify(ValueError('x'), 'store'); classify(TimeoutError(), 'feed')\n"
        "print(sorted(m for m in ('psycopg', 'websockets', 'msgspec', 'orjson') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run(  # noqa: S603 - fixed arguments
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"
