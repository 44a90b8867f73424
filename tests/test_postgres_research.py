"""`check`, `backtest` and `optimize` on a PostgreSQL tick store named by `--postgres`.

Against the real server at 127.0.0.1:5432 (database ``test``, trust auth): every test's store is
a table of a unique name in a schema of this module's own (a cluster's store is an arbitrary
table, chosen with ``--pg-table``/``--pg-schema``), dropped afterwards. The same ticks and the
same planted faults are put in an SQLite file, and each command must say the same of both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import socket
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
import typer
from psycopg import sql
from typer.testing import CliRunner, Result

from strategylab._check_cli import check_command
from strategylab._research_cli import backtest_command, optimize_command
from strategylab.chaos import check_store
from strategylab.market import (
    AckLog,
    EmittedLog,
    PostgresTickStore,
    SQLiteTickStore,
    StoreUnreachableError,
    StoreUnusableError,
    Tick,
)
from strategylab.research import (
    BacktestSpec,
    load_research_arrays,
    run_backtest,
    shared_backtest_read,
)
from strategylab.research._pg_data import load_postgres_arrays

ADMIN_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
URL = "postgresql://postgres@127.0.0.1:5432/test"
SYMBOLS = ("AAPL", "MSFT", "TSLA")
PER_SYMBOL = 1_200
T0 = 1_700_000_000_000_000_000
PARAMS = ("--param", "fast=5", "--param", "slow=20")
NOT_A_URL = "--postgres: must be a postgresql:// URL"

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command("backtest")(backtest_command)
app.command("optimize")(optimize_command)
app.command("check")(check_command)

pytestmark = pytest.mark.integration


def _ticks() -> list[Tick]:
    """Interleaved ticks whose floats use every bit (a bit lost on the way would show)."""
    out: list[Tick] = []
    ts = T0
    for seq in range(1, PER_SYMBOL + 1):
        for i, symbol in enumerate(SYMBOLS):
            ts += 1_000_003
            mid = 100.0 + i + math.sin(seq / 13.0 + i) * 3.0
            out.append(Tick(symbol, seq, ts, mid - 0.01, mid + 0.01, seq / 7.0, 1.0 / seq))
    return out


TICKS = _ticks()


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _admin() -> psycopg.Connection[tuple[Any, ...]]:
    try:
        return psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {ADMIN_DSN!r} is unreachable; these tests need it: {exc}")


@dataclasses.dataclass(frozen=True)
class PgTable:
    """A tick table of its own name in the module's schema."""

    schema: str
    table: str

    def flags(self) -> list[str]:
        return ["--postgres", URL, "--pg-schema", self.schema, "--pg-table", self.table]

    def execute(self, statement: str, *params: object) -> None:
        """Run ``statement`` with ``{t}`` standing for the table (quoted, schema-qualified)."""
        name = sql.Identifier(self.schema, self.table)
        with _admin() as conn:
            conn.execute(sql.SQL(statement).format(t=name), params)


async def _write_pg(schema: str, table: str, ticks: Sequence[Tick]) -> None:
    store = PostgresTickStore(ADMIN_DSN, schema=schema, table=table)
    await store.open()
    try:
        assert await store.write(ticks) == len(ticks)
    finally:
        await store.aclose()


async def _write_sqlite(path: Path, ticks: Sequence[Tick]) -> None:
    store = SQLiteTickStore(path)
    await store.open()
    try:
        await store.write(ticks)
    finally:
        await store.aclose()


@pytest.fixture(scope="module")
def schema() -> Iterator[str]:
    """This module's schema, dropped with everything in it at the end."""
    name = f"research_pg_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with _admin() as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def _new_table(schema: str, ticks: Sequence[Tick]) -> PgTable:
    table = PgTable(schema, f"ticks_{uuid.uuid4().hex[:10]}")
    asyncio.run(_write_pg(schema, table.table, ticks))
    return table


@pytest.fixture(scope="module")
def pg_ticks(schema: str) -> Iterator[PgTable]:
    """TICKS in a table of their own (read only by the tests that use it)."""
    table = _new_table(schema, TICKS)
    yield table
    table.execute("DROP TABLE IF EXISTS {t}")


