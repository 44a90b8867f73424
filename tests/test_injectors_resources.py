"""Database, memory, CPU and disk injectors, each injected and healed FOR REAL: the fault is
observed from outside (a second connection, the process table, the node's RSS, a writer's
errno), then observed gone.

Tests that need root or a kernel feature skip with the reason on a developer's machine and FAIL
under ``CI=true``: a capability missing in CI is a broken CI machine, not a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import psycopg
import pytest
from psycopg import sql

from strategylab.chaos import (
    CpuBurner,
    DiskFill,
    MemoryBallast,
    PgLockHolder,
    PgPoolExhaustion,
    PgServerKill,
    PgServerPause,
    PgStatementTimeout,
    PgStorageFull,
    Severity,
    SQLiteLockHolder,
    ThrowawayPostgres,
)
from strategylab.chaos._injector import InjectorError
from strategylab.market import PostgresTickStore, SQLiteTickStore, Tick

PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=5"
TOKEN = secrets.token_urlsafe(24)
MIB = 1024 * 1024


def require(reason: str | None) -> None:
    """Skip with ``reason`` locally; fail under CI=true (a capability CI must have)."""
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"capability missing in CI: {reason}")
    pytest.skip(reason)


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


# ---------------------------------------------------------------------- unit: sizing and input


def test_memory_fraction_follows_the_severity_marks() -> None:
    """Ballast aims at 80/95/98/98 % of the budget for low/medium/high/critical."""
    marks = [MemoryBallast("http://127.0.0.1:1", TOKEN, severity).fraction for severity in Severity]
    assert marks == [0.80, 0.95, 0.98, 0.98]


def test_cpu_burners_scale_with_the_cpu_count() -> None:
    """Medium: one burner per CPU; critical: two per CPU; low: at least one."""
    cpus = os.cpu_count() or 1
    assert CpuBurner(Severity.MEDIUM).n == cpus
    assert CpuBurner(Severity.CRITICAL).n == 2 * cpus
    assert CpuBurner(Severity.LOW).n == max(1, round(cpus / 2))


@pytest.mark.parametrize(
    ("build", "names"),
    [
        (lambda: CpuBurner(n=0), "n=0"),
        (lambda: MemoryBallast("ftp://x", TOKEN), "status_url='ftp://x'"),
        (lambda: MemoryBallast("http://x", TOKEN, steps=0), "steps=0"),
        (lambda: DiskFill("/tmp/x", size=-1), "size=-1"),  # noqa: S108 - never used
        (lambda: DiskFill("/tmp/x", mode="ramdisk"), "mode='ramdisk'"),  # type: ignore[arg-type]  # noqa: S108
        (lambda: PgPoolExhaustion(PG_DSN, margin=-2), "margin=-2"),
        (lambda: PgStatementTimeout(PG_DSN, timeout_ms=0), "timeout_ms=0"),
        (lambda: PgLockHolder(PG_DSN, table=""), "table=''"),
        (lambda: SQLiteLockHolder("x.db", busy_timeout=0), "busy_timeout=0"),
    ],
)
def test_bad_arguments_name_the_value(build: Any, names: str) -> None:
    """A bad argument is a ValueError naming the argument and its value."""
    with pytest.raises(ValueError, match=names.replace("(", r"\(")):
        build()


def test_pg_server_faults_refuse_a_dsn() -> None:
    """Server faults take only a ThrowawayPostgres: never a shared server's DSN."""
    with pytest.raises(TypeError, match="ThrowawayPostgres"):
        PgServerKill(PG_DSN)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- SQLite


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_sqlite_lock_holder_makes_writes_fail_then_lets_them_through(
    tmp_path: Path,
) -> None:
    """While held, another connection's write fails with 'database is locked'; after heal the
    same write commits."""
    db = tmp_path / "ticks.db"
    with contextlib.closing(sqlite3.connect(db)) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (x INTEGER)")
        setup.commit()
    holder = SQLiteLockHolder(db)
    writer = sqlite3.connect(db, timeout=0.2, isolation_level=None)
    try:
        await holder.inject()
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            writer.execute("INSERT INTO t VALUES (1)")
        assert writer.execute("SELECT count(*) FROM t").fetchone() == (0,)  # reads go on
        await holder.heal()
        writer.execute("INSERT INTO t VALUES (2)")
        assert writer.execute("SELECT x FROM t").fetchall() == [(2,)]
    finally:
        await holder.heal()
        writer.close()


