"""`backtest`, `optimize` and `check` on one option vocabulary, over SQLite and PostgreSQL stores.

The PostgreSQL tests run against the real server at 127.0.0.1:5432 (database ``test``), each in a
schema of its own (the URL's ``options=-csearch_path=...``), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import random
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
import typer
from psycopg import sql
from typer.testing import CliRunner, Result

from strategylab._check_cli import check_command
from strategylab._research_cli import backtest_command, optimize_command
from strategylab.market import (
    EmittedLog,
    PostgresTickStore,
    SQLiteTickReader,
    SQLiteTickStore,
    StoreUnusableError,
    Tick,
    open_tick_reader,
)
from strategylab.research import BacktestSpec, run_backtest

ADMIN_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
SYMBOLS = ("AAA", "BBB")
TICKS = 1_500
PARAMS = ("--param", "fast=5", "--param", "slow=20")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command("backtest")(backtest_command)
app.command("optimize")(optimize_command)
app.command("check")(check_command)


def _walk(symbol: str, n: int, seed: int) -> list[Tick]:
    rng = random.Random(seed)
    mid, out = 100.0, []
    for seq in range(1, n + 1):
        mid = max(1.0, mid + rng.gauss(0.0, 0.2))
        ts = 1_700_000_000_000_000_000 + seq * 1_000_000 + seed
        out.append(Tick(symbol, seq, ts, mid - 0.01, mid + 0.01, 1.0, 1.0))
    return out


ALL_TICKS = [t for i, s in enumerate(SYMBOLS) for t in _walk(s, TICKS, i + 1)]


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _admin() -> psycopg.Connection[tuple[Any, ...]]:
    try:
        return psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {ADMIN_DSN!r} is unreachable; these tests need it: {exc}")


def _url(schema: str, password: str = "") -> str:
    secret = f":{password}" if password else ""
    return f"postgresql://postgres{secret}@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"


def _tables(schema: str) -> list[str]:
    with _admin() as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return sorted(str(r[0]) for r in rows)


@pytest.fixture
def empty_schema() -> Iterator[str]:
    """A fresh schema with no tables, dropped afterwards."""
    name = f"cli_opts_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with _admin() as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str]:
    """A schema holding ALL_TICKS, written through PostgresTickStore."""
    name = f"cli_opts_{uuid.uuid4().hex[:12]}"

    async def write() -> None:
        store = PostgresTickStore(ADMIN_DSN, schema=name)
        await store.open()
        try:
            assert await store.write(ALL_TICKS) == len(ALL_TICKS)
        finally:
            await store.aclose()

    _admin().close()  # fails the test, with the reason, when the server is down
    asyncio.run(write())
    try:
        yield name
    finally:
        with _admin() as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same ticks in an SQLite file, written through SQLiteTickStore."""
    path = tmp_path_factory.mktemp("opts") / "ticks.db"

    async def write() -> None:
        store = SQLiteTickStore(path)
        await store.open()
        try:
            await store.write(ALL_TICKS)
        finally:
            await store.aclose()

    asyncio.run(write())
    return path