@pytest.fixture(scope="module")
def sqlite_ticks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TICKS in an SQLite file."""
    path = tmp_path_factory.mktemp("pg_research") / "ticks.db"
    asyncio.run(_write_sqlite(path, TICKS))
    return path


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The exchange's emitted log of TICKS and an ack log acknowledging all of them."""
    directory = tmp_path_factory.mktemp("logs")
    emitted = EmittedLog(directory / "emitted.log")
    for i in range(0, len(TICKS), 100):
        emitted.append(TICKS[i : i + 100])
    emitted.close()
    acks = AckLog(directory / "acks.jsonl")
    acks.append(dict.fromkeys(SYMBOLS, PER_SYMBOL))
    acks.close()
    return emitted.path, acks.path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _json(result: Result, code: int = 0) -> Any:
    assert result.exit_code == code, result.output
    report = json.loads(result.stdout)
    if isinstance(report, dict):
        report.pop("elapsed_s", None)
    return report


# ----------------------------------------------------------------------------------- check


@pytest.mark.timeout(60)
def test_check_finds_a_lost_and_a_duplicated_tick_in_postgres_as_in_sqlite(
    schema: str, tmp_path: Path, logs: tuple[Path, Path]
) -> None:
    """One row deleted, one stored twice (a table without its primary key): the PostgreSQL
    store's report equals the SQLite file's with the same faults; both exit 3."""
    emitted, acks = logs
    lost, dup = ("MSFT", 321), next(t for t in TICKS if (t.symbol, t.seq) == ("TSLA", 123))
    table = _new_table(schema, TICKS)
    table.execute("ALTER TABLE {t} DROP CONSTRAINT " + f'"{table.table}_pkey"')  # PG's own name
    table.execute("DELETE FROM {t} WHERE symbol = %s AND seq = %s", *lost)
    table.execute(
        "INSERT INTO {t} VALUES (%s, %s, %s, %s, %s, %s, %s)", *msgspec.structs.astuple(dup)
    )
    db = tmp_path / "ticks.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "CREATE TABLE ticks (symbol TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,"
            " bid REAL NOT NULL, ask REAL NOT NULL, bid_size REAL NOT NULL,"
            " ask_size REAL NOT NULL)"
        )
    asyncio.run(_write_sqlite(db, TICKS))
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DELETE FROM ticks WHERE symbol = ? AND seq = ?", lost)
        conn.execute("INSERT INTO ticks VALUES (?, ?, ?, ?, ?, ?, ?)", msgspec.structs.astuple(dup))

    common = ["check", str(emitted), "--acks", str(acks), "--json"]
    on_pg = _json(_invoke(*common, *table.flags()), code=3)
    on_sqlite = _json(_invoke(*common, str(db)), code=3)
    assert on_pg == on_sqlite
    assert on_pg["lost"]["items"] == [list(lost)]
    assert on_pg["duplicated"]["items"] == [["TSLA", 123]]
    assert on_pg["duplicated"]["count"] == 1
    assert on_pg["corrupted"]["count"] == 0
    text = _invoke(*common[:-1], *table.flags())
    assert text.exit_code == 3, text.output
    assert "MSFT" in text.output


@pytest.mark.timeout(30)
async def test_check_store_reads_a_table_in_a_schema(
    pg_ticks: PgTable, logs: tuple[Path, Path]
) -> None:
    """The checker's API takes the table and schema a cluster's store was given: all stored."""
    emitted, acks = logs
    async with asyncio.timeout(25):
        report = await check_store(
            emitted, URL, acks, require_complete=True, table=pg_ticks.table, schema=pg_ticks.schema
        )
    assert report.ok, report.summary()
    assert (report.emitted, report.stored, report.acknowledged) == (len(TICKS),) * 3


@pytest.mark.timeout(30)
def test_check_with_a_table_that_does_not_exist_exits_1(
    schema: str, logs: tuple[Path, Path]
) -> None:
    """--pg-table naming no table: "not a tick store", exit 1, the flag named; nothing made."""
    missing = PgTable(schema, f"absent_{uuid.uuid4().hex[:8]}")
    result = _invoke("check", str(logs[0]), *missing.flags())
    assert result.exit_code == 1, result.output
    assert result.output.startswith("strategylab check: --postgres ")
    assert "not a tick store" in result.output
    with _admin() as conn:
        found = conn.execute("SELECT to_regclass(%s)", (f"{schema}.{missing.table}",)).fetchone()
    assert found == (None,)