def ticks(first: int, count: int) -> list[Tick]:
    return [Tick("A", seq, 1_700_000_000 * 10**9 + seq, 1.0, 1.1, 1.0, 1.0) for seq in
            range(first, first + count)]  # fmt: skip


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_sqlite_lock_holder_fails_the_tick_stores_own_writes(tmp_path: Path) -> None:
    """The node's store (its busy_timeout shortened to 0.3 s) fails a batch with 'database is
    locked' while the lock is held, and stores it after heal."""
    store = SQLiteTickStore(tmp_path / "ticks.db", busy_timeout=0.3)
    await store.open()
    holder = SQLiteLockHolder(store.path)
    try:
        assert await store.write(ticks(1, 10)) == 10
        await holder.inject()
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            await store.write(ticks(11, 10))
        await holder.heal()
        assert await store.write(ticks(11, 10)) == 10
    finally:
        await holder.heal()
        await store.aclose()


@pytest.mark.integration
async def test_sqlite_lock_holder_refuses_a_missing_file(tmp_path: Path) -> None:
    """A path that is not an existing file is an InjectorError naming it (nothing created)."""
    missing = tmp_path / "nope.db"
    with pytest.raises(InjectorError, match=r"nope\.db"):
        await SQLiteLockHolder(missing).inject()
    assert not missing.exists()


# ---------------------------------------------------------------------- PostgreSQL, shared server


def _pg_or_fail() -> None:
    try:
        psycopg.connect(PG_DSN).close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_DSN!r} is unreachable; these tests need it: {exc}")


@pytest.fixture
def pg_table() -> Iterator[str]:
    """A table of this test's own in database ``test``, dropped afterwards."""
    _pg_or_fail()
    name = unique("chaos_b2")
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


async def _insert(dsn: str, table: str, *, lock_timeout_ms: int | None = None) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        if lock_timeout_ms is not None:
            await conn.execute(f"SET lock_timeout = {lock_timeout_ms}")
        await conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(sql.Identifier(table)))


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_pg_lock_holder_blocks_the_table_then_releases_it(pg_table: str) -> None:
    """ACCESS EXCLUSIVE held: an insert waits out its lock_timeout; after heal it commits."""
    holder = PgLockHolder(PG_DSN, table=pg_table)
    try:
        await holder.inject()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            await _insert(PG_DSN, pg_table, lock_timeout_ms=300)
    finally:
        await holder.heal()
    await _insert(PG_DSN, pg_table, lock_timeout_ms=300)


@pytest.mark.integration
async def test_pg_lock_holder_names_a_missing_table() -> None:
    """Locking a table that does not exist is an InjectorError naming it."""
    _pg_or_fail()
    missing = unique("no_such_table")
    with pytest.raises(InjectorError, match=missing):
        await PgLockHolder(PG_DSN, table=missing).inject()


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_pg_pool_exhaustion_refuses_new_connections_then_frees_them() -> None:
    """Every slot held: a new connection is refused by the server; after heal it connects."""
    _pg_or_fail()
    pool = PgPoolExhaustion(PG_DSN)
    try:
        await pool.inject()
        assert pool.held > 1
        with pytest.raises(psycopg.OperationalError, match=r"too many clients|reserved"):
            await psycopg.AsyncConnection.connect(PG_DSN)
    finally:
        await pool.heal()
    assert pool.held == 0
    async with await psycopg.AsyncConnection.connect(PG_DSN) as conn:
        await conn.execute("SELECT 1")