@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exchange's emitted log of ALL_TICKS."""
    log = EmittedLog(tmp_path_factory.mktemp("emitted") / "emitted.log")
    for i in range(0, len(ALL_TICKS), 100):
        log.append(ALL_TICKS[i : i + 100])
    log.close()
    return log.path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---------------------------------------------------------------- PostgreSQL equals SQLite


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", [[], ["--vectorised"]], ids=["event-driven", "vectorised"])
def test_backtest_on_postgres_equals_sqlite(
    pg_schema: str, sqlite_db: Path, path: list[str]
) -> None:
    """The same ticks, stored in PostgreSQL and in SQLite, backtest to the same figures."""
    common = ["backtest", "--symbols", ",".join(SYMBOLS), *PARAMS, *path, "--json"]
    on_pg = _json(_invoke(*common, "--db", _url(pg_schema)))
    on_sqlite = _json(_invoke(*common, "--db", str(sqlite_db)))
    assert [r["symbols"] for r in on_pg] == [["AAA"], ["BBB"]]
    assert on_pg == on_sqlite
    assert all(r["ticks"] == TICKS and r["trades"] > 0 for r in on_pg)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_run_backtest_on_postgres_equals_sqlite_trade_for_trade(
    pg_schema: str, sqlite_db: Path
) -> None:
    """run_backtest's whole result (every trade, the equity curve) agrees across the stores."""
    spec = BacktestSpec(
        db_path=str(sqlite_db), strategy="ma_crossover", symbol="AAA",
        parameters={"fast": 5, "slow": 20}, sample_every=50,
    )  # fmt: skip
    on_sqlite = run_backtest(spec)
    on_pg = run_backtest(dataclasses.replace(spec, db_path=_url(pg_schema)))
    assert on_pg == on_sqlite
    assert len(on_pg.trades) > 0


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_optimize_on_postgres_equals_sqlite(pg_schema: str, sqlite_db: Path) -> None:
    """A grid over the PostgreSQL store ranks the same parameters with the same metrics."""
    common = ["optimize", "--symbols", "AAA", "--grid", "fast=3,5", "--grid", "slow=20,40"]
    common += ["--metric", "pnl", "--workers", "2", "--timeout", "30", "--json"]

    def rows(report: dict[str, Any]) -> list[tuple[object, ...]]:
        return [(json.dumps(r["parameters"]), r["metrics"], r["status"]) for r in report["results"]]

    on_pg = _json(_invoke(*common, "--db", _url(pg_schema)))
    on_sqlite = _json(_invoke(*common, "--db", str(sqlite_db)))
    assert len(on_pg["results"]) == 4
    assert all(r["status"] == "ok" for r in on_pg["results"])
    assert rows(on_pg) == rows(on_sqlite)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_check_on_postgres_equals_sqlite(pg_schema: str, sqlite_db: Path, emitted: Path) -> None:
    """`check` reports the same integrity figures for both stores: everything emitted, stored."""
    on_pg = _json(_invoke("check", str(emitted), _url(pg_schema), "--json"))
    on_sqlite = _json(_invoke("check", str(emitted), str(sqlite_db), "--json"))
    for report in (on_pg, on_sqlite):
        report.pop("elapsed_s", None)
    assert on_pg == on_sqlite
    assert on_pg["ok"] is True


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_postgres_without_a_tick_table_is_refused_and_nothing_is_created(
    empty_schema: str, emitted: Path
) -> None:
    """An empty database is "not a tick store": every command exits 1; no table appears."""
    url = _url(empty_schema)
    checked = _invoke("check", str(emitted), url)
    assert checked.exit_code == 1, checked.output
    assert "not a tick store" in checked.output
    backtest = _invoke("backtest", "--db", url, "--symbols", "AAA")
    assert backtest.exit_code == 1, backtest.output
    assert "--db" in backtest.output
    assert "not a tick store" in backtest.output
    optimize = _invoke("optimize", "--db", url, "--symbols", "AAA", "--grid", "fast=5")
    assert optimize.exit_code == 1, optimize.output
    assert _tables(empty_schema) == []


@pytest.mark.integration
@pytest.mark.timeout(30)
async def test_the_postgres_reader_cannot_write(pg_schema: str) -> None:
    """A reader's session is read-only on the server: a write is refused there, not only here."""
    reader = open_tick_reader(_url(pg_schema))
    assert isinstance(reader, PostgresTickStore)
    await reader.open()
    try:
        with pytest.raises(RuntimeError, match="read_only"):
            await reader.write(ALL_TICKS[:1])
        # Past the guard, straight to the server: it refuses in a read-only transaction.
        with pytest.raises(StoreUnusableError, match="read-only transaction"):
            await reader._fetch(sql.SQL("CREATE TABLE planted (a int)"))
        assert await reader.symbols() == list(SYMBOLS)
    finally:
        await reader.aclose()
    assert "planted" not in _tables(pg_schema)


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_an_unreachable_server_exits_1_without_showing_the_password(emitted: Path) -> None:
    """Nothing listens: check and backtest exit 1 naming the URL, and never print its password."""
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:{_closed_port()}/test"
    for result in (
        _invoke("check", str(emitted), url),
        _invoke("backtest", "--db", url, "--symbols", "AAA"),
        _invoke("optimize", "--db", url, "--symbols", "AAA", "--grid", "fast=5"),
    ):
        assert result.exit_code == 1, result.output
        assert "cannot reach the server" in result.output
        assert "postgresql://postgres@127.0.0.1:" in result.output
        assert "s3cret-pw" not in result.output
        assert "Traceback" not in result.output