# -------------------------------------------------------------------------------- backtest


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", [[], ["--vectorised"]], ids=["event-driven", "vectorised"])
def test_backtest_with_postgres_equals_sqlite(
    pg_ticks: PgTable, sqlite_ticks: Path, path: list[str]
) -> None:
    """The same ticks in PostgreSQL (--postgres, its own table) and in SQLite: same figures."""
    common = ["backtest", "--symbols", ",".join(SYMBOLS), *PARAMS, *path, "--json"]
    on_pg = _json(_invoke(*common, *pg_ticks.flags()))
    on_sqlite = _json(_invoke(*common, "--db", str(sqlite_ticks)))
    assert on_pg == on_sqlite
    assert all(r["ticks"] == PER_SYMBOL and r["trades"] > 0 for r in on_pg)


@pytest.mark.timeout(30)
def test_postgres_columns_equal_sqlite_bit_for_bit_across_pages(
    schema: str, sqlite_ticks: Path
) -> None:
    """Read a page of 97 ticks at a time, with a gap in seq, the columns equal SQLite's."""
    table = _new_table(schema, [t for t in TICKS if t.symbol == "AAPL" and t.seq != 500])
    try:
        got = load_postgres_arrays(
            URL, "AAPL", 2, 1100, table=table.table, schema=schema, chunk_rows=97
        )
    finally:
        table.execute("DROP TABLE {t}")
    want, _ = load_research_arrays(str(sqlite_ticks), "AAPL", 2, 1100, columnar=False)
    keep = want.seq != 500
    assert len(got) == 1098
    for name in ("seq", "ts", "bid", "ask", "bid_size", "ask_size"):
        column = getattr(got, name)
        assert column.dtype == getattr(want, name).dtype
        assert column.tobytes() == getattr(want, name)[keep].tobytes(), name


@pytest.mark.timeout(30)
def test_postgres_reads_and_run_backtest_name_the_url_without_the_password() -> None:
    """An unreachable server or a missing table: the store's errors, the URL without the
    password."""
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:{_closed_port()}/test"
    with pytest.raises(StoreUnreachableError, match="cannot reach the server") as caught:
        load_postgres_arrays(url, "AAPL")
    assert "s3cret-pw" not in str(caught.value)
    assert "postgresql://postgres@127.0.0.1:" in str(caught.value)
    spec = BacktestSpec(db_path=URL, strategy="ma_crossover", symbol="AAPL",
                        pg_table=f"absent_{uuid.uuid4().hex[:8]}")  # fmt: skip
    with pytest.raises(StoreUnusableError, match="not a tick store"):
        run_backtest(spec)


# -------------------------------------------------------------------------------- optimize