@pytest.fixture
def pg_role(pg_table: str) -> Iterator[tuple[str, str]]:
    """A login role of this test's own with rights on ``pg_table``: (role, its DSN)."""
    role = unique("chaos_b2_role")
    ident = sql.Identifier(role)
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        conn.execute(sql.SQL("GRANT ALL ON TABLE {} TO {}").format(sql.Identifier(pg_table), ident))
    try:
        yield role, PG_DSN.replace("user=postgres", f"user={role}")
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE test RESET ALL").format(ident))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_pg_statement_timeout_cancels_writes_then_is_put_back(
    pg_table: str, pg_role: tuple[str, str]
) -> None:
    """A new session of the role gets the low statement_timeout and its write is cancelled;
    after heal a new session has no timeout and the write commits."""
    role, dsn = pg_role
    fault = PgStatementTimeout(PG_DSN, table=pg_table, role=role)
    assert fault.timeout_ms == 200
    try:
        await fault.inject()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            shown = await (await conn.execute("SHOW statement_timeout")).fetchone()
            assert shown == ("200ms",)
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            await _insert(dsn, pg_table)
    finally:
        await fault.heal()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        assert await (await conn.execute("SHOW statement_timeout")).fetchone() == ("0",)
    await _insert(dsn, pg_table)


# ---------------------------------------------------------------------- the throwaway server


@pytest.fixture
async def throwaway() -> AsyncIterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    require(server.capability())
    async with server:
        yield server


async def _query(dsn: str, limit: float = 2.0) -> int:
    async with asyncio.timeout(limit):
        conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=1, autocommit=True)
        async with conn:
            row = await (await conn.execute("SELECT count(*) FROM kept")).fetchone()
            assert row is not None
            return int(row[0])