# --------------------------------------------------------------------------- several symbols


@pytest.mark.timeout(60)
def test_backtest_several_symbols_reports_each_as_alone(sqlite_db: Path) -> None:
    """--symbols AAA,BBB: a JSON list in that order, each equal to that symbol's own backtest."""
    both = _json(_invoke("backtest", "--db", str(sqlite_db), "--symbols", "BBB,AAA", *PARAMS,
                         "--json"))  # fmt: skip
    alone = [
        _json(_invoke("backtest", "--db", str(sqlite_db), "--symbols", s, *PARAMS, "--json"))[0]
        for s in ("BBB", "AAA")
    ]
    assert both == alone
    table = _invoke("backtest", "--db", str(sqlite_db), "--symbols", "AAA,BBB", *PARAMS)
    assert table.exit_code == 0, table.output
    assert "AAA" in table.output
    assert "BBB" in table.output


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["optimize", "--symbols", "AAA,BBB", "--grid", "fast=5"], "--symbols 'AAA,BBB'"),
        (["backtest", "--symbols", ","], "--symbols"),
        (["backtest", "--symbols", "AAA,AAA"], "given twice"),
        (["backtest", "--symbols", "AAA", "--log-level", "loud"], "--log-level"),
        (["backtest", "--symbols", "AAA", "--trades-out", "t.txt"], "--trades-out 't.txt'"),
        (["backtest", "--symbols", "AAA", "--equity-out", "e.json"], "--equity-out"),
        (["backtest", "--symbols", "AAA", "--plot", "p.jpg"], "--plot 'p.jpg'"),
        (
            ["backtest", "--symbols", "AAA", "--plot", "nodir/p.png"],
            "--plot 'nodir/p.png': no such directory",
        ),
        (
            ["backtest", "--symbols", "AAA", "--trades-out", "x.csv", "--equity-out", "x.csv"],
            "the same file as --trades-out",
        ),
    ],
)
def test_bad_options_exit_2_naming_the_flag(
    sqlite_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    named: str,
) -> None:
    """Usage errors of the shared options and the output flags: exit 2, the flag named."""
    monkeypatch.chdir(tmp_path)
    result = _invoke(*args, "--db", str(sqlite_db))
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["backtest", "optimize", "check"])
def test_log_level_is_accepted_by_each_command(
    sqlite_db: Path, emitted: Path, command: str
) -> None:
    """--log-level debug is an option of backtest, optimize and check."""
    args = {
        "backtest": ["backtest", "--db", str(sqlite_db), "--symbols", "AAA", *PARAMS],
        "optimize": [
            "optimize",
            "--db",
            str(sqlite_db),
            "--symbols",
            "AAA",
            "--grid",
            "fast=5",
            "--grid",
            "slow=20",
            "--workers",
            "1",
        ],
        "check": ["check", str(emitted), str(sqlite_db)],
    }[command]
    result = _invoke(*args, "--log-level", "debug")
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------------ output files


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _result(sqlite_db: Path, symbol: str) -> Any:
    spec = BacktestSpec(
        db_path=str(sqlite_db), strategy="ma_crossover", symbol=symbol,
        parameters={"fast": 5, "slow": 20}, from_seq=1, to_seq=TICKS,
    )  # fmt: skip
    return run_backtest(spec)


def _trades(result: Any) -> list[tuple[object, ...]]:
    return [
        (f.order_id, f.client_order_id, f.symbol, f.side.value, f.qty, f.price, f.fee, f.ts)
        for f in result.trades
    ]