@pytest.mark.timeout(60)
def test_shared_read_serves_every_job_without_the_server(schema: str) -> None:
    """Inside shared_backtest_read the jobs read the shared files: they still run after the
    table is dropped, equal to a read of the server; the files are removed at the end."""
    table = _new_table(schema, [t for t in TICKS if t.symbol == "TSLA"])
    base = BacktestSpec(db_path=URL, strategy="ma_crossover", symbol="TSLA",
                        parameters={"fast": 5, "slow": 20}, from_seq=1, to_seq=PER_SYMBOL,
                        pg_table=table.table, pg_schema=schema)  # fmt: skip
    from_server = run_backtest(base)
    with shared_backtest_read(base) as shared:
        assert shared.shared_ticks is not None
        directory = Path(shared.shared_ticks)
        assert directory.stat().st_mode & 0o777 == 0o700
        table.execute("DROP TABLE {t}")
        assert run_backtest(shared) == from_server
        half = run_backtest(dataclasses.replace(shared, to_seq=PER_SYMBOL // 2))
        assert half.ticks == PER_SYMBOL // 2
    assert not directory.exists()
    assert len(from_server.trades) > 0


@pytest.mark.timeout(90)
def test_optimize_with_postgres_equals_sqlite(pg_ticks: PgTable, sqlite_ticks: Path) -> None:
    """A grid over --postgres ranks the same parameters with the same metrics as over SQLite."""
    common = ["optimize", "--symbols", "MSFT", "--grid", "fast=3,5", "--grid", "slow=20"]
    common += ["--metric", "pnl", "--workers", "2", "--timeout", "60", "--json"]

    def rows(report: dict[str, Any]) -> list[tuple[object, ...]]:
        return [(json.dumps(r["parameters"]), r["metrics"], r["status"]) for r in report["results"]]

    on_pg = _json(_invoke(*common, *pg_ticks.flags()))
    on_sqlite = _json(_invoke(*common, "--db", str(sqlite_ticks)))
    assert [r["status"] for r in on_pg["results"]] == ["ok", "ok"]
    assert rows(on_pg) == rows(on_sqlite)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["backtest", "--symbols", "A", "--db", "x.db", "--postgres", URL], "--db and --postgres"),
        (["optimize", "--symbols", "A", "--grid", "fast=5", "--db", URL, "--postgres", URL],
         "--db and --postgres"),
        (["check", "EMITTED", "x.db", "--postgres", URL], "DB and --postgres"),
        (["check", "EMITTED"], "no tick store: give DB"),
        (["backtest", "--symbols", "A", "--postgres", "ticks.db"], NOT_A_URL),
        (["check", "EMITTED", "--postgres", "mysql://h/d"], NOT_A_URL),
        (["backtest", "--symbols", "A", "--postgres", "postgresql://h:0/d"], "--postgres"),
        (["backtest", "--symbols", "A", "--db", "x.db", "--pg-table", "t"], "--pg-table: only"),
        (["check", "EMITTED", "x.db", "--pg-schema", "s"], "--pg-schema: only a PostgreSQL"),
        (["optimize", "--symbols", "A", "--grid", "fast=5", "--postgres", URL, "--pg-table", " "],
         "--pg-table ' ': must not be empty"),
    ],
)  # fmt: skip
def test_bad_store_flags_exit_2_naming_them(
    logs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    args: list[str], named: str,
) -> None:  # fmt: skip
    """Both stores, neither, a --postgres that is not a URL, a table for SQLite: exit 2."""
    monkeypatch.chdir(tmp_path)
    result = _invoke(*[str(logs[0]) if a == "EMITTED" else a for a in args])
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(30)
def test_an_unreachable_postgres_exits_1_without_the_password(logs: tuple[Path, Path]) -> None:
    """--postgres with nothing listening: each command exits 1 naming the URL, never the
    password."""
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:{_closed_port()}/test"
    for result in (
        _invoke("check", str(logs[0]), "--postgres", url),
        _invoke("backtest", "--postgres", url, "--symbols", "AAPL"),
        _invoke("optimize", "--postgres", url, "--symbols", "AAPL", "--grid", "fast=5"),
    ):
        assert result.exit_code == 1, result.output
        assert "--postgres" in result.output
        assert "cannot reach the server" in result.output
        assert "postgresql://postgres@127.0.0.1:" in result.output
        assert "s3cret-pw" not in result.output
        assert "Traceback" not in result.output


def test_the_shared_read_of_sqlite_is_the_columnar_snapshot(sqlite_ticks: Path) -> None:
    """For an SQLite store shared_backtest_read pins the synced snapshot (no temporary files)."""
    base = BacktestSpec(db_path=str(sqlite_ticks), strategy="ma_crossover", symbol="AAPL",
                        from_seq=1, to_seq=PER_SYMBOL)  # fmt: skip
    with shared_backtest_read(base) as shared:
        assert shared.pinned
        assert shared.shared_ticks is None
        assert run_backtest(shared).ticks == PER_SYMBOL


@pytest.mark.timeout(60)
def test_check_merges_the_ack_logs_of_a_clusters_nodes(
    schema: str, tmp_path: Path, logs: tuple[Path, Path]
) -> None:
    """Each node of a cluster acknowledges the symbols it held: ``--acks`` repeated takes the
    highest acknowledged seq per symbol over all of them, so a tick one node acknowledged and
    the shared store lacks is lost whichever node's log says it (the last --acks given must not
    silently win)."""
    emitted, _all = logs
    first, second = SYMBOLS[0], SYMBOLS[1]
    node_a, node_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path, acked in ((node_a, {first: PER_SYMBOL}), (node_b, {second: PER_SYMBOL // 2})):
        log = AckLog(path)
        log.append(acked)
        log.close()
    table = _new_table(schema, TICKS)
    table.execute("DELETE FROM {t} WHERE symbol = %s AND seq = %s", first, 7)
    common = ["check", str(emitted), *table.flags(), "--json"]
    both = _json(_invoke(*common, "--acks", str(node_a), "--acks", str(node_b)), code=3)
    assert both["lost"]["items"] == [[first, 7]]
    assert both["acknowledged"] == PER_SYMBOL + PER_SYMBOL // 2
    only_b = _json(_invoke(*common, "--acks", str(node_b)), code=0)
    assert only_b["lost"]["count"] == 0
