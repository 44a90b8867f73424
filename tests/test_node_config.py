"""A store that can never work is a configuration error at start: one line naming the option,
exit 2, nothing created. A server that is merely down at start is not: the node spools."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.node import NodeConfig
from strategylab.node._store_check import check_store_config
from test_node_process import next_event, spawn, status_until

pytestmark = pytest.mark.integration

ADMIN_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def run_node(data_dir: Path, *store: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "strategylab",
            "node",
            "--exchange-url",
            "ws://127.0.0.1:9/ws",
            "--data-dir",
            str(data_dir),
            "--symbols",
            "A",
            *store,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def sqlite_other_schema(tmp_path: Path) -> list[str]:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE ticks (symbol TEXT, price REAL)")
    return ["--db", str(path)]


def sqlite_other_quarantine(tmp_path: Path) -> list[str]:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE quarantine (id INTEGER PRIMARY KEY, why TEXT)")
    return ["--db", str(path)]


def sqlite_not_a_database(tmp_path: Path) -> list[str]:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    return ["--db", str(path)]


def sqlite_missing_directory(tmp_path: Path) -> list[str]:
    return ["--db", str(tmp_path / "no" / "such" / "dir" / "ticks.db")]


def sqlite_a_directory(tmp_path: Path) -> list[str]:
    (tmp_path / "adir").mkdir()
    return ["--db", str(tmp_path / "adir")]


def pg_unparsable(_: Path) -> list[str]:
    return ["--postgres", "host=127.0.0.1 dbname='test"]


def pg_unknown_option(_: Path) -> list[str]:
    return ["--postgres", "host=127.0.0.1 dbname=test colour=blue"]


def pg_missing_database(_: Path) -> list[str]:
    return ["--postgres", f"host=127.0.0.1 port=5432 dbname=nope_{uuid.uuid4().hex} user=postgres"]


def pg_missing_role(_: Path) -> list[str]:
    return ["--postgres", f"host=127.0.0.1 port=5432 dbname=test user=nobody_{uuid.uuid4().hex}"]


def pg_bad_port(_: Path) -> list[str]:
    return ["--postgres", "host=127.0.0.1 port=notanumber dbname=test user=postgres"]


def pg_bad_server_setting(_: Path) -> list[str]:
    dsn = "host=127.0.0.1 port=5432 dbname=test user=postgres options='-c statement_timeout=abc'"
    return ["--postgres", dsn]


CASES: dict[str, tuple[Callable[[Path], list[str]], str, str]] = {
    "sqlite-other-ticks-schema": (sqlite_other_schema, "--db", "another schema"),
    "sqlite-other-quarantine-schema": (sqlite_other_quarantine, "--db", "quarantine"),
    "sqlite-not-a-database": (sqlite_not_a_database, "--db", "not an SQLite database"),
    "sqlite-missing-directory": (sqlite_missing_directory, "--db", "does not exist"),
    "sqlite-a-directory": (sqlite_a_directory, "--db", "is a directory"),
    "pg-unparsable-dsn": (pg_unparsable, "--postgres", "does not parse"),
    "pg-unknown-option": (pg_unknown_option, "--postgres", "does not parse"),
    "pg-missing-database": (pg_missing_database, "--postgres", "does not exist"),
    "pg-missing-role": (pg_missing_role, "--postgres", "does not exist"),
    "pg-bad-port": (pg_bad_port, "--postgres", "invalid integer value"),
    "pg-bad-server-setting": (pg_bad_server_setting, "--postgres", "invalid value for parameter"),
}


@pytest.mark.timeout(40)
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_store_that_can_never_work_exits_2_naming_the_option(tmp_path: Path, case: str) -> None:
    """One line on stderr naming the option and the reason, exit 2, no traceback, nothing made."""
    make, option, reason = CASES[case]
    data_dir = tmp_path / "node"
    result = run_node(data_dir, *make(tmp_path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"strategylab node: error: {option}="), lines[0]
    assert reason in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not data_dir.exists(), "the node created its data directory before failing"


@pytest.fixture
def scratch_database() -> Iterator[str]:
    """A throwaway database on the real server; its DSN."""
    name = f"b1_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"host=127.0.0.1 port=5432 dbname={name} user=postgres"
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.timeout(40)
def test_postgres_ticks_table_of_another_schema_exits_2(
    tmp_path: Path, scratch_database: str
) -> None:
    """A ``ticks`` table without the (symbol, seq) key is refused, naming --postgres."""
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE ticks (symbol text, seq bigint, price double precision)")
    result = run_node(tmp_path / "node", "--postgres", scratch_database)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert "--postgres=" in result.stderr
    assert "table 'ticks' has another schema" in result.stderr


@pytest.mark.timeout(40)
def test_a_good_existing_sqlite_store_is_accepted(tmp_path: Path) -> None:
    """The check refuses only what is wrong: a store the node made itself passes it."""

    async def make() -> None:
        store = SQLiteTickStore(tmp_path / "ticks.db")
        await store.open()
        await store.aclose()

    asyncio.run(make())
    config = NodeConfig(
        exchange_url="ws://127.0.0.1:9/ws",
        symbols=("A",),
        data_dir=tmp_path / "node",
        db=tmp_path / "ticks.db",
    )
    asyncio.run(check_store_config(config))  # raises ConfigurationError if refused
    assert (tmp_path / "ticks.db").stat().st_size > 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.timeout(40)
async def test_an_unreachable_postgres_at_start_is_transient_the_node_spools(
    tmp_path: Path,
) -> None:
    """Nothing listening on the server's port: the node starts, spools, and stops on SIGTERM."""
    dsn = f"host=127.0.0.1 port={free_port()} dbname=test user=postgres connect_timeout=1"
    node = await spawn(
        "strategylab",
        "node",
        "--exchange-url",
        f"ws://127.0.0.1:{free_port()}/ws",
        "--data-dir",
        str(tmp_path / "node"),
        "--symbols",
        "A",
        "--status-interval",
        "0.1",
        "--postgres",
        dsn,
        "--connect-timeout",
        "1",
    )
    try:
        await next_event(node, "started", 20)
        status = await status_until(node, lambda s: s["store_state"] == "spooling", 10)
        assert status["emergency"] is None
        node.terminate()
        stopped = await next_event(node, "stopped", 5)
        assert stopped["store_state"] == "spooling"
        async with asyncio.timeout(5):
            assert await node.wait() == 0
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()


@pytest.fixture
def read_only_volume(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs holding one SQLite database (root only, as CI runs)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    mount_cmd = ["/bin/mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)]
    subprocess.run(mount_cmd, check=True)  # noqa: S603 - our own arguments
    try:
        conn = sqlite3.connect(mount / "ticks.db")
        conn.execute("CREATE TABLE other (x)")
        conn.close()
        subprocess.run(["/bin/mount", "-o", "remount,ro", str(mount)], check=True)  # noqa: S603
        yield mount
    finally:
        subprocess.run(["/bin/umount", "-l", str(mount)], check=False)  # noqa: S603


@pytest.mark.timeout(40)
@pytest.mark.parametrize("name", ["ticks.db", "new.db"])
def test_a_database_on_a_read_only_volume_exits_2(
    tmp_path: Path, read_only_volume: Path, name: str
) -> None:
    """An existing file or a new one on a read-only volume can never be written: refused."""
    result = run_node(tmp_path / "node", "--db", str(read_only_volume / name))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("strategylab node: error: --db="), result.stderr
    assert "not writable" in result.stderr