@pytest.mark.timeout(60)
def test_trades_and_equity_as_csv_equal_the_result(sqlite_db: Path, tmp_path: Path) -> None:
    """--trades-out/--equity-out .csv hold exactly the result's trades and equity curve."""
    trades, equity = tmp_path / "trades.csv", tmp_path / "equity.csv"
    run = _invoke("backtest", "--db", str(sqlite_db), "--symbols", "AAA", *PARAMS,
                  "--trades-out", str(trades), "--equity-out", str(equity))  # fmt: skip
    assert run.exit_code == 0, run.output
    expected = _result(sqlite_db, "AAA")
    rows = _read_csv(trades)
    got = [
        (r["order_id"], r["client_order_id"], r["symbol"], r["side"], float(r["qty"]),
         float(r["price"]), float(r["fee"]), int(r["ts"]))
        for r in rows
    ]  # fmt: skip
    assert got == _trades(expected)
    assert len(got) > 0
    curve = _read_csv(equity)
    assert [int(r["ts"]) for r in curve] == list(expected.equity_ts)
    assert [float(r["equity"]) for r in curve] == list(expected.equity)
    assert max(float(r["drawdown"]) for r in curve) == pytest.approx(expected.max_drawdown)


@pytest.mark.timeout(60)
def test_trades_and_equity_as_parquet_equal_the_result(sqlite_db: Path, tmp_path: Path) -> None:
    """The .parquet files read back with pyarrow to the result's trades and curve."""
    trades, equity = tmp_path / "trades.parquet", tmp_path / "equity.parquet"
    run = _invoke("backtest", "--db", str(sqlite_db), "--symbols", "AAA", *PARAMS,
                  "--trades-out", str(trades), "--equity-out", str(equity))  # fmt: skip
    assert run.exit_code == 0, run.output
    expected = _result(sqlite_db, "AAA")
    table = pq.read_table(trades).to_pydict()
    names = ("order_id", "client_order_id", "symbol", "side", "qty", "price", "fee", "ts")
    assert list(zip(*(table[n] for n in names), strict=True)) == _trades(expected)
    curve = pq.read_table(equity).to_pydict()
    assert curve["ts"] == list(expected.equity_ts)
    assert curve["equity"] == list(expected.equity)


@pytest.mark.timeout(60)
def test_plot_writes_a_png(sqlite_db: Path, tmp_path: Path) -> None:
    """--plot PATH.png writes a PNG image (its signature), and nothing else beside it."""
    plot = tmp_path / "equity.png"
    run = _invoke("backtest", "--db", str(sqlite_db), "--symbols", "AAA", *PARAMS,
                  "--plot", str(plot))  # fmt: skip
    assert run.exit_code == 0, run.output
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in tmp_path.iterdir()] == ["equity.png"]


@pytest.mark.timeout(60)
def test_several_symbols_write_one_file_each(sqlite_db: Path, tmp_path: Path) -> None:
    """With --symbols AAA,BBB, --trades-out t.csv writes t.AAA.csv and t.BBB.csv."""
    run = _invoke("backtest", "--db", str(sqlite_db), "--symbols", "AAA,BBB", *PARAMS,
                  "--trades-out", str(tmp_path / "t.csv"))  # fmt: skip
    assert run.exit_code == 0, run.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.AAA.csv", "t.BBB.csv"]
    for symbol in ("AAA", "BBB"):
        rows = _read_csv(tmp_path / f"t.{symbol}.csv")
        assert {r["symbol"] for r in rows} == {symbol}
        assert len(rows) == len(_result(sqlite_db, symbol).trades)


@pytest.mark.timeout(30)
def test_an_existing_per_symbol_file_is_kept_without_overwrite(
    sqlite_db: Path, tmp_path: Path
) -> None:
    """A derived NAME.SYMBOL file that exists is refused before anything runs, and kept as is."""
    mine = tmp_path / "t.BBB.csv"
    mine.write_text("the user's own file\n")
    run = _invoke("backtest", "--db", str(sqlite_db), "--symbols", "AAA,BBB", *PARAMS,
                  "--trades-out", str(tmp_path / "t.csv"))  # fmt: skip
    assert run.exit_code == 2, run.output
    assert "--trades-out" in run.output
    assert "t.BBB.csv' exists; give --overwrite to replace it" in run.output
    assert mine.read_text() == "the user's own file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.BBB.csv"]