async def _seed(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE kept (x int)")
        await conn.execute("INSERT INTO kept SELECT generate_series(1, 100)")


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_throwaway_server_starts_durable_and_is_deleted(tmp_path: Path) -> None:
    """A throwaway server answers on its DSN with fsync on; after exit its directory is gone
    and its postmaster too."""
    server = ThrowawayPostgres()
    require(server.capability())
    async with server:
        root, pid = server.root, server.postmaster_pid
        async with await psycopg.AsyncConnection.connect(server.dsn) as conn:
            assert await (await conn.execute("SHOW fsync")).fetchone() == ("on",)
    assert not root.exists()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_pg_server_pause_hangs_queries_then_they_answer(
    throwaway: ThrowawayPostgres,
) -> None:
    """SIGSTOP: the postmaster and backends are stopped and a query gets no answer; after
    SIGCONT it answers."""
    await _seed(throwaway.dsn)
    pause = PgServerPause(throwaway)
    try:
        await pause.inject()
        assert psutil.Process(throwaway.postmaster_pid).status() == psutil.STATUS_STOPPED
        with pytest.raises((TimeoutError, psycopg.OperationalError)):
            await _query(throwaway.dsn, limit=1.5)
    finally:
        await pause.heal()
    assert psutil.Process(throwaway.postmaster_pid).status() != psutil.STATUS_STOPPED
    assert await _query(throwaway.dsn, limit=10) == 100


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_pg_server_kill_refuses_connections_then_restarts_with_the_data(
    throwaway: ThrowawayPostgres,
) -> None:
    """SIGKILL: the postmaster is gone and a connection is refused; heal starts it on the same
    port and every committed row is still there (crash recovery from the WAL)."""
    await _seed(throwaway.dsn)
    old = throwaway.postmaster_pid
    kill = PgServerKill(throwaway)
    try:
        await kill.inject()
        assert not throwaway.running
        assert not psutil.pid_exists(old)
        with pytest.raises(psycopg.OperationalError):
            await _query(throwaway.dsn)
    finally:
        await kill.heal()
    assert throwaway.postmaster_pid != old
    assert await _query(throwaway.dsn, limit=10) == 100


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_pg_lock_holder_stalls_the_tick_stores_writes_on_its_table(
    throwaway: ThrowawayPostgres,
) -> None:
    """On the store's own ``ticks`` table: a write waits out the store's deadline and fails as
    a lost connection; after heal the store writes again (it reconnects)."""
    store = PostgresTickStore(throwaway.dsn, timeout=1.0)
    await store.open()
    holder = PgLockHolder(throwaway.dsn)
    try:
        assert await store.write(ticks(1, 10)) == 10
        await holder.inject()
        with pytest.raises(psycopg.OperationalError, match="no answer"):
            await store.write(ticks(11, 10))
        await holder.heal()
        assert await store.write(ticks(11, 10)) == 10
    finally:
        await holder.heal()
        await store.aclose()


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_pg_storage_full_fails_writes_then_frees_the_volume() -> None:
    """The server's tmpfs filled: a write that needs new pages fails with 'No space left on
    device'; after heal the same write commits."""
    server = ThrowawayPostgres(storage_limit=96 * MIB)
    require(server.capability())
    async with server:
        await _seed(server.dsn)
        full = PgStorageFull(server)
        grow = "INSERT INTO kept SELECT generate_series(1, 200000)"
        try:
            await full.inject()
            assert full.filled > 0
            async with await psycopg.AsyncConnection.connect(server.dsn, autocommit=True) as c:
                with pytest.raises(psycopg.errors.DiskFull, match="No space left on device"):
                    await c.execute(grow)
        finally:
            await full.heal()
        async with await psycopg.AsyncConnection.connect(server.dsn, autocommit=True) as c:
            await c.execute(grow)
        assert await _query(server.dsn, limit=10) == 200100


# ---------------------------------------------------------------------- memory: a real node


async def _start_node(tmp_path: Path, *extra: str) -> tuple[asyncio.subprocess.Process, str]:
    """A real node process (no exchange: it retries in the background) with its status URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "strategylab", "node", "--exchange-url", "ws://127.0.0.1:1/ws"),
        *("--data-dir", str(tmp_path / "node"), "--symbols", "A", "--status-port", "0"),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "STRATEGYLAB_ADMIN_TOKEN": TOKEN},
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"the node exited ({await proc.wait()}) before 'ready'")
            if b'"ready"' in line:
                import json  # noqa: PLC0415

                return proc, str(json.loads(line)["status_url"])


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_memory_ballast_raises_the_nodes_rss_then_releases_it(tmp_path: Path) -> None:
    """The node's RSS (read from the process table, not from the node) rises to about 95 % of
    its budget; after heal it falls back, and /status shows the ballast both times."""
    budget = 256 * MIB
    proc, url = await _start_node(tmp_path, "--chaos-agent", "--memory-budget", "256M")
    try:
        node = psutil.Process(proc.pid)
        before = node.memory_info().rss
        ballast = MemoryBallast(url, TOKEN, Severity.MEDIUM, steps=2)
        await ballast.inject()
        try:
            during = node.memory_info().rss
            figures = await ballast.figures()
            assert figures["ballast_bytes"] == ballast.ballast > 100 * MIB
            assert during >= before + 0.9 * ballast.ballast
            assert during >= 0.90 * budget
        finally:
            await ballast.heal()
        after = node.memory_info().rss
        assert after <= before + 0.1 * ballast.ballast
        assert (await ballast.figures())["ballast_bytes"] == 0
    finally:
        await _stop(proc)


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_ballast_route_needs_the_token_and_the_agent(tmp_path: Path) -> None:
    """Without the token: 401 and no ballast; a node without --chaos-agent: 404 and an
    injector error saying so."""
    proc, url = await _start_node(tmp_path, "--memory-budget", "256M")
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{url}/admin/chaos/ballast", json={"bytes": 1}) as response,
        ):
            assert response.status == 401
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/admin/chaos/ballast",
                json={"bytes": 1},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as response,
        ):
            assert response.status == 404
            assert "--chaos-agent" in (await response.json())["error"]
        with pytest.raises(InjectorError, match="--chaos-agent"):
            await MemoryBallast(url, TOKEN).inject()
    finally:
        await _stop(proc)


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_chaos_agent_without_a_token_is_a_usage_error(tmp_path: Path) -> None:
    """`--chaos-agent` without an admin token exits 2 naming the flag."""
    import subprocess  # noqa: PLC0415

    env = {k: v for k, v in os.environ.items() if k != "STRATEGYLAB_ADMIN_TOKEN"}
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [
            *(sys.executable, "-m", "strategylab", "node", "--exchange-url", "ws://127.0.0.1:1/ws"),
            *("--data-dir", str(tmp_path / "n"), "--symbols", "A", "--status-port", "0"),
            "--chaos-agent",
        ],
        capture_output=True,
        text=True,
        timeout=25,
        env=env,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "--chaos-agent" in done.stderr
    assert "admin token" in done.stderr


# ---------------------------------------------------------------------- CPU


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_cpu_burners_are_in_the_process_table_then_gone() -> None:
    """Two burner processes run and burn CPU; after heal neither exists."""
    burner = CpuBurner(n=2)
    try:
        await burner.inject()
        pids = burner.pids
        assert len(pids) == 2
        for pid in pids:
            process = psutil.Process(pid)
            assert process.ppid() == os.getpid()
            assert "while True" in " ".join(process.cmdline())
        # Real work: each burner's CPU time grows (psutil's own bounded blocking measure; the
        # machine is shared, so a burner may get only a slice of a CPU).
        for pid in pids:
            probe = psutil.Process(pid)
            start = sum(probe.cpu_times()[:2])
            for _ in range(50):
                probe.cpu_percent(interval=0.1)
                if sum(probe.cpu_times()[:2]) > start + 0.05:
                    break
            assert sum(probe.cpu_times()[:2]) > start + 0.05
    finally:
        await burner.heal()
    assert burner.pids == []
    for pid in pids:
        assert not psutil.pid_exists(pid)


# ---------------------------------------------------------------------- disk


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_disk_fill_gives_enospc_then_frees_and_unmounts(tmp_path: Path) -> None:
    """tmpfs mode: a writer on the volume gets ENOSPC; after heal the mount and the directory
    it created are gone and nothing else was touched."""
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    volume = tmp_path / "volume"
    fill = DiskFill(volume, mode="tmpfs", size=4 * MIB)
    require(fill.capability())
    try:
        await fill.inject()
        assert volume.is_mount()
        assert fill.filled > 3 * MIB
        with pytest.raises(OSError, match="No space left") as caught:
            (volume / "victim").write_bytes(b"x" * 65536)
        assert caught.value.errno == errno.ENOSPC
    finally:
        await fill.heal()
    assert not volume.exists()
    assert keep.read_text() == "mine"
    assert fill.describe()["error"] == "ENOSPC"


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_disk_fill_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    """It never mounts over files it did not create: an InjectorError, the file untouched."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious").write_text("x")
    fill = DiskFill(tmp_path / "data", mode="tmpfs")
    require(fill.capability())
    with pytest.raises(InjectorError, match="empty directory"):
        await fill.inject()
    assert (tmp_path / "data" / "precious").read_text() == "x"
    assert not (tmp_path / "data").is_mount()


_WRITER = """
import os, sys
for line in sys.stdin:
    try:
        with open(sys.argv[1], "ab") as f:
            f.write(b"x" * 4096)
        print("ok", flush=True)
    except OSError as exc:
        print(exc.errno, flush=True)
"""


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_disk_fill_file_size_limit_gives_efbig_then_lifts(tmp_path: Path) -> None:
    """fsize mode: the writer process's RLIMIT_FSIZE is 0, so its append fails with EFBIG;
    after heal the same append succeeds."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-c", _WRITER, str(tmp_path / "out")),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None

    async def attempt() -> str:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        async with asyncio.timeout(10):
            return (await proc.stdout.readline()).decode().strip()

    fill = DiskFill(tmp_path, mode="fsize", pid=proc.pid)
    try:
        require(fill.capability())
        await fill.inject()
        assert await attempt() == str(errno.EFBIG)
        await fill.heal()
        assert await attempt() == "ok"
        assert fill.describe()["error"] == "EFBIG"
    finally:
        await fill.heal()
        proc.stdin.close()
        async with asyncio.timeout(10):
            await proc.wait()