# ------------------------------------------------------------------------- the reader itself


def test_one_set_of_read_queries_serves_the_store_and_the_reader() -> None:
    """The SQLite store and the read-only reader run the same read methods (one definition)."""
    for method in ("read", "symbols", "duplicates", "quarantined", "last_seqs", "span"):
        assert getattr(SQLiteTickStore, method) is getattr(SQLiteTickReader, method)


@pytest.mark.timeout(30)
def test_sqlite_reader_refuses_a_database_without_ticks(tmp_path: Path) -> None:
    """An SQLite file with other tables is "not a tick store", and it is left unchanged."""
    import sqlite3  # noqa: PLC0415

    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (a TEXT)")
    conn.close()
    before = path.read_bytes()
    reader = open_tick_reader(str(path))
    with pytest.raises(StoreUnusableError, match="not a tick store"):
        asyncio.run(reader.open())
    asyncio.run(reader.aclose())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


# ------------------------------------------------------------------------ --strategy module:Class

MA_CLASS = "strategylab.strategy._builtin:MovingAverageCrossover"


@pytest.mark.timeout(60)
def test_strategy_as_module_class_backtests_like_the_built_in(sqlite_db: Path) -> None:
    """--strategy module:Class runs that class: the same trades as the built-in of that class."""
    common = ["backtest", "--db", str(sqlite_db), "--symbols", "AAA", *PARAMS, "--json"]
    [by_class] = _json(_invoke(*common, "--strategy", MA_CLASS))
    [by_name] = _json(_invoke(*common, "--strategy", "ma_crossover"))
    assert by_class["trades"] > 0
    assert (by_class["trades"], by_class["total_pnl"]) == (by_name["trades"], by_name["total_pnl"])


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("strategy", "extra", "named"),
    [
        ("no_such_module_xyz:Thing", [], "--strategy 'no_such_module_xyz:Thing': cannot import"),
        ("strategylab.market:Tick", [], "not a Strategy subclass"),
        (MA_CLASS, ["--vectorised"], "the vectorised path knows only the built-in"),
    ],
)
def test_a_bad_module_class_strategy_exits_2(
    sqlite_db: Path, strategy: str, extra: list[str], named: str
) -> None:
    """An unimportable or non-strategy module:Class, or one on the vectorised path: exit 2."""
    result = _invoke(
        "backtest", "--db", str(sqlite_db), "--symbols", "AAA", "--strategy", strategy, *extra
    )
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------- the store is only read


def _fingerprint(path: Path) -> tuple[bytes, int, list[str]]:
    # The columnar snapshot (NAME.columnar, the research read path's own directory) may appear.
    names = sorted(p.name for p in path.parent.iterdir() if p.name != f"{path.name}.columnar")
    return path.read_bytes(), path.stat().st_mtime_ns, names


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "args",
    [
        ["backtest", "--symbols", "AAA,BBB", *PARAMS],
        ["backtest", "--symbols", "AAA", *PARAMS, "--vectorised"],
        ["optimize", "--symbols", "AAA", "--grid", "fast=5", "--grid", "slow=20", "--workers",
         "1", "--event-driven"],
    ],
    ids=["backtest", "backtest-vectorised", "optimize-event-driven"],
)  # fmt: skip
def test_research_commands_leave_the_sqlite_store_untouched(
    sqlite_db: Path, tmp_path: Path, args: list[str]
) -> None:
    """backtest and optimize open the file read-only: same bytes, same mtime, no -wal/-shm (only
    the columnar snapshot directory beside it)."""
    db = tmp_path / "copy.db"
    db.write_bytes(sqlite_db.read_bytes())  # a WAL-mode store that no connection has open
    before = _fingerprint(db)
    result = _invoke(*args, "--db", str(db))
    assert result.exit_code == 0, result.output
    assert _fingerprint(db) == before
